"""``slimtorch report``: rebuild a run folder's report.md / report.html from its stage records."""

from __future__ import annotations

import argparse

from slimtorch.metrics import render_table
from slimtorch.pipeline import ROW_KEYS, public_row, stage_records, write_report

NAME = "report"
HELP = "Rebuild report.md and report.html of a run folder written by slimtorch run / demo."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run folder")


def run(args: argparse.Namespace) -> int:
    md, html = write_report(args.run_dir)
    print(render_table([public_row(r["row"]) for r in stage_records(args.run_dir)], columns=ROW_KEYS))
    print(f"wrote {md} and {html}")
    return 0
