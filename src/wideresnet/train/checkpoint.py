"""The checkpoint format, defined once: what a checkpoint holds, how it is written and read.

A checkpoint is a plain dict of tensors and Python values (loads with weights_only=True):
format, config (flat), classes, model, and for training checkpoints optimizer, epoch,
step_in_epoch, global_step, rng, metrics, partial and seconds. `checksum` is a SHA-256 of all
the rest, checked on every load, so a flipped bit is found rather than trained on. A run keeps
the checkpoint before the newest as checkpoint.prev.pt, and only ever a verified one.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from wideresnet.errors import RunError
from wideresnet.files import atomic_write

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


def model_checkpoint(config: dict, classes: list[str], model_state: dict, **extra) -> dict:
    """A checkpoint that rebuilds a model alone (imports, exports, the start of a run)."""
    state = {"format": FORMAT, "config": config, "classes": list(classes), "model": model_state}
    return {**state, **extra}


def write_checkpoint(path: Path, state: dict[str, Any], before_replace=None) -> None:
    """Write one checkpoint file atomically, with its checksum (WriteError on failure)."""
    state = {**state, "format": FORMAT}
    state["checksum"] = content_checksum(state)
    buffer = io.BytesIO()  # serialised first: a full disk then fails as the OSError it is
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer(), before_replace)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True (a file that would run code is refused), then the
    checksum: RunError naming the file when it cannot be read or does not verify."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch raises many types for a torn or foreign file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise RunError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RunError(f"{path}: not a wideresnet checkpoint (no model and config)")
    if "checksum" in state:
        if state["checksum"] != content_checksum(state):
            raise RunError(
                f"{path}: fails its checksum (changed or corrupted since it was written)"
            )
    elif state.get("format") != 1:
        raise RunError(f"{path}: a wideresnet checkpoint without its checksum")
    for key, kind in (("config", dict), ("model", dict)):
        if not isinstance(state[key], kind):
            raise RunError(
                f"{path}: field {key} is a {type(state[key]).__name__}, not a {kind.__name__}"
            )
    return state


def load_weights_file(source: Path, out: Path | None = None, overwrite: bool = False) -> Any:
    """What another program saved (torch.load with weights_only=True), refusing to replace an
    existing `out` without overwrite first; RunError naming the file when it cannot be read."""
    if out is not None and out.exists() and not overwrite:
        raise RunError(f"--out {out}: exists; pass --overwrite to replace it")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{source}: no such file") from None
    except Exception as error:  # torch raises many types for a torn or foreign file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{source}: not loadable with weights_only=True ({first})") from None


def load_any(path: Path) -> dict[str, Any]:
    """The checkpoint of a run directory (newest readable) or a checkpoint file."""
    return Checkpoints(path).load_latest()[0] if path.is_dir() else load_checkpoint(path)


def is_finite(state: dict[str, Any]) -> bool:
    """Every floating tensor of the model and optimizer state is finite."""
    tensors = list(state.get("model", {}).values())
    for entry in state.get("optimizer", {}).get("state", {}).values():
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

    def save(self, state: dict[str, Any]) -> None:
        def keep_previous() -> None:
            if not self.current.exists():
                return
            if self.current_good is None:
                self.current_good = self._verifies(self.current)
            if self.current_good:
                self.current.replace(self.previous)
            else:
                log.warning(f"{self.current} did not verify; it is replaced, {PREVIOUS} is kept")

        write_checkpoint(self.current, state, keep_previous)
        self.current_good = True

    def load_latest(self) -> tuple[dict[str, Any], Path]:
        """The newest checkpoint that verifies, falling back to the previous with a warning."""
        try:
            state = load_checkpoint(self.current)
            self.current_good = True
            return state, self.current
        except RunError as error:
            self.current_good = False
            if not self.previous.exists():
                raise
            log.warning(f"{error}; falling back to {self.previous}")
            return load_checkpoint(self.previous), self.previous

    def last_good(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies and holds only finite values, if any."""
        for path in (self.current, self.previous):
            if path.exists():
                try:
                    state = load_checkpoint(path)
                except RunError:
                    continue
                if is_finite(state):
                    return path, state
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


TRAINING_FIELDS = {
    "epoch": int,
    "step_in_epoch": int,
    "global_step": int,
    "metrics": list,
    "partial": dict,
    "rng": dict,
    "optimizer": dict,
    "train_seconds": (int, float),
    "eval_seconds": (int, float),
}


def check_training_state(state: dict[str, Any], path: Path) -> None:
    """The fields a resume reads, with the right types (one line naming the first that is not)."""
    for key, kind in TRAINING_FIELDS.items():
        value = state.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            found = "missing" if value is None else f"a {type(value).__name__}"
            raise RunError(f"{path}: field {key} is {found}; not a training checkpoint of wrn")
    if state["epoch"] < 0 or state["step_in_epoch"] < 0 or state["global_step"] < 0:
        raise RunError(f"{path}: negative epoch or step counters")
    if not all(isinstance(row, dict) for row in state["metrics"]):
        raise RunError(f"{path}: field metrics holds something other than epoch records")
    if not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise RunError(f"{path}: field rng has no torch generator state")


IDENTITY = ("model", "dataset", "seed")  # what makes a checkpoint this run's


def check_identity(state_config: dict[str, Any], run_config: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another run dropped into this run's directory."""
    differing = [k for k in IDENTITY if state_config.get(k) != run_config.get(k)]
    if differing:
        theirs = ", ".join(f"{k} {state_config.get(k)!r}" for k in differing)
        ours = ", ".join(f"{k} {run_config.get(k)!r}" for k in differing)
        raise RunError(f"{path} belongs to another run ({theirs}; this run: {ours}); refusing it")


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
