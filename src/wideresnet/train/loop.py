"""The Trainer: one run, epoch by epoch, resumable bit for bit on the CPU.

The data order and augmentation are functions of (seed, epoch), every RNG state is saved and
the learning rate is a function of the epoch, so a resumed run repeats nothing and skips
nothing. On several processes (train/distributed.py) rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.prepare import RunData
from wideresnet.errors import DataError, Interrupted, RunError, stop_signals
from wideresnet.models import count_params
from wideresnet.protocol import result_flags
from wideresnet.seeds import Stream, seed_process
from wideresnet.train.checkpoint import (
    Checkpoint,
    Training,
    is_finite,
    rng_state,
    set_rng_state,
    weight_mismatch,
)
from wideresnet.train.distill import Teacher
from wideresnet.train.distributed import World
from wideresnet.train.ema import WeightAverage
from wideresnet.train.environment import environment
from wideresnet.train.evaluate import evaluate
from wideresnet.train.messages import StepLog, bad_image_advice, epoch_line, nonfinite_message
from wideresnet.train.optim import begin_epoch, lr_at, per_step, set_lr
from wideresnet.train.records import EpochTotals, MetricsRow, Result, TrainingState
from wideresnet.train.rundir import TENSORBOARD, RunDir, TensorBoardLog
from wideresnet.train.runtime import Runtime, is_out_of_memory, out_of_memory
from wideresnet.train.step import EpochSums, NonFiniteLoss, Step

log = logging.getLogger(__name__)

STOP_CHECK_STEPS = {"cpu": 1, "cuda": 32}  # how often processes agree on a stop request
MEASURED = (
    "test error (%) of the LAST epoch on the test images counted in test_images; seconds are "
    "wall clock, summed over epochs and resumes: train and eval per phase, data the loading "
    "before training plus producing batches (inside train; on CUDA, the time to queue them)"
)


@dataclass
class Parts:
    """What a run trains with, built in one order by train/run.py's make_trainer."""

    data: RunData
    model: nn.Module  # the weights: checkpointed, averaged, evaluated
    runtime: Runtime
    optimizer: torch.optim.Optimizer
    compiled_model: nn.Module  # what the step calls: the model compiled, or wrapped in DDP
    step: Step
    ema: WeightAverage | None
    teacher: Teacher | None  # distillation (train/distill.py)


