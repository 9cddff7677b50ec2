"""The Trainer: one run, epoch by epoch, resumable bit for bit on the CPU.

The data order and augmentation are functions of (seed, epoch), every RNG state is saved and
the learning rate is a function of the epoch, so a resumed run repeats nothing and skips
nothing. On several processes (train/distributed.py) rank 0 alone writes the run directory.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.prepare import RunData
from wideresnet.errors import ConfigError, Interrupted, RunError, stop_signals
from wideresnet.models import count_params
from wideresnet.train.checkpoint import FORMAT, is_finite, rng_state, set_rng_state
from wideresnet.train.distributed import World, wrap
from wideresnet.train.ema import WeightAverage
from wideresnet.train.evaluate import evaluate
from wideresnet.train.optim import begin_epoch, build_optimizer, lr_at, per_step, set_lr
from wideresnet.train.records import RECIPE_CHANGES, StepLog, change_flag, epoch_line, log
from wideresnet.train.rundir import RunDir, TensorBoardLog
from wideresnet.train.runtime import Speed, environment, is_out_of_memory, out_of_memory
from wideresnet.train.step import EpochSums, NonFiniteLoss, Recipe, WholeStep, train_step

STOP_CHECK_STEPS = {"cpu": 1, "cuda": 32}  # how often processes agree on a stop request


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
        world: World = World(),
    ) -> None:
        self.config, self.run_dir, self.data, self.speed = config, run_dir, data, speed
        self.world, self.device = world, torch.device(speed.device)
        self.model = model
        self.optimizer = build_optimizer(model, config.optim, speed.fused_sgd)
        self.forward = speed.compiled(wrap(model, world, self.device))
        self.recipe = Recipe.of(config.optim)
        self.whole_step = None
        if speed.whole_step:
            if self.recipe.mixing or self.recipe.sam_rho:
                raise ConfigError("--compile step does not combine with mixup, CutMix or SAM")
            self.whole_step = WholeStep(self.forward, self.optimizer, speed, world)
            self.whole_step.smoothing = self.recipe.label_smoothing
        decay = config.optim.ema_decay
        self.ema = WeightAverage(model, decay) if decay else None
        self.num_classes = len(data.classes)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.metrics: list[dict[str, Any]] = []
        self.partial = self._no_partial()
        self.seconds = {"data": data.seconds, "train": 0.0, "eval": 0.0}
        self.stop_signal: int | None = None
        self.clock = 0.0
        self.config_changes: list[dict[str, Any]] = []  # options changed on resume, recorded
        optim = config.optim
        self.steplog = StepLog(optim.epochs, len(data.train), optim.batch_size, log_every)
        tensorboard = config.runtime.tensorboard and world.main
        self.tensorboard = TensorBoardLog(run_dir / "tensorboard") if tensorboard else None

    # ---- state ----

    @staticmethod
    def _no_partial() -> dict[str, Any]:
        """Sums of the part of an epoch done before a mid-epoch checkpoint (all processes)."""
        return {"loss": 0.0, "wrong": 0, "seen": 0, "seconds": 0.0}

    def state(self) -> dict[str, Any]:
        """The checkpoint; every rank's RNG state is gathered (a collective on all ranks)."""
        generators = self.world.gather(rng_state(self.device))
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
            "rng": generators[0],
            "rng_ranks": generators,
            "metrics": self.metrics,
            "partial": self.partial,
            "train_seconds": self.seconds["train"],
            "eval_seconds": self.seconds["eval"],
            "data_seconds": self.seconds["data"],
            "data_fingerprint": self.data.fingerprint,
            "config_changes": self.config_changes,
            **({"ema": self.ema.model.state_dict()} if self.ema else {}),
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
            self.global_step, self.metrics = state["global_step"], list(state["metrics"])
            self.partial = dict(state["partial"])
            self.seconds["train"] = state["train_seconds"]
            self.seconds["eval"] = state["eval_seconds"]
            self.seconds["data"] += state.get("data_seconds", 0.0)
            self.config_changes = list(state.get("config_changes") or [])
            if self.ema is not None:
                self.ema.model.load_state_dict(state["ema"])
            self._restore_generators(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise RunError(f"{self.run_dir}: checkpoint does not fit this run ({error})") from None

    def _restore_generators(self, state: dict[str, Any]) -> None:
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.world.size:
            set_rng_state(ranks[self.world.rank], self.device)
            return
        log.info(
            f"resuming on {self.world.size} process(es); the run used {len(ranks)}: the data "
            "order is the same, dropout draws and per-process batch norm are not bit-identical"
        )
        torch.manual_seed(self.config.runtime.seed * 65_537 + self.world.rank + self.global_step)

    def resolved(self) -> dict[str, Any]:
        """The speed choices in force, for config.json and the checkpoint."""
        fields = {k: v for k, v in vars(self.speed).items() if k != "reasons"}
        return {**fields, "processes": self.world.size, "reasons": dict(self.speed.reasons)}

    def save(self) -> None:
        """Checkpoint (rank 0 writes), never with a non-finite value; the first one settles an
        --overwrite. Every rank passes here together."""
        state = self.state()
        if not is_finite(state):
            self._stop_nonfinite(self.epoch + (self.step_in_epoch > 0), None, "weights")
        if self.world.main:
            self.run_dir.checkpoints.save(state)
            self.run_dir.settle()
        self.world.barrier()

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
        batches = self.data.train.batches(epoch, self.step_in_epoch)
        while (batch := self._next(batches)) is not None:
            self._step(epoch, *batch, sums)
            if self._checkpoint_due():
                self._save_mid_epoch(epoch, sums)
        self._end_epoch(epoch, sums)

    def _next(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next batch, its host time counted as data time (on CUDA: the time to queue it)."""
        start = time.perf_counter()
        batch = next(batches, None)
        self.seconds["data"] += time.perf_counter() - start
        return batch

    def _begin_epoch(self, epoch: int) -> EpochSums:
        begin_epoch(self.optimizer, self.config.optim, epoch, fresh=self.step_in_epoch == 0)
        self.model.train()
        self.steplog.start()
        self.clock = time.perf_counter()
        if not self.world.main:  # the sums so far are rank 0's to carry
            return EpochSums.start(self.device)
        return EpochSums.start(self.device, self.partial["loss"], self.partial["wrong"])

    def _step(self, epoch: int, x: torch.Tensor, y: torch.Tensor, sums: EpochSums) -> None:
        optim = self.config.optim
        if per_step(optim):
            set_lr(self.optimizer, lr_at(optim, epoch, self.step_in_epoch, len(self.data.train)))
        try:
            if self.whole_step is not None:
                self.whole_step(x, y, self.speed, sums)
            else:
                self._eager_step(x, y, sums)
        except NonFiniteLoss as stop:
            self._stop_nonfinite(epoch, stop.step)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch = self.config.optim.batch_size
            raise out_of_memory(self.speed.device, "training", batch, "--batch-size") from None
        if self.ema is not None:
            self.ema.update(self.model)
        self.step_in_epoch += 1
        self.global_step += 1
        self.steplog.step(epoch, self.step_in_epoch)

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor, sums: EpochSums) -> None:
        """train_step with this step's own generator for mixup and CutMix (seed, step, rank)."""
        seed, rank = self.config.runtime.seed, self.world.rank
        draw = np.random.default_rng([seed, self.global_step, rank]) if self.recipe.mixing else None
        step, world = self.step_in_epoch + 1, self.world
        train_step(
            self.forward, self.optimizer, x, y, self.speed, sums, step, world, self.recipe, draw
        )

    def _stop_requested(self, now: bool = False) -> bool:
        """A signal reached this process, or (on several processes, checked every few steps
        or `now`) any of them."""
        if not self.world.distributed:
            return self.stop_signal is not None
        if not now and self.global_step % STOP_CHECK_STEPS[self.device.type]:
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
        in_epoch = self.step_in_epoch < len(self.data.train)  # the epoch's end saves anyway
        return bool(every) and self.global_step % every == 0 and in_epoch

    def _save_mid_epoch(self, epoch: int, sums: EpochSums) -> None:
        self._check_finite(epoch, sums)
        now = time.perf_counter()
        loss, wrong = sums.totals(self.world)
        seen = self.step_in_epoch * self.config.optim.batch_size
        seconds = self.partial["seconds"] + now - self.clock
        self.partial = {"loss": loss, "wrong": wrong, "seen": seen, "seconds": seconds}
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
        loss, wrong = sums.totals(self.world)
        row = {
            "epoch": epoch,
            "lr": lr_at(self.config.optim, epoch),
            "train_loss": loss / seen,
            "train_error": 100.0 * wrong / seen,
            "test_loss": tested.get("loss"),
            "test_error": tested.get("error"),
            "test_top5_error": tested.get("top5_error"),
            **({"ema_test_error": tested.get("ema_error")} if self.ema else {}),
            "epoch_seconds": train_time + eval_time,
            "train_seconds": train_time,
            "eval_seconds": eval_time,
            "train_images_per_second": seen / max(train_time, 1e-9),
        }
        self.metrics.append(row)
        self.seconds["train"] += train_time
        self.seconds["eval"] += eval_time
        self.epoch, self.step_in_epoch, self.partial = epoch, 0, self._no_partial()
        self._stop_requested(now=True)  # every process ends the epoch knowing whether to stop
        self.save()
        if self.world.main:
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
            classes, world = self.num_classes, self.world
            tested = evaluate(self.forward, self.data.test, self.speed, classes, world=world)
            if self.ema is not None:
                averaged = evaluate(
                    self.ema.model, self.data.test, self.speed, classes, world=world
                )
                tested["ema_error"] = averaged["error"]
            return tested
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            batch, option = self.config.runtime.eval_batch_size, "--eval-batch-size"
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
        if self.world.main:
            failure = {"error": f"non-finite {what}", "epoch": epoch, "step": step}
            self.run_dir.write_failure({**failure, "message": message})
        raise RunError(message, exit_code=1)

    def finish(self) -> dict[str, Any]:
        last = self.metrics[-1]
        seconds = self.seconds
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
                "data": seconds["data"],
                "train": seconds["train"],
                "eval": seconds["eval"],
                "total": seconds["train"] + seconds["eval"],
            },
            "test_top5_error": last["test_top5_error"],
            **({"ema_test_error": last["ema_test_error"]} if self.ema else {}),
            "measured": "test error (%) of the LAST epoch on the test images counted in "
            "test_images; seconds are wall clock, summed over epochs and resumes: train and eval "
            "per phase, data the loading before training plus producing batches (inside train; "
            "on CUDA, the time to queue them)",
            "flags": self.config.flags()
            + [change_flag(c) for c in self.config_changes if c["key"] in RECIPE_CHANGES],
            "config_changes": self.config_changes,
            "processes": self.world.size,
            "environment": environment(self.speed),
        }
        if self.world.main:
            self.run_dir.write_result(result)
        return result
