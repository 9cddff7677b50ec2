"""What a run says as it goes: the progress within an epoch, the line after each epoch, and
how to go on when it stops on a NaN or a broken image."""

from __future__ import annotations

import logging
import time

from wideresnet.data.imagenet import EXCLUDE
from wideresnet.train.records import MetricsRow, TrainingState

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


def nonfinite_message(
    what: str, epoch: int, step: int | None, good: tuple[object, TrainingState] | None, run
) -> str:
    """The line for a non-finite `what` (training loss, weights) at `epoch` (and `step` when
    caught before its update), naming the last good checkpoint `good` (path, state)."""
    if step:
        when = f"at epoch {epoch} step {step}: the run stopped before applying that update"
    elif what == "weights":
        when = f"in epoch {epoch}: the run stopped without saving them"
    else:  # fused SGD: found on the device, where the bad update was skipped
        when = f"in epoch {epoch}: its update was skipped and the run stopped"
    if good is None:
        advice = "no good checkpoint was saved yet; start again with a lower --lr"
    else:
        path, state = good
        advice = (
            f"the last good checkpoint is {path} (epoch {state.epoch}, step "
            f"{state.step_in_epoch}); continue with `wrn train --resume {run} --lr LOWER` (a "
            "recorded change), or check the data"
        )
    return f"non-finite {what} {when}; {advice}"


def bad_image_advice(epoch: int, step: int, run, resumable: bool) -> str:
    """How to go on after an image failed to decode at `step` of `epoch`."""
    fix = (
        "replace the file with a readable image, or add its path (relative to the data "
        f"folder) to {EXCLUDE} there"
    )
    where = f"the run stopped at epoch {epoch} step {step}"
    if resumable:
        return f"{where}, its last checkpoint intact: {fix}, then `wrn train --resume {run}`"
    return f"{where}, before its first checkpoint: {fix}, then start it again with --overwrite"
