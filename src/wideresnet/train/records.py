"""The typed records of a run, each with the one place its on-disk form is read and written:
a metrics row (metrics.jsonl), the result (result.json), and the training state a checkpoint
carries. Reading checks every field's type against its annotation, so a torn, edited or
foreign file is one error naming it, never a KeyError deep inside a reader."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wideresnet.errors import RunError
from wideresnet.protocol import ConfigChange

_KINDS = {int: (int,), float: (int, float), str: (str,), bool: (bool,), list: (list,)}
_KINDS |= {dict: (dict,), tuple: (tuple, list)}


def _fits(kind: Any, value: Any) -> bool:
    if isinstance(kind, types.UnionType):
        return any(_fits(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is Any:
        return True
    kind = typing.get_origin(kind) or kind
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, _KINDS.get(kind, (kind,)))


def typed_fields(cls: type, values: Any, where: str) -> dict[str, Any]:
    """The fields of dataclass `cls` in `values`, each checked against its annotation (a
    missing field takes its default); RunError naming `where` and the first that does not fit."""
    if not isinstance(values, Mapping):
        raise RunError(f"{where}: a {type(values).__name__}, not a record of fields")
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RunError(f"{where}: field {f.name} is missing")
            continue
        value = values[f.name]
        if not _fits(hints[f.name], value):
            raise RunError(f"{where}: field {f.name} is a {type(value).__name__}")
        found[f.name] = value
    return found


@dataclass
class EpochTotals:
    """The sums of the part of an epoch done before a mid-epoch checkpoint (every process)."""

    loss: float = 0.0
    wrong: int = 0
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, values: Any, where: str) -> EpochTotals:
        return cls(**typed_fields(cls, values, where))


@dataclass
class Seconds:
    """Wall clock of a run, summed over epochs and resumes."""

    data: float = 0.0  # loading before training, and producing batches (inside train)
    train: float = 0.0
    eval: float = 0.0

    @property
    def total(self) -> float:
        return self.train + self.eval


@dataclass
class MetricsRow:
    """One epoch of metrics.jsonl (errors in %, seconds wall clock)."""

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    test_loss: float | None
    test_error: float | None
    epoch_seconds: float
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_images_per_second: float = 0.0
    test_top5_error: float | None = None
    ema_test_error: float | None = None
    val_error: float | None = None  # the held-out images' error, with --val-and-test

    ORDER = (  # of the keys in metrics.jsonl (wideresnet 0.2's)
        "epoch",
        "lr",
        "train_loss",
        "train_error",
        "test_loss",
        "test_error",
        "test_top5_error",
        "ema_test_error",
        "val_error",
        "epoch_seconds",
        "train_seconds",
        "eval_seconds",
        "train_images_per_second",
    )

    def to_dict(self) -> dict[str, Any]:
        values = {key: getattr(self, key) for key in self.ORDER}
        for optional in ("ema_test_error", "val_error"):
            if values[optional] is None:
                del values[optional]
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str) -> MetricsRow:
        return cls(**typed_fields(cls, values, where))


@dataclass
class Result:
    """result.json: what a finished run measured."""

    test_error: float
    epochs: int
    model: str
    dataset: str
    params: int
    wall_seconds: dict[str, float]
    test_loss: float | None = None
    train_error: float | None = None
    test_top5_error: float | None = None
    ema_test_error: float | None = None
    train_images: int = 0
    test_images: int = 0
    measured: str = ""
    flags: list[str] = field(default_factory=list)
    config_changes: list[dict] = field(default_factory=list)
    processes: int = 1
    environment: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    teacher: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for key in ("ema_test_error", "run_id", "teacher"):
            if values[key] is None:
                del values[key]
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str) -> Result:
        found = typed_fields(cls, values, where)
        seconds = found["wall_seconds"]
        if not all(_fits(float, seconds.get(k)) for k in ("train", "eval", "total")):
            raise RunError(f"{where}: field wall_seconds lacks train, eval or total seconds")
        return cls(**found)

    @property
    def total_seconds(self) -> float:
        return float(self.wall_seconds["total"])


@dataclass
class TrainingState:
    """Where a run stands: the counters, the metrics so far, and the sums of a part-done epoch."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps done in the next epoch
    global_step: int = 0
    metrics: list[MetricsRow] = field(default_factory=list)
    totals: EpochTotals = field(default_factory=EpochTotals)
    seconds: Seconds = field(default_factory=Seconds)
    config_changes: list[ConfigChange] = field(default_factory=list)

    def finished(self, epochs: int) -> bool:
        """Every one of `epochs` epochs trained, none part-done."""
        return self.epoch >= epochs and self.step_in_epoch == 0
