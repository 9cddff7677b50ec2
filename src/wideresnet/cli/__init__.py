"""`wrn`: the verbs, each a thin call into the library; printing happens only here.

User errors print one line `wrn: error: ...` and exit 2 (a failed run exits 1); a run stopped
by SIGTERM/SIGINT saves a checkpoint and exits 128 + the signal number. Anything else is a bug
in wideresnet, reported as one (exit 70); WRN_DEBUG=1 shows the traceback behind any error.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from wideresnet.cli.handover import HANDOVER_COMMANDS
from wideresnet.cli.output import configure_logging
from wideresnet.cli.parser import UsageError, build_parser, split_train_options
from wideresnet.cli.tables import TABLE_COMMANDS
from wideresnet.cli.verbs import COMMANDS
from wideresnet.errors import Interrupted, WrnError

EXIT_USAGE, EXIT_BUG = 2, 70


def _debug() -> bool:
    return os.environ.get("WRN_DEBUG", "") not in ("", "0")


def _machine_readable(args) -> bool:
    """The verb prints JSON or CSV on stdout (the log then goes to stderr)."""
    return bool(getattr(args, "json", False)) or getattr(args, "format", None) in ("json", "csv")


def _printable_everywhere() -> None:
    """A path a terminal's encoding cannot show is printed escaped, never an error."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_everywhere()
    configure_logging()
    try:
        parser = build_parser()
        argv, train_options = split_train_options(sys.argv[1:] if argv is None else argv)
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help and --version: printed, nothing more to do
            return int(done.code or 0)
        if args.verb is None:  # a bare `wrn`: the verbs
            parser.print_help()
            return 0
        if train_options and getattr(args, "table_action", None) != "run":
            raise UsageError(f"wrn: options after -- only go with `wrn table run`: {train_options}")
        args.train_options = train_options
        configure_logging(json_output=_machine_readable(args))
        return {**COMMANDS, **TABLE_COMMANDS, **HANDOVER_COMMANDS}[args.verb](args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except WrnError as error:
        if _debug():
            traceback.print_exc()
        print(f"wrn: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as error:
        name = signal.Signals(error.signum).name
        print(f"wrn: stopped by {name}; {error.outcome}", file=sys.stderr)
        return 128 + error.signum
    except BrokenPipeError:  # `wrn info ... | head`
        return 0
    except KeyboardInterrupt:
        print("wrn: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:  # a bug in wideresnet, never blamed on the user
        if _debug():
            traceback.print_exc()
        print(
            f"wrn: internal error: {type(error).__name__}: {error} (a bug in wideresnet; "
            "WRN_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
