"""The configuration of a run: four frozen sections (model, data, optim, runtime).

On disk (RUN_DIR/config.json) and on the command line the config is flat: one key per field,
`--batch-size` for `batch_size`. Every field carries its help text, shown by `wrn train --help`.
Values are coerced from the fields' real annotations, strictly: a bool is not an int and a
float is never truncated to one. Model options default to None ("not given") so that they never
override a model's own defaults.

Config flows one way: command line or file -> Config -> the model, data and optimiser builders.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wideresnet.errors import ConfigError, RunError
from wideresnet.files import read_text
from wideresnet.options import (
    AUTO_ON_OFF,
    EXPERIMENT_TAG,
    INCREASING_EPOCHS,
    MEMORY_SIZE,
    ODD_KERNELS,
    POSITIVE,
    SEED_LIMIT,
    FieldInfo,
    Section,
    at_least,
    between,
    coerce_value,
    field_infos,
    option,
)


@dataclass(frozen=True)
class ModelConfig(Section):
    model: str = option("wrn-16-4", "model name, e.g. wrn-28-10 (see `wrn info --list`)")
    num_classes: int | None = option(
        None, "size of the head; default: the data's class count (must match it)", check=POSITIVE
    )
    block: tuple[int, ...] | None = option(
        None,
        "wrn-d-k: kernel sizes of the block B(M), e.g. 3,1,3 (the paper's 3,3)",
        check=ODD_KERNELS,
    )
    blocks_per_group: int | None = option(
        None, "wrn-d-k: blocks per group N, overriding (d-4)/6 (Table 3)", check=POSITIVE
    )
    dropout: float | None = option(
        None, "wrn-d-k: dropout between the block's convs (off unless given)", check=between(0, 1)
    )
    init: str | None = option(
        None,
        "weight init: authors (the paper's code) | he_fan_out",
        choices=("authors", "he_fan_out"),
    )
    activation: str | None = option(
        None,
        "wrn-d-k: relu (the paper) | leaky_relu:SLOPE (FixMatch's, USB's: leaky_relu:0.1) | "
        "swish (DeepMind's)",
        check=(
            lambda v: v in ("relu", "swish", "silu") or re.fullmatch(r"leaky_relu:\d*\.?\d+", v),
            "must be relu, leaky_relu:SLOPE or swish",
        ),
    )
    bn_momentum: float | None = option(
        None,
        "wrn-d-k: batch-norm momentum, PyTorch's convention (0.1; FixMatch 0.001)",
        check=between(0, 1, closed_high=True),
    )
    bn_eps: float | None = option(
        None,
        "wrn-d-k: the norm layers' eps (1e-5; USB 0.001)",
        check=(lambda v: v > 0, "must be > 0"),
    )
    norm: str | None = option(
        None,
        "wrn-d-k: batch (the paper) | group:G (group norm with G groups, for private, federated "
        "or test-time-adapted training)",
        check=(lambda v: re.fullmatch(r"batch|group:[1-9]\d*", v), "must be batch or group:G"),
    )
    groups: int | None = option(
        None, "wrn-d-k: 3 groups (the paper) | 4 (USB's wrn_var_37_2 for STL-10)", choices=(3, 4)
    )
    first_stride: int | None = option(
        None, "wrn-d-k: the first group's stride: 1 (the paper) | 2 (wrn_var_37_2)", choices=(1, 2)
    )
    head_bn_eps: float | None = option(
        None,
        "wrn-d-k: the final norm's eps, where it differs from --bn-eps (USB 0.3: 0.001)",
        check=(lambda v: v > 0, "must be > 0"),
    )
    conv_bias: bool | None = option(None, "wrn-d-k: a bias on every conv (the paper: none; USB)")
    stem_bias: bool | None = option(None, "wrn-d-k: a bias on the first conv alone (USB 0.3)")
    conv_padding: str | None = option(
        None,
        "wrn-d-k: symmetric (the paper) | same (TensorFlow's padding of strided convs, DeepMind's)",
        choices=("symmetric", "same"),
    )
    shortcut_input: str | None = option(
        None,
        "wrn-d-k: preact (the paper) | raw (FixMatch: the first block of groups 2-3 reads x)",
        choices=("preact", "raw"),
    )
    head_bias: bool | None = option(None, "wrn-d-k: a bias in the linear head (the paper: yes)")
    head: str | None = option(
        None,
        "wrn-d-k: linear (the paper) | cosine (features and weights L2-normalised: "
        "RobustBench's Pang2020Boosting)",
        choices=("linear", "cosine"),
    )
    init_from: str | None = option(
        None,
        "start from the weights of a checkpoint or run directory (a new head when the class "
        "count differs; a fresh optimiser)",
    )

    NOT_ARCHITECTURE = ("model", "num_classes", "init_from")  # every model takes these


@dataclass(frozen=True)
class DataConfig(Section):
    dataset: str = option(
        "cifar10",
        "cifar10 | cifar100 | svhn | folder | npz | imagenet | shards (`wrn data pack`)",
        choices=("cifar10", "cifar100", "svhn", "folder", "npz", "imagenet", "shards"),
    )
    data_dir: str | None = option(None, "the dataset's folder (or .zip / .npz file)")
    loader: str = option(
        "auto",
        "auto (resident when the decoded set fits the memory budget, else stream; ImageNet "
        "streams) | resident (whole on the device) | stream (decoded as it goes, in workers)",
        choices=("auto", "resident", "stream"),
    )
    workers: int | None = option(
        None,
        "streaming: decoding processes (default: the cores per training process, at most 16; "
        "0: in the training process)",
        check=at_least(0),
    )
    data_memory: str | None = option(
        None,
        "memory the data may take on the training device, e.g. 8G or 500M (default: half of "
        "what is free)",
        check=MEMORY_SIZE,
    )
    labels: str = option("fine", "CIFAR-100 labels: fine | coarse", choices=("fine", "coarse"))
    train_split: str = option("train", "split to train on (svhn: train+extra in its preset)")
    test_split: str = option("test", "split to test on")
    augment: bool = option(True, "random crop (--crop) + flip")
    crop: str = option(
        "pad",
        "pad (the paper's: a random crop of the 4-px reflection-padded image) | random-sized "
        "(fb.resnet.torch's ImageNet: 8 to 100 percent of the area, aspect 3/4-4/3, bicubic to "
        "--crop-size) | random-resized (torchvision's RandomResizedCrop, bilinear)",
        choices=("pad", "random-sized", "random-resized"),
    )
    crop_size: int | None = option(
        None, "random-sized crops: their side in pixels (default 224)", check=POSITIVE
    )
    eval_resize: int | None = option(
        None,
        "random-sized runs: test images scaled to this shorter side (default 256), then "
        "centre-cropped to --eval-crop",
        check=POSITIVE,
    )
    eval_crop: int | None = option(
        None, "random-sized runs: the centre crop at test (default: --crop-size)", check=POSITIVE
    )
    color_jitter: float = option(
        0.0,
        "brightness, contrast and saturation jitter in random order (fb.resnet.torch's "
        "ImageNet: 0.4)",
        check=at_least(0),
    )
    lighting: float = option(
        0.0,
        "AlexNet-style PCA lighting noise, its std (fb.resnet.torch's ImageNet: 0.1)",
        check=at_least(0),
    )
    preprocess: str = option(
        "meanstd",
        "meanstd (the paper's CIFAR) | zca (GCN + ZCA, Table 4) | div255 (SVHN) | imagenet "
        "(ImageNet's mean/std)",
        choices=("meanstd", "zca", "div255", "imagenet"),
    )
    val_size: int = option(
        0, "hold out the last N training images and test on them", check=at_least(0)
    )
    val_and_test: bool = option(
        False,
        "with --val-size: the held-out images are a validation set (val_error each tested "
        "epoch) and the test split is still tested (test_error): `wrn report` then gives the "
        "test error at the epoch of best validation error",
    )
    train_limit: int | None = option(
        None, "use only the first N training images (quick runs)", check=POSITIVE
    )
    image_size: int | None = option(None, "folder datasets: resize images to N x N", check=POSITIVE)
    verify: bool = option(True, "check the official md5s (--no-verify skips it, with a warning)")
    policy: str | None = option(
        None,
        "augmentation policy after crop and flip: autoaugment | randaugment:N:M | trivialaugment",
        check=(
            lambda v: re.fullmatch(r"autoaugment|trivialaugment|randaugment(:\d+:\d+)?", v),
            "must be autoaugment, randaugment:N:M or trivialaugment",
        ),
    )
    cutout: int = option(
        0, "Cutout square in pixels (16 for CIFAR-10, 8 for CIFAR-100)", check=at_least(0)
    )
    eval_limit: int | None = option(
        None,
        "test on the first N test images only (quick runs; flagged in results)",
        check=POSITIVE,
    )

    def crop_sizes(self) -> tuple[int, int, int]:
        """(training crop, test images' shorter side, test centre crop) of random-sized runs,
        fb.resnet.torch's ImageNet sizes (224, 256, the training crop) where not given."""
        size = self.crop_size or 224
        return size, self.eval_resize or 256, self.eval_crop or size


@dataclass(frozen=True)
class OptimConfig(Section):
    epochs: int = option(200, "epochs to train", check=POSITIVE)
    batch_size: int = option(
        128, "training batch (the last partial batch is dropped)", check=POSITIVE
    )
    lr: float = option(0.1, "initial learning rate", check=POSITIVE)
    lr_batch: int | None = option(
        None,
        "the batch --lr is given for, scaled linearly to --batch-size (the ImageNet recipes: "
        "256); not given: --lr as it is",
        check=POSITIVE,
    )
    milestones: tuple[int, ...] = option(
        (60, 120, 160),
        "comma-separated epochs; epoch m is the first at the lower rate",
        check=INCREASING_EPOCHS,
    )
    lr_decay: float = option(
        0.2, "factor applied at each milestone", check=(lambda v: 0 < v <= 1, "must be in (0, 1]")
    )
    momentum: float = option(0.9, "SGD momentum (dampening 0)", check=between(0, 1))
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 on every parameter, BN included", check=at_least(0))
    reset_momentum: bool = option(True, "restart momentum at each lr drop (the authors' code)")
    lr_schedule: str = option(
        "step",
        "step (the paper's milestones) | cosine (per step) | cosine-epoch (per epoch)",
        choices=("step", "cosine", "cosine-epoch"),
    )
    warmup_epochs: float = option(
        0.0, "linear warm-up from 0 over N epochs (per step)", check=at_least(0)
    )
    label_smoothing: float = option(0.0, "label smoothing of the loss", check=between(0, 1))
    mixup_alpha: float = option(0.0, "mixup with Beta(a, a) mixing (0: off)", check=at_least(0))
    cutmix_alpha: float = option(
        0.0,
        "CutMix with Beta(a, a) areas (0: off; with mixup, each batch picks one)",
        check=at_least(0),
    )
    sam_rho: float = option(0.0, "SAM neighbourhood size rho (0: plain SGD)", check=at_least(0))
    sam_adaptive: bool = option(False, "adaptive SAM (ASAM: rho scaled by |w|)")
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights (e.g. 0.999) and test it too",
        check=between(0, 1),
    )
    teacher: str | None = option(
        None,
        "knowledge distillation: the teacher (a run directory, checkpoint, import or export) "
        "whose softened outputs the student learns too (Hinton et al. 2015)",
    )
    kd_temperature: float = option(
        4.0, "distillation: the softmax temperature T of both outputs", check=POSITIVE
    )
    kd_alpha: float = option(
        0.9,
        "distillation: the weight of the teacher's term (T^2 KL); 1 - A weights the labels' loss",
        check=between(0, 1, closed_high=True),
    )

    @property
    def base_lr(self) -> float:
        """The learning rate at the start of the schedule: --lr, scaled linearly from
        --lr-batch to --batch-size when that is given (the ImageNet recipes)."""
        return self.lr * self.batch_size / self.lr_batch if self.lr_batch else self.lr


