"""Knowledge distillation (`wrn train --teacher RUN_OR_FILE`), Hinton et al. 2015, as the
RepDistiller code (Tian et al., CRD) trains its students:

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) ||
           softmax(student / T))   (the KL summed over classes, averaged over the batch)

The teacher (a run directory, one of our checkpoints, an import or a safetensors export) sees
the student's own augmented batch, in eval mode and without gradients. Its class count and
input normalisation must be the student's (refused otherwise: its outputs would mean other
classes, or it would see other inputs); its identity (the SHA-256 of its weights) goes into
result.json.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.preprocess import normalisation
from wideresnet.errors import ConfigError
from wideresnet.export import load_model


@dataclass
class Teacher:
    model: nn.Module
    identity: dict[str, Any]  # for result.json: source, model, classes, sha256 of its weights


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_teacher(config: Config, classes: list[str], device: torch.device) -> Teacher | None:
    """The run's teacher, checked against the student's data; None without --teacher."""
    source = config.optim.teacher
    if not source:
        return None
    model = load_model(source)
    if len(model.classes) != len(classes):
        raise ConfigError(
            f"--teacher {source}: it predicts {len(model.classes)} classes, this run's data has "
            f"{len(classes)}; distill from a teacher of the same classes"
        )
    _check_normalization(source, model.input_transform, config)
    model = model.to(device).eval().requires_grad_(False)
    identity = {
        "source": str(source),
        "model": getattr(model, "name", type(model).__name__),
        "classes": len(model.classes),
        "sha256": weights_sha256(model),
    }
    return Teacher(model, identity)


def _check_normalization(source, transform, config: Config) -> None:
    """The teacher normalises its input as this run does (it sees the student's batch)."""
    if transform.zca or config.data.preprocess == "zca":
        if not (transform.zca and config.data.preprocess == "zca"):
            raise ConfigError(
                f"--teacher {source}: it and this run must both use ZCA or both mean/std"
            )
        return  # both whiten; the student's fit is of its own training data
    mean, std = normalisation(config.data.preprocess)
    theirs = transform.mean.tolist(), transform.std.tolist()
    if not (_close(theirs[0], mean) and _close(theirs[1], std)):
        raise ConfigError(
            f"--teacher {source}: it normalises with mean {_shown(theirs[0])} std "
            f"{_shown(theirs[1])}, this run with mean {_shown(mean)} std {_shown(std)} "
            "(--preprocess); it would see other inputs than it was trained on"
        )


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def _shown(values) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in values) + ")"
