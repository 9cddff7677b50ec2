"""The errors a user can cause, each shown as one line by `wrn` (exit code on the class).

Anything else that escapes is a bug in wideresnet and is reported as one (see cli.main).
"""

from __future__ import annotations


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


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped a run after it saved a checkpoint (exit 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
