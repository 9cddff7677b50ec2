"""Every network of the WRN paper, built layer for layer as the authors' code builds it.

CIFAR/SVHN (32x32):  WideResNet (pre-activation, generalised blocks B(M)), and the baselines of
                     Table 5 (original post-activation ResNet, pre-activation ResNet, basic and
                     bottleneck).
ImageNet (224x224):  ImageNetResNet, torchvision's state_dict layout (WRN-50-2, WRN-101-2, and
                     the widened basic-block ResNet-18/34 of Table 7).

Module names mirror the authors' PyTorch code (`conv0`, `group{g}.block{i}.bn0|conv0|convdim`,
`bn`, `fc`), so their checkpoints map onto ours key for key (`load_official_params`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WideResNet",
    "ImageNetResNet",
    "CifarResNet",
    "PreActResNet",
    "create_model",
    "list_models",
    "parse_model_name",
    "load_official_params",
    "official_state_dict",
    "count_params",
    "model_summary",
    "ModelNameError",
]


class ModelNameError(ValueError):
    """A model name that no builder accepts."""


def _init_authors(module: nn.Module) -> None:
    """The authors' init: He-normal fan_in convs and linear, BN gamma ~ U[0,1), beta, biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


def _init_he_fan_out(module: nn.Module) -> None:
    """The common alternative (torchvision style): He-normal fan_out convs, BN gamma 1."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "authors": _init_authors,
    "he_fan_out": _init_he_fan_out,
}


def _apply_init(model: nn.Module, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {sorted(INITS)}")
    INITS[init](model)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


# --------------------------------------------------------------------------------------------
# WideResNet: the paper's network
# --------------------------------------------------------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation block B(M): for each kernel size, BN-ReLU-conv at the group's width.

    The first conv carries the stride. The shortcut is the raw input when the channel count is
    unchanged, else a bias-free 1x1 conv (`convdim`, same stride, no BN) reading the SAME
    BN-ReLU output as the first conv. Dropout, when on, sits after the ReLU before every conv
    but the first (for B(3,3): between the two convs, as in the paper).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, kernels: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self.dropout = dropout
        for i, k in enumerate(self.kernels):
            width_in = c_in if i == 0 else c_out
            self.add_module(f"bn{i}", nn.BatchNorm2d(width_in))
            self.add_module(f"conv{i}", _conv(width_in, c_out, k, stride if i == 0 else 1))
        self.convdim = _conv(c_in, c_out, 1, stride) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = F.relu(self.bn0(x))
        y = self.conv0(o1)
        for i in range(1, len(self.kernels)):
            y = F.relu(getattr(self, f"bn{i}")(y))
            if self.dropout > 0:
                y = F.dropout(y, p=self.dropout, training=self.training)
            y = getattr(self, f"conv{i}")(y)
        return y + (self.convdim(o1) if self.convdim is not None else x)


class WideResNet(nn.Module):
    """WRN-d-k for 32x32 inputs (PAPER.md "Architecture").

    Args:
        depth: d; blocks per group N = (d - 4) / 6 whatever the block (Table 2's convention).
        widen_factor: k; group widths are int(16k), int(32k), int(64k).
        num_classes: size of the linear head.
        dropout: rate inside each block (0 = off).
        block: kernel sizes of the block's convs, B(M); (3, 3) is the standard block.
        blocks_per_group: N, overriding the one derived from depth (Table 3).
        in_channels: channels of the input image.
        init: "authors" (He fan_in, BN gamma ~ U[0,1)) or "he_fan_out" (BN gamma = 1).
    """

    def __init__(
        self,
        depth: int | None = 28,
        widen_factor: float = 10,
        num_classes: int = 10,
        *,
        dropout: float = 0.0,
        block: Sequence[int] = (3, 3),
        blocks_per_group: int | None = None,
        in_channels: int = 3,
        init: str = "authors",
    ) -> None:
        super().__init__()
        if blocks_per_group is None:
            if depth is None or (depth - 4) % 6 != 0 or depth < 10:
                raise ValueError(f"depth must be 6N+4 with N >= 1, got {depth}")
            blocks_per_group = (depth - 4) // 6
        if blocks_per_group < 1:
            raise ValueError(f"blocks_per_group must be >= 1, got {blocks_per_group}")
        if widen_factor <= 0:
            raise ValueError(f"widen_factor must be > 0, got {widen_factor}")
        if not block or any(k < 1 or k % 2 == 0 for k in block):
            raise ValueError(f"block must be a non-empty tuple of odd kernel sizes, got {block}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.widths = [int(v * widen_factor) for v in (16, 32, 64)]
        self.blocks_per_group = blocks_per_group
        self.block = tuple(block)
        self.conv0 = _conv(in_channels, 16, 3)
        c_in = 16
        for g, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
            group = nn.Sequential()
            for i in range(blocks_per_group):
                group.add_module(
                    f"block{i}",
                    WideBlock(c_in, width, stride if i == 0 else 1, self.block, dropout),
                )
                c_in = width
            self.add_module(f"group{g}", group)
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        _apply_init(self, init)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The named stages in order, for summaries."""
        return [
            ("conv0", self.conv0),
            ("group0", self.group0),
            ("group1", self.group1),
            ("group2", self.group2),
            ("head", nn.ModuleList([self.bn, self.fc])),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        x = self.group2(self.group1(self.group0(x)))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # the 8x8 average pool for 32x32 inputs
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# Baselines of Table 5
# --------------------------------------------------------------------------------------------


class PostActBlock(nn.Module):
    """He et al. 2015 CIFAR block: conv-BN-ReLU-conv-BN, add, ReLU; option A shortcut
    (stride-2 subsampling and zero-padded channels), which gives the published 1.7M / 19.4M."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = _conv(c_out, c_out, 3), nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """The original (post-activation) CIFAR ResNet of He et al. 2015, depth 6n+2."""

    def __init__(self, depth: int = 110, num_classes: int = 10, *, init: str = "he_fan_out"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"original ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv0, self.bn0 = _conv(3, 16, 3), nn.BatchNorm2d(16)
        c_in = 16
        for g, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
            blocks = [
                PostActBlock(c_in if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(n)
            ]
            self.add_module(f"group{g}", nn.Sequential(*blocks))
            c_in = width
        self.fc = nn.Linear(64, num_classes)
        _apply_init(self, init)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("conv0", nn.ModuleList([self.conv0, self.bn0])),
            ("group0", self.group0),
            ("group1", self.group1),
            ("group2", self.group2),
            ("head", self.fc),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv0(x)))
        x = self.group2(self.group1(self.group0(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class PreActBottleneck(nn.Module):
    """He et al. 2016 (identity mappings) bottleneck: BN-ReLU-conv1x1 (stride), BN-ReLU-conv3x3,
    BN-ReLU-conv1x1 to 4x; a 1x1 projection on the pre-activated input when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.bn0, self.conv0 = nn.BatchNorm2d(c_in), _conv(c_in, mid, 1, stride)
        self.bn1, self.conv1 = nn.BatchNorm2d(mid), _conv(mid, mid, 3)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), _conv(mid, c_out, 1)
        projection = c_in != c_out or stride != 1
        self.convdim = _conv(c_in, c_out, 1, stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn0(x))
        y = self.conv0(o)
        y = self.conv1(F.relu(self.bn1(y)))
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.convdim(o) if self.convdim is not None else x)


