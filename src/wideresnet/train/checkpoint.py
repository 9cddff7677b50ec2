"""The checkpoint format, defined once: `Checkpoint` is what a checkpoint holds, written and
read here alone.

On disk a checkpoint is a plain dict of tensors and Python values (it loads with
weights_only=True): format, config (flat), classes, model, and for a training checkpoint
optimizer, epoch, step_in_epoch, global_step, rng, metrics, partial and seconds. `checksum` is
a SHA-256 of all the rest, checked on every load, so a flipped bit is found rather than
trained on. A run keeps the checkpoint before the newest as checkpoint.prev.pt, and only ever
a verified one. The keys are those of wideresnet 0.2, whose checkpoints load unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wideresnet.errors import RunError
from wideresnet.files import atomic_write, check_regular, first_line, refuse_existing
from wideresnet.protocol import ConfigChange
from wideresnet.train.records import (
    EpochTotals,
    MetricsRow,
    Seconds,
    TrainingState,
    typed_fields,
)

log = logging.getLogger(__name__)

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
FORMAT = 2  # 2: with checksum; 1 (wideresnet 0.1): without


def _feed(digest: Any, value: Any) -> None:
    """Hash a nest of dicts, lists, tensors and plain values, in a canonical order."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode() + b":")
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def content_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of everything in a checkpoint but its own checksum."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != "checksum"})
    return digest.hexdigest()


