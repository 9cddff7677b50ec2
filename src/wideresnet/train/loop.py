"""The Trainer: one run, epoch by epoch, resumable bit for bit on the CPU.

The data order and augmentation are functions of (seed, epoch), every RNG state is saved and
the learning rate is a function of the epoch, so a resumed run repeats nothing and skips
nothing. Only this process writes the run directory.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.prepare import RunData
from wideresnet.errors import Interrupted, RunError
from wideresnet.models import count_params
from wideresnet.train.checkpoint import FORMAT, is_finite, rng_state, set_rng_state
from wideresnet.train.evaluate import evaluate
from wideresnet.train.optim import begin_epoch, build_optimizer, lr_at
from wideresnet.train.rundir import RunDir, TensorBoardLog
from wideresnet.train.runtime import Speed, environment, is_out_of_memory, out_of_memory
from wideresnet.train.step import EpochSums, NonFiniteLoss, train_step

log = logging.getLogger(__name__)
progress_log = logging.getLogger("wideresnet.progress")


@contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGTERM and SIGINT go to `handler` while a run trains (main thread only)."""
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: the caller keeps its own handling
        previous = {}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


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


def change_flag(change: dict[str, Any]) -> str:
    """How a change made on resume is flagged in results."""
    return (
        f"changed on resume: {change['key']} {change['from']!r} -> {change['to']!r} from epoch "
        f"{change['epoch']} step {change['step_in_epoch']}"
    )


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch."""
    test = (
        f"test loss {row['test_loss']:.4f} error {row['test_error']:.2f}%"
        if row["test_error"] is not None
        else "test: not measured this epoch (eval_every)"
    )
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.5g} "
        f"train loss {row['train_loss']:.4f} error {row['train_error']:.2f}% | "
        f"{test} | {row['epoch_seconds']:.1f}s"
    )


class Trainer:
    """Train, evaluate and checkpoint one run (see train/run.py for starting and resuming)."""

    def __init__(
        self,
        config: Config,
        run_dir: RunDir,
        data: RunData,
        model: nn.Module,
        speed: Speed,
        log_every: int = 0,
    ) -> None:
        self.config, self.run_dir, self.data, self.speed = config, run_dir, data, speed
        self.device = torch.device(speed.device)
        self.model = model
        self.optimizer = build_optimizer(model, config.optim, speed.fused_sgd)
        self.forward = speed.compiled(model)
        self.num_classes = len(data.classes)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.metrics: list[dict[str, Any]] = []
        self.partial = self._no_partial()
        self.seconds = {"train": 0.0, "eval": 0.0}
        self.stop_signal: int | None = None
        self.clock = 0.0
        self.config_changes: list[dict[str, Any]] = []  # options changed on resume, recorded
        optim = config.optim
        self.steplog = StepLog(optim.epochs, len(data.train), optim.batch_size, log_every)
        self.tensorboard = (
            TensorBoardLog(run_dir / "tensorboard") if config.runtime.tensorboard else None
        )

    # ---- state ----

    @staticmethod
    def _no_partial() -> dict[str, Any]:
        """Sums of the part of an epoch done before a mid-epoch checkpoint."""
        return {"loss": 0.0, "wrong": 0, "seen": 0, "seconds": 0.0}

    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "classes": self.data.classes,
            "resolved": self.resolved(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "data_order": {"seed": self.config.runtime.seed, "epoch": self.epoch + 1},
            "rng": rng_state(self.device),
            "metrics": self.metrics,
            "partial": self.partial,
            "train_seconds": self.seconds["train"],
            "eval_seconds": self.seconds["eval"],
            "data_fingerprint": self.data.fingerprint,
            "config_changes": self.config_changes,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
            self.global_step, self.metrics = state["global_step"], list(state["metrics"])
            self.partial = dict(state["partial"])
            self.seconds = {"train": state["train_seconds"], "eval": state["eval_seconds"]}
            self.config_changes = list(state.get("config_changes") or [])
            set_rng_state(state["rng"], self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise RunError(f"{self.run_dir}: checkpoint does not fit this run ({error})") from None

    def resolved(self) -> dict[str, Any]:
        """The speed choices in force, for config.json and the checkpoint."""
        fields = {k: v for k, v in vars(self.speed).items() if k != "reasons"}
        return {**fields, "reasons": dict(self.speed.reasons)}

    def save(self) -> None:
        """Checkpoint, never with a non-finite value; the first one settles an --overwrite."""
        state = self.state()
        if not is_finite(state):
            self._stop_nonfinite(self.epoch + (self.step_in_epoch > 0), None, "weights")
        self.run_dir.checkpoints.save(state)
        self.run_dir.settle()

    # ---- the loop ----

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second signal: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.stop_signal = signum

    def run(self) -> dict[str, Any]:
        try:
            with stop_signals(self._on_signal):
                while self.epoch < self.config.optim.epochs:
                    self._epoch(self.epoch + 1)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.finish()

    def _epoch(self, epoch: int) -> None:
        sums = self._begin_epoch(epoch)
        for x, y in self.data.train.batches(epoch, self.step_in_epoch):
            self._step(epoch, x, y, sums)
            if self._checkpoint_due():
                self._save_mid_epoch(epoch, sums)
        self._end_epoch(epoch, sums)

    def _begin_epoch(self, epoch: int) -> EpochSums:
        begin_epoch(self.optimizer, self.config.optim, epoch, fresh=self.step_in_epoch == 0)
        self.model.train()
        self.steplog.start()
        self.clock = time.perf_counter()
        return EpochSums.start(self.device, self.partial["loss"], self.partial["wrong"])

    def _step(self, epoch: int, x: torch.Tensor, y: torch.Tensor, sums: EpochSums) -> None:
        try:
            train_step(self.forward, self.optimizer, x, y, self.speed, sums, self.step_in_epoch + 1)
        except NonFiniteLoss as stop:
            self._stop_nonfinite(epoch, stop.step)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch = self.config.optim.batch_size
            raise out_of_memory(self.speed.device, "training", batch, "--batch-size") from None
        self.step_in_epoch += 1
        self.global_step += 1
        self.steplog.step(epoch, self.step_in_epoch)

    def _checkpoint_due(self) -> bool:
        if self.stop_signal is not None:
            return True
        every = self.config.runtime.checkpoint_every
        in_epoch = self.step_in_epoch < len(self.data.train)  # the epoch's end saves anyway
        return bool(every) and self.global_step % every == 0 and in_epoch

    def _save_mid_epoch(self, epoch: int, sums: EpochSums) -> None:
        self._check_finite(epoch, sums)
        now = time.perf_counter()
        self.partial = {
            "loss": sums.loss.item(),
            "wrong": int(sums.wrong.item()),
            "seen": self.step_in_epoch * self.config.optim.batch_size,
            "seconds": self.partial["seconds"] + now - self.clock,
        }
        self.clock = now
        self.save()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _end_epoch(self, epoch: int, sums: EpochSums) -> None:
        self._check_finite(epoch, sums)
        self.speed.sync()
        train_time = self.partial["seconds"] + time.perf_counter() - self.clock
        eval_start = time.perf_counter()
        tested = self._test(epoch)
        eval_time = time.perf_counter() - eval_start
        seen = len(self.data.train) * self.config.optim.batch_size
        row = {
            "epoch": epoch,
            "lr": lr_at(self.config.optim, epoch),
            "train_loss": sums.loss.item() / seen,
            "train_error": 100.0 * sums.wrong.item() / seen,
            "test_loss": tested.get("loss"),
            "test_error": tested.get("error"),
            "test_top5_error": tested.get("top5_error"),
            "epoch_seconds": train_time + eval_time,
            "train_seconds": train_time,
            "eval_seconds": eval_time,
            "train_images_per_second": seen / max(train_time, 1e-9),
        }
        self.metrics.append(row)
        self.seconds["train"] += train_time
        self.seconds["eval"] += eval_time
        self.epoch, self.step_in_epoch, self.partial = epoch, 0, self._no_partial()
        self.save()
        self.run_dir.write_metrics(self.metrics)
        if self.tensorboard is not None:
            self.tensorboard.add(row)
        log.info(epoch_line(row, self.config.optim.epochs))
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _test(self, epoch: int) -> dict[str, Any]:
        """The test result of this epoch, or {} when eval_every skips it (never the last)."""
        every, last = self.config.runtime.eval_every, self.config.optim.epochs
        if epoch % every and epoch != last:
            return {}
        try:
            return evaluate(self.forward, self.data.test, self.speed, self.num_classes)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch = self.config.runtime.eval_batch_size
            option = "--eval-batch-size"
            raise out_of_memory(self.speed.device, "evaluation", batch, option) from None

    def _check_finite(self, epoch: int, sums: EpochSums) -> None:
        try:
            sums.check()
        except NonFiniteLoss:
            self._stop_nonfinite(epoch, None)

    def _stop_nonfinite(self, epoch: int, step: int | None, what: str = "training loss") -> None:
        if step:
            when = f"at epoch {epoch} step {step}: the run stopped before applying that update"
        elif what == "weights":
            when = f"in epoch {epoch}: the run stopped without saving them"
        else:  # fused SGD: found on the device, where the bad update was skipped
            when = f"in epoch {epoch}: its update was skipped and the run stopped"
        good = self.run_dir.checkpoints.last_good()
        if good is None:
            advice = "no good checkpoint was saved yet; start again with a lower --lr"
        else:
            path, state = good
            advice = (
                f"the last good checkpoint is {path} (epoch {state['epoch']}, step "
                f"{state['step_in_epoch']}); continue with `wrn train --resume {self.run_dir} "
                "--lr LOWER` (a recorded change), or check the data"
            )
        message = f"non-finite {what} {when}; {advice}"
        failure = {"error": f"non-finite {what}", "epoch": epoch, "step": step, "message": message}
        self.run_dir.write_failure(failure)
        raise RunError(message, exit_code=1)

    def finish(self) -> dict[str, Any]:
        last = self.metrics[-1]
        result = {
            "test_error": last["test_error"],
            "test_loss": last["test_loss"],
            "train_error": last["train_error"],
            "epochs": self.epoch,
            "model": self.config.model.model,
            "dataset": self.config.data.dataset,
            "params": count_params(self.model),
            "train_images": self.data.train_size,
            "test_images": self.data.test_size,
            "wall_seconds": {
                "train": self.seconds["train"],
                "eval": self.seconds["eval"],
                "total": self.seconds["train"] + self.seconds["eval"],
            },
            "test_top5_error": last["test_top5_error"],
            "measured": "test error (%) of the LAST epoch on the test images counted in "
            "test_images; seconds are wall clock per phase, summed over epochs (across resumes)",
            "flags": self.config.flags() + [change_flag(c) for c in self.config_changes],
            "config_changes": self.config_changes,
            "environment": environment(self.speed),
        }
        self.run_dir.write_result(result)
        return result
