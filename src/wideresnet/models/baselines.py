"""The ResNet baselines of Table 5: the original (post-activation) CIFAR ResNet of He et al.
2015 and the pre-activation ResNets of He et al. 2016 (basic and bottleneck blocks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.errors import ModelNameError
from wideresnet.models.features import Stage
from wideresnet.models.wrn import ThreeGroups, WideBlock, apply_init, conv


class PostActBlock(nn.Module):
    """He et al. 2015 CIFAR block: conv-BN-ReLU-conv-BN, add, ReLU; option A shortcut
    (stride-2 subsampling and zero-padded channels), which gives the published 1.7M / 19.4M."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3), nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + shortcut)


class CifarResNet(ThreeGroups):
    """The original (post-activation) CIFAR ResNet of He et al. 2015, depth 6n+2."""

    STEM = ("conv0", "bn0")
    HEAD = ("fc",)

    def __init__(self, depth: int = 110, num_classes: int = 10, *, init: str = "he_fan_out"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ModelNameError(f"original ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv0, self.bn0 = conv(3, 16, 3), nn.BatchNorm2d(16)
        self.widths = [16, 32, 64]
        c_in = 16
        for g, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
            blocks = [
                PostActBlock(c_in if i == 0 else width, width, stride if i == 0 else 1)
                for i in range(n)
            ]
            self.add_module(f"group{g}", nn.Sequential(*blocks))
            c_in = width
        self.fc = nn.Linear(64, num_classes)
        apply_init(self, init)

    def stem_stage(self) -> Stage:
        return Stage("act0", ("conv0", "bn0"), _post_act_stem, 16, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.group2(self.group1(self.group0(_post_act_stem(self, x))))


def _post_act_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(model.bn0(model.conv0(x)))


class PreActBottleneck(nn.Module):
    """He et al. 2016 (identity mappings) bottleneck: BN-ReLU-conv1x1 (stride), BN-ReLU-conv3x3,
    BN-ReLU-conv1x1 to 4x; a 1x1 projection on the pre-activated input when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.bn0, self.conv0 = nn.BatchNorm2d(c_in), conv(c_in, mid, 1, stride)
        self.bn1, self.conv1 = nn.BatchNorm2d(mid), conv(mid, mid, 3)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), conv(mid, c_out, 1)
        projection = c_in != c_out or stride != 1
        self.convdim = conv(c_in, c_out, 1, stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn0(x))
        y = self.conv0(o)
        y = self.conv1(F.relu(self.bn1(y)))
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.convdim(o) if self.convdim is not None else x)


class PreActResNet(ThreeGroups):
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
            raise ModelNameError(f"pre-act ResNet depth must be {per_block}n+2, got {depth}")
        n = (depth - 2) // per_block
        self.widths = [64, 128, 256] if bottleneck else [16, 32, 64]
        self.conv0 = conv(3, 16, 3)
        c_in = 16
        for g, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
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
        apply_init(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        return self.finish_features(self.group2(self.group1(self.group0(x))))

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final BN-ReLU of a pre-activation network, after the last group."""
        return F.relu(self.bn(x))