@dataclass
class Training:
    """What a training checkpoint adds to the model: enough to continue the run exactly."""

    state: TrainingState
    optimizer: dict[str, Any]
    rng: dict[str, Any]  # this process's generators (rank 0's in a file)
    rng_ranks: list[dict[str, Any]]  # every process's, in rank order
    data_order: dict[str, Any] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] | None = None  # the averaged weights (--ema-decay)
    scaler: dict[str, Any] | None = None  # fp16's loss scale and its growth tracker

    def to_dict(self) -> dict[str, Any]:
        state = self.state
        return {
            "optimizer": self.optimizer,
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "data_order": self.data_order,
            "rng": self.rng,
            "rng_ranks": self.rng_ranks,
            "metrics": [row.to_dict() for row in state.metrics],
            "partial": {
                "loss": state.totals.loss,
                "wrong": state.totals.wrong,
                "seconds": state.totals.seconds,
            },
            "train_seconds": state.seconds.train,
            "eval_seconds": state.seconds.eval,
            "data_seconds": state.seconds.data,
            "config_changes": [change.to_dict() for change in state.config_changes],
            **({"ema": self.ema} if self.ema is not None else {}),
            **({"scaler": self.scaler} if self.scaler is not None else {}),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Training:
        found = typed_fields(_TrainingFields, values, where)
        if min(found["epoch"], found["step_in_epoch"], found["global_step"]) < 0:
            raise RunError(f"{where}: negative epoch or step counters")
        if not isinstance(found["rng"].get("torch"), torch.Tensor):
            raise RunError(f"{where}: field rng has no torch generator state")
        if not all(isinstance(row, dict) for row in found["metrics"]):
            raise RunError(f"{where}: field metrics holds something other than epoch records")
        state = TrainingState(
            epoch=found["epoch"],
            step_in_epoch=found["step_in_epoch"],
            global_step=found["global_step"],
            metrics=[MetricsRow.from_dict(row, f"{where}: metrics") for row in found["metrics"]],
            totals=EpochTotals.from_dict(
                {k: v for k, v in found["partial"].items() if k != "seen"}, f"{where}: partial"
            ),
            seconds=Seconds(
                float(found.get("data_seconds", 0.0)),
                float(found["train_seconds"]),
                float(found["eval_seconds"]),
            ),
            config_changes=[ConfigChange.from_dict(c) for c in found.get("config_changes") or []],
        )
        return cls(
            state,
            found["optimizer"],
            found["rng"],
            found.get("rng_ranks") or [found["rng"]],
            found.get("data_order") or {},
            found.get("ema"),
            found.get("scaler"),
        )


@dataclass
class _TrainingFields:
    """The on-disk fields of a training checkpoint and their types (for typed_fields)."""

    epoch: int
    step_in_epoch: int
    global_step: int
    metrics: list
    partial: dict
    rng: dict
    optimizer: dict
    train_seconds: float
    eval_seconds: float
    data_seconds: float = 0.0
    rng_ranks: list | None = None
    data_order: dict | None = None
    config_changes: list | None = None
    ema: dict | None = None
    scaler: dict | None = None


@dataclass
class Checkpoint:
    """A model with what rebuilds it alone (its flat config and class names), and, for a
    checkpoint of a run, the training state that continues it."""

    config: dict[str, Any]
    classes: list[str]
    model: dict[str, torch.Tensor]
    training: Training | None = None  # None: a model-only checkpoint (an import)
    resolved: dict[str, Any] | None = None  # the speed choices of the run (config.json's)
    data_fingerprint: str | None = None
    normalization: dict[str, Any] | None = None  # imports: the source project's mean/std
    run_id: str | None = None  # the run this checkpoint belongs to (config.json's)
    source: str | None = None  # imports: the file converted
    layout: str | None = None

    @property
    def epochs_trained(self) -> int | None:
        return None if self.training is None else self.training.state.epoch

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "format": FORMAT,
            "config": self.config,
            "classes": list(self.classes),
            "model": self.model,
        }
        for key in ("resolved", "data_fingerprint", "normalization", "run_id", "source", "layout"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        return values | (self.training.to_dict() if self.training is not None else {})

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Checkpoint:
        found = typed_fields(_CheckpointFields, values, where)
        if not all(isinstance(v, torch.Tensor) for v in found["model"].values()):
            raise RunError(f"{where}: field model holds something other than tensors")
        training = Training.from_dict(values, where) if "optimizer" in values else None
        return cls(
            found["config"],
            [str(c) for c in found["classes"]],
            found["model"],
            training,
            **{k: found.get(k) for k in _OPTIONAL},
        )


_OPTIONAL = ("resolved", "data_fingerprint", "normalization", "run_id", "source", "layout")


@dataclass
class _CheckpointFields:
    config: dict
    model: dict
    classes: list = field(default_factory=list)
    resolved: dict | None = None
    data_fingerprint: str | None = None
    normalization: dict | None = None
    run_id: str | None = None
    source: str | None = None
    layout: str | None = None


def write_checkpoint(path: Path, checkpoint: Checkpoint, before_replace=None) -> None:
    """Write one checkpoint file atomically, with its checksum (WriteError on failure)."""
    state = checkpoint.to_dict()
    state["checksum"] = content_checksum(state)
    buffer = io.BytesIO()  # serialised first: a full disk then fails as the OSError it is
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer(), before_replace)


