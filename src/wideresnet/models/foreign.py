"""Other projects' checkpoints, mapped onto our models key for key (`wrn import --from`).

  xternalz     WideResNet-pytorch (xternalz): `block1.layer.0.bn1...`; the paper's network and
               the paper's mean/std.
  robustbench  RobustBench's CIFAR WRNs (the same layout; `sub_block1` unused; a head with or
               without bias); inputs in [0, 1], or a normalisation wrapper's mean/std.
               Normalisation buffers (`mu`/`sigma` or `mean`/`std`, of three values) are taken
               as the model's input normalisation, wherever they sit.
  robustbench-dm  RobustBench's DMWideResNet (DeepMind's, most of the top robust CIFAR models):
               `init_conv`, `layer.G.block.I.batchnorm_0`..., `logits`, `mean`/`std` buffers;
               TensorFlow's "SAME" padding of strided convs and (for most entries) swish;
               detected by `--from robustbench` as well.
  fixmatch     FixMatch-pytorch (kekmodel) WRN-28-2: the same layout with leaky ReLU 0.1, batch
               norm momentum 0.001, and the first block of groups 2-3 reading its raw input.
  usb          USB (microsoft/Semi-supervised-learning) wrn_28_2: the same layout with a bias
               on every conv, leaky ReLU 0.1, batch norm momentum 0.001 and eps 0.001; its
               first blocks read BN-ReLU(x) as the paper's (activate_before_residual is unused).
  pytorchcv    pytorchcv's CIFARWRN (`features.stage1.unit1.body.conv1.bn...`, `output`):
               the paper's network; imgclsmob's CIFAR mean/std.
  torchvision  `wide_resnet50_2`, `wide_resnet101_2` (and the ResNets): our ImageNet layout.
  authors      the authors' own PyTorch `params` dict (models/official.py).

Any `module.`-style prefix is dropped; a value that is not a floating-point tensor is refused
by name. Each layout says the input normalisation of the project
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
XTERNALZ_KEYS = [  # (pattern, our key): block{g}.layer.{i} is group{g-1}.block{i}
    (r"conv1\.(weight|bias)", "conv0.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.bn1\.(\w+)", "group{g}.block{i}.bn0.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.conv1\.(weight|bias)", "group{g}.block{i}.conv0.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.bn2\.(\w+)", "group{g}.block{i}.bn1.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.conv2\.(weight|bias)", "group{g}.block{i}.conv1.{x}"),
    (r"block(\d+)\.layer\.(\d+)\.convShortcut\.(weight|bias)", "group{g}.block{i}.convdim.{x}"),
    (r"bn1\.(\w+)", "bn.{x}"),
    (r"fc\.(weight|bias)", "fc.{x}"),
    (r"classifier\.(weight|bias)", "fc.{x}"),  # USB 0.3 (semilearn 0.3.x)
]
DM_KEY = "layer.0.block.0.batchnorm_0.weight"
DM_KEYS = [  # layer.{g}.block.{i} is group{g}.block{i}
    (r"init_conv\.weight", "conv0.weight"),
    (r"layer\.(\d+)\.block\.(\d+)\.batchnorm_0\.(\w+)", "group{g}.block{i}.bn0.{x}"),
    (r"layer\.(\d+)\.block\.(\d+)\.conv_0\.weight", "group{g}.block{i}.conv0.weight"),
    (r"layer\.(\d+)\.block\.(\d+)\.batchnorm_1\.(\w+)", "group{g}.block{i}.bn1.{x}"),
    (r"layer\.(\d+)\.block\.(\d+)\.conv_1\.weight", "group{g}.block{i}.conv1.weight"),
    (r"layer\.(\d+)\.block\.(\d+)\.shortcut\.weight", "group{g}.block{i}.convdim.weight"),
    (r"batchnorm\.(\w+)", "bn.{x}"),
    (r"logits\.(weight|bias)", "fc.{x}"),
]
PYTORCHCV_KEY = "features.stage1.unit1.body.conv1.bn.weight"
PYTORCHCV_UNIT = r"features\.stage(\d+)\.unit(\d+)\."
PYTORCHCV_KEYS = [  # stage{s}.unit{u} (both from 1) is group{s-1}.block{u-1}
    (r"features\.init_block\.(weight|bias)", "conv0.{x}"),
    (PYTORCHCV_UNIT + r"body\.conv1\.bn\.(\w+)", "group{g}.block{i}.bn0.{x}"),
    (PYTORCHCV_UNIT + r"body\.conv1\.conv\.(weight|bias)", "group{g}.block{i}.conv0.{x}"),
    (PYTORCHCV_UNIT + r"body\.conv2\.bn\.(\w+)", "group{g}.block{i}.bn1.{x}"),
    (PYTORCHCV_UNIT + r"body\.conv2\.conv\.(weight|bias)", "group{g}.block{i}.conv1.{x}"),
    (PYTORCHCV_UNIT + r"identity_conv\.(weight|bias)", "group{g}.block{i}.convdim.{x}"),
    (r"features\.post_activ\.bn\.(\w+)", "bn.{x}"),
    (r"output\.(weight|bias)", "fc.{x}"),
]
# imgclsmob's pytorch/datasets/cifar10_cls_dataset.py and cifar100's (pytorchcv's training code,
# not in the wheel), on [0, 1]
PYTORCHCV_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
NORMALIZATION_KEYS = (("mean", "mu"), ("std", "sigma"))
FIXMATCH = {"activation": "leaky_relu:0.1", "bn_momentum": 0.001, "shortcut_input": "raw"}
SSL = {"activation": "leaky_relu:0.1", "bn_momentum": 0.001}  # USB and TorchSSL alike
USB_LAYOUTS = {  # the head's name and whether block convs have a bias decide the release
    # semilearn 0.1-0.2 and USB's main branch: biases on every conv, eps 0.001, first blocks
    # as the paper's (activate_before_residual unused)
    ("fc", True): ("USB (semilearn 0.1-0.2, main)", {**SSL, "bn_eps": 0.001, "conv_bias": True}),
    # semilearn 0.3: a bias on the stem alone, the blocks' eps PyTorch's, the final 0.001,
    # and the first blocks of groups 2-3 read their raw input (activate_before_residual)
    ("classifier", False): (
        "USB (semilearn 0.3)",
        {**SSL, "stem_bias": True, "head_bn_eps": 0.001, "shortcut_input": "raw"},
    ),
}
# TorchSSL, USB's predecessor: USB 0.1-0.2's keys, but its first blocks of groups 2-3 read
# their raw input; the paper's CIFAR-10 mean/std (ours)
TORCHSSL = {**SSL, "bn_eps": 0.001, "conv_bias": True, "shortcut_input": "raw"}
TORCHSSL_NORMALIZATION = {100: ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))}
USB_NORMALIZATION = {  # semilearn/datasets/cv_datasets/cifar.py, on [0, 1]
    10: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    100: ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
}
DM = {"conv_padding": "same", "activation": "swish"}  # RobustBench's DM entries: most swish
UNIT = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)  # inputs in [0, 1]
FIXMATCH_NORMALIZATION = {  # kekmodel's dataset/cifar.py, on [0, 1]
    10: ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    100: ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# RepDistiller (HobbitLong/RepDistiller dataset/cifar100.py): CIFAR-100's own, on [0, 1]
REPDISTILLER_NORMALIZATION = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
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


def scaled_to_255(values) -> tuple[float, ...]:
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


def _normalization_of(state: dict) -> tuple[tuple, tuple] | None:
    """A normalisation's mean and std among the keys (`mean`/`mu`, `std`/`sigma`, of three
    values, wherever they sit), taken out of `state`; None when there is none."""
    found: dict[int, list[float]] = {}
    for key in list(state):
        value, leaf = state[key], key.split(".")[-1]
        for which, names in enumerate(NORMALIZATION_KEYS):
            if leaf in names and torch.is_tensor(value) and value.numel() == 3:
                found[which] = value.flatten().tolist()
                del state[key]
    if len(found) < 2:
        return None
    return scaled_to_255(found[0]), scaled_to_255(found[1])


def _mapped(inside: dict, patterns: list, layout: str, group_offset: int, block_offset=0) -> dict:
    """The keys of `inside` as ours, by `patterns` (a key no pattern takes is refused)."""
    weights = {}
    for key, value in inside.items():
        if key.startswith("sub_block1.") or key.endswith("num_batches_tracked"):
            continue  # RobustBench's TRADES models carry an unused sub-block
        if not torch.is_tensor(value) or not torch.is_floating_point(value):
            raise ValueError(f"{key} is a {type(value).__name__}, not a floating-point tensor")
        for pattern, target in patterns:
            match = re.fullmatch(pattern, key)
            if match:
                groups = match.groups()
                if "{g}" in target:  # group, block and (for most keys) the leaf name
                    extra = groups[2] if len(groups) > 2 else ""
                    block = int(groups[1]) - block_offset
                    names = {"g": int(groups[0]) - group_offset, "i": block, "x": extra}
                else:
                    names = {"x": groups[0] if groups else ""}
                weights[target.format(**names)] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r} for the {layout} layout")
    if "fc.weight" not in weights or not any(k.startswith("group0.") for k in weights):
        raise ValueError(f"no head or first group: not the {layout} layout")
    return weights


def _shape(weights: dict) -> tuple[str, int, dict]:
    """(our model name, its classes, head options) from the mapped weights' shapes."""
    blocks = 1 + max(int(k.split(".")[1][5:]) for k in weights if k.startswith("group0."))
    groups = 1 + max(int(k.split(".")[0][5:]) for k in weights if k.startswith("group"))
    classes, width = weights["fc.weight"].shape
    options: dict = {} if "fc.bias" in weights else {"head_bias": False}
    return wrn_name(6 * blocks + 4, width / (16 << (groups - 1))), int(classes), options


