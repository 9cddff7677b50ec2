import sys

from wideresnet.cli import main

sys.exit(main())
