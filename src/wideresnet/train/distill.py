"""Knowledge distillation (`wrn train --teacher RUN_OR_FILE`), Hinton et al. 2015, as the
RepDistiller code (Tian et al., CRD) trains its students:

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) ||
           softmax(student / T))   (the KL summed over classes, averaged over the batch)

The teacher (a run directory, one of our checkpoints, an import or a safetensors export) sees
the student's own augmented batch (mixed, with mixup or CutMix, where the labels' loss is the
mixed one), in eval mode and without gradients. Its class count must be
the student's (refused otherwise: its outputs would mean other classes). A teacher trained with
another mean/std (RepDistiller's teachers use CIFAR-100's own) gets the student's batch
converted to its own normalisation, exactly (an affine map per channel); ZCA against mean/std
is refused. Its identity (the SHA-256 of its weights) goes into result.json.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config
from wideresnet.data.preprocess import normalisation
from wideresnet.errors import ConfigError, RunError
from wideresnet.export import load_model
from wideresnet.train.rundir import RunDir, RunState

log = logging.getLogger(__name__)


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


def load_teacher(
    config: Config,
    classes: list[str],
    device: torch.device,
    recorded: dict | None = None,
    size: int | None = None,
) -> Teacher | None:
    """The run's teacher, checked against the student's data (its classes, in order, where it
    names them; its input size against `size`, the student's; a run still training is
    refused); on resume, against the identity the run recorded at its start (`recorded`: the
    same weights, or RunError); None without --teacher."""
    source = config.optim.teacher
    if not source:
        return None
    if Path(source).is_dir() and RunDir(source).status() is not RunState.FINISHED:
        raise ConfigError(
            f"--teacher {source}: a run that has not finished (no result.json); distill from "
            "it once it has, or from an export of the weights you mean"
        )
    model = load_model(source)
    if len(model.classes) != len(classes):
        raise ConfigError(
            f"--teacher {source}: it predicts {len(model.classes)} classes, this run's data has "
            f"{len(classes)}; distill from a teacher of the same classes"
        )
    named = [str(c) for c in model.classes] != [str(i) for i in range(len(classes))]
    if named and list(map(str, model.classes)) != list(map(str, classes)):
        first = next(i for i, (a, b) in enumerate(zip(model.classes, classes)) if a != b)
        raise ConfigError(
            f"--teacher {source}: its class {first} is {model.classes[first]!r}, this run's is "
            f"{classes[first]!r}; its outputs would mean other classes"
        )
    taught = getattr(model, "input_size", None)
    if size is not None and taught is not None and int(taught) != int(size):
        raise ConfigError(
            f"--teacher {source}: it was trained on {taught}x{taught} images, this run's are "
            f"{size}x{size}; distill from a teacher of the student's image size"
        )
    conversion = _input_conversion(source, model.input_transform, config)
    identity = {
        "source": str(source),
        "model": getattr(model, "name", type(model).__name__),
        "classes": len(model.classes),
        "sha256": weights_sha256(model),
    }
    if recorded and recorded.get("sha256") != identity["sha256"]:
        raise RunError(
            f"--teacher {source}: its weights are not the ones this run started with (SHA-256 "
            f"{str(recorded.get('sha256'))[:12]}..., now {identity['sha256'][:12]}...); "
            "resuming would distil from another teacher"
        )
    if conversion is not None:
        identity["input_conversion"] = conversion.describe()
        log.info(f"--teacher {source}: {conversion.describe()}")
        model = nn.Sequential(conversion, model)
    return Teacher(model.to(device).eval().requires_grad_(False), identity)


class Renormalise(nn.Module):
    """The student's input (x - m_s) / s_s as the teacher's (x - m_t) / s_t, per channel of an
    (N, 3, H, W) batch: x_t = x_s * s_s / s_t + (m_s - m_t) / s_t."""

    def __init__(self, ours: tuple[list, list], theirs: tuple[list, list]) -> None:
        super().__init__()
        m_s, s_s, m_t, s_t = (torch.tensor(v, dtype=torch.float64) for v in (*ours, *theirs))
        self.ours, self.theirs = ours, theirs
        self.register_buffer("scale", (s_s / s_t).float().reshape(1, -1, 1, 1))
        self.register_buffer("shift", ((m_s - m_t) / s_t).float().reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def describe(self) -> str:
        return (
            f"trained with mean {_shown(self.theirs[0])} std {_shown(self.theirs[1])}; this "
            f"run's batches (mean {_shown(self.ours[0])} std {_shown(self.ours[1])}, 0-255 "
            "scale) are converted to its inputs"
        )


def _input_conversion(source, transform, config: Config) -> Renormalise | None:
    """None when the teacher normalises its input as this run does; the conversion of this
    run's batches to its inputs when both use a mean/std; ConfigError for ZCA against mean/std
    (no exact conversion: whitening mixes pixels)."""
    if transform.zca or config.data.preprocess == "zca":
        if not (transform.zca and config.data.preprocess == "zca"):
            theirs = "ZCA" if transform.zca else "mean/std"
            raise ConfigError(
                f"--teacher {source}: it was trained on {theirs} inputs and this run uses "
                f"--preprocess {config.data.preprocess}; give the run --preprocess "
                f"{'zca' if transform.zca else 'meanstd'} (no exact conversion exists)"
            )
        return None  # both whiten; the student's fit is of its own training data
    mean, std = normalisation(config.data.preprocess)
    theirs = transform.mean.tolist(), transform.std.tolist()
    if _close(theirs[0], mean) and _close(theirs[1], std):
        return None
    return Renormalise((list(mean), list(std)), theirs)


def _close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def _shown(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
