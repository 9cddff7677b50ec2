"""Other projects' WRNs, written here from their published definitions, as the references
the import tests compare against: xternalz's (and RobustBench's, kekmodel's FixMatch and
RepDistiller's, which share its keys), torchvision's wide_resnet50_2, DeepMind's layout and
USB's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class XternalzBlock(nn.Module):
    """xternalz/WideResNet-pytorch wideresnet.py BasicBlock (RobustBench's is the same)."""

    def __init__(
        self, in_planes, out_planes, stride, act, momentum=0.1, activate_before_residual=True
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=momentum)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=momentum)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.convShortcut = (
            None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
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
    def __init__(self, n, in_planes, out_planes, stride, act, momentum, first_activates):
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
                )
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class ReferenceWRN(nn.Module):
    """xternalz's WideResNet; robustbench=True adds the unused sub_block1 and bias_last;
    fixmatch=True is kekmodel's: leaky ReLU 0.1, momentum 0.001, activate_before_residual
    only in block1."""

    def __init__(self, depth, k, classes, *, robustbench=False, bias_last=True, fixmatch=False):
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
        act = (lambda x: F.leaky_relu(x, 0.1)) if fixmatch else F.relu
        momentum = 0.001 if fixmatch else 0.1
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, act, momentum, True)
        if robustbench:
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, act, momentum, True)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, act, momentum, not fixmatch)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, act, momentum, not fixmatch)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=momentum)
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


class DMBlock(nn.Module):
    """RobustBench's dm_wide_resnet.py _Block (DeepMind's): the strided conv padded as
    TensorFlow's SAME, F.pad(x, (0, 1, 0, 1)), the others by (1, 1, 1, 1)."""

    def __init__(self, in_planes, out_planes, stride, act):
        super().__init__()
        self.batchnorm_0, self.act = nn.BatchNorm2d(in_planes), act
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
            if self.has_shortcut
            else None
        )
        self.stride = stride

    def forward(self, x):
        if self.has_shortcut:
            x = self.act(self.batchnorm_0(x))
        else:
            out = self.act(self.batchnorm_0(x))
        v = x if self.has_shortcut else out
        v = F.pad(v, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.act(self.batchnorm_1(self.conv_0(v))))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class DMGroup(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride, act):
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act
                )
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.block(x)


class ReferenceDMWideResNet(nn.Module):
    """RobustBench's DMWideResNet: mean/std buffers inside, swish (x * sigmoid(x)) or ReLU,
    init_conv, layer (three groups), batchnorm, logits; inputs in [0, 1]."""

    def __init__(self, depth, width, classes, swish=True):
        super().__init__()
        mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
        act = (lambda x: x * torch.sigmoid(x)) if swish else F.relu
        n, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            DMGroup(n, widths[0], widths[1], 1, act),
            DMGroup(n, widths[1], widths[2], 2, act),
            DMGroup(n, widths[2], widths[3], 2, act),
        )
        self.batchnorm, self.act = nn.BatchNorm2d(widths[3]), act
        self.logits = nn.Linear(widths[3], classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.avg_pool2d(self.act(self.batchnorm(out)), 8).flatten(1)
        return self.logits(out)


class USBBlock(nn.Module):
    """USB's semilearn/nets/wrn/wrn.py BasicBlock: biases on every conv, BN momentum and eps
    0.001, leaky ReLU 0.1; activate_before_residual is stored but not used."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.001, eps=0.001)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=0.001, eps=0.001)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=True)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=True)
        )

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        if not self.equalInOut:
            x = act(self.bn1(x))
        else:
            out = act(self.bn1(x))
        out = act(self.bn2(self.conv1(out if self.equalInOut else x)))
        return (x if self.equalInOut else self.convShortcut(x)) + self.conv2(out)


class USBGroup(nn.Module):
    def __init__(self, n, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                USBBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x):
        return self.layer(x)


class ReferenceUSB(nn.Module):
    """USB's WideResNet (wrn_28_2: first_stride 1, depth 28, widen_factor 2): its logits."""

    def __init__(self, depth=28, k=2, classes=10):
        super().__init__()
        n, widths = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=True)
        self.block1 = USBGroup(n, widths[0], widths[1], 1)
        self.block2 = USBGroup(n, widths[1], widths[2], 2)
        self.block3 = USBGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.001, eps=0.001)
        self.fc = nn.Linear(widths[3], classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.leaky_relu(self.bn1(out), 0.1)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ReferenceRobustBenchMuSigma(ReferenceWRN):
    """RobustBench entries that keep their normalisation as `mu` / `sigma` buffers of the
    network itself (model_zoo/cifar10.py's subclasses of its WideResNet)."""

    def __init__(self):
        super().__init__(16, 2, 10, robustbench=True)
        self.register_buffer("mu", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

    def forward(self, x):
        return super().forward((x - self.mu) / self.sigma)
