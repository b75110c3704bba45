"""GPTQ vs round-to-nearest on a char-level GPT trained on tinyshakespeare (BENCHMARKS.md: gptq_chargpt).

Phase 1 (skipped when ``bench/checkpoints/char_gpt.safetensors`` exists, unless ``--retrain``): train
``char_gpt`` (4 layers, 4 heads, width 128, context 128; ~0.8M params) with AdamW (batch 32 windows)
for a fixed wall-clock budget on one thread, cosine learning-rate decay over the fraction of the
budget spent (the CPU is shared, so the number of steps that fits is recorded, not fixed).

Phase 2: weight-only quantize every Linear inside the transformer blocks and the LM head, 4-bit and 3-bit,
group 64, asymmetric, with round-to-nearest and with GPTQ (Frantar et al. 2022, 128 calibration windows of
128 characters from the training split), and report validation loss and perplexity against fp32.

Run: ``.venv/bin/python bench/gptq_chargpt.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, DATA_ROOT, Timer, check, wall_clock_steps, write_result  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.quant import WeightOnly, quantize_  # noqa: E402

CKPT = CHECKPOINTS_DIR / "char_gpt.safetensors"
BLOCK = 128
SEED = 0


def load_corpus() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Train / val token ids (90/10 split of the file, vocabulary = sorted distinct characters)."""
    text = (DATA_ROOT / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def random_windows(ids: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (input, next-char target) windows of length BLOCK: two (n, BLOCK) long tensors."""
    starts = torch.randint(0, len(ids) - BLOCK - 1, (n,), generator=gen)
    x = torch.stack([ids[s : s + BLOCK] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + BLOCK + 1] for s in starts.tolist()])
    return x, y


def val_windows(ids: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows covering the validation split (every character scored once)."""
    n = (len(ids) - 1) // BLOCK
    if limit is not None:
        n = min(n, limit)
    x = ids[: n * BLOCK].view(n, BLOCK)
    y = ids[1 : n * BLOCK + 1].view(n, BLOCK)
    return x, y


@torch.no_grad()
def val_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    """Mean per-character cross-entropy (nats) over the windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])  # (B, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum").item()
        count += y[i : i + batch].numel()
    return total / count


def train(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int, minutes: float) -> dict:
    """Train char_gpt for ``minutes`` of wall-clock on one thread and save it to CKPT."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = create("char_gpt", vocab_size=vocab, block_size=BLOCK, n_layer=4, n_head=4, n_embd=128)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1)
    batch, warmup, base_lr, min_lr = 32, 50, 2e-3, 1e-4

    def step() -> float:
        x, y = random_windows(train_ids, batch, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    model.train()
    # The CPU is shared, so the schedule is driven by wall-clock: cosine decay over the fraction of the
    # budget spent, stopping when it is used up (the number of steps taken is recorded).
    t0 = time.perf_counter()
    total = 0
    for i, lr in wall_clock_steps(opt, minutes * 60.0, warmup, base_lr, min_lr):
        loss = step()
        if i % 100 == 0:
            print(f"step {i} loss {loss:.4f} lr {lr:.2e} {time.perf_counter() - t0:.0f}s", flush=True)
        total = i + 1
    vx, vy = val_windows(val_ids)
    vl = val_loss(model, vx, vy)
    CKPT.parent.mkdir(parents=True, exist_ok=True)
    slimtorch.save(model, CKPT)
    info = {"steps": total, "batch": batch, "train_s": round(time.perf_counter() - t0, 1), "val_loss": vl}
    CKPT.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"trained: {info}", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-minutes", type=float, default=25.0)
    ap.add_argument("--retrain", action="store_true", help="train even if the checkpoint exists")
    ap.add_argument("--train-only", action="store_true", help="stop after training")
    ap.add_argument("--quick", action="store_true", help="smoke run: few calibration/val windows")
    ap.add_argument("--checkpoint", type=Path, default=CKPT, help="trained model (written by phase 1)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    timer = Timer()
    train_ids, val_ids, vocab = load_corpus()
    if args.checkpoint == CKPT and (args.retrain or not CKPT.exists()):
        train(train_ids, val_ids, vocab, args.train_minutes)
    if args.train_only:
        return
    info_path = args.checkpoint.with_suffix(".json")
    train_info = json.loads(info_path.read_text()) if info_path.exists() else {}
    model = slimtorch.load(args.checkpoint).eval()
    n_val = 64 if args.quick else None
    vx, vy = val_windows(val_ids, n_val)
    gen = torch.Generator().manual_seed(SEED)
    cx, _ = random_windows(train_ids, 32 if args.quick else 128, gen)  # calibration: training split only
    calib = list(cx.split(16))
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    base = val_loss(model, vx, vy)
    rows = [
        {
            "model": "fp32",
            "bits": 32,
            "method": "-",
            "val_loss": base,
            "ppl": math.exp(base),
            "loss_increase": 0.0,
            "ppl_increase_pct": 0.0,
            "weight_bytes": fp32_bytes,
            "quant_s": 0.0,
        }
    ]
    print(f"fp32: val loss {base:.4f} ppl {math.exp(base):.3f}", flush=True)
    variants = [("rtn", False), ("gptq", False), ("gptq", True)]
    for bits in (4, 3):
        for method, act_order in variants:
            q = copy.deepcopy(model)
            t = time.perf_counter()
            report = quantize_(
                q, WeightOnly(bits=bits, group_size=64, method=method, gptq_act_order=act_order), calib
            )
            qs = time.perf_counter() - t
            loss = val_loss(q, vx, vy)
            size = sum(b.numel() * b.element_size() for b in q.state_dict().values())
            name = method + ("+act_order" if act_order else "")
            rows.append(
                {
                    "model": f"w{bits}g64",
                    "bits": bits,
                    "method": name,
                    "val_loss": loss,
                    "ppl": math.exp(loss),
                    "loss_increase": loss - base,
                    "ppl_increase_pct": 100 * (math.exp(loss - base) - 1),
                    "weight_bytes": size,
                    "quant_s": round(qs, 1),
                    "layers": len(report.quantized),
                }
            )
            print(f"w{bits} {name}: val loss {loss:.4f} (+{loss - base:.4f}) in {qs:.0f}s", flush=True)

    def pick(bits: int, method: str) -> dict:
        return next(r for r in rows if r["bits"] == bits and r["method"] == method)

    checks = []
    for bits in (4, 3):
        g, r = pick(bits, "gptq"), pick(bits, "rtn")
        checks.append(
            check(
                f"{bits}-bit g64: GPTQ val-loss increase < RTN's",
                round(g["loss_increase"], 4),
                f"< {r['loss_increase']:.4f} (RTN)",
                g["loss_increase"] < r["loss_increase"],
            )
        )
    g4 = pick(4, "gptq")
    checks.append(
        check(
            "4-bit GPTQ perplexity above fp32 (%)",
            round(g4["ppl_increase_pct"], 2),
            "<= 3%",
            g4["ppl_increase_pct"] <= 3.0,
        )
    )
    extra = {
        "train": train_info,
        "model": "char_gpt n_layer=4 n_head=4 n_embd=128 block=128",
        "params": sum(p.numel() for p in model.parameters()),
        "val_windows": len(vx),
        "calib_windows": len(cx),
        "quantized": "all Linear layers (blocks + LM head); embeddings fp32",
    }
    write_result("gptq_chargpt", rows, checks, seeds=[SEED], wall_s=timer.elapsed, extra=extra)


if __name__ == "__main__":
    main()
