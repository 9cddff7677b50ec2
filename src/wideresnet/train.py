"""The training loop, evaluation, checkpoints and exact resume.

A run directory holds config.json, metrics.jsonl, checkpoint.pt (and checkpoint.prev.pt, the one
before it, kept until the new one is safely on disk) and, at the end, result.json. Resuming
from a checkpoint continues bit for bit on the CPU: the data order and augmentation are
functions of (seed, epoch), every RNG state is saved, and the learning rate is a function of the
epoch, so nothing restarts.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wideresnet import data as datasets
from wideresnet.models import count_params, create_model
from wideresnet.recipes import Recipe, recipe_from_dict

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"


class RunError(Exception):
    """A run that cannot go on: one clear message and an exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


# --------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA GPU is available to this torch")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(recipe: Recipe, device: torch.device) -> str:
    if recipe.precision != "auto":
        return recipe.precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_supports_bf16() else "fp32"


@dataclass
class Speed:
    """The speed switches actually in force (recorded in config.json's `resolved`)."""

    device: str
    precision: str
    channels_last: bool
    compile: bool
    fused_sgd: bool
    cuda_graphs: bool

    @classmethod
    def resolve(cls, recipe: Recipe, device: torch.device) -> Speed:
        cuda = device.type == "cuda"
        compile = recipe.compile == "on" or (recipe.compile == "auto" and cuda)
        return cls(
            device=str(device),
            precision=resolve_precision(recipe, device),
            channels_last=recipe.channels_last,
            compile=compile,
            fused_sgd=recipe.fused_sgd == "on" or (recipe.fused_sgd == "auto" and cuda),
            cuda_graphs=compile and cuda and recipe.cuda_graphs != "off",
        )

    def autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()


# --------------------------------------------------------------------------------------------
# Data for a run
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    train: datasets.BatchLoader
    test: datasets.BatchLoader
    classes: list[str]
    train_size: int
    test_size: int


