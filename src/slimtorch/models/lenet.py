"""LeNet-5 in the Caffe variant used by Han et al. 2015 (conv 20 -> conv 50 -> fc 500 -> fc 10)."""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.models.registry import register_model


class LeNet5(nn.Module):
    """Caffe LeNet: conv5x5(20) -> maxpool2 -> conv5x5(50) -> maxpool2 -> fc(500) -> ReLU -> fc(10).

    431,080 parameters for 1x28x28 inputs. Caffe's LeNet has no ReLU after the convolutions; we follow
    it so parameter counts and the Han et al. per-layer table line up.

    Args:
        in_channels: input channels (1 for MNIST).
        num_classes: output size.
        image_size: input height/width (28 for MNIST, 8 for digits with ``padding``).
        conv_relu: add ReLU after each convolution (off in Caffe's original).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 conv_relu: bool = False) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        act = nn.ReLU if conv_relu else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), act(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), act(), nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for LeNet-5 (needs >= 16)")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Linear(500, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.features(x))


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
           conv_relu: bool = False) -> LeNet5:
    """Caffe LeNet-5 (20-50-500-10), 431,080 parameters at 28x28."""
    return LeNet5(in_channels, num_classes, image_size, conv_relu)