class Trainer:
    """Train, evaluate and checkpoint one run (see train/run.py for starting and resuming)."""

    def __init__(
        self,
        config: Config,
        run_dir: RunDir,
        parts: Parts,
        log_every: int = 0,
        world: World = World(),
        run_id: str | None = None,
    ) -> None:
        self.config, self.run_dir, self.world, self.run_id = config, run_dir, world, run_id
        # the run's identity (run_id) goes into config.json, checkpoints and result.json
        data, self.runtime, self.model = parts.data, parts.runtime, parts.model
        self.data, self.teacher, self.device = data, parts.teacher, parts.runtime.torch_device
        self.optimizer, self.compiled_model = parts.optimizer, parts.compiled_model
        self.step, self.ema = parts.step, parts.ema
        self.num_classes = len(data.classes)
        self.state = TrainingState()
        self.state.seconds.data = data.seconds
        self.stop_signal: int | None = None
        self.clock = 0.0
        optim = config.optim
        self.steplog = StepLog(optim.epochs, len(data.train), optim.batch_size, log_every)
        tensorboard = config.runtime.tensorboard and world.main
        self.tensorboard = TensorBoardLog(run_dir / TENSORBOARD) if tensorboard else None

    # ---- state ----

    def checkpoint(self) -> Checkpoint:
        """The checkpoint; every rank's RNG state is gathered (a collective on all ranks)."""
        generators = self.world.gather(rng_state(self.device))
        training = Training(
            state=self.state,
            optimizer=self.optimizer.state_dict(),
            rng=generators[0],
            rng_ranks=generators,
            data_order={"seed": self.config.runtime.seed, "epoch": self.state.epoch + 1},
            ema=self.ema.model.state_dict() if self.ema else None,
            scaler=self.step.scaler.state_dict() if self.step.scaler else None,
        )
        return Checkpoint(
            config=self.config.to_dict(),
            classes=self.data.classes,
            model=self.model.state_dict(),
            training=training,
            resolved=self.resolved(),
            data_fingerprint=self.data.fingerprint,
            run_id=self.run_id,
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a training checkpoint of this run (RunError when it does not fit)."""
        training = checkpoint.training
        if training is None:
            raise RunError(f"{self.run_dir}: a model-only checkpoint, not a training one")
        for what, ours, theirs in (
            ("model", self.model, checkpoint.model),
            ("averaged model", self.ema.model if self.ema else None, training.ema),
        ):
            if ours is None:
                continue
            problem = weight_mismatch(ours.state_dict(), theirs or {})
            if problem:
                raise RunError(f"{self.run_dir}: the checkpoint's {what} does not fit: {problem}")
            ours.load_state_dict(theirs)
        try:
            self.optimizer.load_state_dict(training.optimizer)
        except (ValueError, KeyError) as error:  # torch's own refusals of a foreign state
            raise RunError(f"{self.run_dir}: the optimizer state does not fit ({error})") from None
        if self.step.scaler is not None and training.scaler:
            self.step.scaler.load_state_dict(training.scaler)
        data_seconds = self.state.seconds.data
        self.state = training.state
        self.state.seconds.data += data_seconds
        self._restore_generators(training.rng_ranks)

    def _restore_generators(self, ranks: list[dict[str, Any]]) -> None:
        if len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank], self.device)
            return
        log.info(
            f"resuming on {self.world.size} process(es); the run used {len(ranks)}: the data "
            "order is the same, dropout draws and per-process batch norm are not bit-identical"
        )
        seed_process(
            self.config.runtime.seed, self.state.global_step, Stream.DROPOUT, self.world.rank
        )

    def resolved(self) -> dict[str, Any]:
        """The speed and loader choices in force, with their reasons, for config.json and the
        checkpoint."""
        record = self.runtime.record(self.world.size)
        record["loader"] = self.data.loader
        record["reasons"]["loader"] = self.data.loader_reason
        if self.teacher is not None:  # checked on every resume (train/distill.py)
            record["teacher"] = self.teacher.identity
        if self.config.optim.lr_batch:
            optim = self.config.optim
            record["reasons"]["lr"] = (
                f"--lr {optim.lr:g} for batch {optim.lr_batch}, scaled linearly to batch "
                f"{optim.batch_size}: {optim.base_lr:g}"
            )
        return record

    def save(self) -> None:
        """Checkpoint (rank 0 writes), never with a non-finite value; the first one settles an
        --overwrite. Every rank passes here together."""
        checkpoint = self.checkpoint()
        if not is_finite(checkpoint):
            state = self.state
            self._stop_nonfinite(state.epoch + (state.step_in_epoch > 0), None, "weights")
        if self.world.main:
            self.run_dir.checkpoints.save(checkpoint)
            self.run_dir.settle()
        self.world.barrier()

    # ---- the loop ----

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second signal: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.stop_signal = signum

    def run(self) -> Result:
        """Train the remaining epochs, then write and return the result."""
        try:
            with stop_signals(self._on_signal):
                while self.state.epoch < self.config.optim.epochs:
                    self._epoch(self.state.epoch + 1)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.finish()

    def _epoch(self, epoch: int) -> None:
        sums = self._begin_epoch(epoch)
        batches = self.data.train.batches(epoch, self.state.step_in_epoch)
        while (batch := self._next(batches)) is not None:
            self._step(epoch, *batch, sums)
            if self._checkpoint_due():
                self._save_mid_epoch(epoch, sums)
        self._end_epoch(epoch, sums)

    def _next(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next batch, its host time counted as data time (on CUDA: the time to queue it).
        An image that fails to decode (streaming) stops the run, saying how to go on."""
        start = time.perf_counter()
        try:
            batch = next(batches, None)
        except DataError as error:
            state, resumable = self.state, self.run_dir.resumable
            advice = bad_image_advice(state.epoch + 1, state.step_in_epoch, self.run_dir, resumable)
            raise DataError(f"{error}; {advice}") from None
        self.state.seconds.data += time.perf_counter() - start
        return batch

    def _begin_epoch(self, epoch: int) -> EpochSums:
        """The epoch's learning rate (momentum restarted at a drop), training mode, the sums
        on the device (rank 0 carries those of a part-done epoch)."""
        fresh = self.state.step_in_epoch == 0
        begin_epoch(self.optimizer, self.config.optim, epoch, fresh=fresh)
        self.model.train()
        self.steplog.start()
        self.clock = time.perf_counter()
        if not self.world.main:
            return EpochSums.start(self.device)
        totals = self.state.totals
        return EpochSums.start(self.device, totals.loss, totals.wrong)

    def _step(self, epoch: int, x: torch.Tensor, y: torch.Tensor, sums: EpochSums) -> None:
        """One step: the learning rate of a per-step schedule, the update, the averaged weights."""
        optim, state = self.config.optim, self.state
        if per_step(optim):
            lr = lr_at(optim, epoch, state.step_in_epoch, len(self.data.train))
            set_lr(self.optimizer, lr)
        try:
            self.step(x, y, sums, state.global_step)
        except NonFiniteLoss as stop:
            self._stop_nonfinite(epoch, state.step_in_epoch + 1 if stop.before_update else None)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch = self.config.optim.batch_size
            raise out_of_memory(self.runtime.device, "training", batch, "--batch-size") from None
        if self.ema is not None:
            self.ema.update(self.model)
        state.step_in_epoch += 1
        state.global_step += 1
        self.steplog.step(epoch, state.step_in_epoch)

    def _stop_requested(self, now: bool = False) -> bool:
        """A signal reached this process, or (on several processes, checked every few steps
        or `now`) any of them."""
        if not self.world.distributed:
            return self.stop_signal is not None
        if not now and self.state.global_step % STOP_CHECK_STEPS[self.device.type]:
            return False
        flag = torch.tensor([float(self.stop_signal is not None)], device=self.device)
        if self.world.sum_(flag).item() > 0:
            self.stop_signal = self.stop_signal or signal.SIGTERM
            return True
        return False

    def _checkpoint_due(self) -> bool:
        if self._stop_requested():
            return True
        every = self.config.runtime.checkpoint_every
        in_epoch = self.state.step_in_epoch < len(self.data.train)  # the epoch's end saves
        return bool(every) and self.state.global_step % every == 0 and in_epoch

    def _save_mid_epoch(self, epoch: int, sums: EpochSums) -> None:
        """A checkpoint inside the epoch, with the sums so far; stop here after a signal."""
        self._check_finite(epoch, sums)
        now = time.perf_counter()
        loss, wrong = sums.totals(self.world)
        seconds = self.state.totals.seconds + now - self.clock
        self.state.totals = EpochTotals(loss, wrong, seconds)
        self.clock = now
        self.save()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _end_epoch(self, epoch: int, sums: EpochSums) -> None:
        """Evaluate, record the epoch's metrics, checkpoint; stop here after a signal."""
        self._check_finite(epoch, sums)
        self.runtime.sync()
        state = self.state
        train_time = state.totals.seconds + time.perf_counter() - self.clock
        eval_start = time.perf_counter()
        tested = self._test(epoch)
        eval_time = time.perf_counter() - eval_start
        seen = len(self.data.train) * self.config.optim.batch_size
        loss, wrong = sums.totals(self.world)
        row = MetricsRow(
            epoch=epoch,
            lr=lr_at(self.config.optim, epoch),
            train_loss=loss / seen,
            train_error=100.0 * wrong / seen,
            test_loss=tested.get("loss"),
            test_error=tested.get("error"),
            test_top5_error=tested.get("top5_error"),
            ema_test_error=tested.get("ema_error"),
            val_error=tested.get("val_error"),
            epoch_seconds=train_time + eval_time,
            train_seconds=train_time,
            eval_seconds=eval_time,
            train_images_per_second=seen / max(train_time, 1e-9),
        )
        state.metrics.append(row)
        state.seconds.train += train_time
        state.seconds.eval += eval_time
        state.epoch, state.step_in_epoch, state.totals = epoch, 0, EpochTotals()
        self._stop_requested(now=True)  # every process ends the epoch knowing whether to stop
        self.save()
        if self.world.main:
            self.run_dir.write_metrics(state.metrics)
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
        common = dict(runtime=self.runtime, num_classes=self.num_classes, world=self.world)
        try:
            tested = evaluate(self.compiled_model, self.data.test, **common)
            if self.data.val is not None:
                validated = evaluate(self.compiled_model, self.data.val, **common)
                tested["val_error"] = validated["error"]
            if self.ema is not None:
                tested["ema_error"] = evaluate(self.ema.model, self.data.test, **common)["error"]
            return tested
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch, option = self.config.runtime.eval_batch_size, "--eval-batch-size"
            raise out_of_memory(self.runtime.device, "evaluation", batch, option) from None

    def _check_finite(self, epoch: int, sums: EpochSums) -> None:
        try:
            sums.check()
        except NonFiniteLoss:
            self._stop_nonfinite(epoch, None)

    def _stop_nonfinite(self, epoch: int, step: int | None, what: str = "training loss") -> None:
        """Write failure.json and stop, naming the last good checkpoint to continue from."""
        good = self.run_dir.checkpoints.last_good()
        if good is not None and good[1].training is not None:
            good = (good[0], good[1].training.state)
        else:
            good = None
        message = nonfinite_message(what, epoch, step, good, self.run_dir)
        if self.world.main:
            failure = {"error": f"non-finite {what}", "epoch": epoch, "step": step}
            self.run_dir.write_failure({**failure, "message": message})
        raise RunError(message, exit_code=1)

    def finish(self) -> Result:
        """result.json from the last epoch (rank 0 writes it)."""
        state = self.state
        last, seconds = state.metrics[-1], state.seconds
        assert last.test_error is not None, "the last epoch is always tested"
        result = Result(
            test_error=last.test_error,
            test_loss=last.test_loss,
            train_error=last.train_error,
            epochs=state.epoch,
            model=self.config.model.model,
            dataset=self.config.data.dataset,
            params=count_params(self.model),
            train_images=self.data.train_size,
            test_images=self.data.test_size,
            wall_seconds={
                "data": seconds.data,
                "train": seconds.train,
                "eval": seconds.eval,
                "total": seconds.total,
            },
            test_top5_error=last.test_top5_error,
            ema_test_error=last.ema_test_error,
            measured=MEASURED,
            flags=result_flags(self.config, state.config_changes) + self.data.flags,
            config_changes=[change.to_dict() for change in state.config_changes],
            processes=self.world.size,
            environment=environment(self.runtime.device, self.runtime.precision),
            run_id=self.run_id,
            teacher=self.teacher.identity if self.teacher else None,
        )
        if self.world.main:
            self.run_dir.write_result(result)
        return result
