"""Progress of long waits (decoding, evaluation, training steps, table runs), as log records.

The library only logs; `wrn` renders these records as a bar on a terminal and as occasional
plain lines otherwise. A wait shorter than GRACE_SECONDS shows nothing at all.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

log = logging.getLogger("wideresnet.progress")

GRACE_SECONDS = 2.0  # waits shorter than this stay silent ($WRN_PROGRESS_AFTER overrides)
INTERVAL_SECONDS = 0.5  # at most two records a second per task
_ids = itertools.count()


def _grace() -> float:
    """$WRN_PROGRESS_AFTER in seconds, or the default (with a warning) when it is not one."""
    text = os.environ.get("WRN_PROGRESS_AFTER")
    if text is None:
        return GRACE_SECONDS
    try:
        return max(0.0, float(text))
    except ValueError:
        logging.getLogger("wideresnet").warning(
            f"WRN_PROGRESS_AFTER={text!r} is not a number of seconds; {GRACE_SECONDS:g} used"
        )
        return GRACE_SECONDS


class Progress:
    """`with Progress("decoding train", total, "files") as p: ... p.update(done)`."""

    def __init__(self, what: str, total: int, unit: str = "images", *, grace: float | None = None):
        if grace is None:
            grace = _grace()
        self.what, self.total, self.unit, self.grace = what, total, unit, grace
        self.key = f"{what}#{next(_ids)}"
        self.started = time.perf_counter()
        self.last_emit: float | None = None
        self.done = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.what}: {self.done:,}/{self.total:,} {self.unit} "
            f"({rate:,.0f} {self.unit}/s wall clock, eta {eta:.0f}s)"
        )

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if now - self.started < self.grace:
            return
        if self.last_emit is not None and now - self.last_emit < INTERVAL_SECONDS:
            return
        self.last_emit = now
        log.info(self.line(), extra={"progress": self.key, "progress_end": False})

    def close(self) -> None:
        """The final record, only when earlier ones were shown (so a bar gets its newline)."""
        if self.last_emit is not None:
            elapsed = time.perf_counter() - self.started
            log.info(
                f"{self.what}: {self.done:,} {self.unit} in {elapsed:.1f}s",
                extra={"progress": self.key, "progress_end": True},
            )
            self.last_emit = None
