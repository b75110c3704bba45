"""Tiny Hugging Face models of each family, built from a config in-process (no download).

Every builder seeds torch, turns dropout off (so train-mode forwards are deterministic and a mask or
loss comparison is exact) and uses eager attention where attention maps are read.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = 61
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
#: Wider than the 0.02 default so that outputs (and so a dropped mask) move by clearly measurable amounts.
INIT = {"initializer_range": 0.2}


def bert_config(layers: int = 4, hidden: int = 32, heads: int = 4, **kw):
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=2 * hidden,
                                   max_position_embeddings=32, **NO_DROPOUT, **INIT, **kw)


def bert(layers: int = 4, hidden: int = 32, heads: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.BertModel(bert_config(layers, hidden, heads), add_pooling_layer=False)


def bert_classifier(num_labels: int = 3, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(bert_config(layers, num_labels=num_labels))


def llama(layers: int = 2, seed: int = 0):
    """A Llama with grouped-query attention: 4 query heads share 2 key-value heads."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32, **INIT)
    return transformers.LlamaForCausalLM(cfg)


def gpt2(layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  **INIT)
    return transformers.GPT2LMHeadModel(cfg)


def vit(layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=layers,
                                 num_attention_heads=4, intermediate_size=64, num_labels=3, **NO_DROPOUT, **INIT)
    return transformers.ViTForImageClassification(cfg)


def text_batch(batch: int = 4, length: int = 10, pad_from: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids`` and an ``attention_mask`` whose first half of rows is padded from ``pad_from`` on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[: batch // 2, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def image_batch(batch: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}
