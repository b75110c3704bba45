"""``slimtorch run``: run a YAML recipe (stages in order, one folder per stage, report after each)."""

from __future__ import annotations

import argparse
import sys

from slimtorch.cli.common import write_json
from slimtorch.metrics import render_table
from slimtorch.pipeline import ROW_KEYS, load_recipe, public_row, run_recipe

NAME = "run"
HELP = "Run a YAML recipe (train, distill, prune, quantize, share, export, evaluate) into a run folder."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="the recipe file (see examples/ and docs/pipeline.md)")
    p.add_argument("--out", required=True, help="run folder (one NN-<stage> folder per stage, report.md/html)")
    p.add_argument("--resume", action="store_true", help="skip completed stages, continue an interrupted one")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--json", default=None, metavar="PATH", help="write the stage table here as JSON")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")
    p.add_argument("--allow-code", action="store_true",
                   help="allow the recipe to import and call the Python functions it names (model/student/teacher "
                        "factory: 'package.module:function'); only for recipes and code you trust")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    rows = run_recipe(
        recipe,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        allow_code=args.allow_code,
    )
    table = [public_row(r) for r in rows]
    print(render_table(table, columns=ROW_KEYS))
    if args.json:
        write_json(args.json, table)
    print(f"report: {args.out}/report.html (and report.md)")
    return 0