def _normalisation(recipe: Recipe):
    if recipe.preprocess == "div255":
        return (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    if recipe.preprocess == "meanstd":
        return datasets.CIFAR_MEAN, datasets.CIFAR_STD
    return None, None  # zca: images are whitened beforehand


def _load(recipe: Recipe, split: str):
    return datasets.load_dataset(
        recipe.dataset,
        recipe.data_dir,
        split,
        recipe.verify,
        labels=recipe.labels,
        image_size=recipe.image_size,
    )


def training_split(recipe: Recipe):
    """(x_train, y_train), the held-out (x_val, y_val) or None, classes: the training images
    exactly as a run uses them (the first train_limit, less the last val_size)."""
    x_train, y_train, classes = _load(recipe, recipe.train_split)
    if recipe.train_limit:
        x_train, y_train = x_train[: recipe.train_limit], y_train[: recipe.train_limit]
    if not recipe.val_size:
        return (x_train, y_train), None, classes
    if recipe.val_size >= len(x_train):
        raise RunError(f"val_size {recipe.val_size} leaves no training images")
    held_out = x_train[-recipe.val_size :], y_train[-recipe.val_size :]
    return (x_train[: -recipe.val_size], y_train[: -recipe.val_size]), held_out, classes


def zca_fit(recipe: Recipe, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run's GCN + ZCA fit on its training images (cached)."""
    return datasets.cached_zca(x_train, f"{recipe.dataset}|{recipe.data_dir}")


def load_run_data(recipe: Recipe, device: torch.device) -> RunData:
    (x_train, y_train), held_out, classes = training_split(recipe)
    if held_out is not None:
        x_test, y_test = held_out
    else:
        x_test, y_test, test_classes = _load(recipe, recipe.test_split)
        if test_classes != classes:
            raise RunError(f"{recipe.data_dir}: train and test splits have different classes")
    if recipe.num_classes is not None and recipe.num_classes != len(classes):
        raise RunError(
            f"--num-classes {recipe.num_classes} does not match the "
            f"{len(classes)} classes of {recipe.data_dir}"
        )
    if len(x_train) < recipe.batch_size:
        raise RunError(
            f"{len(x_train)} training images are fewer than one batch of {recipe.batch_size}"
        )
    mean, std = _normalisation(recipe)
    if recipe.preprocess == "zca":
        zca_mean, whiten = zca_fit(recipe, x_train)
        x_train = datasets.zca_transform(x_train, zca_mean, whiten)
        x_test = datasets.zca_transform(x_test, zca_mean, whiten)
    common = dict(device=device, mean=mean, std=std, seed=recipe.seed)
    return RunData(
        train=datasets.BatchLoader(
            x_train, y_train, recipe.batch_size, shuffle=True, augment=recipe.augment, **common
        ),
        test=datasets.BatchLoader(x_test, y_test, recipe.eval_batch_size, **common),
        classes=classes,
        train_size=len(x_train),
        test_size=len(x_test),
    )


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    return create_model(
        recipe.model,
        num_classes,
        dropout=recipe.dropout,
        block=tuple(recipe.block),
        blocks_per_group=recipe.blocks_per_group,
        init=recipe.init,
    )


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, keep the old checkpoint as checkpoint.prev.pt, rename."""
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if (run_dir / CHECKPOINT).exists():
            os.replace(run_dir / CHECKPOINT, run_dir / PREVIOUS)
        os.replace(tmp, run_dir / CHECKPOINT)
        _fsync_dir(run_dir)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise RunError(
            f"cannot write checkpoint {run_dir / CHECKPOINT}: {error.strerror} "
            f"({free_space(run_dir)}); the previous checkpoint is intact",
            1,
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a file that would run code is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch raises many types for a torn or foreign file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise RunError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RunError(f"{path}: not a wideresnet checkpoint (no model and config)")
    return state


def load_latest_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The newest readable checkpoint, falling back to the previous one with a warning."""
    try:
        return load_checkpoint(run_dir / CHECKPOINT)
    except RunError as error:
        if not (run_dir / PREVIOUS).exists():
            raise
        print(f"warning: {error}; falling back to {run_dir / PREVIOUS}", file=sys.stderr)
        return load_checkpoint(run_dir / PREVIOUS)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: datasets.BatchLoader,
    speed: Speed,
    num_classes: int,
    flip: bool = False,
) -> dict[str, Any]:
    """Loss, error (%) and confusion matrix over every image of the loader."""
    device = torch.device(speed.device)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion_flip = confusion.clone() if flip else None
    for x, y in loader.batches():
        if speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with speed.autocast(device):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion.index_put_((y, logits.argmax(1)), torch.ones_like(y), accumulate=True)
        if flip:  # logits are used up first: a CUDA-graph replay may overwrite them
            probs = logits.softmax(1)
            with speed.autocast(device):
                probs += model(x.flip(3)).float().softmax(1)
            confusion_flip.index_put_((y, probs.argmax(1)), torch.ones_like(y), accumulate=True)
    result = _errors(confusion.cpu())
    result["loss"] = loss_sum.item() / max(1, loader.n)
    if flip:
        result["flip"] = _errors(confusion_flip.cpu())
    return result


def _errors(confusion: torch.Tensor) -> dict[str, Any]:
    total = confusion.sum().item()
    correct = confusion.diag().sum().item()
    per_class = confusion.sum(1).clamp(min=1)
    return {
        "error": 100.0 * (total - correct) / max(1, total),
        "per_class_error": (100.0 * (1 - confusion.diag() / per_class)).tolist(),
        "confusion": confusion.tolist(),
        "images": total,
    }


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class Progress:
    """A bar on a terminal; plain lines (every `every` steps, and per epoch) otherwise."""

    def __init__(self, epochs: int, steps: int, batch_size: int, every: int = 0) -> None:
        self.tty = sys.stdout.isatty()
        self.epochs, self.steps, self.batch_size = epochs, steps, batch_size
        self.every = every or max(1, steps // 10)

    def start_epoch(self) -> None:
        self.started, self.counted = time.perf_counter(), 0

    def step(self, epoch: int, step: int) -> None:
        self.counted += 1
        if not (self.tty or step % self.every == 0):
            return
        elapsed = time.perf_counter() - self.started
        rate = self.counted * self.batch_size / max(elapsed, 1e-9)
        eta = (self.steps - step) * self.batch_size / max(rate, 1e-9)
        line = (
            f"epoch {epoch}/{self.epochs} step {step}/{self.steps} "
            f"{rate:,.0f} img/s (wall clock, this epoch) eta {eta:.0f}s"
        )
        if self.tty:
            filled = int(30 * step / self.steps)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {line}", end="", flush=True)
        else:
            print(line, flush=True)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if self.tty:
            print("\r" + " " * 100 + "\r", end="")
        print(
            f"epoch {row['epoch']}/{self.epochs} lr {row['lr']:.5g} "
            f"train loss {row['train_loss']:.4f} error {row['train_error']:.2f}% | "
            f"test loss {row['test_loss']:.4f} error {row['test_error']:.2f}% | "
            f"{row['epoch_seconds']:.1f}s",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(speed: Speed) -> dict[str, Any]:
    device = torch.device(speed.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    from wideresnet import __version__

    return {
        "wideresnet": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "device": speed.device,
        "device_name": name or platform.machine(),
        "precision": speed.precision,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


class Trainer:
    """One run: build, train epoch by epoch, evaluate, checkpoint, resume."""

    def __init__(self, recipe: Recipe, run_dir: Path, log_every: int = 0) -> None:
        self.recipe, self.run_dir, self.log_every = recipe, run_dir, log_every
        if recipe.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        self.device = resolve_device(recipe.device)
        self.speed = Speed.resolve(recipe, self.device)
        torch.manual_seed(recipe.seed)
        self.data = load_run_data(recipe, self.device)
        self.num_classes = len(self.data.classes)
        torch.manual_seed(recipe.seed)  # the model's init does not depend on data loading
        self.model = build_model(recipe, self.num_classes).to(self.device)
        if self.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            dampening=0,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            **({"fused": True} if self.speed.fused_sgd else {}),
        )
        self.forward = self.model
        if self.speed.compile:  # "reduce-overhead": the compiled graphs replay as CUDA graphs
            mode = "reduce-overhead" if self.speed.cuda_graphs else None
            self.forward = torch.compile(self.model, mode=mode)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.metrics: list[dict[str, Any]] = []
        self.partial = {"loss": 0.0, "wrong": 0, "seen": 0, "seconds": 0.0}
        self.train_seconds = self.eval_seconds = 0.0
        self.stop_signal: int | None = None

    # ---- state ----

    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.recipe.to_dict(),
            "classes": self.data.classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "data_order": {"seed": self.recipe.seed, "epoch": self.epoch + 1},
            "rng": _rng_state(self.device),
            "metrics": self.metrics,
            "partial": self.partial,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
            self.global_step, self.metrics = state["global_step"], list(state["metrics"])
            self.partial = dict(state["partial"])
            self.train_seconds, self.eval_seconds = state["train_seconds"], state["eval_seconds"]
            _set_rng_state(state["rng"], self.device)
        except (KeyError, RuntimeError, ValueError) as error:
            raise RunError(f"{self.run_dir}: checkpoint does not fit this run ({error})") from None

    def save(self) -> None:
        save_checkpoint(self.run_dir, self.state())

    # ---- the loop ----

    def _set_lr(self, epoch: int) -> None:
        lr = self.recipe.lr_at(epoch)
        previous = self.recipe.lr_at(epoch - 1) if epoch > 1 else lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.recipe.reset_momentum and lr != previous and self.step_in_epoch == 0:
            self.optimizer.state.clear()  # as the authors' code: a new optimizer at each drop

    def _handle_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second signal: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.stop_signal = signum

    def run(self) -> dict[str, Any]:
        handlers = {
            s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            while self.epoch < self.recipe.epochs:
                self._train_epoch(self.epoch + 1)
            return self._finish()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)

    def _train_epoch(self, epoch: int) -> None:
        recipe, device, speed = self.recipe, self.device, self.speed
        loader = self.data.train
        self._set_lr(epoch)
        steps = len(loader)
        progress = Progress(recipe.epochs, steps, recipe.batch_size, self.log_every)
        progress.start_epoch()
        self.model.train()
        start = time.perf_counter()
        # running sums stay on the device: no host sync inside the epoch on CUDA
        loss_sum = torch.tensor(self.partial["loss"], dtype=torch.float64, device=device)
        wrong = torch.tensor(self.partial["wrong"], dtype=torch.int64, device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        # Fused SGD skips a step on the device when told found_inf, so the check needs no host
        # sync until the epoch ends (or a checkpoint is due); otherwise check before stepping.
        deferred = speed.fused_sgd
        for x, y in loader.batches(epoch, self.step_in_epoch):
            if speed.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if speed.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with speed.autocast(device):
                logits = self.forward(x)
            loss = loss_fn(logits, y)
            bad = ~torch.isfinite(loss)
            if not deferred and bad.item():
                self._stop_nonfinite(epoch, self.step_in_epoch + 1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if deferred:
                self.optimizer.found_inf = bad.float()
                nonfinite |= bad
            self.optimizer.step()
            loss_sum += loss.detach().double() * len(y)
            wrong += (logits.detach().argmax(1) != y).sum()
            self.step_in_epoch += 1
            self.global_step += 1
            progress.step(epoch, self.step_in_epoch)
            every = recipe.checkpoint_every
            stop = self.stop_signal is not None
            if stop or (every and self.global_step % every == 0 and self.step_in_epoch < steps):
                if deferred and nonfinite.item():
                    self._stop_nonfinite(epoch, None)
                self.partial = {
                    "loss": loss_sum.item(),
                    "wrong": int(wrong.item()),
                    "seen": self.step_in_epoch * recipe.batch_size,
                    "seconds": self.partial["seconds"] + time.perf_counter() - start,
                }
                start = time.perf_counter()
                self.save()
                if stop:
                    raise Interrupted(self.stop_signal)
        if deferred and nonfinite.item():
            self._stop_nonfinite(epoch, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = self.partial["seconds"] + time.perf_counter() - start
        seen = steps * recipe.batch_size
        eval_start = time.perf_counter()
        result = evaluate(self.forward, self.data.test, speed, self.num_classes)
        eval_time = time.perf_counter() - eval_start
        row = {
            "epoch": epoch,
            "lr": recipe.lr_at(epoch),
            "train_loss": loss_sum.item() / seen,
            "train_error": 100.0 * wrong.item() / seen,
            "test_loss": result["loss"],
            "test_error": result["error"],
            "epoch_seconds": train_time + eval_time,
            "train_seconds": train_time,
            "eval_seconds": eval_time,
            "train_images_per_second": seen / max(train_time, 1e-9),
        }
        self.metrics.append(row)
        self.train_seconds += train_time
        self.eval_seconds += eval_time
        self.epoch, self.step_in_epoch = epoch, 0
        self.partial = {"loss": 0.0, "wrong": 0, "seen": 0, "seconds": 0.0}
        self.save()
        self._write_metrics()
        progress.end_epoch(row)
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(row) + "\n" for row in self.metrics)
        tmp = self.run_dir / ".metrics.jsonl.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.run_dir / "metrics.jsonl")

    def _stop_nonfinite(self, epoch: int, step: int | None) -> None:
        if step:
            what = f"at epoch {epoch} step {step}: the run stopped before applying that update"
        else:  # fused SGD: found on the device, where the bad update was skipped
            what = f"in epoch {epoch}: its update was skipped and the run stopped"
        message = (
            f"non-finite training loss {what}; the last good checkpoint "
            f"{self.run_dir / CHECKPOINT} is intact (lower --lr, or check the data)"
        )
        _write_json(
            self.run_dir / "failure.json",
            {"error": "non-finite loss", "epoch": epoch, "step": step, "message": message},
        )
        raise RunError(message, exit_code=1)

    def _finish(self) -> dict[str, Any]:
        last = self.metrics[-1]
        result = {
            "test_error": last["test_error"],
            "test_loss": last["test_loss"],
            "train_error": last["train_error"],
            "epochs": self.epoch,
            "model": self.recipe.model,
            "dataset": self.recipe.dataset,
            "params": count_params(self.model),
            "train_images": self.data.train_size,
            "test_images": self.data.test_size,
            "wall_seconds": {
                "train": self.train_seconds,
                "eval": self.eval_seconds,
                "total": self.train_seconds + self.eval_seconds,
            },
            "measured": "test error (%) of the LAST epoch on every test image; seconds are wall "
            "clock per phase, summed over epochs (across resumes)",
            "environment": environment(self.speed),
        }
        _write_json(self.run_dir / "result.json", result)
        return result


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _check_out_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir}: exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(
                f"--out {run_dir}: not empty; use --resume {run_dir} to continue it "
                "or --overwrite to start again"
            )
        for name in (
            CHECKPOINT,
            PREVIOUS,
            "metrics.jsonl",
            "result.json",
            "failure.json",
            "config.json",
        ):
            (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"--out {run_dir}: cannot create ({error.strerror})") from None


def train(
    recipe: Recipe, run_dir: str | Path, *, overwrite: bool = False, log_every: int = 0
) -> dict[str, Any]:
    """Start a run in run_dir. Returns result.json's contents."""
    run_dir = Path(run_dir)
    _check_out_dir(run_dir, overwrite)
    trainer = Trainer(recipe, run_dir, log_every)
    _write_json(run_dir / "config.json", {**recipe.to_dict(), "resolved": vars(trainer.speed)})
    print(
        f"{recipe.model}: {count_params(trainer.model):,} parameters, "
        f"{trainer.data.train_size:,} train / {trainer.data.test_size:,} test images, "
        f"{trainer.speed.device} {trainer.speed.precision}"
        f"{' compiled' if trainer.speed.compile else ''}",
        flush=True,
    )
    return trainer.run()


def config_differences(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    return [
        f"{key}: run has {saved.get(key)!r}, command line asks {value!r}"
        for key, value in asked.items()
        if saved.get(key) != value
    ]


def resume(
    run_dir: str | Path, asked: dict[str, Any] | None = None, *, log_every: int = 0
) -> dict[str, Any]:
    """Continue a stopped run exactly. `asked`: options given again on the command line, which
    must equal the run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"--resume {run_dir}: no such run directory")
    state = load_latest_checkpoint(run_dir)
    saved = state["config"]
    if asked:
        differences = config_differences(saved, asked)
        if differences:
            raise RunError(
                "--resume: the command line differs from the run's config: "
                + "; ".join(differences)
            )
    recipe = recipe_from_dict(saved)
    trainer = Trainer(recipe, run_dir, log_every)
    trainer.restore(state)
    trainer._write_metrics()  # drop lines past the checkpoint (after a fallback)
    (run_dir / "result.json").unlink(missing_ok=True)
    print(
        f"resuming {run_dir} at epoch {trainer.epoch + 1} step {trainer.step_in_epoch}", flush=True
    )
    if trainer.epoch >= recipe.epochs:
        return trainer._finish()
    return trainer.run()


def load_for_eval(path: str | Path) -> tuple[nn.Module, Recipe, list[str]]:
    """The model of a run directory or checkpoint file, with its recipe and class names."""
    path = Path(path)
    if path.is_dir():
        state = load_latest_checkpoint(path)
    else:
        state = load_checkpoint(path)
    recipe = recipe_from_dict(state["config"])
    classes = list(state.get("classes") or [])
    model = build_model(recipe, len(classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise RunError(f"{path}: weights do not fit {recipe.model} ({error})") from None
    return model, recipe, classes
