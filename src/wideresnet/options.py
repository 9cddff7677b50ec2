"""Config options: a field with its help text and the rule its value must follow, and values
coerced strictly to the field's real annotation (a bool is not an int, a float is never
truncated to one)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wideresnet.errors import ConfigError
from wideresnet.tags import Tag

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
EXPERIMENT_TAG: Check = (lambda v: Tag.parse(v) is not None, "must look like TABLE/ROW@DATASET")
SEED_LIMIT = 2**32
MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.I)


def memory_bytes(text: str) -> int:
    """'8G', '500M', '1.5G', '1024' (bytes) as a number of bytes."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return int(float(match[1]) * MEMORY_UNITS[match[2].upper()])


MEMORY_SIZE: Check = (
    lambda v: _MEMORY.fullmatch(v.strip()) is not None and memory_bytes(v) > 0,
    "must be a size such as 8G or 500M",
)


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
class FieldInfo:
    key: str
    section: str
    kind: type  # int, float, bool, str or tuple (of ints)
    optional: bool
    default: Any
    help: str
    choices: tuple[str, ...]


def field_infos(sections: dict[str, type]) -> dict[str, FieldInfo]:
    """Each field of the sections, by its flat key."""
    infos = {}
    for section, cls in sections.items():
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


_ITEM = FieldInfo("item", "", int, False, 0, "", ())  # an element of a tuple field
_INT = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_text(info: FieldInfo, text: str) -> Any:
    """A value typed on the command line (or given as a string in a file)."""
    text = text.strip()
    if info.optional and text.lower() == "none":
        return None
    if info.optional and not text:  # `--block ""`: a typo, not "not given" (that is `none`)
        raise ValueError
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


def coerce_value(info: FieldInfo, value: Any) -> Any:
    """`value` as the type of the field; ConfigError naming the field when it does not fit."""
    key = info.key
    if value is None:
        if info.optional:
            return None
        raise ConfigError(f"{key} cannot be empty")
    try:
        typed = _strict(info, value)
    except (TypeError, ValueError):
        kind = "comma-separated integers" if info.kind is tuple else f"a valid {info.kind.__name__}"
        raise ConfigError(f"{key}: {value!r} is not {kind}") from None
    if info.kind is float and not math.isfinite(typed):  # no option means inf or NaN
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return typed
