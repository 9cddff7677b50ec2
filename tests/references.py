"""Other projects' WRNs written here from their published files, for the projects whose
code is not on PyPI (CI reaches only the package registries, so it cannot fetch them): the
references of the import tests. xternalz's WideResNet-pytorch (RepDistiller's models/wrn.py
shares its keys), kekmodel's FixMatch-pytorch, TorchSSL's models/nets/wrn.py (commit 99cf3eb)
and torchvision's wide_resnet50_2. The peers on PyPI (USB, RobustBench) are tested against
their own released files instead: tests/peers/, tests/test_peers.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class XternalzBlock(nn.Module):
    """xternalz/WideResNet-pytorch wideresnet.py BasicBlock (RobustBench's is the same)."""

    def __init__(
        self, in_planes, out_planes, stride, act, momentum=0.1, activate_before_residual=True,
        bias=False, eps=1e-5,
    ):  # fmt: skip
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=momentum, eps=eps)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=momentum, eps=eps)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=bias)
        self.equal = in_planes == out_planes
        self.convShortcut = (
            None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=bias)
        )
        self.act, self.activate_before_residual = act, activate_before_residual

    def forward(self, x):
        if not self.equal and self.activate_before_residual:
            x = self.act(self.bn1(x))
        else:
            out = self.act(self.bn1(x))
        out = self.act(self.bn2(self.conv1(out if self.equal else x)))
        out = self.conv2(out)
        return torch.add(x if self.equal else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride, act, momentum, first_activates, **more):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                XternalzBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    act,
                    momentum,
                    first_activates,
                    **more,
                )
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class ReferenceWRN(nn.Module):
    """xternalz's WideResNet; robustbench=True adds the unused sub_block1 and bias_last;
    fixmatch=True is kekmodel's: leaky ReLU 0.1, momentum 0.001, activate_before_residual
    only in block1; torchssl=True is TorchSSL's: FixMatch's, with a bias on every conv and
    batch norm eps 0.001."""

    def __init__(
        self, depth, k, classes, *, robustbench=False, bias_last=True, fixmatch=False,
        torchssl=False,
    ):  # fmt: skip
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
        fixmatch = fixmatch or torchssl
        act = (lambda x: F.leaky_relu(x, 0.1)) if fixmatch else F.relu
        momentum = 0.001 if fixmatch else 0.1
        more = {"bias": True, "eps": 1e-3} if torchssl else {}
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=torchssl)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, act, momentum, True, **more)
        if robustbench:
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, act, momentum, True)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, act, momentum, not fixmatch, **more)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, act, momentum, not fixmatch, **more)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=momentum, eps=more.get("eps", 1e-5))
        self.fc = nn.Linear(widths[3], classes, bias=bias_last)
        self.act = act

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.act(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class TorchvisionBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck, expansion 4, width = planes * base_width / 64."""

    def __init__(self, inplanes, planes, stride, base_width):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = (
            nn.Conv2d(width, planes * 4, 1, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionWideResNet50(nn.Module):
    """torchvision.models.wide_resnet50_2: ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            layer = []
            for b in range(blocks):
                layer.append(
                    TorchvisionBottleneck(inplanes, planes, 2 if (b == 0 and i > 0) else 1, 128)
                )
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                shape = tensor.shape
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(shape, generator=generator) + 0.5)
                else:
                    tensor.copy_(torch.randn(shape, generator=generator) * 0.1)
    return model
