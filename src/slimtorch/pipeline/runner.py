"""Run a recipe: every stage in order, each in its own folder, resumable, with a report after each.

Run folder layout::

    runs/x/recipe.yaml          the validated recipe (what ran)
    runs/x/00-source/           only when the recipe's model has a checkpoint: the starting model's row
    runs/x/01-train/            checkpoint.pt, metrics.jsonl, model.safetensors, stage.json
    runs/x/02-prune/            ...
    runs/x/stages.json          the stage table (public keys), rewritten after every stage
    runs/x/report.md, report.html

A stage is complete only when its ``stage.json`` exists: it is written last, atomically, after the
stage's model and measurements. ``resume=True`` skips complete stages whose recipe part is unchanged
(a fingerprint of model, data, seed and the stages up to it) and rebuilds their product from their
folder; the first incomplete stage continues from its folder (training stages resume their last
epoch checkpoint), and every stage after it runs again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimtorch.io.atomic import atomic_write_json, atomic_write_text
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.measure import measure, public_row
from slimtorch.pipeline.recipe import Recipe
from slimtorch.pipeline.run_folder import (  # noqa: F401  (re-exported: the runner's public names)
    RECIPE_FILE,
    SOURCE_DIR,
    STAGE_DIR_PATTERN,
    STAGE_FILE,
    TABLE_FILE,
    read_record,
    stage_records,
)
from slimtorch.pipeline.stage_def import DENSE, Product, get_stage, stage_dir_name

_RUN_FILES = (RECIPE_FILE, TABLE_FILE, "report.md", "report.html")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON through :func:`slimtorch.io.atomic.atomic_write_json` (never a half-written file)."""
    atomic_write_json(path, obj, default=_json_default)


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)


def holds_run(out: Path) -> bool:
    """Whether ``out`` already holds a pipeline run (or a single-model run folder)."""
    from slimtorch.io.storage import MODEL_FILE

    if not out.is_dir():
        return False
    if (out / RECIPE_FILE).exists() or (out / MODEL_FILE).exists():
        return True
    return any(d.is_dir() and STAGE_DIR_PATTERN.match(d.name) for d in out.iterdir())


def prepare_run_dir(out: str | Path, recipe: Recipe, resume: bool, overwrite: bool) -> Path:
    """Create or reuse the run folder; refuse one that holds another run unless resuming or overwriting."""
    out = Path(out)
    if holds_run(out):
        if overwrite:
            for d in out.iterdir():
                if d.is_dir() and STAGE_DIR_PATTERN.match(d.name):
                    shutil.rmtree(d)
            for name in _RUN_FILES:
                (out / name).unlink(missing_ok=True)
        elif not resume:
            raise FileExistsError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECIPE_FILE, recipe.to_yaml(), what="recipe")
    return out


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Run every stage of ``recipe`` into the run folder ``out``.

    Args:
        recipe: a validated recipe (:func:`slimtorch.pipeline.load_recipe`).
        out: the run folder.
        resume: skip complete stages and continue an interrupted one.
        overwrite: replace a run already in ``out``.
        progress: training progress bars.
        log: receives one line per stage (``None``: silent).
        report: rewrite ``report.md`` / ``report.html`` after every stage.

    Returns:
        One row per measured stage (public keys plus ``loss``, ``state``, ``artefact``, ``layers``).

    Raises:
        FileExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    say = log or (lambda msg: None)
    run_dir = prepare_run_dir(out, recipe, resume, overwrite)
    ctx = StageContext(recipe=recipe, run_dir=run_dir, progress=progress, log=say)
    torch.manual_seed(recipe.seed)  # the starting model's initialisation is part of the recipe
    product = Product(model=ctx.build_model(recipe.model), state=DENSE)
    rows: list[dict[str, Any]] = []
    if recipe.model.checkpoint is not None:
        rows.append(_source_row(ctx, product, resume))
    fresh = not resume
    n = len(recipe.stages)
    for spec in recipe.stages:
        stage = get_stage(spec.name)
        d = run_dir / stage_dir_name(spec.index, spec.name)
        label = spec.label or d.name
        fingerprint = recipe.stage_fingerprint(spec.index)
        record = read_record(d)
        if not fresh and record is not None and record.get("fingerprint") == fingerprint:
            product = stage.restore(ctx, spec, product, record)
            product.info["stage"] = label
            rows.append(record["row"])
            say(f"[{spec.index + 1}/{n}] {label}: complete in an earlier run, skipped")
            continue
        if record is not None or (fresh and d.exists()):
            shutil.rmtree(d)  # a stale or complete-but-changed stage starts over; an interrupted one continues
        fresh = True  # every later stage depends on this one's new output
        d.mkdir(parents=True, exist_ok=True)
        ctx.stage_dir = d
        say(
            f"[{spec.index + 1}/{n}] {label}: {spec.name}"
            + (f" ({type(spec.technique).__name__})" if spec.technique is not None else "")
        )
        t0 = time.perf_counter()
        # Each stage draws from its own seed, so a resumed run equals an uninterrupted one.
        torch.manual_seed(recipe.seed * 1000 + spec.index + 1)
        product = stage.run(ctx, spec, product)
        product.info["stage"] = label
        wall = time.perf_counter() - t0
        row = measure(ctx, label, product)
        row["stage_s"] = wall
        record = {
            "stage": label,
            "name": spec.name,
            "index": spec.index,
            "fingerprint": fingerprint,
            "state": product.state,
            "artefact_name": product.artefact.name if product.artefact else None,
            "info": product.info,
            "options": spec.to_dict()[spec.name],
            "row": row,
        }
        write_json_atomic(d / STAGE_FILE, record)  # last: marks the stage complete
        rows.append(row)
        say(f"[{spec.index + 1}/{n}] {label}: accuracy {row['accuracy']:.4f}, {row['size_bytes']} bytes, {wall:.1f} s")
        _write_outputs(run_dir, rows, report)
    _write_outputs(run_dir, rows, report)
    return rows


def _source_row(ctx: StageContext, product: Product, resume: bool) -> dict[str, Any]:
    """Measure the recipe's starting model (once; reused on resume)."""
    from slimtorch.io.storage import resolve_model_file

    d = ctx.run_dir / SOURCE_DIR
    record = read_record(d)
    fingerprint = ctx.recipe.stage_fingerprint(-1)
    if resume and record is not None and record.get("fingerprint") == fingerprint:
        return record["row"]
    d.mkdir(parents=True, exist_ok=True)
    product.artefact = resolve_model_file(ctx.recipe.resolve(ctx.recipe.model.checkpoint))
    row = measure(ctx, "source", product)
    write_json_atomic(
        d / STAGE_FILE,
        {
            "stage": "source",
            "name": "source",
            "index": -1,
            "fingerprint": fingerprint,
            "state": DENSE,
            "row": row,
            "info": {},
        },
    )
    return row


def _write_outputs(run_dir: Path, rows: list[dict[str, Any]], report: bool) -> None:
    write_json_atomic(run_dir / TABLE_FILE, [public_row(r) for r in rows])
    if report:
        from slimtorch.pipeline.report import write_report

        write_report(run_dir)
