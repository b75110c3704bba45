"""A tiny Vision Transformer (Dosovitskiy et al. 2021) for small images."""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.models.attention import SelfAttention
from slimtorch.models.registry import register_model


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn: str, causal: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.use_torch_attn = attn == "torch"
        if self.use_torch_attn:
            self.attn: nn.Module = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.attn = SelfAttention(dim, heads, causal=causal, dropout=dropout)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim)
        h = self.ln1(x)
        if self.use_torch_attn:
            h = self.attn(h, h, h, need_weights=False)[0]
        else:
            h = self.attn(h)
        x = x + self.drop(h)
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln2(x)))))


class ViT(nn.Module):
    """Patch embedding (strided conv) + class token + learned positions + blocks + head.

    Args:
        image_size: input side (32 for CIFAR, 28 for MNIST, 8 for digits).
        patch_size: patch side; must divide ``image_size``.
        in_channels: input channels.
        num_classes: output size.
        dim: width; depth: number of blocks; heads: attention heads; mlp_ratio: MLP width / dim.
        attn: ``"own"`` (:class:`SelfAttention`, head-prunable) or ``"torch"`` (``nn.MultiheadAttention``).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3, num_classes: int = 10,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0,
                 attn: str = "own") -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}")
        if attn not in ("own", "torch"):
            raise ValueError(f"attn must be 'own' or 'torch', got {attn!r}")
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        n = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit_tiny")
def vit_tiny(image_size: int = 32, patch_size: int = 4, in_channels: int = 3, num_classes: int = 10,
             dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0, attn: str = "own") -> ViT:
    """A ViT-Tiny-like model for small images (defaults: 32x32, patch 4, width 192, 6 blocks, 3 heads)."""
    return ViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_ratio, attn)