class PreActResNet(nn.Module):
    """Pre-activation ResNet for CIFAR: basic blocks (depth 6n+2, widths 16/32/64) or
    bottlenecks (depth 9n+2, outputs 64/128/256), as in He et al. 2016."""

    def __init__(
        self,
        depth: int = 164,
        num_classes: int = 10,
        *,
        bottleneck: bool = True,
        init: str = "he_fan_out",
    ) -> None:
        super().__init__()
        per_block = 9 if bottleneck else 6
        if (depth - 2) % per_block != 0 or depth < per_block + 2:
            raise ValueError(f"pre-act ResNet depth must be {per_block}n+2, got {depth}")
        n = (depth - 2) // per_block
        widths = (64, 128, 256) if bottleneck else (16, 32, 64)
        self.conv0 = _conv(3, 16, 3)
        c_in = 16
        for g, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                if bottleneck:
                    blocks.append(PreActBottleneck(c_in, width, s))
                else:
                    blocks.append(WideBlock(c_in, width, s, (3, 3), 0.0))
                c_in = width
            self.add_module(f"group{g}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        _apply_init(self, init)

    stages = WideResNet.stages
    forward = WideResNet.forward


# --------------------------------------------------------------------------------------------
# ImageNet: torchvision's layout
# --------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class _Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv); WRN-50-2 doubles its inner width."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, planes, 1), nn.BatchNorm2d(planes)
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if c_in == c_out and stride == 1:
        return None
    return nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))