def _usb_layout(inside: dict, notes: list[str]) -> dict:
    """The options of the USB release whose keys these are (the head's name, and a bias on
    the block convs or not, tell them apart; their batch norms' eps differ unseen)."""
    for key in [k for k in inside if k.startswith("rot_classifier.")]:
        del inside[key]  # ReMixMatch's rotation head
        notes.append(f"{key} (ReMixMatch's rotation head) left out")
    head = "classifier" if "classifier.weight" in inside else "fc"
    block_bias = any(k.endswith(".conv1.bias") and k.startswith("block") for k in inside)
    if (head, block_bias) not in USB_LAYOUTS:
        raise ValueError(
            f"a head named {head!r} with{'' if block_bias else 'out'} biases on the block "
            "convs: no USB release (0.1-0.2 and main: fc and biases; 0.3: classifier, none)"
        )
    release, options = USB_LAYOUTS[head, block_bias]
    if any(k.startswith("block4.") for k in inside):  # wrn_var_37_2, for STL-10's 96x96
        options = {**options, "groups": 4, "first_stride": 2}
        release += ", wrn_var_37_2"
    notes.append(f"read as {release}")
    return options


def from_xternalz_layout(
    state: Mapping[str, torch.Tensor], layout: str, entry: str | None = None
) -> Imported:
    """xternalz, RobustBench, FixMatch, USB, TorchSSL and RepDistiller WRNs
    (block1.layer.0.bn1...) as our wrn-d-k; RobustBench's by its zoo `entry` where given."""
    if layout in ROBUSTBENCH and any(k.endswith(DM_KEY) for k in state):
        return from_dm_layout(state, entry)
    if layout == "robustbench-dm":
        raise ValueError(f"no {DM_KEY} key: not the DeepMind layout")
    state = dict(state)
    normalization = _normalization_of(state)
    inside, _ = _strip_prefix(state, BLOCK_KEY)
    notes: list[str] = []
    usb = _usb_layout(inside, notes) if layout == "usb" else {}
    if "classifier.weight" in inside and layout != "usb":
        raise ValueError(f"a head named 'classifier': USB 0.3's, not the {layout} layout")
    weights = _mapped(inside, XTERNALZ_KEYS, layout, 1)
    name, classes, options = _shape(weights)
    if layout == "robustbench":
        return _robustbench(name, classes, options, weights, normalization, entry)
    if layout == "fixmatch":
        options.update(FIXMATCH)
        normalization = [
            scaled_to_255(v)
            for v in FIXMATCH_NORMALIZATION.get(classes, FIXMATCH_NORMALIZATION[10])
        ]
    elif layout == "usb":
        options.update(usb)
        normalization = [
            scaled_to_255(v) for v in USB_NORMALIZATION.get(classes, USB_NORMALIZATION[10])
        ]
    elif layout == "torchssl":
        options.update(TORCHSSL)
        normalization = TORCHSSL_NORMALIZATION.get(classes)
        if normalization is None:  # CIFAR-10's is the paper's
            return Imported(name, options, weights, None, None, notes)
    elif layout == "repdistiller":
        normalization = [scaled_to_255(v) for v in REPDISTILLER_NORMALIZATION]
        notes.append("RepDistiller's CIFAR-100 mean/std")
    elif normalization is None:
        return Imported(name, options, weights, None, None, notes)  # the paper's mean/std
    mean, std = normalization
    return Imported(name, options, weights, tuple(mean), tuple(std), notes)


