"""A small causal character-level transformer in the style of nanoGPT / minGPT (Radford et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.models.registry import register_model
from slimtorch.models.vit import Block


class CharGPT(nn.Module):
    """Token + position embeddings -> pre-norm causal blocks -> LayerNorm -> LM head.

    Args:
        vocab_size: number of characters (65 for tinyshakespeare).
        block_size: longest context.
        n_layer, n_head, n_embd: depth, heads, width.
        dropout: dropout in blocks.

    Forward maps token ids ``(B, T)`` to logits ``(B, T, vocab_size)``.
    """

    def __init__(self, vocab_size: int = 65, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_shape = (block_size,)
        self.input_dtype = torch.long
        self.num_classes = vocab_size
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[Block(n_embd, n_head, 4.0, "own", causal=True, dropout=dropout) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) long -> (B, T, vocab)
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        return self.head(self.ln_f(self.blocks(x)))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
        """Sample ``max_new_tokens`` characters after the prompt ``idx`` (B, T)."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1] / temperature
            idx = torch.cat([idx, torch.multinomial(torch.softmax(logits, -1), 1)], dim=1)
        return idx


@register_model("char_gpt")
def char_gpt(vocab_size: int = 65, block_size: int = 128, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
             dropout: float = 0.0) -> CharGPT:
    """Small char-level GPT (defaults: 4 layers, 4 heads, width 128, context 128; about 0.8M params)."""
    return CharGPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout)
