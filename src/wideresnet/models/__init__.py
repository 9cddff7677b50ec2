"""Every network of the WRN paper, by name: the registry, `create_model` and `list_models`.

Each family of names declares the options it takes; an option that does not fit the family is
refused by name, and options left as None never override a model's own defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from wideresnet.errors import ModelNameError
from wideresnet.models.baselines import CifarResNet, PreActResNet
from wideresnet.models.features import FeatureInfo, FeatureNet
from wideresnet.models.imagenet import ImageNetResNet
from wideresnet.models.official import (
    infer_official_model,
    load_official_params,
    official_state_dict,
)
from wideresnet.models.summary import FORWARDS_PER_TRAINING_IMAGE, count_params, model_summary
from wideresnet.models.variants import VARIANT_OPTIONS, Variant
from wideresnet.models.wrn import WideResNet, wrn_name

__all__ = [
    "FORWARDS_PER_TRAINING_IMAGE",
    "WideResNet",
    "ImageNetResNet",
    "CifarResNet",
    "PreActResNet",
    "create_model",
    "list_models",
    "model_options",
    "parse_model_name",
    "load_official_params",
    "official_state_dict",
    "infer_official_model",
    "count_params",
    "model_summary",
    "wrn_name",
    "ModelNameError",
    "Variant",
    "FeatureNet",
    "FeatureInfo",
]


@dataclass(frozen=True)
class Family:
    """One kind of name: its pattern, what it builds, and the options it takes."""

    pattern: re.Pattern[str]
    short: str  # how messages name the family, e.g. "wrn-d-k"
    description: str
    build: Callable[..., nn.Module]  # build(match, num_classes, **options)
    options: frozenset[str]
    default_classes: int
    fixed_depth: bool  # its pattern names its depths (wrn-50-2): it wins over wrn-d-k


_NUMBER = r"(\d+(?:\.\d+)?)"
_FAMILIES: list[Family] = []
ALIASES = {"wide_resnet50_2": "wrn-50-2", "wide_resnet101_2": "wrn-101-2"}  # torchvision's


def _family(
    pattern: str,
    short: str,
    description: str,
    options: set[str],
    classes: int = 10,
    *,
    fixed_depth: bool = False,
):
    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        compiled = re.compile(pattern + r"$")
        family = Family(
            compiled, short, description, build, frozenset(options), classes, fixed_depth
        )
        _FAMILIES.append(family)
        return build

    return wrap


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


IMAGENET_OPTIONS = {"init", "in_channels"}


@_family(
    r"wrn-(50|101)-" + _NUMBER,
    "ImageNet bottleneck",
    "wrn-50-2, wrn-101-2: ImageNet bottleneck WRNs (torchvision layout)",
    IMAGENET_OPTIONS,
    1000,
    fixed_depth=True,
)
@_family(
    r"wrn-(18|34|50|101|152)-" + _NUMBER + r"-imagenet",
    "ImageNet",
    "wrn-18-2-imagenet, wrn-34-1.5-imagenet, ...: ImageNet WRNs of Table 7 (k=1: ResNet)",
    IMAGENET_OPTIONS,
    1000,
    fixed_depth=True,
)
def _imagenet(match, num_classes, **options):
    return ImageNetResNet(int(match[1]), _number(match[2]), num_classes, **options)


@_family(
    r"resnet-(18|34|50|101|152)",
    "ImageNet",
    "resnet-18, resnet-50, ...: the ImageNet ResNets (torchvision layout)",
    IMAGENET_OPTIONS,
    1000,
    fixed_depth=True,
)
def _imagenet_resnet(match, num_classes, **options):
    return ImageNetResNet(int(match[1]), 1, num_classes, **options)


@_family(
    r"wrn-(\d+)-" + _NUMBER,
    "wrn-d-k",
    "wrn-d-k: CIFAR/SVHN WRN, d = 6N+4, k may be fractional",
    {"dropout", "block", "blocks_per_group", "init", "in_channels", "groups", "first_stride"}
    | VARIANT_OPTIONS,
)
def _wrn(match, num_classes, **options):
    return WideResNet(int(match[1]), _number(match[2]), num_classes, **options)


@_family(
    r"resnet-(\d+)",
    "resnet-d",
    "resnet-110, resnet-1202: original post-activation CIFAR ResNets (depth 6n+2)",
    {"init"},
)
def _resnet(match, num_classes, **options):
    return CifarResNet(int(match[1]), num_classes, **options)


@_family(
    r"preact-resnet-(\d+)",
    "preact-resnet-d",
    "preact-resnet-110 (basic), preact-resnet-164, preact-resnet-1001 (bottleneck)",
    {"init"},
)
def _preact(match, num_classes, **options):
    depth = int(match[1])
    # He et al. use basic blocks for 6n+2 depths up to 110 and bottlenecks for 164 and 1001.
    bottleneck = depth > 110 or (depth - 2) % 6 != 0
    return PreActResNet(depth, num_classes, bottleneck=bottleneck, **options)


# The names the paper uses, listed by list_models(); any name matching a pattern is accepted.
PAPER_MODELS = (
    *(f"wrn-{n}" for n in "16-4 16-8 16-10 22-8 22-10 28-10 28-12 40-1 40-2 40-4 40-8".split()),
    *("wrn-40-10", "wrn-52-1"),
    "resnet-110",
    "resnet-1202",
    "preact-resnet-110",
    "preact-resnet-164",
    "preact-resnet-1001",
    "wrn-50-2",
    "wrn-101-2",
    *(f"wrn-{d}-{k}-imagenet" for d in (18, 34) for k in ("1", "1.5", "2", "3")),
)


def list_models() -> list[str]:
    """The model names of the paper; `wrn-{d}-{k}` is accepted for any valid d and k."""
    return list(PAPER_MODELS)


def model_name_patterns() -> list[str]:
    """One line per family of accepted names."""
    return [family.description for family in _FAMILIES]


def _matches(key: str) -> list[tuple[Family, re.Match[str]]]:
    found = [(f, m) for f in _FAMILIES if (m := f.pattern.match(key))]
    fixed = [(f, m) for f, m in found if f.fixed_depth]
    return fixed or found  # a family naming its depths wins over a general one


def parse_model_name(name: str) -> tuple[Family, re.Match[str]]:
    """The family a name belongs to; ModelNameError when none (or, a bug, two) accept it."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    found = _matches(key)
    if not found:
        accepted = "; ".join(model_name_patterns())
        raise ModelNameError(f"unknown model {name!r}; accepted: {accepted}")
    if len(found) > 1:
        raise AssertionError(f"{key} matches {[f.short for f, _ in found]}: one family each")
    return found[0]


