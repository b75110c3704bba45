"""Peer rows for bench/llm_int4.py: llm-compressor (0.14) GPTQ and AWQ on the same Llama char LM and data.

Runs in its own virtual environment (``python3 -m venv /work/venv-llmc && /work/venv-llmc/bin/pip install
torch==2.13.0 'llmcompressor==0.14.*'``), without slimtorch: the tokenisation (sorted distinct characters of the
file, 90/10 split), the validation windows (first 64 non-overlapping 128-character windows) and the calibration
windows (32 random training windows, ``torch.Generator().manual_seed(0)``) are rebuilt exactly as
``bench/llm_int4.py`` builds them. Weights: 4 and 3 bits, groups 32 and 128, asymmetric, every Linear (the
same layers as ours). Perplexity is computed on the model llm-compressor returns (its fake-quantized forward).

Writes ``bench/results/llm_int4_llmcompressor.json`` (rows merged into llm_int4's table). With ``--sparse``:
llm-compressor's ``SparseGPTModifier`` and ``WandaPruningModifier`` at 50% unstructured and 2:4 on every Linear of
the transformer blocks (LM head dense), 64 calibration windows as ``bench/llm_sparse.py`` uses, written to
``bench/results/llm_sparse_llmcompressor.json``.

Run: ``/work/venv-llmc/bin/python bench/llmc_peer.py [--sparse]``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent
CKPT = BENCH / "checkpoints" / "llama_shakespeare.safetensors"
TEXT = BENCH.parent.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
BLOCK, SEED, N_VAL, N_CAL = 128, 0, 64, 32


def corpus() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    text = TEXT.read_text(encoding="utf-8")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab = np.unique(codes)
    ids = torch.from_numpy(np.searchsorted(vocab, codes).astype(np.int64))
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], [chr(c) for c in vocab]


def tokenizer(chars: list[str], folder: Path):
    """A character-level fast tokenizer (one id per character, the benchmark's vocabulary) saved in ``folder``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(folder)
    return fast


@torch.no_grad()
def ppl(model, x, y) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), 16):
        logits = model(input_ids=x[i : i + 16], attention_mask=torch.ones_like(x[i : i + 16])).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + 16].flatten(), reduction="sum").item()
    return math.exp(total / y.numel())


def main() -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(int(os.environ.get("SLIMTORCH_THREADS", "2")))
    sparse = "--sparse" in sys.argv[1:]
    n_cal = 64 if sparse else N_CAL
    train_ids, val_ids, chars = corpus()
    vx = val_ids[: N_VAL * BLOCK].view(N_VAL, BLOCK)
    vy = val_ids[1 : N_VAL * BLOCK + 1].view(N_VAL, BLOCK)
    gen = torch.Generator().manual_seed(SEED)
    starts = torch.randint(0, len(train_ids) - BLOCK - 1, (n_cal,), generator=gen).tolist()
    cx = torch.stack([train_ids[s : s + BLOCK] for s in starts])
    info = json.loads(CKPT.with_suffix(".json").read_text())
    base_model = LlamaForCausalLM(LlamaConfig.from_dict(info["config"]))
    base_model.load_state_dict(load_file(str(CKPT)))
    base = ppl(base_model, vx, vy)
    ds = Dataset.from_dict({"input_ids": cx.tolist(), "attention_mask": torch.ones_like(cx).tolist()})
    rows = [{"model": "llama", "impl": "llm-compressor fp32", "method": "-", "bits": 32, "group": None,
             "ppl": round(base, 4)}]
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama"
        base_model.save_pretrained(folder)
        base_model.config._name_or_path = str(folder)  # oneshot looks its processor up by the model's own path
        tokenizer(chars, folder)
        if sparse:
            rows += sparse_rows(base_model, ds, folder, vx, vy, n_cal)
        for bits in (() if sparse else (4, 3)):
            for group in (32, 128):
                for name in ("GPTQ", "AWQ"):
                    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
                        num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group))
                    if name == "GPTQ":
                        recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=[])
                    else:
                        recipe = AWQModifier(config_groups={"group_0": scheme}, ignore=[])
                    model = copy.deepcopy(base_model)
                    t = time.perf_counter()
                    try:
                        oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=BLOCK,
                                num_calibration_samples=n_cal, tokenizer=str(folder))
                        p = ppl(model, vx, vy)
                        rows.append({"model": "llama", "impl": "llm-compressor", "method": name, "bits": bits,
                                     "group": group, "ppl": round(p, 4),
                                     "quant_s": round(time.perf_counter() - t, 1)})
                    except Exception as e:  # report what does not run here
                        rows.append({"model": "llama", "impl": "llm-compressor", "method": name, "bits": bits,
                                     "group": group, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    print(rows[-1], flush=True)
    bench_id = "llm_sparse_llmcompressor" if sparse else "llm_int4_llmcompressor"
    out = BENCH / "results" / f"{bench_id}.json"
    import llmcompressor

    out.write_text(json.dumps({"id": bench_id, "command": " ".join(sys.argv),
                               "versions": {"llmcompressor": llmcompressor.__version__, "torch": torch.__version__},
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def sparse_rows(base_model, ds, folder: Path, vx, vy, n_cal: int) -> list[dict]:
    """llm-compressor's SparseGPT and Wanda at 50% and 2:4 on the block Linears (LM head dense)."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    rows = []
    for pattern, structure in (("50%", "0:0"), ("2:4", "2:4")):
        for name, cls in (("sparsegpt", SparseGPTModifier), ("wanda", WandaPruningModifier)):
            model = copy.deepcopy(base_model)
            t = time.perf_counter()
            try:
                oneshot(model=model, dataset=ds, recipe=cls(sparsity=0.5, mask_structure=structure,
                                                            targets=["Linear"], ignore=["lm_head"]),
                        max_seq_length=BLOCK, num_calibration_samples=n_cal, tokenizer=str(folder))
                secs = time.perf_counter() - t
                blocks = [m.weight for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]
                zeros = sum(int((w == 0).sum()) for w in blocks) / sum(w.numel() for w in blocks)
                rows.append({"model": "llama", "impl": "llm-compressor", "pattern": pattern, "method": name,
                             "ppl": round(ppl(model, vx, vy), 4), "sparsity": round(zeros, 4),
                             "prune_s": round(secs, 2), "s_per_block": round(secs / len(model.model.layers), 3)})
            except Exception as e:  # report what does not run here
                rows.append({"model": "llama", "impl": "llm-compressor", "pattern": pattern, "method": name,
                             "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
