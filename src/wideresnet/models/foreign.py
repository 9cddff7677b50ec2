"""Other projects' checkpoints, mapped onto our models key for key (`wrn import --from`).

  xternalz     WideResNet-pytorch (xternalz): `block1.layer.0.bn1...`; the paper's network and
               the paper's mean/std.
  robustbench  RobustBench's CIFAR WRNs (the same layout; `sub_block1` unused; a head with or
               without bias); inputs in [0, 1], or a normalisation wrapper's mean/std.
  fixmatch     FixMatch-pytorch (kekmodel) WRN-28-2: the same layout with leaky ReLU 0.1, batch
               norm momentum 0.001, and the first block of groups 2-3 reading its raw input.
  torchvision  `wide_resnet50_2`, `wide_resnet101_2` (and the ResNets): our ImageNet layout.
  authors      the authors' own PyTorch `params` dict (models/official.py).

Any `module.`-style prefix is dropped. Each layout says the input normalisation of the project
it came from; convert.py writes it into the imported checkpoint, so that predict and export
use the right one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from wideresnet.models.wrn import wrn_name

BLOCK_KEY = "block1.layer.0.bn1.weight"
XTERNALZ_KEYS = [
    (r"conv1\.weight", "conv0.weight"),
    (r"block(\d+)\.layer\.(\d+)\.bn1\.(\w+)", "group{g}.block{i}.bn0.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.conv1\.weight", "group{g}.block{i}.conv0.weight"),
    (r"block(\d+)\.layer\.(\d+)\.bn2\.(\w+)", "group{g}.block{i}.bn1.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.conv2\.weight", "group{g}.block{i}.conv1.weight"),
    (r"block(\d+)\.layer\.(\d+)\.convShortcut\.weight", "group{g}.block{i}.convdim.weight"),
    (r"bn1\.(\w+)", "bn.{x}"),
    (r"fc\.(weight|bias)", "fc.{x}"),
]
FIXMATCH = {"activation": "leaky_relu:0.1", "bn_momentum": 0.001, "shortcut_input": "raw"}
UNIT = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)  # inputs in [0, 1]
FIXMATCH_NORMALIZATION = {  # kekmodel's dataset/cifar.py, on [0, 1]
    10: ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
LAYERS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


@dataclass
class Imported:
    """A foreign state_dict as ours: model name and options, weights, input normalisation."""

    model: str
    options: dict
    weights: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None  # on the 0-255 scale; None: ours, named by `preprocess`
    std: tuple[float, ...] | None
    notes: list[str] = field(default_factory=list)
    preprocess: str = "meanstd"  # our normalisation the project used (without mean/std)


def _scaled(values) -> tuple[float, ...]:
    """A mean or std on the 0-255 scale (given on [0, 1] when every value is at most 1)."""
    values = [float(v) for v in values]
    return tuple(v * 255 for v in values) if max(values) <= 1 else tuple(values)


def _strip_prefix(state: Mapping[str, torch.Tensor], marker: str) -> tuple[dict, dict]:
    """(the network's keys without their prefix, the keys outside the network)."""
    prefixes = [k[: -len(marker)] for k in state if k.endswith(marker)]
    if not prefixes:
        raise ValueError(f"no {marker} key: not this layout")
    prefix = min(prefixes, key=len)
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return inside, outside


def _wrapper_normalization(outside: dict) -> tuple[tuple, tuple] | None:
    """A normalisation wrapper's mean and std (keys ending in mean/mu and std/sigma)."""

    def find(names: tuple[str, ...]):
        for key, value in outside.items():
            if key.split(".")[-1] in names and torch.is_tensor(value) and value.numel() == 3:
                return value.flatten().tolist()
        return None

    mean, std = find(("mean", "mu")), find(("std", "sigma"))
    return (_scaled(mean), _scaled(std)) if mean and std else None


def from_xternalz_layout(state: Mapping[str, torch.Tensor], layout: str) -> Imported:
    """xternalz, RobustBench and FixMatch WRNs (block1.layer.0.bn1...) as our wrn-d-k."""
    inside, outside = _strip_prefix(state, BLOCK_KEY)
    weights, notes = {}, []
    for key, value in inside.items():
        if key.startswith("sub_block1.") or key.endswith("num_batches_tracked"):
            continue  # RobustBench's TRADES models carry an unused sub-block
        for pattern, target in XTERNALZ_KEYS:
            match = re.fullmatch(pattern, key)
            if match:
                groups = match.groups()
                if key.startswith("block"):  # block{g}.layer.{i}[.{x}]
                    extra = groups[2] if len(groups) > 2 else ""
                    names = {"g": int(groups[0]) - 1, "i": groups[1], "x": extra}
                else:
                    names = {"x": groups[0] if groups else ""}
                weights[target.format(**names)] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r} for the {layout} layout")
    blocks = 1 + max(int(k.split(".")[1][5:]) for k in weights if k.startswith("group0."))
    classes, width = weights["fc.weight"].shape
    name = wrn_name(6 * blocks + 4, width / 64)
    options: dict = {} if "fc.bias" in weights else {"head_bias": False}
    if layout == "fixmatch":
        options.update(FIXMATCH)
        mean, std = (
            _scaled(v) for v in FIXMATCH_NORMALIZATION.get(classes, FIXMATCH_NORMALIZATION[10])
        )
    elif layout == "robustbench":
        mean, std = _wrapper_normalization(outside) or UNIT
        notes.append("inputs in [0, 1]" if (mean, std) == UNIT else "the wrapper's mean/std")
    else:
        return Imported(name, options, weights, None, None, notes)  # the paper's mean/std
    return Imported(name, options, weights, tuple(mean), tuple(std), notes)


def from_torchvision(state: Mapping[str, torch.Tensor]) -> Imported:
    """torchvision's ResNet / wide_resnet*_2 state_dict as our ImageNet model."""
    inside, _ = _strip_prefix(state, "layer1.0.conv1.weight")
    counts = tuple(
        1 + max(int(k.split(".")[1]) for k in inside if k.startswith(f"layer{s}."))
        for s in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in inside
    depth = LAYERS.get(counts, 0) if bottleneck or counts == (2, 2, 2, 2) else 34
    if not depth:
        raise ValueError(f"blocks per stage {counts}: not a torchvision ResNet")
    name = wrn_name(depth, inside["layer1.0.conv1.weight"].shape[0] / 64)
    if not (bottleneck and depth in (50, 101)):
        name += "-imagenet"
    weights = {key: v for key, v in inside.items() if not key.endswith("num_batches_tracked")}
    return Imported(name, {}, weights, None, None, preprocess="imagenet")  # ImageNet's mean/std


LAYOUTS = ("authors", "xternalz", "robustbench", "fixmatch", "torchvision")


def state_dict_of(saved: object, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: itself, or its state_dict / model / params entry."""
    if isinstance(saved, dict) and key:
        saved = saved.get(key)
    elif isinstance(saved, dict) and not any(torch.is_tensor(v) for v in saved.values()):
        for name in ("state_dict", "model_state_dict", "model", "params", "net"):
            if isinstance(saved.get(name), dict):
                saved = saved[name]
                break
    if not isinstance(saved, dict) or not any(torch.is_tensor(v) for v in saved.values()):
        raise ValueError("no state_dict of tensors inside (try --key NAME)")
    return saved
