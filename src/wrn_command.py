"""The `wrn` command: `wideresnet.cli.main`, started so that Ctrl-C while torch is still being
imported is one line and exit 130, not a traceback (the package imports torch as it loads)."""

import signal
import sys


def main() -> int:
    try:
        from wideresnet.cli import main as run
    except KeyboardInterrupt:
        print("wrn: interrupted while starting; nothing was done", file=sys.stderr)
        return 128 + signal.SIGINT
    return run()


if __name__ == "__main__":
    sys.exit(main())
