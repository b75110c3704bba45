"""Multi-head self-attention with separate q/k/v/out projections.

Separate projections (rather than one fused ``qkv`` Linear) keep heads visible to structured pruning:
removing head ``h`` removes rows ``h*d:(h+1)*d`` of q, k, v and the matching columns of ``proj``, and
``num_heads`` is decremented. The head width is derived from the weights at run time
(``q.out_features // num_heads``), so a pruned module needs no other bookkeeping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V per head, then an output projection.

    Args:
        dim: model width (input and output size).
        num_heads: number of heads; ``dim`` must be divisible by it.
        causal: mask future positions (decoder / GPT).
        bias: use biases in the projections.
        dropout: attention-probability dropout.
    """

    #: The rule family prune's channel surgery and metrics' MAC counting apply (the zoo sits below both,
    #: so it names the family instead of being imported by their rule tables): separate q/k/v/proj
    #: ``Linear`` children, ``num_heads``, called on ``(B, T, dim)``.
    slimtorch_kind = "qkv_attention"

    def __init__(self, dim: int, num_heads: int, causal: bool = False, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.causal = causal
        self.dropout = dropout
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    @property
    def head_dim(self) -> int:
        return self.q.out_features // self.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, T, dim)
        b, t, _ = x.shape
        h = self.num_heads
        q = self.q(x).view(b, t, h, -1).transpose(1, 2)  # (B, h, T, d)
        k = self.k(x).view(b, t, h, -1).transpose(1, 2)
        v = self.v(x).view(b, t, h, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, d_v)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))