def zoo_rows(entry: str) -> dict[str, tuple]:
    """The zoo's rows that `entry` names: NAME, or DATASET/THREAT/NAME (empty: none)."""
    from wideresnet.models.robustbench_zoo import ZOO

    return {k: v for k, v in ZOO.items() if entry in (k, k.split("/", 2)[2])}


def zoo_entry(entry: str) -> tuple[str, tuple]:
    """(the zoo's key, its row) of a RobustBench entry: NAME, or DATASET/THREAT/NAME where a
    name stands for different networks (models/robustbench_zoo.py)."""
    from wideresnet.models.robustbench_zoo import RELEASE

    found = zoo_rows(entry)
    if not found:
        raise ValueError(f"--entry {entry}: no CIFAR-10 or CIFAR-100 entry of {RELEASE}'s zoo")
    if len(set(found.values())) > 1:
        raise ValueError(f"--entry {entry} stands for different networks: give one of {found}")
    key = next(iter(found))
    if len(found[key]) == 1:
        raise ValueError(
            f"{key} is RobustBench's {found[key][0]}, not one of the WRNs this package builds"
        )
    return key, found[key]


def _entry_check(key: str, row: tuple, name: str, classes: int, arch: str) -> None:
    """The weights' shape against the entry's architecture, depth, width and classes."""
    expected = wrn_name(row[1], row[2])
    if row[0] != arch or (name, classes) != (expected, row[3]):
        raise ValueError(
            f"the file holds a {arch} {name} of {classes} classes, but {key} is a {row[0]} "
            f"{expected} of {row[3]}"
        )