class ImageNetResNet(nn.Module):
    """Post-activation ImageNet ResNet with torchvision's state_dict layout.

    `widen_factor` k widens the blocks; the stem stays at 64 channels:
      - bottleneck (depth 50/101/152): inner width int(64 * 2^s * k); k = 2 is WRN-50-2, whose
        weights from torchvision's `wide_resnet50_2` load unchanged.
      - basic (depth 18/34, Table 7): both convs of every block are widened to int(64 * 2^s * k).
    """

    LAYERS = {
        18: (2, 2, 2, 2),
        34: (3, 4, 6, 3),
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
    }

    def __init__(
        self,
        depth: int = 50,
        widen_factor: float = 2,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        init: str = "he_fan_out",
    ) -> None:
        super().__init__()
        if depth not in self.LAYERS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(self.LAYERS)}")
        bottleneck = depth >= 50
        block_type = _Bottleneck if bottleneck else _BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in = 64
        for s, count in enumerate(self.LAYERS[depth]):
            width = int(64 * 2**s * widen_factor)
            planes = 64 * 2**s * 4 if bottleneck else width
            blocks = []
            for i in range(count):
                blocks.append(block_type(c_in, planes, 2 if (i == 0 and s > 0) else 1, width))
                c_in = planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, num_classes)
        _apply_init(self, init)
        nn.init.uniform_(self.fc.weight, -1 / math.sqrt(c_in), 1 / math.sqrt(c_in))

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("stem", nn.ModuleList([self.conv1, self.bn1])),
            ("layer1", self.layer1),
            ("layer2", self.layer2),
            ("layer3", self.layer3),
            ("layer4", self.layer4),
            ("head", self.fc),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------------------------
# Names and the registry
# --------------------------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
# (pattern, description, builder(match, **kwargs)); the first pattern that matches wins.
_REGISTRY: list[tuple[re.Pattern[str], str, Callable[..., nn.Module]]] = []


def _register(pattern: str, description: str):
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY.append((re.compile(pattern + r"$"), description, builder))
        return builder

    return wrap


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


@_register(r"wrn-(50|101)-" + _NUMBER, "wrn-50-2, wrn-101-2: ImageNet bottleneck WRNs")
def _imagenet_bottleneck(match, num_classes=1000, **kwargs):
    return ImageNetResNet(int(match[1]), _number(match[2]), num_classes, **kwargs)


@_register(
    r"wrn-(18|34|50|101|152)-" + _NUMBER + r"-imagenet",
    "wrn-18-2-imagenet, wrn-34-1.5-imagenet, ...: ImageNet WRNs of Table 7 (k=1: ResNet)",
)
def _imagenet(match, num_classes=1000, **kwargs):
    return ImageNetResNet(int(match[1]), _number(match[2]), num_classes, **kwargs)


@_register(r"wrn-(\d+)-" + _NUMBER, "wrn-d-k: CIFAR/SVHN WRN, d = 6N+4, k may be fractional")
def _wrn(match, num_classes=10, **kwargs):
    return WideResNet(int(match[1]), _number(match[2]), num_classes, **kwargs)


@_register(r"resnet-(\d+)", "resnet-110, resnet-1202: original post-activation CIFAR ResNet")
def _resnet(match, num_classes=10, **kwargs):
    return CifarResNet(int(match[1]), num_classes, **kwargs)


@_register(
    r"preact-resnet-(\d+)",
    "preact-resnet-110 (basic), preact-resnet-164, preact-resnet-1001 (bottleneck)",
)
def _preact(match, num_classes=10, **kwargs):
    depth = int(match[1])
    # He et al. use basic blocks for 6n+2 depths up to 110 and bottlenecks for 164 and 1001.
    bottleneck = depth > 110 or (depth - 2) % 6 != 0
    return PreActResNet(depth, num_classes, bottleneck=bottleneck, **kwargs)


# The names the paper uses, listed by list_models(); any name matching a pattern is accepted.
PAPER_MODELS = (
    "wrn-16-4",
    "wrn-16-8",
    "wrn-16-10",
    "wrn-22-8",
    "wrn-22-10",
    "wrn-28-10",
    "wrn-28-12",
    "wrn-40-1",
    "wrn-40-2",
    "wrn-40-4",
    "wrn-40-8",
    "wrn-40-10",
    "wrn-52-1",
    "resnet-110",
    "resnet-1202",
    "preact-resnet-110",
    "preact-resnet-164",
    "preact-resnet-1001",
    "wrn-50-2",
    "wrn-101-2",
    "wrn-18-1-imagenet",
    "wrn-18-1.5-imagenet",
    "wrn-18-2-imagenet",
    "wrn-18-3-imagenet",
    "wrn-34-1-imagenet",
    "wrn-34-1.5-imagenet",
    "wrn-34-2-imagenet",
    "wrn-34-3-imagenet",
)


def list_models() -> list[str]:
    """The model names of the paper; `wrn-{d}-{k}` is accepted for any valid d and k."""
    return list(PAPER_MODELS)


def model_name_patterns() -> list[str]:
    """One line per family of accepted names."""
    return [description for _, description, _ in _REGISTRY]


