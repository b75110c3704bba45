"""CIFAR ResNets (He et al. 2016, §4.2): 6n+2 layers, 16/32/64 channels, global pooling, fc.

Shortcut options when the shape changes (He et al. §3.3):
  * ``"A"``: parameter-free, subsample by 2 and zero-pad the new channels (the paper's CIFAR choice;
    ResNet-20 has 269,722 parameters). The padding ties channels to positions, so channel pruning
    must ignore these blocks' output channels.
  * ``"B"`` (default): 1x1 convolution + BatchNorm projection (+2,688 parameters on ResNet-20). This is
    what Torch-Pruning and DepGraph prune, and it keeps every channel group prunable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.models.registry import register_model


class PadShortcut(nn.Module):
    """Option A shortcut: ``x[:, :, ::2, ::2]`` then zero channels appended up to ``out_channels``."""

    #: Channels are matched by position (zeros appended), so structured pruning keeps the channels on both
    #: sides: prune's surgery table pins layers of kind "channel_pad".
    slimtorch_kind = "channel_pad"

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``depth = 6n + 2``.

    Args:
        depth: 20, 32, 44, 56, 110, ... (``(depth - 2) % 6 == 0``).
        num_classes: output size.
        shortcut: ``"A"`` or ``"B"`` (see module docstring).
        width: channels of the first stage (16 in the paper).
        in_channels: input channels.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, shortcut: str = "B", width: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.input_shape = (in_channels, 32, 32)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, layers = width, []
        in_planes = width
        for stage in range(3):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
            planes *= 2
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _make(depth: int):
    def ctor(num_classes: int = 10, shortcut: str = "B", width: int = 16, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, num_classes, shortcut, width, in_channels)

    ctor.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), shortcut option B by default."
    return ctor


for _d in (20, 32, 44, 56, 110):
    register_model(f"resnet{_d}")(_make(_d))
