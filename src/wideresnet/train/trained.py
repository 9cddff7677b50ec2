"""Trained models: built from a config, loaded from a run or checkpoint, and evaluated as
their run prepared the data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from wideresnet.config import Config
from wideresnet.data.prepare import eval_data
from wideresnet.errors import ConfigError, RunError
from wideresnet.models import create_model
from wideresnet.train.checkpoint import Checkpoint, load_any, nonfinite_tensor, weight_mismatch
from wideresnet.train.evaluate import evaluate
from wideresnet.train.rundir import RunDir, RunState
from wideresnet.train.runtime import Runtime, resolve_device

log = logging.getLogger(__name__)


def build_model(config: Config, num_classes: int) -> nn.Module:
    """The config's model with `num_classes` outputs (options not given keep their defaults)."""
    return create_model(config.model.model, num_classes, **config.given_model_options())


def config_of(values: dict[str, Any], where: Path) -> Config:
    """The Config of a checkpoint's flat values (RunError naming it when they are not valid)."""
    try:
        return Config.from_dict(values)
    except ConfigError as error:
        raise RunError(f"{where}: the checkpoint's config is not valid ({error})") from None


@dataclass
class Trained:
    """A trained model with what rebuilt it: its config, classes and how far it trained."""

    model: nn.Module
    config: Config
    classes: list[str]
    precision: str | None  # the precision it was trained in, when recorded
    finished: bool  # a run's: RunDir.status(); a file's: it trained all its epochs
    checkpoint: Checkpoint = field(repr=False)

    @property
    def epoch(self) -> int:
        trained = self.checkpoint.epochs_trained
        return self.config.optim.epochs if trained is None else trained

    @property
    def step_in_epoch(self) -> int:
        training = self.checkpoint.training
        return 0 if training is None else training.state.step_in_epoch


def load_trained(path: str | Path) -> Trained:
    """The model of a run directory (newest readable checkpoint) or of a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        aside = RunDir(path).aside_with_checkpoint()
        if aside is not None:
            raise RunError(
                f"{path} has no checkpoint: {aside} holds the run an interrupted --overwrite "
                f"replaced; `wrn train --resume {path}` puts it back (or `wrn eval {aside}`)"
            )
    checkpoint = load_any(path)
    if path.is_dir():
        RunDir(path).check_belongs(checkpoint, path)
    config = config_of(checkpoint.config, path)
    model = build_model(config, len(checkpoint.classes))
    problem = weight_mismatch(model.state_dict(), checkpoint.model)
    if problem:
        raise RunError(f"{path}: weights do not fit {config.model.model}: {problem}")
    bad = nonfinite_tensor(checkpoint.model)
    if bad:
        raise RunError(f"{path}: {bad} holds NaN or infinite values; refusing to use it")
    model.load_state_dict(checkpoint.model)
    resolved = checkpoint.resolved
    if resolved is None and path.is_dir():  # older checkpoints: the run's record
        resolved = (RunDir(path).config() or {}).get("resolved")
    precision = resolved.get("precision") if isinstance(resolved, dict) else None
    if path.is_dir():
        finished = RunDir(path).status() is RunState.FINISHED
    else:
        training = checkpoint.training
        finished = training is None or training.state.finished(config.optim.epochs)
    return Trained(model, config, checkpoint.classes, precision, finished, checkpoint)


def evaluate_run(
    path: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    flip: bool = False,
) -> dict[str, Any]:
    """Test error of a run or checkpoint, prepared as its run prepared the data."""
    trained = load_trained(path)
    config = trained.config
    if data_dir is None and config.data.data_dir is None:
        raise RunError(
            f"{path} names no data (an imported model): give --dataset and --data-dir to test it on"
        )
    torch_device = resolve_device(device)
    chosen = precision or trained.precision or "fp32"
    channels_last = config.runtime.channels_last is not False
    runtime = Runtime.eager(torch_device, chosen, channels_last)
    data = eval_data(config, torch_device, dataset=dataset, data_dir=data_dir, split=split)
    if len(data.classes) != len(trained.classes):
        raise RunError(
            f"{data_dir or config.data.data_dir}: {len(data.classes)} classes, but the model "
            f"was trained on {len(trained.classes)}"
        )
    model = runtime.prepare(trained.model)
    classes = len(trained.classes)
    result = evaluate(model, data.test, runtime=runtime, num_classes=classes, flip=flip)
    return {
        "checkpoint": str(path),
        "dataset": dataset or config.data.dataset,
        "split": split or config.data.test_split,
        "classes": trained.classes,
        "test_error": result["error"],
        "test_top5_error": result["top5_error"],
        "test_loss": result["loss"],
        "images": result["images"],
        "per_class_error": result["per_class_error"],
        "confusion": result["confusion"],
        "precision": chosen,
        "epoch": trained.epoch,
        "step_in_epoch": trained.step_in_epoch,
        "epochs": config.optim.epochs,
        "finished": trained.finished,
        **({"flip_test_error": result["flip"]["error"]} if flip else {}),
    }