def load_checkpoint(path: Path) -> Checkpoint:
    """torch.load with weights_only=True (a file that would run code is refused), the checksum,
    then every field's type: RunError naming the file when any of it fails."""
    check_regular(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise RunError(f"{path}: not a loadable checkpoint ({refusal(error)})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RunError(f"{path}: not a wideresnet checkpoint (no model and config)")
    if "checksum" in state:
        if state["checksum"] != content_checksum(state):
            raise RunError(
                f"{path}: fails its checksum (changed or corrupted since it was written)"
            )
    elif state.get("format") != 1:
        raise RunError(f"{path}: a wideresnet checkpoint without its checksum")
    return Checkpoint.from_dict(state, str(path))


def load_weights_file(source: Path, out: Path | None = None, overwrite: bool = False) -> Any:
    """What another program saved (torch.load with weights_only=True), refusing to replace an
    existing `out` without overwrite first; RunError naming the file when it cannot be read."""
    if out is not None:
        refuse_existing(out, overwrite)
    check_regular(Path(source), "file")
    try:  # RepDistiller pickles its argparse options beside the weights: plain values only
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{source}: no such file") from None
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise RunError(
            f"{source}: not loadable with weights_only=True ({refusal(error)})"
        ) from None


def refusal(error: Exception) -> str:
    """Why torch.load refused a file: the unpickler's own line ('Unsupported global: GLOBAL
    x.y ...') rather than its generic first line, where it gives one."""
    for line in str(error).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return first_line(error)


def load_any(path: Path) -> Checkpoint:
    """The checkpoint of a run directory (newest readable) or a checkpoint file."""
    return Checkpoints(path).load_latest()[0] if path.is_dir() else load_checkpoint(path)


def nonfinite_tensor(tensors: dict[str, Any]) -> str | None:
    """The first key whose floating tensor holds a NaN or an infinity (None: all finite)."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and torch.is_floating_point(value):
            if not bool(torch.isfinite(value).all()):
                return key
    return None


def is_finite(checkpoint: Checkpoint) -> bool:
    """Every floating tensor of the model and optimizer state is finite."""
    tensors = list(checkpoint.model.values())
    if checkpoint.training is not None:
        for entry in checkpoint.training.optimizer.get("state", {}).values():
            tensors += [v for v in entry.values() if isinstance(v, torch.Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_floating_point(t))


class Checkpoints:
    """checkpoint.pt and checkpoint.prev.pt of one run directory.

    The newest checkpoint becomes the previous one only once it is known to verify: a
    corrupted checkpoint.pt is overwritten by the next save and never pushed over a good
    checkpoint.prev.pt, so a kill during that save still leaves a good checkpoint.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.current, self.previous = self.folder / CHECKPOINT, self.folder / PREVIOUS
        self.current_good: bool | None = None  # None: not checked yet

    def _verifies(self, path: Path) -> bool:
        try:
            load_checkpoint(path)
        except RunError:
            return False
        return True

    def save(self, checkpoint: Checkpoint) -> None:
        def keep_previous() -> None:
            if not self.current.exists():
                return
            if self.current_good is None:
                self.current_good = self._verifies(self.current)
            if self.current_good:
                self.current.replace(self.previous)
            else:
                log.warning(f"{self.current} did not verify; it is replaced, {PREVIOUS} is kept")

        write_checkpoint(self.current, checkpoint, keep_previous)
        self.current_good = True

    def load_latest(self) -> tuple[Checkpoint, Path]:
        """The newest checkpoint that verifies, falling back to the previous with a warning."""
        try:
            checkpoint = load_checkpoint(self.current)
            self.current_good = True
            return checkpoint, self.current
        except RunError as error:
            self.current_good = False
            if not self.previous.exists():
                raise
            log.warning(f"{error}; falling back to {self.previous}")
            return load_checkpoint(self.previous), self.previous

    def last_good(self) -> tuple[Path, Checkpoint] | None:
        """The newest checkpoint that verifies and holds only finite values, if any."""
        for path in (self.current, self.previous):
            if path.exists():
                try:
                    checkpoint = load_checkpoint(path)
                except RunError:
                    continue
                if is_finite(checkpoint):
                    return path, checkpoint
        return None


def weight_mismatch(ours: dict, theirs: dict, ignore: tuple[str, ...] = ()) -> str | None:
    """How a state_dict `theirs` does not fit a model's `ours`, in one line (None: it fits)."""
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if key in ignore or key.endswith("num_batches_tracked"):
            continue
        if key not in theirs:
            problems.append(f"{key} missing")
        elif key not in ours:
            problems.append(f"{key} unexpected")
        elif not isinstance(theirs[key], torch.Tensor):
            problems.append(f"{key} is a {type(theirs[key]).__name__}, not a tensor")
        elif tuple(theirs[key].shape) != tuple(ours[key].shape):
            shapes = f"{tuple(theirs[key].shape)} for {tuple(ours[key].shape)}"
            problems.append(f"{key} has shape {shapes}")
    if not problems:
        return None
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
