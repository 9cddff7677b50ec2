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
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wideresnet.errors import ConfigError

Check = tuple[Callable[[Any], bool], str]


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), check: Check | None = None):
    """A config field with its help text and the rule its value must follow."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


def at_least(low: float) -> Check:
    return (lambda v: v >= low, f"must be >= {low}")


def between(low: float, high: float, *, closed_high: bool = False) -> Check:
    if closed_high:
        return (lambda v: low <= v <= high, f"must be in [{low}, {high}]")
    return (lambda v: low <= v < high, f"must be in [{low}, {high})")


POSITIVE: Check = (lambda v: v > 0, "must be > 0")
INCREASING_EPOCHS: Check = (
    lambda v: all(m >= 1 for m in v) and list(v) == sorted(set(v)),
    "must be increasing epochs >= 1",
)
ODD_KERNELS: Check = (lambda v: len(v) > 0 and all(k >= 1 and k % 2 for k in v), "must be odd")
AUTO_ON_OFF = ("auto", "on", "off")
SEED_LIMIT = 2**32


class Section:
    """Checks every field of a frozen section against its rule when it is built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            choices, check = f.metadata.get("choices"), f.metadata.get("check")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
            if check and not check[0](value):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{f.name} {check[1]} (got {shown!r})")


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
        "cifar10 | cifar100 | svhn | folder | npz",
        choices=("cifar10", "cifar100", "svhn", "folder", "npz"),
    )
    data_dir: str | None = option(None, "the dataset's folder (or .zip / .npz file)")
    labels: str = option("fine", "CIFAR-100 labels: fine | coarse", choices=("fine", "coarse"))
    train_split: str = option("train", "split to train on (svhn: train+extra in its preset)")
    test_split: str = option("test", "split to test on")
    augment: bool = option(True, "random crop of the 4-px reflection-padded image + flip")
    preprocess: str = option(
        "meanstd",
        "meanstd (the paper's CIFAR) | zca (GCN + ZCA, Table 4) | div255 (SVHN)",
        choices=("meanstd", "zca", "div255"),
    )
    val_size: int = option(
        0, "hold out the last N training images and test on them", check=at_least(0)
    )
    train_limit: int | None = option(
        None, "use only the first N training images (quick runs)", check=POSITIVE
    )
    image_size: int | None = option(None, "folder datasets: resize images to N x N", check=POSITIVE)
    verify: bool = option(True, "check the official md5s (--no-verify skips it, with a warning)")
    eval_limit: int | None = option(
        None,
        "test on the first N test images only (quick runs; flagged in results)",
        check=POSITIVE,
    )


@dataclass(frozen=True)
class OptimConfig(Section):
    epochs: int = option(200, "epochs to train", check=POSITIVE)
    batch_size: int = option(
        128, "training batch (the last partial batch is dropped)", check=POSITIVE
    )
    lr: float = option(0.1, "initial learning rate", check=POSITIVE)
    milestones: tuple[int, ...] = option(
        (60, 120, 160),
        "comma-separated epochs; epoch m is the first at the lower rate",
        check=INCREASING_EPOCHS,
    )
    lr_decay: float = option(
        0.2, "factor applied at each milestone", check=between(0, 1, closed_high=True)
    )
    momentum: float = option(0.9, "SGD momentum (dampening 0)", check=between(0, 1))
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 on every parameter, BN included", check=at_least(0))
    reset_momentum: bool = option(True, "restart momentum at each lr drop (the authors' code)")


@dataclass(frozen=True)
class RuntimeConfig(Section):
    seed: int = option(
        0, "seed of the init, data order and augmentation", check=between(0, SEED_LIMIT)
    )
    deterministic: bool = option(False, "deterministic kernels (slower on GPU)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = option(
        "auto",
        "auto (bf16 where the hardware has it) | bf16 | fp32",
        choices=("auto", "bf16", "fp32"),
    )
    channels_last: bool | None = option(None, "NHWC memory format (default: on)")
    compile: str = option(
        "auto", "torch.compile: auto (on for CUDA) | on | off", choices=AUTO_ON_OFF
    )
    fused_sgd: str = option(
        "auto", "one fused SGD kernel: auto (on for CUDA) | on | off", choices=AUTO_ON_OFF
    )
    cuda_graphs: str = option(
        "auto",
        "replay compiled steps as CUDA graphs: auto (on when compiling for CUDA)",
        choices=AUTO_ON_OFF,
    )
    checkpoint_every: int = option(
        0, "also checkpoint every N steps inside an epoch", check=at_least(0)
    )
    eval_batch_size: int = option(500, "batch size of evaluation", check=POSITIVE)
    eval_every: int = option(
        1, "test every N epochs and after the last (flagged in results when > 1)", check=POSITIVE
    )
    tensorboard: bool = option(False, "also write metrics to RUN_DIR/tensorboard/ (extra)")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class FieldInfo:
    key: str
    section: str
    kind: type  # int, float, bool, str or tuple (of ints)
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...]


