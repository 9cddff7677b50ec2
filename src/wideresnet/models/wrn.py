"""WRN-d-k, the paper's network, built layer for layer as the authors' code builds it.

Module names mirror the authors' PyTorch code (`conv0`, `group{g}.block{i}.bn0|conv0|convdim`,
`bn`, `fc`), so their checkpoints map onto ours key for key (models/official.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.errors import ModelNameError
from wideresnet.models.features import Backbone, Stage, module_stage
from wideresnet.models.variants import PAPER, VARIANT_OPTIONS, Variant


def wrn_name(depth: int, widen_factor: float) -> str:
    """The name of WRN-d-k: `wrn-28-10`, `wrn-16-1.5` (k written as an integer when it is one)."""
    k = float(widen_factor)
    return f"wrn-{depth}-{int(k) if k.is_integer() else k}"


NORMS = (nn.BatchNorm2d, nn.GroupNorm)


def init_authors(module: nn.Module) -> None:
    """The authors' init: He-normal fan_in convs and linear, BN gamma ~ U[0,1), beta, biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORMS):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


def init_he_fan_out(module: nn.Module) -> None:
    """The common alternative (torchvision style): He-normal fan_out convs, BN gamma 1."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORMS):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


INITS: dict[str, Callable[[nn.Module], None]] = {
    "authors": init_authors,
    "he_fan_out": init_he_fan_out,
}


def apply_init(model: nn.Module, init: str) -> None:
    if init not in INITS:
        raise ModelNameError(f"unknown init {init!r}; choose from {sorted(INITS)}")
    INITS[init](model)


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv with 'same' padding, as every conv of the paper."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class ThreeGroups(Backbone, nn.Module):
    """A stem, three groups (group0-2) of `widths` channels and a head: the stages that `wrn
    info` tabulates and a backbone gives (models/features.py)."""

    STEM: tuple[str, ...] = ("conv0",)
    HEAD: tuple[str, ...] = ("bn", "fc")
    input_size = 32
    widths: list[int]
    strides: tuple[int, ...] = (1, 2, 2)  # each group's first conv

    def stem_stage(self) -> Stage:
        return module_stage("conv0", 16, 1)

    def feature_stages(self) -> list[Stage]:
        groups, reduction = [], 1
        for g, (width, stride) in enumerate(zip(self.widths, self.strides)):
            reduction *= stride
            groups.append(module_stage(f"group{g}", width, reduction))
        return [self.stem_stage(), *groups]

    @property
    def num_features(self) -> int:
        return self.widths[-1]

    def stages(self) -> list[tuple[str, nn.Module]]:
        def part(names: tuple[str, ...]) -> nn.ModuleList:
            return nn.ModuleList([getattr(self, n) for n in names])

        groups = [(f"group{g}", getattr(self, f"group{g}")) for g in range(len(self.widths))]
        return [("conv0", part(self.STEM)), *groups, ("head", part(self.HEAD))]


class WideBlock(nn.Module):
    """Pre-activation block B(M): for each kernel size, BN-ReLU-conv at the group's width.

    The first conv carries the stride. The shortcut is the raw input when the channel count is
    unchanged, else a bias-free 1x1 conv (`convdim`, same stride, no BN) reading the SAME
    BN-ReLU output as the first conv. Dropout, when on, sits after the ReLU before every conv
    but the first (for B(3,3): between the two convs, as in the paper).

    `variant` (models/variants.py) is another project's departure from the paper;
    `preact_input=False` is FixMatch's first block of groups 2 and 3: that block's first conv
    and its projection read the raw input x (its bn0 goes unused).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        kernels: Sequence[int],
        dropout: float,
        *,
        variant: Variant = PAPER,
        preact_input: bool = True,
    ) -> None:
        super().__init__()
        self.kernels = tuple(kernels)
        self.dropout, self.act = dropout, variant.act
        self.preact_input = preact_input or c_in == c_out
        for i, k in enumerate(self.kernels):
            width_in = c_in if i == 0 else c_out
            self.add_module(f"bn{i}", variant.norm_layer(width_in))
            self.add_module(f"conv{i}", variant.conv(width_in, c_out, k, stride if i == 0 else 1))
        self.convdim = variant.conv(c_in, c_out, 1, stride) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # o1: BN-ReLU(x), the authors' name; the first conv and the projection both read it
        o1 = self.act(self.bn0(x)) if self.preact_input else x
        y = self.conv0(o1)
        for i in range(1, len(self.kernels)):
            y = self.act(getattr(self, f"bn{i}")(y))
            if self.dropout > 0:
                y = F.dropout(y, p=self.dropout, training=self.training)
            y = getattr(self, f"conv{i}")(y)
        return y + (self.convdim(o1) if self.convdim is not None else x)


