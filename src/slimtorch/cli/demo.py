"""``slimtorch demo``: the whole job on the bundled digits data, with no files needed."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from slimtorch import data as sdata
from slimtorch.cli.common import build_model, write_json
from slimtorch.metrics import example_inputs_for, profile, render_table
from slimtorch.train import fit

NAME = "demo"
HELP = "Train a teacher on the bundled digits data and profile it (no files needed)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the stage table here as JSON")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="slimtorch-demo-"))
    train_set, test_set = sdata.load("digits", "train"), sdata.load("digits", "test")
    teacher = build_model("mlp", train_set, {"hidden": [512, 512]})
    res = fit(teacher, train_set, args.epochs, eval_data=test_set, lr=0.05, batch_size=64, seed=args.seed,
              out_dir=out / "teacher", overwrite=True, progress=not args.no_progress)
    prof = profile(teacher, example_inputs_for(teacher), runtimes=("torch", "onnxruntime"))
    row = {"stage": "teacher", "accuracy": res.final["val_accuracy"], **prof}
    print(render_table([row]))
    if args.json:
        write_json(args.json, [row])
    print(f"run folder: {out}  ({time.perf_counter() - t0:.1f} s)")
    return 0
