"""ResNet-18 and MobileNetV3-Small built in code, for the channel-pruning tests (torchvision is not
installable here: its only wheel is a CUDA build).

These are re-implementations written for these tests, not copies of torchvision's files: the
module names (`conv1`, `bn1`, `layer1..4`, `fc`; `features`, `avgpool`, `classifier`,
`block`, `fc1` / `fc2` of the squeeze-excitation), the block structure and the layer tables follow
torchvision's `resnet.py` and `mobilenetv3.py` (BSD 3-Clause licence, Copyright (c) Soumith
Chintala 2016, all rights reserved), so that a state_dict has the same keys and shapes as
torchvision's. `width` scales every channel count down for speed; `width=1.0` gives the real sizes
(ResNet-18: 11.69 M parameters, MobileNetV3-Small: 2.54 M, as torchvision's).

What matters for channel pruning is kept exactly: ResNet's residual `out += identity` with a 1x1
downsample on the shortcut where shapes change; MobileNetV3's depthwise convolutions, the
squeeze-excitation gate (`scale * input`, a product of two branches), residuals where stride is 1
and channels match, Hardswish, and a two-Linear classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ---- ResNet-18 -------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # the residual: every block of a stage shares its output channels
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        planes = [max(4, int(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(planes[0], layers[0])
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, width: float = 1.0) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width)


# ---- MobileNetV3-Small ---------------------------------------------------------------------------
def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `value` (MobileNet's rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class ConvBNActivation(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.ReLU6) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        if activation is not None:
            layers.append(activation(inplace=True) if activation is not nn.Identity else nn.Identity())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze_factor: int = 4) -> None:
        super().__init__()
        squeeze = make_divisible(channels // squeeze_factor, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(self.relu(self.fc1(scale))), inplace=True)
        return scale * x  # the gate: its channels are tied to the input's


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, hswish: bool,
                 stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNActivation(cin, expanded, 1, activation=act))
        layers.append(ConvBNActivation(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNActivation(expanded, cout, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


#: MobileNetV3-Small's table: input, kernel, expanded, output, SE, hard-swish, stride.
SMALL = ((16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
         (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
         (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
         (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1))


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, last_channel: int = 1024) -> None:
        super().__init__()
        adjust = lambda c: make_divisible(c * width, 8)  # noqa: E731
        table = [(adjust(i), k, adjust(e), adjust(o), se, hs, s) for i, k, e, o, se, hs, s in SMALL]
        layers: list[nn.Module] = [ConvBNActivation(3, table[0][0], 3, 2, activation=nn.Hardswish)]
        layers += [InvertedResidual(*row) for row in table]
        last_in = table[-1][3]
        layers.append(ConvBNActivation(last_in, 6 * last_in, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, adjust(last_channel)), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(adjust(last_channel), num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v3_small(num_classes: int = 1000, width: float = 1.0) -> MobileNetV3:
    return MobileNetV3(num_classes, width)


# ---- factories for the CLI (`module:factory` specs): small, seeded, with BatchNorm statistics ------
def _settled(model: nn.Module, size: int) -> nn.Module:
    """Seeded weights and BatchNorm statistics from a few random batches, so that BatchNorm is not
    the identity (an untouched BN would hide a wrongly sliced running mean)."""
    model.train()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            model(torch.randn(4, 3, size, size, generator=generator))
    return model.eval()


def small_resnet18() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _settled(resnet18(num_classes=10, width=0.125), 32), torch.randn(2, 3, 32, 32)


def small_mobilenet_v3() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _settled(mobilenet_v3_small(num_classes=10, width=0.25), 32), torch.randn(2, 3, 32, 32)
