"""Starting, resuming and evaluating runs: the library's entry points for `wrn train|eval`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config, typed_values
from wideresnet.data.download import default_data_dir, ensure_official
from wideresnet.data.official import OFFICIAL
from wideresnet.data.prepare import RunData, eval_data, run_data
from wideresnet.errors import DOWNLOAD_STOPPED, ConfigError, RunError, signals_interrupt
from wideresnet.models import count_params, create_model
from wideresnet.train.checkpoint import (
    check_identity,
    check_training_state,
    load_any,
    weight_mismatch,
)
from wideresnet.train.evaluate import evaluate
from wideresnet.train.loop import Trainer, change_flag
from wideresnet.train.rundir import RunDir
from wideresnet.train.runtime import Speed, process_settings, resolve_device

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


def make_trainer(config: Config, run_dir: RunDir, log_every: int = 0) -> Trainer:
    """A Trainer with its device, speed settings, data and model built from the config."""
    device = resolve_device(config.runtime.device)
    speed = Speed.resolve(config, device)
    data = run_data(config, device)
    torch.manual_seed(config.runtime.seed)  # the model's init does not depend on data loading
    model = build_model(config, len(data.classes))
    if config.model.init_from:
        load_initial_weights(model, config.model.init_from)
    return Trainer(config, run_dir, data, speed.prepare(model), speed, log_every)


def resolve_paths(config: Config) -> Config:
    """The config a run records: data_dir absolute (the official files fetched into the data
    folder when no --data-dir was given), init_from absolute."""
    data = config.data
    if data.data_dir is None:
        if data.dataset not in OFFICIAL:
            raise ConfigError(f"--data-dir is required for --dataset {data.dataset}")
        root = default_data_dir(data.dataset)
        log.info(f"no --data-dir: the official {data.dataset} files in {root}")
        splits = [data.train_split] + ([] if data.val_size else [data.test_split])
        ensure_official(data.dataset, root, splits, data.verify)
        config = config.replace(data_dir=str(root))
    changes = {"data_dir": str(Path(config.data.data_dir).expanduser().absolute())}
    if config.model.init_from:
        changes["init_from"] = str(Path(config.model.init_from).expanduser().absolute())
    return config.replace(**changes)


def train(
    config: Config, out: str | Path, *, overwrite: bool = False, log_every: int = 0
) -> dict[str, Any]:
    """Start a run in `out` and train it to the end. Returns result.json's contents.

    Everything (options, data, model) is checked before the folder is touched; an old run
    replaced with `overwrite` is kept aside until the new run's first checkpoint."""
    run_dir = RunDir(out)
    run_dir.check_new(overwrite)
    with process_settings(config):
        with signals_interrupt(DOWNLOAD_STOPPED):  # the official files may be fetched first
            config = resolve_paths(config)
        trainer = make_trainer(config, run_dir, log_every)
        run_dir.claim_new(overwrite)
        try:
            run_dir.write_config(config.to_dict(), trainer.resolved())
            speed = trainer.speed
            log.info(
                f"{config.model.model}: {count_params(trainer.model):,} parameters, "
                f"{trainer.data.train_size:,} train / {trainer.data.test_size:,} test images, "
                f"{speed.device} {speed.precision}{' compiled' if speed.compile else ''}"
            )
            return trainer.run()
        except BaseException:
            run_dir.restore()  # only while the new run has no checkpoint
            raise
        finally:
            run_dir.release()


# Options that may change on resume, each recorded in config.json, the checkpoint and result.json
RESUME_CHANGES = (
    "lr",
    "epochs",
    "milestones",
    "data_dir",
    "checkpoint_every",
    "eval_batch_size",
    "eval_every",
    "tensorboard",
    "device",
)


def resume_changes(saved: dict[str, Any], asked: dict[str, Any]) -> dict[str, Any]:
    """The options given again on the command line that differ from the run's: those of
    RESUME_CHANGES are allowed, any other is refused with the list of differences."""
    typed = typed_values(asked)
    if typed.get("data_dir"):
        typed["data_dir"] = str(Path(typed["data_dir"]).expanduser().absolute())
    differing = {k: v for k, v in typed.items() if saved.get(k) != v}
    refused = [k for k in differing if k not in RESUME_CHANGES]
    if refused:
        differences = "; ".join(
            f"{k}: run has {saved.get(k)!r}, command line asks {differing[k]!r}" for k in refused
        )
        raise RunError(
            f"--resume: the command line differs from the run's config: {differences} (on "
            f"resume only {', '.join(RESUME_CHANGES)} may change)"
        )
    return differing


def _check_same_data(state: dict[str, Any], data: RunData, config: Config) -> None:
    recorded = state.get("data_fingerprint")
    if recorded and recorded != data.fingerprint:
        raise RunError(
            f"the data at {config.data.data_dir} is not the data this run trained on (its "
            "fingerprint differs); resuming would not continue the same run"
        )


def resume(
    out: str | Path, asked: dict[str, Any] | None = None, *, log_every: int = 0
) -> dict[str, Any]:
    """Continue a stopped run exactly. `asked`: options given again on the command line; they
    must equal the run's, but for RESUME_CHANGES (lower --lr, more --epochs, a moved
    --data-dir holding the same data, ...), which are applied from here on and recorded."""
    run_dir = RunDir(out)
    if not run_dir.path.is_dir():
        raise RunError(f"--resume {out}: no such run directory")
    run_dir.lock()
    try:
        state, source = run_dir.checkpoints.load_latest()
        check_training_state(state, source)
        recorded = run_dir.read_config()
        if recorded is not None:
            check_identity(state["config"], recorded, source)
        changes = resume_changes(state["config"], asked or {})
        config = _config_of({"config": {**state["config"], **changes}}, source)
        if config.optim.epochs < state["epoch"]:
            raise RunError(f"--epochs {config.optim.epochs}: the run has trained {state['epoch']}")
        with process_settings(config):
            trainer = make_trainer(config, run_dir, log_every)
            trainer.restore(state)
            _check_same_data(state, trainer.data, config)
            for key, value in changes.items():
                at = {"epoch": trainer.epoch + 1, "step_in_epoch": trainer.step_in_epoch}
                change = {"key": key, "from": state["config"].get(key), "to": value, **at}
                trainer.config_changes.append(change)
                log.info(change_flag(change).replace("changed on resume", "resume changes"))
            if changes:
                run_dir.write_config(config.to_dict(), trainer.resolved())
            run_dir.write_metrics(trainer.metrics)  # drop lines past the checkpoint
            run_dir.clear_result()
            log.info(f"resuming {out} at epoch {trainer.epoch + 1} step {trainer.step_in_epoch}")
            if trainer.epoch >= config.optim.epochs:
                return trainer.finish()
            return trainer.run()
    finally:
        run_dir.release()


def _config_of(state: dict[str, Any], where: Path) -> Config:
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

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.optim.epochs and self.step_in_epoch == 0


def load_trained(path: str | Path) -> Trained:
    """The model of a run directory (newest readable checkpoint) or of a checkpoint file."""
    path = Path(path)
    state = load_any(path)
    config = _config_of(state, path)
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
    return Trained(model, config, classes, epoch, step, precision)


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
