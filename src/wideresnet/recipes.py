"""Training recipes: one frozen dataclass, the paper's presets, and how to override them."""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad config key or value: one clear message."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run. Written to RUN_DIR/config.json."""

    # what to train, on what
    model: str = "wrn-16-4"
    dataset: str = "cifar10"
    data_dir: str = ""
    num_classes: int | None = None  # None: from the data; else must match it
    labels: str = "fine"  # CIFAR-100: fine or coarse
    block: tuple[int, ...] = (3, 3)
    blocks_per_group: int | None = None
    init: str = "authors"
    dropout: float = 0.0
    # the paper's optimisation (PAPER.md "Training recipes")
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[int, ...] = (60, 120, 160)  # epoch m is the first at the lower rate
    lr_decay: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on every parameter, BN included
    reset_momentum: bool = True  # the authors rebuild the optimizer at every lr drop
    # data
    train_split: str = "train"
    test_split: str = "test"
    augment: bool = True  # flip + random crop of the 4-px reflection-padded image
    preprocess: str = "meanstd"  # meanstd | zca | div255
    val_size: int = 0  # >0: hold out the last val_size training images and test on them
    train_limit: int | None = None  # use only the first N training images
    image_size: int | None = None  # folder datasets: resize to this size
    verify: bool = True
    # run
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where supported) | bf16 | fp32
    channels_last: bool = True
    compile: str = "auto"  # auto (on for CUDA) | on | off
    fused_sgd: str = "auto"  # auto (on for CUDA) | on | off
    cuda_graphs: str = "auto"  # auto (on when compiling for CUDA) | on | off
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        check = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]"),
            (all(m >= 1 for m in self.milestones), "milestones must be epochs >= 1"),
            (list(self.milestones) == sorted(self.milestones), "milestones must be increasing"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (
                self.preprocess in ("meanstd", "zca", "div255"),
                "preprocess must be meanstd, zca or div255",
            ),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            (self.compile in ("auto", "on", "off"), "compile must be auto, on or off"),
            (self.fused_sgd in ("auto", "on", "off"), "fused_sgd must be auto, on or off"),
            (self.cuda_graphs in ("auto", "on", "off"), "cuda_graphs must be auto, on or off"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.train_limit is None or self.train_limit >= 1, "train_limit must be >= 1"),
            (self.num_classes is None or self.num_classes >= 1, "num_classes must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
        ]
        for ok, message in check:
            if not ok:
                raise ConfigError(message)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch `epoch` (counted from 1)."""
        drops = sum(1 for m in self.milestones if epoch >= m)
        return self.lr * self.lr_decay**drops

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
        }


PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {},  # the dataclass defaults are the paper's CIFAR recipe
    "svhn": {
        "dataset": "svhn",
        "lr": 0.01,
        "milestones": (80, 120),
        "lr_decay": 0.1,
        "epochs": 160,
        "dropout": 0.4,
        "augment": False,
        "preprocess": "div255",
        "train_split": "train+extra",
    },
}


def _coerce(name: str, value: Any) -> Any:
    """Turn a JSON/TOML/command-line value into the field's type."""
    kind = {f.name: f.type for f in fields(Recipe)}[name]
    try:
        if value is None:
            if "None" not in kind:
                raise ConfigError(f"{name} cannot be empty")
            return None
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return tuple(int(v) for v in value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes", "on")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None


def unknown_key_error(key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    return ConfigError(f"unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))


def make_recipe(preset: str = "cifar", overrides: dict[str, Any] | None = None) -> Recipe:
    """The preset with `overrides` applied; unknown keys raise ConfigError with a hint."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    known = [f.name for f in fields(Recipe)]
    values = dict(PRESETS[preset])
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        if key not in known:
            raise unknown_key_error(key, known)
        values[key] = _coerce(key, value)
    return dataclasses.replace(Recipe(), **values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of recipe fields (and optionally "preset")."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({error})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold one object of options")
    return data


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a Recipe from config.json (a checkpoint's or a run directory's)."""
    return make_recipe("cifar", data)
