"""Trained models: built from a config, loaded from a run or checkpoint, started from (with
--init-from), and evaluated as their run prepared the data."""

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
from wideresnet.train.checkpoint import load_any, weight_mismatch
from wideresnet.train.evaluate import evaluate
from wideresnet.train.rundir import RunDir
from wideresnet.train.runtime import Speed, resolve_device

log = logging.getLogger(__name__)


def build_model(config: Config, num_classes: int) -> nn.Module:
    """The config's model with `num_classes` outputs (options not given keep their defaults)."""
    return create_model(config.model.model, num_classes, **config.given_model_options())


def load_initial_weights(model: nn.Module, source: str) -> None:
    """`--init-from`: the weights of a checkpoint or run; a new head when the class count
    differs (said in the log)."""
    weights = load_any(Path(source))["model"]
    ours = model.state_dict()
    head = tuple(k for k in ours if k.startswith("fc."))
    new_head = any(k in weights and weights[k].shape != ours[k].shape for k in head)
    problem = weight_mismatch(ours, weights, ignore=head if new_head else ())
    if problem:
        raise RunError(f"--init-from {source}: weights do not fit {model.name}: {problem}")
    if new_head:
        log.info(
            f"--init-from {source}: a new head for {ours['fc.weight'].shape[0]} classes (the "
            f"checkpoint's has {weights['fc.weight'].shape[0]}); every other weight loaded"
        )
        weights = {k: v for k, v in weights.items() if k not in head}
    model.load_state_dict(weights, strict=False)


def config_of(state: dict[str, Any], where: Path) -> Config:
    try:
        return Config.from_dict(state["config"])
    except ConfigError as error:
        raise RunError(f"{where}: the checkpoint's config is not valid ({error})") from None


@dataclass
class Trained:
    """A trained model with what rebuilt it: its config, classes and how far it trained."""

    model: nn.Module
    config: Config
    classes: list[str]
    epoch: int
    step_in_epoch: int
    precision: str | None  # the precision it was trained in, when recorded
    state: dict = field(repr=False, default_factory=dict)  # the checkpoint it came from

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.optim.epochs and self.step_in_epoch == 0


def load_trained(path: str | Path) -> Trained:
    """The model of a run directory (newest readable checkpoint) or of a checkpoint file."""
    path = Path(path)
    state = load_any(path)
    config = config_of(state, path)
    classes = [str(c) for c in state.get("classes") or []]
    model = build_model(config, len(classes))
    problem = weight_mismatch(model.state_dict(), state["model"])
    if problem:
        raise RunError(f"{path}: weights do not fit {config.model.model}: {problem}")
    model.load_state_dict(state["model"])
    resolved = state.get("resolved")
    if not isinstance(resolved, dict) and path.is_dir():  # older checkpoints: the run's record
        resolved = (RunDir(path).read_config() or {}).get("resolved")
    precision = resolved.get("precision") if isinstance(resolved, dict) else None
    epoch = state.get("epoch", config.optim.epochs)
    step = state.get("step_in_epoch", 0)
    return Trained(model, config, classes, epoch, step, precision, state)


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
    torch_device = resolve_device(device)
    chosen = precision or trained.precision or "fp32"
    channels_last = config.runtime.channels_last is not False
    speed = Speed(str(torch_device), chosen, channels_last, False, False, False)
    data = eval_data(config, torch_device, dataset=dataset, data_dir=data_dir, split=split)
    if len(data.classes) != len(trained.classes):
        raise RunError(
            f"{data_dir or config.data.data_dir}: {len(data.classes)} classes, but the model "
            f"was trained on {len(trained.classes)}"
        )
    model = speed.prepare(trained.model)
    result = evaluate(model, data.test, speed, len(trained.classes), flip=flip)
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
