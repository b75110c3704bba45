"""Distillation fine-tunes for ``bench/minilm.py``: the 6 -> 3 layer student and the head/FFN-pruned model.

Both use slimtorch's TinyBERT-style layer distillation (:class:`slimtorch.distill.TinyBERTDistiller`,
Jiao et al. 2020 §3.1: embedding cosine, hidden-state MSE and attention-map MSE over the layer mapping)
plus one term the bench adds because it is the quantity the bench measures: the cosine between the
student's and the teacher's sentence embeddings (mean of the last hidden states over the attention mask,
as sentence-transformers pools all-MiniLM-L6-v2),

    L = L_TinyBERT + w_pool * mean_b (1 - cos(pool(H_S^b), pool(H_T^b)))

The teacher's last hidden state is read from the forward pass the distiller already runs (a forward hook
on the teacher), so the extra term costs no teacher forward. Optimiser: AdamW, linear warm-up over the
first 5% of the steps then cosine decay to 0, gradient norm clipped at 1. The word-embedding table
(12 M of the 22.7 M parameters, the teacher's own) is frozen: the student keeps the teacher's vocabulary
vectors and the optimiser step skips the largest tensor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from slimtorch.distill import TinyBERT, TinyBERTDistiller


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, H) over the real tokens of ``mask`` (B, T): the sentence embedding."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def pooled_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_b (1 - cos(pool(student_b), pool(teacher_b)))`` (the bench's fidelity measure as a loss)."""
    return (1 - F.cosine_similarity(pooled(student, mask), pooled(teacher, mask), dim=-1)).mean()


def lr_at(step: int, steps: int, lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over ``warmup * steps`` steps, then cosine decay from ``lr`` to 0."""
    w = max(1, int(warmup * steps))
    if step < w:
        return lr * (step + 1) / w
    return 0.5 * lr * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def distill_(student: nn.Module, teacher: nn.Module, batches: Iterator[dict[str, torch.Tensor]], *, steps: int,
             lr: float, config: TinyBERT, pooled_weight: float, desc: str) -> dict[str, Any]:
    """Train ``student`` in place for ``steps`` batches of ``batches``; returns the loss trace and wall time."""
    for p in student.parameters():  # a copy of a teacher that an earlier distiller froze comes frozen too
        p.requires_grad_(True)
    distiller = TinyBERTDistiller(student, teacher, config)
    seen: dict[str, torch.Tensor] = {}
    hook = teacher.register_forward_hook(lambda m, i, out: seen.__setitem__("last", out.last_hidden_state))
    emb = getattr(getattr(student, "embeddings", None), "word_embeddings", None)
    if emb is not None:
        emb.weight.requires_grad_(False)
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    distiller.train()
    trace: list[dict[str, float]] = []
    t0 = time.perf_counter()
    try:
        for step in (bar := tqdm(range(steps), desc=desc, mininterval=5.0)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr)
            batch = next(batches)
            out = distiller(batch)
            pool = pooled_cosine_loss(out["output"], seen["last"], batch["attention_mask"])
            loss = out["loss"] + pooled_weight * pool
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 10 == 0 or step == steps - 1:
                row = {"step": step, "loss": float(loss.detach()), "pooled_cos": 1 - float(pool.detach()),
                       **{k: float(out[k]) for k in ("embedding", "hidden", "attention") if k in out}}
                trace.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", cos=f"{row['pooled_cos']:.4f}")
    finally:
        hook.remove()
        if emb is not None:
            emb.weight.requires_grad_(True)
    student.eval()
    return {"steps": steps, "lr": lr, "pooled_weight": pooled_weight, "tinybert": config.to_dict(),
            "seconds": round(time.perf_counter() - t0, 1), "trace": trace}


def text_batches(tokenizer: Any, texts: list[str], batch_size: int, max_length: int, seed: int
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of tokenised ``texts`` (padded to the longest in the batch)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(texts), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            enc = tokenizer([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
