"""``slimtorch demo``: the whole job on the bundled digits data, with no files needed.

It runs the ordinary pipeline runner on an embedded recipe: train a teacher MLP, distill a smaller
student from it, prune the student (magnitude, fine-tuned), quantize it to int8 and deploy it as an
ONNX QDQ file on ONNX Runtime. It prints the stage table, the final model's size and accuracy against
the teacher's, and where the report is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from slimtorch.cli.common import write_json
from slimtorch.metrics import render_table
from slimtorch.pipeline import ROW_KEYS, parse_recipe, public_row, run_recipe

NAME = "demo"
HELP = (
    "Teacher -> distilled student -> pruned -> int8 on ONNX Runtime, on the bundled digits data "
    "(no files needed); prints the stage table and where the report is."
)

#: The recipe the demo runs (``slimtorch run`` runs the same thing from a file).
DEMO_RECIPE = """
name: digits demo (teacher -> distilled student -> pruned -> int8 ONNX)
model: {zoo: mlp, args: {hidden: [256, 256]}}
data: {name: digits}
measure: {runtime: onnxruntime, batch_size: 1, threads: 1, repeats: 50}
stages:
  - train: {label: teacher, epochs: 20, lr: 0.05, batch_size: 64}
  - distill:
      label: student
      student: {zoo: mlp, args: {hidden: [128]}}
      losses: [{type: KD, temperature: 4.0}]
      task_weight: 0.5
      train: {epochs: 20, lr: 0.05, batch_size: 64}
  - prune:
      label: pruned
      type: Magnitude
      sparsity: 0.5
      finetune: {epochs: 3, lr: 0.01, batch_size: 64}
  - quantize: {label: int8, type: Int8Static, observer: minmax}
"""

#: ``--fast``: the same stages, tiny models and one or two epochs (a smoke test in seconds).
FAST_CHANGES = {"teacher_hidden": [64], "student_hidden": [16], "epochs": 2, "finetune_epochs": 1, "repeats": 5}


def demo_recipe(fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo recipe as plain data (``fast`` shrinks models and epochs)."""
    data = yaml.safe_load(DEMO_RECIPE)
    data["seed"] = seed
    if fast:
        f = FAST_CHANGES
        data["model"]["args"]["hidden"] = f["teacher_hidden"]
        stages = data["stages"]
        stages[0]["train"]["epochs"] = f["epochs"]
        stages[1]["distill"]["student"]["args"]["hidden"] = f["student_hidden"]
        stages[1]["distill"]["train"]["epochs"] = f["epochs"]
        stages[2]["prune"]["finetune"]["epochs"] = f["finetune_epochs"]
        data["measure"]["repeats"] = f["repeats"]
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the demo's layers are too small to gain from more, "
        "and extra OpenMP threads spin on a busy CPU)",
    )
    p.add_argument("--fast", action="store_true", help="tiny models, 1-2 epochs per stage (a smoke test)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the stage table here as JSON")
    p.add_argument("--print-recipe", action="store_true", help="print the embedded recipe and exit")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")


def run(args: argparse.Namespace) -> int:
    data = demo_recipe(args.fast, args.seed)
    if args.print_recipe:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
        return 0
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="slimtorch-demo-"))
    recipe = parse_recipe(data, source="the demo recipe")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:  # restored afterwards: main() may be called in-process (tests, notebooks)
        rows = run_recipe(
            recipe,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    finally:
        torch.set_num_threads(previous_threads)
    table = [public_row(r) for r in rows]
    print(render_table(table, columns=ROW_KEYS))
    teacher, final = table[0], table[-1]
    print(
        f"final ({final['stage']}) vs teacher: {teacher['size_bytes'] / final['size_bytes']:.1f}x smaller on disk "
        f"({final['size_bytes']} vs {teacher['size_bytes']} bytes), accuracy "
        f"{100 * final['accuracy']:.2f}% vs {100 * teacher['accuracy']:.2f}% "
        f"({100 * (final['accuracy'] - teacher['accuracy']):+.2f} pt)"
    )
    if args.json:
        write_json(args.json, table)
    print(f"report: {out / 'report.html'} (and report.md); {time.perf_counter() - t0:.1f} s")
    return 0