def _robustbench(name, classes, options, weights, normalization, entry) -> Imported:
    """RobustBench's WideResNet or BoostingWideResNet, by its zoo entry, or (without one) as
    the state dict alone can say, refusing where two classes fit it."""
    if entry is None and not options.get("head_bias", True):
        raise ValueError(
            "a head without bias fits RobustBench's WideResNet(bias_last=False) and its "
            "BoostingWideResNet (Pang2020Boosting), whose head is on the hypersphere: give "
            "--entry NAME"
        )
    if entry is None:
        notes = ["no --entry: RobustBench's WideResNet"]
        notes.append("the checkpoint's mean/std" if normalization else "inputs in [0, 1]")
        return Imported(name, options, weights, *(normalization or UNIT), notes)
    key, row = zoo_entry(entry)
    arch = "BoostingWideResNet" if row[0] == "BoostingWideResNet" else "WideResNet"
    _entry_check(key, row, name, classes, arch)
    if arch == "BoostingWideResNet":
        options["head"] = "cosine"
    inputs = row[4]
    if inputs == "unit":
        normalization = UNIT
    elif inputs == "mean_std" or normalization is None:
        if row[6] is None:
            raise ValueError(f"{key} keeps its mean/std in mu/sigma, which the file lacks")
        normalization = scaled_to_255(row[6]), scaled_to_255(row[7])
    return Imported(name, options, weights, *normalization, [f"RobustBench's {key}"])


