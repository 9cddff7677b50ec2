"""ImageNet ResNets with torchvision's state_dict layout: WRN-50-2 / WRN-101-2 (Table 8) and
the basic-block ResNet-18/34 widened by k (Table 7)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wideresnet.errors import ModelNameError
from wideresnet.models.features import Backbone, Stage, module_stage
from wideresnet.models.wrn import apply_init, conv


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = downsample(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv); WRN-50-2 doubles its inner width."""

    def __init__(self, c_in: int, planes: int, stride: int, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv(width, planes, 1), nn.BatchNorm2d(planes)
        self.downsample = downsample(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if c_in == c_out and stride == 1:
        return None
    return nn.Sequential(conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))


class ImageNetResNet(Backbone, nn.Module):
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
    input_size = 224

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
            raise ModelNameError(f"ImageNet ResNet depth must be one of {sorted(self.LAYERS)}")
        bottleneck = depth >= 50
        block_type = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in, self.widths = 64, []
        for s, count in enumerate(self.LAYERS[depth]):
            width = int(64 * 2**s * widen_factor)
            planes = 64 * 2**s * 4 if bottleneck else width
            self.widths.append(planes)
            blocks = []
            for i in range(count):
                blocks.append(block_type(c_in, planes, 2 if (i == 0 and s > 0) else 1, width))
                c_in = planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, num_classes)
        apply_init(self, init)
        nn.init.uniform_(self.fc.weight, -1 / math.sqrt(c_in), 1 / math.sqrt(c_in))

    def stages(self) -> list[tuple[str, nn.Module]]:
        layers = [(f"layer{s}", getattr(self, f"layer{s}")) for s in range(1, 5)]
        return [("stem", nn.ModuleList([self.conv1, self.bn1])), *layers, ("head", self.fc)]

    @property
    def num_features(self) -> int:
        return self.widths[-1]

    def feature_stages(self) -> list[Stage]:
        """timm's: the stem after its ReLU (stride 2), then layer1 (after the max pool) to
        layer4 (stride 32)."""
        stem = Stage("act1", ("conv1", "bn1"), _stem, 64, 2)
        first = Stage("layer1", ("layer1",), _pooled_layer1, self.widths[0], 4)
        rest = [module_stage(f"layer{s + 1}", self.widths[s], 4 * 2**s) for s in range(1, 4)]
        return [stem, first, *rest]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = _pooled_layer1(self, _stem(self, x))
        return self.layer4(self.layer3(self.layer2(x)))


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(model.bn1(model.conv1(x)))


def _pooled_layer1(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.layer1(F.max_pool2d(x, 3, stride=2, padding=1))
