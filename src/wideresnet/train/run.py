"""Starting and resuming runs: the library's entry points for `wrn train` (one process, or
one of several launched by torchrun)."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wideresnet.config import Config, typed_values
from wideresnet.data.download import default_data_dir, ensure_official
from wideresnet.data.official import OFFICIAL
from wideresnet.data.prepare import RunData, run_data
from wideresnet.errors import DOWNLOAD_STOPPED, ConfigError, RunError, signals_interrupt
from wideresnet.extras import require
from wideresnet.models import count_params
from wideresnet.protocol import RESUME_CHANGES, ConfigChange
from wideresnet.seeds import Stream, seed_process
from wideresnet.train.calibrate import cpu_choice, kept_cpu_setting
from wideresnet.train.checkpoint import Checkpoint, load_any, nonfinite_tensor, weight_mismatch
from wideresnet.train.distill import load_teacher
from wideresnet.train.distributed import (
    World,
    shutdown,
    use_global_batch_norm,
    world_from_environment,
    wrap,
)
from wideresnet.train.ema import WeightAverage
from wideresnet.train.loop import Parts, Trainer
from wideresnet.train.optim import build_optimizer
from wideresnet.train.records import Result
from wideresnet.train.rundir import RunDir
from wideresnet.train.runtime import Runtime, compiles_policy, process_settings, resolve_device
from wideresnet.train.step import StepOptions, make_step
from wideresnet.train.trained import build_model, config_of

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """The identity of a new run, written into its config.json, checkpoints and result."""
    return uuid.uuid4().hex[:16]


def load_initial_weights(model: nn.Module, source: str) -> None:
    """`--init-from`: the weights of a checkpoint or run; a new head when the class count
    differs (said in the log)."""
    weights = load_any(Path(source)).model
    bad = nonfinite_tensor(weights)
    if bad:
        raise RunError(f"--init-from {source}: {bad} holds NaN or infinite values")
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


def make_trainer(
    config: Config,
    run_dir: RunDir,
    log_every: int = 0,
    world: World = World(),
    recorded: dict | None = None,
    run_id: str | None = None,
) -> Trainer:
    """A run assembled from its config, in one order: device, data, model, initial weights,
    runtime (the CPU setting), processes, teacher, optimizer, compile or DDP, step, averaged
    weights; the Trainer receives them built (`recorded`: config.json's `resolved` of the run
    being resumed, whose loader and CPU setting it keeps; `run_id`: the run's identity)."""
    device = resolve_device(config.runtime.device)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if config.optim.batch_size % world.size:
        raise ConfigError(
            f"--batch-size {config.optim.batch_size} (the global batch) does not split evenly "
            f"over {world.size} processes"
        )
    recorded = recorded or {}
    data = run_data(
        config,
        device,
        rank=world.rank,
        world=world.size,
        compile_policy=compiles_policy(config, device),
        recorded_loader=recorded.get("loader"),
    )
    seed = config.runtime.seed
    seed_process(seed, 0, Stream.INIT)  # the model's init does not depend on data loading
    model = build_model(config, len(data.classes))
    if config.model.init_from:
        load_initial_weights(model, config.model.init_from)
    cpu = None
    if device.type == "cpu":  # several processes measure nothing: they would share the cores
        images = len(data.train) * config.optim.batch_size * config.optim.epochs
        cpu = kept_cpu_setting(recorded) or cpu_choice(config, model, images)
    runtime = Runtime.resolve(config, device, world.size, cpu)
    if world.distributed:
        if config.runtime.sync_bn:
            use_global_batch_norm(model)
    size = config.data.image_size or getattr(model, "input_size", None)  # as exports record it
    model = runtime.prepare(model)
    teacher = load_teacher(config, data.classes, device, recorded.get("teacher"), size)
    optimizer = build_optimizer(model, config.optim, runtime.fused_sgd)
    compiled = runtime.compiled(wrap(model, world, device))
    step = make_step(
        compiled,
        optimizer,
        runtime,
        world=world,
        options=StepOptions.of(config.optim),
        seed=config.runtime.seed,
        teacher=teacher.model if teacher else None,
    )
    decay = config.optim.ema_decay
    ema = WeightAverage(model, decay) if decay else None
    parts = Parts(data, model, runtime, optimizer, compiled, step, ema, teacher)
    # dropout's draws: each process its own stream, seeded right before training, so that
    # nothing built above (a teacher, the CPU choice, compiling) moves them
    seed_process(seed, 1, Stream.DROPOUT, world.rank)
    return Trainer(config, run_dir, parts, log_every, world, run_id or new_run_id())


def resolve_paths(config: Config) -> Config:
    """The config a run records: data_dir absolute (the official files fetched into the data
    folder when no --data-dir was given), init_from absolute."""
    data = config.data
    if data.data_dir is None:
        if data.dataset not in OFFICIAL:
            raise ConfigError(f"--data-dir is required for --dataset {data.dataset}")
        root = default_data_dir(data.dataset)
        log.info(f"no --data-dir: the official {data.dataset} files in {root}")
        tests = not data.val_size or data.val_and_test
        splits = [data.train_split] + ([data.test_split] if tests else [])
        with signals_interrupt(DOWNLOAD_STOPPED):  # a stopped download leaves nothing
            ensure_official(data.dataset, root, splits, data.verify)
        config = config.replace(data_dir=str(root))
    changes = {"data_dir": str(Path(config.data.data_dir).expanduser().absolute())}
    for key, path in (("init_from", config.model.init_from), ("teacher", config.optim.teacher)):
        if path:
            changes[key] = str(Path(path).expanduser().absolute())
    return config.replace(**changes)


def _check_extras(config: Config, out: str | Path) -> None:
    """The extras and files a run's options need, checked before any work."""
    teacher = config.optim.teacher
    if teacher and not Path(teacher).exists():
        raise ConfigError(f"--teacher {teacher}: no such run directory or model file")
    if teacher and Path(out).resolve() in (
        Path(teacher).resolve(),
        *Path(teacher).resolve().parents,
    ):
        raise ConfigError(
            f"--teacher {teacher}: inside this run's own folder ({out}), which the run replaces; "
            "export the teacher's weights elsewhere first (wrn export)"
        )
    if config.runtime.tensorboard:
        require("tensorboard", "--tensorboard")


def _world(config: Config) -> World:
    return world_from_environment(resolve_device(config.runtime.device).type)


def train(
    config: Config, out: str | Path, *, overwrite: bool = False, log_every: int = 0
) -> Result:
    """Start a run in `out` and train it to the end; its result.json.

    Everything (options, data, model) is checked before the folder is touched; an old run
    replaced with `overwrite` is kept aside until the new run's first checkpoint. Under
    torchrun, rank 0 fetches, checks and writes; the others follow it."""
    _check_extras(config, out)
    run_dir, world = RunDir(out), _world(config)
    try:
        with process_settings(config):
            if world.main:
                run_dir.check_new(overwrite)
                config = resolve_paths(config)
            world.barrier()
            config = config if world.main else resolve_paths(config)
            trainer = make_trainer(config, run_dir, log_every, world)
            if world.main:
                run_dir.claim_new(overwrite)
            world.barrier()
            return _start(trainer, config, run_dir, world)
    finally:
        shutdown(world)


def _start(trainer: Trainer, config: Config, run_dir: RunDir, world: World) -> Result:
    try:
        if world.main:
            run_dir.write_config(config.to_dict(), trainer.resolved(), trainer.run_id)
        runtime, data = trainer.runtime, trainer.data
        log.info(
            f"{config.model.model}: {count_params(trainer.model):,} parameters, "
            f"{data.train_size:,} train / {data.test_size:,} test images ({data.loader}: "
            f"{data.loader_reason}), "
            f"{runtime.device} {runtime.precision}{' compiled' if runtime.compile else ''}"
            + (f", {world.size} processes" if world.distributed else "")
        )
        if config.optim.lr_batch:
            log.info(trainer.resolved()["reasons"]["lr"])
        return trainer.run()
    except BaseException:
        if world.main:
            run_dir.restore()  # only while the new run has no checkpoint
        raise
    finally:
        if world.main:
            run_dir.release()


def resume_changes(saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The options given again on the command line that differ from the run's: those of
    RESUME_CHANGES are allowed, any other is refused with the list of differences."""
    typed = typed_values(overrides)
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


def _check_same_data(checkpoint: Checkpoint, data: RunData, config: Config) -> None:
    recorded = checkpoint.data_fingerprint
    if recorded and recorded != data.fingerprint:
        raise RunError(
            f"the data at {config.data.data_dir} is not the data this run trained on (its "
            "fingerprint differs); resuming would not continue the same run"
        )


def resume(
    out: str | Path, overrides: dict[str, Any] | None = None, *, log_every: int = 0
) -> Result:
    """Continue a stopped run exactly. `overrides`: options given again on the command line;
    they must equal the run's, but for RESUME_CHANGES (lower --lr, more --epochs, a moved
    --data-dir holding the same data, ...), which are applied from here on and recorded."""
    run_dir = RunDir(out)
    if not run_dir.path.is_dir():
        raise RunError(f"--resume {out}: no such run directory")
    if run_dir.aside_with_checkpoint() is not None and os.environ.get("RANK", "0") == "0":
        run_dir.lock()  # an interrupted --overwrite: the run it replaced comes back
        run_dir.put_back()
        run_dir.release()
    checkpoint, source = run_dir.checkpoints.load_latest()
    if checkpoint.training is None:
        raise RunError(f"{source}: a model-only checkpoint; not a training checkpoint of wrn")
    run_dir.check_belongs(checkpoint, source)
    recorded = run_dir.config() or {}
    run_id = recorded.get("run_id") or checkpoint.run_id or new_run_id()
    changes = resume_changes(checkpoint.config, overrides or {})
    config = config_of({**checkpoint.config, **changes}, source)
    _check_extras(config, out)
    trained = checkpoint.training.state.epoch
    if config.optim.epochs < trained:
        raise RunError(f"--epochs {config.optim.epochs}: the run has trained {trained}")
    world = _world(config)
    try:
        if world.main:
            run_dir.lock()
        with process_settings(config):
            trainer = make_trainer(config, run_dir, log_every, world, checkpoint.resolved, run_id)
            trainer.restore(checkpoint)
            _check_same_data(checkpoint, trainer.data, config)
            _record_changes(trainer, checkpoint, changes, config, run_dir)
            state = trainer.state
            log.info(f"resuming {out} at epoch {state.epoch + 1} step {state.step_in_epoch}")
            world.barrier()
            if state.epoch >= config.optim.epochs:
                return trainer.finish()
            return trainer.run()
    finally:
        if world.main:
            run_dir.release()
        shutdown(world)


def _record_changes(
    trainer: Trainer, checkpoint: Checkpoint, changes: dict, config: Config, run_dir: RunDir
) -> None:
    """Apply and record what resume changed; rank 0 rewrites config.json and metrics.jsonl."""
    state = trainer.state
    for key, value in changes.items():
        before = checkpoint.config.get(key)
        change = ConfigChange(key, before, value, state.epoch + 1, state.step_in_epoch)
        state.config_changes.append(change)
        log.info(change.flag.replace("changed on resume", "resume changes"))
    if trainer.world.main:
        if changes or (run_dir.config() or {}).get("run_id") != trainer.run_id:
            run_dir.write_config(config.to_dict(), trainer.resolved(), trainer.run_id)
        run_dir.write_metrics(state.metrics)  # drop lines past the checkpoint
        run_dir.clear_result()
