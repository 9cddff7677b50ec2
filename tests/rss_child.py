"""`wrn ARGS` in its own process, then its own peak resident memory on the last line of
stdout (`peak_rss_bytes N`), for the tests' memory bounds:

    python tests/rss_child.py ARGS...
"""

import resource
import sys

from wideresnet import cli

code = cli.main(sys.argv[1:])
print(f"peak_rss_bytes {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
sys.exit(code)
