"""Multi-layer perceptrons: LeNet-300-100 (LeCun et al. 1998) and the Hinton et al. 2015 MNIST nets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from slimtorch.models.registry import register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU (-> Dropout)] * len(hidden) -> Linear.

    Args:
        in_features: size of the flattened input (784 for MNIST, 64 for digits).
        hidden: sizes of the hidden layers.
        num_classes: output size.
        dropout: dropout probability after each hidden layer (Hinton et al. used 0.5 on the teacher).
        input_dropout: dropout on the input pixels (Hinton et al.'s teacher used 0.2).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (300, 100),
        num_classes: int = 10,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = (in_features,)
        self.flattens_input = True  # any input of in_features elements per sample is accepted
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, num_classes)
        return self.net(x)


@register_model("mlp")
def mlp(in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10,
        dropout: float = 0.0, input_dropout: float = 0.0) -> MLP:
    """Any MLP; ``hidden`` sets the layer sizes."""
    return MLP(in_features, tuple(hidden), num_classes, dropout, input_dropout)


@register_model("lenet_300_100")
def lenet_300_100(in_features: int = 784, num_classes: int = 10) -> MLP:
    """LeNet-300-100: 784-300-100-10, 266,610 parameters (Han et al. 2015, Table 2)."""
    return MLP(in_features, (300, 100), num_classes)


@register_model("mlp_1200_1200")
def mlp_1200_1200(in_features: int = 784, num_classes: int = 10, dropout: float = 0.5,
                  input_dropout: float = 0.2) -> MLP:
    """Hinton et al. 2015 teacher: 784-1200-1200-10 with dropout."""
    return MLP(in_features, (1200, 1200), num_classes, dropout, input_dropout)


@register_model("mlp_800_800")
def mlp_800_800(in_features: int = 784, num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """Hinton et al. 2015 student: 784-800-800-10."""
    return MLP(in_features, (800, 800), num_classes, dropout)
