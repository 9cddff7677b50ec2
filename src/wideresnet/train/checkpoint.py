"""The checkpoint format, defined once: what a checkpoint holds, how it is written and read.

A checkpoint is a plain dict of tensors and Python values (loads with weights_only=True):
format, config (flat), classes, model, and for training checkpoints optimizer, epoch,
step_in_epoch, global_step, rng, metrics, partial and seconds. It is written atomically; the
one before it is kept as checkpoint.prev.pt and used when the newest cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from wideresnet.errors import RunError
from wideresnet.files import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
FORMAT = 2


def model_checkpoint(config: dict, classes: list[str], model_state: dict, **extra) -> dict:
    """A checkpoint that rebuilds a model alone (imports, exports, the start of a run)."""
    return {
        "format": FORMAT,
        "config": config,
        "classes": list(classes),
        "model": model_state,
        **extra,
    }


def write_checkpoint(path: Path, state: dict[str, Any], before_replace=None) -> None:
    """Write one checkpoint file atomically (WriteError naming the path on failure)."""
    atomic_write(path, lambda f: torch.save(state, f), before_replace)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """The run's new checkpoint.pt; the one it replaces becomes checkpoint.prev.pt."""
    current = run_dir / CHECKPOINT

    def keep_previous() -> None:
        if current.exists():
            current.replace(run_dir / PREVIOUS)

    write_checkpoint(current, state, keep_previous)


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
        log.warning(f"{error}; falling back to {run_dir / PREVIOUS}")
        return load_checkpoint(run_dir / PREVIOUS)


def load_any(path: Path) -> dict[str, Any]:
    """The checkpoint of a run directory (newest readable) or a checkpoint file."""
    return load_latest_checkpoint(path) if path.is_dir() else load_checkpoint(path)


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
