"""Tiny language models shared by the LLM-compression tests: our char_gpt and a GQA Llama from a config."""

from __future__ import annotations

import pytest
import torch

from slimtorch.models import create


def tiny_char_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("char_gpt", n_layer=2, n_embd=64, n_head=4, block_size=32).eval()


def tiny_llama() -> torch.nn.Module:
    """``LlamaForCausalLM`` with grouped-query attention (4 heads, 2 KV heads), built from a config."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def dict_batches(vocab: int, n: int = 3, batch: int = 4, seq: int = 16) -> list[dict[str, torch.Tensor]]:
    """Dict batches with input_ids and an attention_mask that pads the end of one row."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq - 4:] = 0
        out.append({"input_ids": torch.randint(0, vocab, (batch, seq), generator=g), "attention_mask": mask})
    return out


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out