def _field_infos() -> dict[str, FieldInfo]:
    infos = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
            annotation = kinds[0] if isinstance(hints[f.name], types.UnionType) else hints[f.name]
            kind = typing.get_origin(annotation) or annotation
            optional = isinstance(hints[f.name], types.UnionType)
            infos[f.name] = FieldInfo(
                f.name,
                section,
                kind,
                optional,
                f.default,
                f.metadata["help"],
                f.metadata["choices"],
            )
    return infos


FIELDS: dict[str, FieldInfo] = _field_infos()
_ITEM = FieldInfo("item", "", int, False, 0, "", ())  # an element of a tuple field
_INT = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_text(info: FieldInfo, text: str) -> Any:
    """A value typed on the command line (or given as a string in a file)."""
    text = text.strip()
    if info.optional and text.lower() in ("", "none"):
        return None
    if info.kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError
        return text.lower() in _TRUE
    if info.kind is int:
        if not _INT.fullmatch(text):
            raise ValueError
        return int(text)
    if info.kind is float:
        return float(text)
    if info.kind is tuple:
        return tuple(_parse_text(_ITEM, v) for v in text.split(",") if v.strip())
    return text


def _strict(info: FieldInfo, value: Any) -> Any:
    """A typed value from JSON or TOML: a bool is not a number, a float is not an int."""
    if isinstance(value, str) and info.kind is not str:
        return _parse_text(info, value)
    if info.kind is bool and isinstance(value, bool):
        return value
    if info.kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if info.kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if info.kind is str and isinstance(value, str):
        return value
    if info.kind is tuple and isinstance(value, list | tuple):
        return tuple(_strict(_ITEM, v) for v in value)
    raise ValueError


def coerce(key: str, value: Any) -> Any:
    """`value` as the type of field `key`; ConfigError naming the key when it does not fit."""
    info = FIELDS[key]
    if value is None:
        if info.optional:
            return None
        raise ConfigError(f"{key} cannot be empty")
    try:
        return _strict(info, value)
    except (TypeError, ValueError):
        kind = "comma-separated integers" if info.kind is tuple else f"a valid {info.kind.__name__}"
        raise ConfigError(f"{key}: {value!r} is not {kind}") from None


def unknown_key_error(key: str) -> ConfigError:
    hint = difflib.get_close_matches(key, list(FIELDS), n=1)
    return ConfigError(f"unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def typed_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options coerced to their fields' types, JSON-ready (tuples as lists)."""
    typed = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in FIELDS:
            raise unknown_key_error(key)
        value = coerce(key, value)
        typed[key] = list(value) if isinstance(value, tuple) else value
    return typed


@dataclass(frozen=True)
class Config:
    """Everything that decides a run. `Config.from_dict(flat)` / `config.to_dict()`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """Build from flat keys (dashes or underscores); unknown keys raise with a hint."""
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in FIELDS:
                raise unknown_key_error(key)
            sections[FIELDS[key].section][key] = coerce(key, value)
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

    def flags(self) -> list[str]:
        """How a run's result departs from the paper's protocol, said wherever it is shown."""
        data, runtime = self.data, self.runtime
        flags = []
        if data.train_limit:
            flags.append(f"train_limit={data.train_limit}: trained on the first N training images")
        if data.val_size:
            flags.append(f"val_size={data.val_size}: tested on held-out training images")
        if data.eval_limit:
            flags.append(f"eval_limit={data.eval_limit}: test error on the first N test images")
        if runtime.eval_every > 1:
            flags.append(f"eval_every={runtime.eval_every}: tested every N epochs and the last")
        return flags


RECORD_ONLY_KEYS = ("resolved",)  # written into config.json for the record; ignored when read


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The flat options in a JSON or TOML file (a run's own config.json included)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except ValueError as error:  # json and tomllib both raise ValueError subclasses
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"{path}: not valid {kind} ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold one object of options")
    return {k: v for k, v in data.items() if k not in RECORD_ONLY_KEYS}
