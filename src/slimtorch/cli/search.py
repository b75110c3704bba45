"""``slimtorch search``: try a small space of compression recipes on a model, report the Pareto front and
write the best recipe as YAML that ``slimtorch run`` reruns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimtorch.cli.common import add_data_arguments, write_json
from slimtorch.io.storage import read_spec, resolve_model_file
from slimtorch.metrics import render_table
from slimtorch.pipeline import parse_recipe, run_recipe
from slimtorch.pipeline.search import SPACES, TARGETS, search

NAME = "search"
HELP = (
    "Search pruning ratios x bit widths x distillation for the smallest (or fastest) model within "
    "--max-drop points of the starting accuracy; writes best_recipe.yaml."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a trained model (run folder or .safetensors from slimtorch "
        "train/save) or a zoo name (then trained first for --train-epochs)",
    )
    add_data_arguments(p)
    p.add_argument("--max-drop", type=float, default=1.0, help="largest accuracy drop allowed, in points")
    p.add_argument("--target", default="size", choices=sorted(TARGETS), help="what to minimise")
    p.add_argument("--budget-min", type=float, default=10.0, help="no candidate starts after this many minutes")
    p.add_argument("--space", default="default", choices=sorted(SPACES), help="the candidate set")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--train-epochs", type=int, default=10, help="training epochs when --model is a zoo name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the candidates, search.json and best_recipe.yaml")
    p.add_argument("--json", default=None, metavar="PATH", help="write the search result here as JSON")
    p.add_argument("--no-progress", action="store_true")


def _model_source(args: argparse.Namespace, data: dict, out: Path) -> dict:
    path = Path(args.model)
    if path.exists():
        spec = read_spec(resolve_model_file(path))
        if "model" not in spec:
            raise ValueError(f"{path} holds no zoo architecture spec; search needs a zoo model saved by slimtorch")
        return {"zoo": spec["model"]["name"], "checkpoint": str(path.resolve())}
    recipe = parse_recipe(
        {
            "model": {"zoo": args.model},
            "data": data,
            "seed": args.seed,
            "stages": [{"train": {"label": "baseline", "epochs": args.train_epochs}}],
        },
        source="--model",
    )
    run_recipe(recipe, out / "baseline", overwrite=True, progress=not args.no_progress)
    return {"zoo": args.model, "checkpoint": str((out / "baseline" / "01-train").resolve())}


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    from slimtorch.data import resolve

    name, root = resolve(args.data, args.root)
    data = {"name": name, **({"root": str(Path(root).resolve())} if root else {})}
    base = {"model": _model_source(args, data, out), "data": data, "seed": args.seed}
    result = search(
        base,
        out,
        max_drop=args.max_drop,
        target=args.target,
        budget_min=args.budget_min,
        space=args.space,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    cols = ["candidate", "accuracy", "drop_pt", "size_bytes", "latency_ms", "runtime"]
    print("baseline:", render_table([result["baseline"]]).splitlines()[-1])
    print(render_table([c for c in result["candidates"] if c.get("accuracy") is not None], columns=cols))
    print("Pareto front:", ", ".join(r["candidate"] for r in result["front"]))
    if result["best"]:
        print(
            f"best by {args.target} within {args.max_drop} pt: {result['best']['candidate']}; rerun with "
            f"slimtorch run {result['best_recipe']} --out runs/best"
        )
    else:
        print(f"no candidate stayed within {args.max_drop} pt of the starting accuracy")
    if args.json:
        write_json(args.json, result)
    return 0
