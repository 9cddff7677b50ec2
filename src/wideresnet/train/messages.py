"""What a run says as it goes: the progress within an epoch, and the line after each epoch."""

from __future__ import annotations

import logging
import time

from wideresnet.train.records import MetricsRow

log = logging.getLogger("wideresnet.train.loop")
progress_log = logging.getLogger("wideresnet.progress")


class StepLog:
    """Progress within an epoch: a plain line every `every` steps when asked, else progress
    records (a bar on a terminal)."""

    def __init__(self, epochs: int, steps: int, batch_size: int, every: int) -> None:
        self.epochs, self.steps, self.batch_size, self.every = epochs, steps, batch_size, every
        self.started, self.counted, self.last = 0.0, 0, 0.0

    def start(self) -> None:
        self.started, self.counted, self.last = time.perf_counter(), 0, 0.0

    def step(self, epoch: int, step: int) -> None:
        self.counted += 1
        now = time.perf_counter()
        plain = self.every and step % self.every == 0
        if not plain and now - self.last < 0.5:
            return
        self.last = now
        rate = self.counted * self.batch_size / max(now - self.started, 1e-9)
        eta = (self.steps - step) * self.batch_size / max(rate, 1e-9)
        line = (
            f"epoch {epoch}/{self.epochs} step {step}/{self.steps} "
            f"{rate:,.0f} img/s (wall clock, this epoch) eta {eta:.0f}s"
        )
        if plain:
            log.info(line)
        else:
            progress_log.info(line, extra={"progress": f"epoch{epoch}", "progress_end": False})


def epoch_line(row: MetricsRow, epochs: int) -> str:
    """The line printed after each epoch."""
    test = (
        f"test loss {row.test_loss:.4f} error {row.test_error:.2f}%"
        if row.test_error is not None and row.test_loss is not None
        else "test: not measured this epoch (eval_every)"
    )
    return (
        f"epoch {row.epoch}/{epochs} lr {row.lr:.5g} "
        f"train loss {row.train_loss:.4f} error {row.train_error:.2f}% | "
        f"{test} | {row.epoch_seconds:.1f}s"
    )
