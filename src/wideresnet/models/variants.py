"""Other projects' WRNs as departures from the paper's network, in one frozen `Variant` (the
default is the paper's): the activation, batch norm's momentum and eps or group norm instead,
biases on the convs, TensorFlow's "SAME" padding of strided convs, the input FixMatch's first
blocks read, and a head without bias. The key layout stays ours, so any of them loads the
same way; models/foreign.py says which project uses which."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.errors import ModelNameError

PADDINGS = ("symmetric", "same")
SHORTCUT_INPUTS = ("preact", "raw")
HEADS = ("linear", "cosine")
_LEAKY = re.compile(r"leaky_relu(?::(\d*\.?\d+))?")
_GROUP = re.compile(r"group:(\d+)")


class SameConv2d(nn.Conv2d):
    """TensorFlow's "SAME" padding: a strided conv pads (k - s) pixels, the extra one on the
    right and bottom (DeepMind's WRNs, RobustBench's DMWideResNet), where PyTorch pads k // 2 on
    every side. Only the forward differs; the weights are a Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = max(self.kernel_size[0] - self.stride[0], 0)
        x = F.pad(x, (total // 2, total - total // 2) * 2)
        return super().forward(x)


class CosineLinear(nn.Linear):
    """A linear head on the hypersphere: the features and each class's weight row scaled to
    unit length first, so a logit is a cosine (RobustBench's BoostingWideResNet, which
    normalises its weights in place at every forward; the same logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1), self.bias)


@dataclass(frozen=True)
class Variant:
    """How a WRN departs from the paper's (every field's default is the paper's)."""

    activation: str = "relu"  # relu | leaky_relu:SLOPE (FixMatch, USB: 0.1) | swish (DeepMind)
    bn_momentum: float = 0.1  # PyTorch's convention (FixMatch, USB: 0.001)
    bn_eps: float = 1e-5  # (USB: 0.001)
    conv_bias: bool = False  # a bias on every conv (USB <= 0.2, TorchSSL)
    stem_bias: bool = False  # a bias on the first conv alone (USB 0.3)
    head_bn_eps: float | None = None  # the final norm's eps, where it differs (USB 0.3: 0.001)
    conv_padding: str = "symmetric"  # | same: TensorFlow's for strided convs (DeepMind)
    shortcut_input: str = "preact"  # | raw: FixMatch's first blocks of groups 2-3 read x
    head_bias: bool = True  # (RobustBench's bias_last=False: no)
    head: str = "linear"  # | cosine: features and weight rows L2-normalised (Pang2020Boosting)
    norm: str = "batch"  # | group:G, group norm with G groups (private or federated training)

    def __post_init__(self) -> None:
        self.act  # noqa: B018 (checks the spec)
        if self.conv_padding not in PADDINGS:
            raise ModelNameError(
                f"conv_padding must be symmetric or same, not {self.conv_padding!r}"
            )
        if self.shortcut_input not in SHORTCUT_INPUTS:
            raise ModelNameError(
                f"shortcut_input must be preact or raw, not {self.shortcut_input!r}"
            )
        if self.head not in HEADS:
            raise ModelNameError(f"head must be linear or cosine, not {self.head!r}")
        if self.norm != "batch" and not _GROUP.fullmatch(self.norm):
            raise ModelNameError(f"norm must be batch or group:G, not {self.norm!r}")

    @property
    def act(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.activation == "relu":
            return F.relu
        if self.activation in ("swish", "silu"):
            return F.silu
        leaky = _LEAKY.fullmatch(self.activation)
        if leaky:
            return partial(F.leaky_relu, negative_slope=float(leaky[1] or 0.01))
        raise ModelNameError(
            f"activation must be relu, leaky_relu:SLOPE or swish, not {self.activation!r}"
        )

    def norm_layer(self, channels: int, head: bool = False) -> nn.Module:
        """Batch norm (the paper's), or group norm with the variant's groups; `head`: the
        final norm, before the pooling."""
        group = _GROUP.fullmatch(self.norm)
        eps = self.head_bn_eps if head and self.head_bn_eps is not None else self.bn_eps
        if group is None:
            return nn.BatchNorm2d(channels, eps=eps, momentum=self.bn_momentum)
        groups = int(group[1])
        if groups < 1 or channels % groups:
            raise ModelNameError(
                f"norm {self.norm}: {channels} channels do not split into {groups} groups"
            )
        return nn.GroupNorm(groups, channels, eps=eps)

    def linear(self, c_in: int, classes: int) -> nn.Linear:
        """The head: a linear layer, or CosineLinear."""
        kind = CosineLinear if self.head == "cosine" else nn.Linear
        return kind(c_in, classes, bias=self.head_bias)

    def conv(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, stem: bool = False
    ) -> nn.Conv2d:
        """A conv of the network (`stem`: the first): the paper's bias-free 'same-size' conv
        by default."""
        kind = SameConv2d if self.conv_padding == "same" and stride > 1 else nn.Conv2d
        padding = 0 if kind is SameConv2d else kernel // 2
        bias = self.conv_bias or (stem and self.stem_bias)
        return kind(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)


PAPER = Variant()
VARIANT_OPTIONS = frozenset(f.name for f in fields(Variant))