@dataclass(frozen=True)
class RuntimeConfig(Section):
    seed: int = option(
        0, "seed of the init, data order and augmentation", check=between(0, SEED_LIMIT)
    )
    deterministic: bool = option(False, "deterministic kernels (slower on GPU)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = option(
        "auto",
        "auto (bf16 on a GPU; on a CPU by measurement) | bf16 | fp32 | fp16 (opt-in: "
        "autocast with loss scaling)",
        choices=("auto", "bf16", "fp32", "fp16"),
    )
    channels_last: bool | None = option(None, "NHWC memory format (default: on)")
    compile: str = option(
        "auto",
        "torch.compile: auto (on for CUDA) | on (the model) | step (the whole step) | off",
        choices=(*AUTO_ON_OFF, "step"),
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode: default | max-autotune (opt-in: autotuned kernels, long compile)",
        choices=("default", "max-autotune"),
    )
    fused_sgd: str = option(
        "auto", "one fused SGD kernel: auto (on for CUDA) | on | off", choices=AUTO_ON_OFF
    )
    cuda_graphs: str = option(
        "auto",
        "replay compiled steps as CUDA graphs: auto (on when compiling for CUDA)",
        choices=AUTO_ON_OFF,
    )
    sync_bn: bool = option(
        False, "several processes: batch norm over the global batch (default: per process)"
    )
    checkpoint_every: int = option(
        0, "also checkpoint every N steps inside an epoch", check=at_least(0)
    )
    eval_batch_size: int = option(500, "batch size of evaluation", check=POSITIVE)
    eval_every: int = option(
        1, "test every N epochs and after the last (flagged in results when > 1)", check=POSITIVE
    )
    tensorboard: bool = option(False, "also write metrics to RUN_DIR/tensorboard/ (extra)")
    experiment: str | None = option(
        None,
        "the paper's table cell this run fills, TABLE/ROW@DATASET (set by `wrn table run`)",
        check=EXPERIMENT_TAG,
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "runtime": RuntimeConfig,
}