def parse_model_name(name: str) -> tuple[Callable[..., nn.Module], re.Match[str]]:
    key = name.strip().lower()
    for pattern, _, builder in _REGISTRY:
        match = pattern.match(key)
        if match:
            return builder, match
    raise ModelNameError(f"unknown model {name!r}; accepted: " + "; ".join(model_name_patterns()))


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a model by name, e.g. create_model("wrn-28-10", num_classes=10, dropout=0.3).

    Keyword arguments go to the model class (WideResNet: dropout, block, blocks_per_group,
    in_channels, init). Raises ModelNameError for an unknown name, ValueError for bad arguments.
    """
    builder, match = parse_model_name(name)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        kwargs["num_classes"] = num_classes
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if builder is not _wrn and not kwargs.get("dropout"):
        kwargs.pop("dropout", None)  # the baselines have no dropout; 0 means the same
    try:
        model = builder(match, **kwargs)
    except (TypeError, ValueError) as error:
        raise ModelNameError(f"{name}: {error}") from None
    model.name = name.strip().lower()
    return model


# --------------------------------------------------------------------------------------------
# The authors' checkpoints
# --------------------------------------------------------------------------------------------


def official_state_dict(model: nn.Module, params: Mapping[str, torch.Tensor]) -> dict:
    """Map the authors' flat `params` dict onto `model.state_dict()` keys.

    Their conv weights are stored under the module's name (`group0.block0.conv0`), everything
    else under the same dotted key as ours. Raises ValueError naming missing, unexpected or
    mis-shaped keys.
    """
    if not isinstance(model, WideResNet):
        raise ValueError("the authors' checkpoints are for WideResNet (wrn-d-k) models")
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in params.items():
        # conv weights: "group0.block0.conv0" -> "group0.block0.conv0.weight"
        target = key + ".weight" if key not in ours and key + ".weight" in ours else key
        mapped[target] = torch.as_tensor(value)
    wanted = {k for k in ours if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(wanted - mapped.keys()), sorted(mapped.keys() - wanted)
    if missing or unexpected:
        raise ValueError(
            "checkpoint does not fit the model: "
            + (f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} " if missing else "")
            + (
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                if unexpected
                else ""
            )
        )
    for key, value in mapped.items():
        if value.shape != ours[key].shape:
            raise ValueError(
                f"checkpoint does not fit the model: {key} has shape {tuple(value.shape)}, "
                f"the model wants {tuple(ours[key].shape)}"
            )
    return mapped


def load_official_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load the `params` dict saved by the authors' PyTorch code (model.pt7) into `model`."""
    mapped = official_state_dict(model, params)
    with torch.no_grad():
        for key, value in mapped.items():
            model.state_dict()[key].copy_(value)
    return model


def infer_official_model(params: Mapping[str, torch.Tensor], **kwargs) -> WideResNet:
    """Rebuild the WideResNet that wrote an authors' `params` dict, from its shapes alone."""
    try:
        num_classes, width = params["fc.weight"].shape
        blocks = sum(1 for k in params if re.fullmatch(r"group0\.block\d+\.bn0\.weight", k))
        kernels = []
        while f"group0.block0.conv{len(kernels)}" in params:
            kernels.append(int(params[f"group0.block0.conv{len(kernels)}"].shape[-1]))
        in_channels = int(params["conv0"].shape[1])
    except (KeyError, AttributeError, ValueError) as error:
        raise ValueError(f"not a WRN params dict from the authors' code: {error}") from None
    if blocks < 1 or not kernels:
        raise ValueError("not a WRN params dict from the authors' code: no group0.block0")
    return WideResNet(
        None,
        _number(str(width / 64)),
        int(num_classes),
        block=tuple(kernels),
        blocks_per_group=blocks,
        in_channels=in_channels,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Learnable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module, input_size: int | None = None, in_channels: int = 3) -> dict:
    """Parameters, multiply-accumulates per image and a per-stage table, measured by running
    one image through the built module with hooks on every conv and linear layer."""
    if input_size is None:
        input_size = 224 if isinstance(model, ImageNetResNet) else 32
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            macs += output[0].numel() * k // module.groups
        else:
            macs += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    stage_rows: list[dict] = []
    stages = model.stages()
    for name, stage in stages:

        def record(module, inputs, output, name=name, stage=stage):
            blocks = len(stage) if isinstance(stage, nn.Sequential) else 1
            stage_rows.append(
                {
                    "stage": name,
                    "output": list(output.shape[1:]),
                    "channels": output.shape[1],
                    "blocks": blocks,
                    "params": count_params(stage),
                }
            )

        target = stage[-1] if isinstance(stage, nn.ModuleList) else stage
        hooks.append(target.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {
        "params": count_params(model),
        "macs": macs,
        "input": [in_channels, input_size, input_size],
        "stages": stage_rows,
    }