def model_options(name: str) -> tuple[frozenset[str], Callable[[str], str]]:
    """(options the model `name` takes, a function naming the families that take an option)."""
    family, _ = parse_model_name(name)

    def owner(option: str) -> str:
        owners = [f.short for f in _FAMILIES if option in f.options]
        return " and ".join(dict.fromkeys(owners)) or "no"

    return family.options, owner


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **options,
) -> nn.Module:
    """Build a model by name, e.g. create_model("wrn-28-10", num_classes=10, dropout=0.3).

    `features_only=True` gives the backbone (models/features.py FeatureNet): its forward
    returns the maps of `out_indices` (0 the stem, then each stage; default all), listed in
    its `feature_info`.

    Options left as None are not passed, so the model's own defaults stand. WideResNet takes
    dropout, block, blocks_per_group, in_channels and init; the baselines take init. Raises
    ModelNameError for an unknown name, an option the model does not take, or values it
    refuses (anything else a constructor raises is a bug, and passes through as one).
    """
    family, match = parse_model_name(name)
    options = {k: v for k, v in options.items() if v is not None}
    if num_classes is not None and num_classes < 1:
        raise ModelNameError(f"num_classes must be >= 1, got {num_classes}")
    _, owner = model_options(name)
    for option in options:
        if option not in family.options:
            raise ModelNameError(f"{option} applies to {owner(option)} models only, not {name}")
    if "block" in options:
        options["block"] = tuple(options["block"])
    try:
        model = family.build(match, num_classes or family.default_classes, **options)
    except ModelNameError as error:
        raise ModelNameError(f"{name}: {error}") from None
    model.name = name.strip().lower()
    if features_only:
        return FeatureNet(model, out_indices)
    if out_indices is not None:
        raise ModelNameError("out_indices applies with features_only=True")
    return model