FIELDS: dict[str, FieldInfo] = field_infos(SECTIONS)


def coerce(key: str, value: Any) -> Any:
    """`value` as the type of field `key`; ConfigError naming the key when it does not fit."""
    return coerce_value(FIELDS[key], value)


def unknown_key_error(key: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(FIELDS), n=1)
    return ConfigError(f"unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def _coerced(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options (dashes or underscores) coerced to their fields' types; unknown keys
    raise with a hint."""
    coerced = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise unknown_key_error(key)
        coerced[key] = coerce(key, value)
    return coerced


def typed_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options coerced to their fields' types, JSON-ready (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _coerced(values).items()}


@dataclass(frozen=True)
class Config:
    """Everything that decides a run. `Config.from_dict(flat)` / `config.to_dict()`.

    Each field is checked as its section is built, and the rules between fields (`check`)
    as the config is, so a bad combination fails before any data is decoded."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """The rules between fields; ConfigError naming the options that clash."""
        optim, runtime = self.optim, self.runtime
        if runtime.compile == "step" and optim.sam_rho:
            raise ConfigError("--compile step does not combine with SAM (its second pass)")
        if runtime.precision == "fp16" and (runtime.compile == "step" or optim.sam_rho):
            raise ConfigError("--precision fp16 does not combine with --compile step or SAM")
        _, resize, centre = self.data.crop_sizes()
        if self.data.crop != "pad" and centre > resize:
            raise ConfigError(
                f"--eval-crop {centre} is larger than --eval-resize {resize}: the test images' "
                "centre crop must fit in their resized shorter side"
            )
        if self.data.val_and_test and not self.data.val_size:
            raise ConfigError("--val-and-test needs --val-size N (the images to validate on)")
        if optim.nesterov and optim.momentum == 0:
            raise ConfigError(
                "--momentum 0: Nesterov momentum needs a momentum > 0 (or pass --no-nesterov)"
            )
        if optim.warmup_epochs > optim.epochs:
            raise ConfigError(
                f"--warmup-epochs {optim.warmup_epochs:g} is longer than the run "
                f"(--epochs {optim.epochs})"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """Build from flat keys (dashes or underscores); unknown keys raise with a hint."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in _coerced(values).items():
            sections[FIELDS[key].section][key] = value
        return cls(**{name: SECTIONS[name](**kwargs) for name, kwargs in sections.items()})

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-ready (tuples become lists)."""
        flat = {}
        for name in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                flat[key] = list(value) if isinstance(value, tuple) else value
        return flat

    def replace(self, **changes: Any) -> Config:
        """A copy with flat keys changed (coerced and checked like any other value)."""
        return Config.from_dict({**self.to_dict(), **changes})

    def given_model_options(self) -> dict[str, Any]:
        """The architecture options that were set (not None)."""
        values = dataclasses.asdict(self.model)
        skip = ModelConfig.NOT_ARCHITECTURE
        return {k: v for k, v in values.items() if v is not None and k not in skip}


RECORD_ONLY_KEYS = ("resolved", "run_id")  # config.json's record of a run; not options


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The flat options in a JSON or TOML file (a run's own config.json included)."""
    path = Path(path)
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = read_text(path, "config file")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except RunError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise ConfigError(f"{path}: cannot read config ({reason})") from None
    except ValueError as error:  # json and tomllib both raise ValueError subclasses
        raise ConfigError(f"{path}: not valid {kind} ({error})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid {kind} (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold one object of options")
    return {k: v for k, v in data.items() if k not in RECORD_ONLY_KEYS}
