"""Train the Llama-architecture char-level LM the LLM benchmarks use (bench/llm_int4.py, bench/llm_sparse.py).

Model: Hugging Face ``LlamaForCausalLM`` built from a config (no download): 4 layers, width 256, 8 query
heads and 2 key/value heads (grouped-query attention, head dim 32), SwiGLU MLP of width 512, RMSNorm,
RoPE, untied LM head; 65-character vocabulary of tiny Shakespeare (``slimtorch.data.text.tokenize``,
the same ids as ``char_gpt``); ~2.3M parameters. Every Linear's input features (256, 512) is a multiple
of 128, so group sizes 32..128 divide them all.

Training: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.1), batch 32 random windows of 128 characters
from the first 90% of the text, linear warm-up then cosine decay over a fixed wall-clock budget (the
CPU is shared, so the number of steps that fits is recorded, not fixed), 2 threads (``--threads``), seed 0.

Writes ``bench/checkpoints/llama_shakespeare.safetensors`` (weights) and ``llama_shakespeare.json``
(``{"config": LlamaConfig.to_dict(), "train": {...}}``); :func:`load_llama` rebuilds the model.

Run: ``.venv/bin/python bench/train_llama_shakespeare.py --minutes 20``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHECKPOINTS_DIR, DATA_ROOT, wall_clock_steps  # noqa: E402
from slimtorch.data.text import TRAIN_FRACTION, tokenize  # noqa: E402

CKPT = CHECKPOINTS_DIR / "llama_shakespeare.safetensors"
INFO = CKPT.with_suffix(".json")
BLOCK = 128
SEED = 0


def llama_config(vocab: int):  # -> transformers.LlamaConfig
    """The benchmark's Llama config: GQA 8/2 heads, width 256, SwiGLU 512, 4 layers."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def load_corpus() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Train / val token ids (90/10 split, vocabulary = sorted distinct characters) and the vocabulary."""
    text = (DATA_ROOT / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    chars, ids = tokenize(text)
    t = torch.from_numpy(ids)
    n = int(TRAIN_FRACTION * len(t))
    return t[:n], t[n:], chars


def load_llama(path: Path = CKPT):  # -> LlamaForCausalLM
    """Rebuild the trained model from the safetensors file and its json config (eval mode)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    info = json.loads(path.with_suffix(".json").read_text())
    model = LlamaForCausalLM(LlamaConfig.from_dict(info["config"]))
    model.load_state_dict(load_file(str(path)))
    model.config.use_cache = False
    return model.eval()


def random_windows(ids: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random (input, next-char target) windows of length BLOCK: two (n, BLOCK) long tensors."""
    starts = torch.randint(0, len(ids) - BLOCK - 1, (n,), generator=gen)
    x = torch.stack([ids[s : s + BLOCK] for s in starts.tolist()])
    y = torch.stack([ids[s + 1 : s + BLOCK + 1] for s in starts.tolist()])
    return x, y


@torch.no_grad()
def val_loss(model: torch.nn.Module, ids: torch.Tensor, n: int = 64) -> float:
    """Mean per-character cross-entropy over the first ``n`` non-overlapping validation windows."""
    model.eval()
    x = ids[: n * BLOCK].view(n, BLOCK)
    y = ids[1 : n * BLOCK + 1].view(n, BLOCK)
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    train_ids, val_ids, chars = load_corpus()
    from transformers import LlamaForCausalLM

    config = llama_config(len(chars))
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"LlamaForCausalLM {params} params", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup, base_lr, min_lr = 50, 3e-3, 1e-4
    t0 = time.perf_counter()
    steps = 0
    model.train()
    for i, lr in wall_clock_steps(opt, args.minutes * 60.0, warmup, base_lr, min_lr):
        x, y = random_windows(train_ids, args.batch, gen)
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i % 50 == 0:
            print(f"step {i} loss {loss.item():.4f} lr {lr:.2e} {time.perf_counter() - t0:.0f}s", flush=True)
        steps = i + 1
    vl = val_loss(model, val_ids)
    from safetensors.torch import save_file

    CKPT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(CKPT))
    info = {
        "config": config.to_dict(),
        "train": {
            "steps": steps,
            "batch": args.batch,
            "block": BLOCK,
            "seed": SEED,
            "train_s": round(time.perf_counter() - t0, 1),
            "val_loss_64x128": vl,
            "params": params,
            "command": " ".join(sys.argv),
        },
    }
    INFO.write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(f"trained: {info['train']}", flush=True)


if __name__ == "__main__":
    main()
