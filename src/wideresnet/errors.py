"""The errors a user can cause, each shown as one line by `wrn` (exit code on the class).

Anything else that escapes is a bug in wideresnet and is reported as one (see cli.main).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class WrnError(Exception):
    """A problem the user can fix: one clear line naming the thing, and an exit code."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(WrnError, ValueError):
    """A bad option name or value."""


class ModelNameError(WrnError, ValueError):
    """A model name that no builder accepts, or arguments that do not fit it."""


class DataError(WrnError, ValueError):
    """A problem with the user's data, naming the file."""


class RunError(WrnError):
    """A run that cannot start or go on."""


class WriteError(RunError):
    """A file could not be written (disk full, read-only, too large); nothing was torn."""

    exit_code = 1


CHECKPOINT_SAVED = "checkpoint saved, continue with `wrn train --resume RUN_DIR`"
DOWNLOAD_STOPPED = "nothing half-downloaded was kept; run the command again"


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the work cleanly (exit 128 + signal); `outcome` says what
    was kept."""

    def __init__(self, signum: int, outcome: str = CHECKPOINT_SAVED) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum, self.outcome = signum, outcome


@contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGTERM and SIGINT go to `handler` while inside (main thread only: elsewhere the
    caller keeps its own handling)."""
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:
        previous = {}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def signals_interrupt(outcome: str):
    """While inside, SIGTERM and SIGINT raise Interrupted, so that cleanup (temporary files)
    runs; `outcome` says what was kept."""

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum, outcome)

    return stop_signals(stop)