class WideResNet(ThreeGroups):
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
        groups: 3 (the paper's); 4 adds a group of int(128k) (USB's wrn_var_37_2, STL-10).
        first_stride: the first group's stride (1; wrn_var_37_2: 2, for 96x96 images).
        **variant: another project's departures from the paper (models/variants.py Variant:
            activation, bn_momentum, bn_eps, conv_bias, stem_bias, head_bn_eps,
            conv_padding, shortcut_input, head_bias, head, norm); none given: the paper's network.
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
        groups: int = 3,
        first_stride: int = 1,
        **variant,
    ) -> None:
        super().__init__()
        unknown = set(variant) - VARIANT_OPTIONS
        if unknown:
            raise TypeError(f"WideResNet got unexpected options {sorted(unknown)}")
        self.variant = Variant(**variant)
        if blocks_per_group is None:
            if depth is None or (depth - 4) % 6 != 0 or depth < 10:
                raise ModelNameError(f"depth must be 6N+4 with N >= 1, got {depth}")
            blocks_per_group = (depth - 4) // 6
        if blocks_per_group < 1:
            raise ModelNameError(f"blocks_per_group must be >= 1, got {blocks_per_group}")
        if widen_factor <= 0:
            raise ModelNameError(f"widen_factor must be > 0, got {widen_factor}")
        if not block or any(k < 1 or k % 2 == 0 for k in block):
            raise ModelNameError(
                f"block must be a non-empty tuple of odd kernel sizes, got {block}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ModelNameError(f"dropout must be in [0, 1), got {dropout}")
        if groups not in (3, 4) or first_stride not in (1, 2):
            raise ModelNameError(
                f"groups 3 or 4 and first_stride 1 or 2, not {groups}, {first_stride}"
            )
        self.widths = [int(16 * 2**g * widen_factor) for g in range(groups)]
        self.strides = (first_stride,) + (2,) * (groups - 1)
        self.blocks_per_group = blocks_per_group
        self.block = tuple(block)
        self.act = self.variant.act
        self.conv0 = self.variant.conv(in_channels, 16, 3, stem=True)
        c_in = 16
        for g, (width, stride) in enumerate(zip(self.widths, self.strides)):
            group = nn.Sequential()
            for i in range(blocks_per_group):
                raw = self.variant.shortcut_input == "raw" and g > 0 and i == 0
                unit = WideBlock(
                    c_in,
                    width,
                    stride if i == 0 else 1,
                    self.block,
                    dropout,
                    variant=self.variant,
                    preact_input=not raw,
                )
                group.add_module(f"block{i}", unit)
                c_in = width
            self.add_module(f"group{g}", group)
        self.bn = self.variant.norm_layer(c_in, head=True)
        self.head_bias = self.variant.head_bias
        self.fc = self.variant.linear(c_in, num_classes)
        apply_init(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last map, BN-ReLU'd as the head reads it (the head then takes the 8x8 average
        pool of a 32x32 input and the linear layer)."""
        x = self.conv0(x)
        for g in range(len(self.widths)):
            x = getattr(self, f"group{g}")(x)
        return self.finish_features(x)

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN-ReLU of a pre-activation network, after the last group."""
        return self.act(self.bn(x))