def from_dm_layout(state: Mapping[str, torch.Tensor], entry: str | None = None) -> Imported:
    """RobustBench's DMWideResNet (DeepMind's layout) as our wrn-d-k: "SAME" padding; the
    entry's activation and mean/std (which its state dict does not hold: non-persistent
    buffers). Without an entry, buffers the file does hold, and swish (`--activation relu`
    for the others); with neither, refused."""
    state = dict(state)
    normalization = _normalization_of(state)
    inside, _ = _strip_prefix(state, DM_KEY)
    weights = _mapped(inside, DM_KEYS, "robustbench-dm", 0)
    name, classes, options = _shape(weights)
    if entry is not None:
        key, row = zoo_entry(entry)
        _entry_check(key, row, name, classes, "DMWideResNet")
        options = {**options, **DM, "activation": row[5]}
        mean, std = scaled_to_255(row[6]), scaled_to_255(row[7])
        return Imported(name, options, weights, mean, std, [f"RobustBench's {key}"])
    notes = [
        "DeepMind's layout: swish and TensorFlow's padding (--activation relu if it was "
        "trained with ReLU)"
    ]
    if normalization is None:  # convert.py refuses unless --mean/--std are given
        return Imported(name, {**options, **DM}, weights, None, None, notes, "unknown")
    return Imported(name, {**options, **DM}, weights, *map(tuple, normalization), notes)


def from_pytorchcv(state: Mapping[str, torch.Tensor]) -> Imported:
    """pytorchcv's CIFARWRN (wrn16_10_cifar10, wrn28_10_cifar100, ...): the paper's network
    under pytorchcv's names; imgclsmob's CIFAR mean/std."""
    inside, _ = _strip_prefix(state, PYTORCHCV_KEY)
    weights = _mapped(inside, PYTORCHCV_KEYS, "pytorchcv", 1, block_offset=1)
    name, _, options = _shape(weights)
    mean, std = (scaled_to_255(v) for v in PYTORCHCV_NORMALIZATION)
    return Imported(name, options, weights, mean, std, ["imgclsmob's CIFAR mean/std"])


def from_torchvision(state: Mapping[str, torch.Tensor]) -> Imported:
    """torchvision's ResNet / wide_resnet*_2 state_dict as our ImageNet model."""
    inside, _ = _strip_prefix(state, "layer1.0.conv1.weight")
    for key, value in inside.items():  # what _mapped checks for the other layouts
        if not key.endswith("num_batches_tracked") and not (
            torch.is_tensor(value) and torch.is_floating_point(value)
        ):
            raise ValueError(f"{key} is a {type(value).__name__}, not a floating-point tensor")
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


ROBUSTBENCH = ("robustbench", "robustbench-dm")  # the layouts that take a zoo entry
LAYOUTS = ("authors", "xternalz", *ROBUSTBENCH, "fixmatch", "usb", "torchssl")
LAYOUTS += ("repdistiller", "pytorchcv", "torchvision")


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
