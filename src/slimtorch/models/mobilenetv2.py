"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs: stride 1 stem and first stages."""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.models.registry import register_model


def _round(c: float, divisor: int = 8) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for CIFAR: the ImageNet settings with the stem and the 2nd stage at stride 1.

    Args:
        num_classes: output size.
        width_mult: channel multiplier (rounded to multiples of 8).
        in_channels: input channels.
    """

    # (expansion t, channels c, repeats n, stride s) from Sandler et al. Table 2, CIFAR strides.
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.input_shape = (in_channels, 32, 32)
        self.num_classes = num_classes
        cin = _round(32 * width_mult)
        last = _round(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False),
                                                nn.BatchNorm2d(cin), nn.ReLU6())]
        for t, c, n, s in self.SETTINGS:
            cout = _round(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 images (depthwise convolutions, inverted residuals)."""
    return MobileNetV2Cifar(num_classes, width_mult, in_channels)
