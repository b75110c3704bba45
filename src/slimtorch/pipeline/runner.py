"""Run a recipe: every stage in order, each in its own folder, resumable, with a report after each.

Run folder layout::

    runs/x/recipe.yaml          the validated recipe (what ran)
    runs/x/00-source/           only when the recipe's model has a checkpoint: the starting model's row
    runs/x/01-train/            checkpoint.pt, metrics.jsonl, model.safetensors, stage.json
    runs/x/02-prune/            ...
    runs/x/stages.json          the stage table (public keys), rewritten after every stage
    runs/x/report.md, report.html

A stage is complete only when its ``stage.json`` exists: it is written last, atomically, after the
stage's model and measurements. ``resume=True`` continues only a run of the same recipe identity (model,
data, seed, stage names; :mod:`slimtorch.pipeline.provenance`), skips complete stages whose fingerprint
(resolved options up to it), input hash (the previous stage's output) and output files are unchanged and
rebuilds their product from their folder; the first incomplete stage continues from its folder (training
stages resume their last epoch checkpoint) if its ``started.json`` matches, else it starts over and the
log says why; every stage after it runs again. ``.tmp-*`` files a killed write left are swept at start.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimtorch.io.atomic import atomic_write_json, atomic_write_text, ensure_dir, sweep_temp_files
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.measure import measure, public_row
from slimtorch.pipeline.provenance import (
    STARTED_FILE,
    check_same_run,
    file_hash,
    files_hash,
    output_files,
    output_hash,
    read_started,
)
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
        if resume and not overwrite:
            check_same_run(out, recipe.to_dict())
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
    ensure_dir(out)
    sweep_temp_files(out, recursive=True)  # what a killed write left behind
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
    input_hash = _source_hash(recipe)
    n = len(recipe.stages)
    for spec in recipe.stages:
        stage = get_stage(spec.name)
        d = run_dir / stage_dir_name(spec.index, spec.name)
        label = spec.label or d.name
        head = f"[{spec.index + 1}/{n}] {label}"
        fingerprint = recipe.stage_fingerprint(spec.index)
        record = read_record(d)
        if not fresh and record is not None:
            why = _why_stale(record, fingerprint, input_hash, run_dir)
            if why is None:
                product = stage.restore(ctx, spec, product, record)
                product.info["stage"] = label
                rows.append(record["row"])
                input_hash = record["output_hash"]
                say(f"{head}: complete in an earlier run, skipped")
                continue
            say(f"{head}: {why}; running it again")
        elif not fresh and d.exists():
            started = read_started(d)
            if started is None or started.get("fingerprint") != fingerprint or started.get("input_hash") != input_hash:
                what = "its options" if started and started.get("input_hash") == input_hash else "its options or input"
                say(f"{head}: {what} changed since the interrupted attempt; starting it over")
                shutil.rmtree(d)
            else:
                say(f"{head}: continuing the interrupted attempt")
        if record is not None or (fresh and d.exists()):
            shutil.rmtree(d)  # a stale or complete-but-changed stage starts over; an interrupted one continues
        fresh = True  # every later stage depends on this one's new output
        ensure_dir(d)
        write_json_atomic(d / STARTED_FILE, {"fingerprint": fingerprint, "input_hash": input_hash,
                                             "options": spec.to_dict()[spec.name]})
        ctx.stage_dir = d
        say(
            f"{head}: {spec.name}"
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
        files = output_files(product.artefact, product.onnx)
        out_hash = output_hash(product.model, product.artefact, product.onnx)
        record = {
            "stage": label,
            "name": spec.name,
            "index": spec.index,
            "fingerprint": fingerprint,
            "input_hash": input_hash,
            "output_hash": out_hash,
            "output_files": [str(Path(f).resolve().relative_to(run_dir.resolve())) if _inside(f, run_dir)
                             else str(f) for f in files],
            "state": product.state,
            "artefact_name": product.artefact.name if product.artefact else None,
            "info": product.info,
            "options": spec.to_dict()[spec.name],
            "row": row,
        }
        write_json_atomic(d / STAGE_FILE, record)  # last: marks the stage complete
        input_hash = out_hash
        rows.append(row)
        say(f"{head}: accuracy {row['accuracy']:.4f}, {row['size_bytes']} bytes, {wall:.1f} s")
        _write_outputs(run_dir, rows, report)
    _write_outputs(run_dir, rows, report)
    return rows


def _source_hash(recipe: Recipe) -> str:
    """The first stage's input: the starting checkpoint's bytes, or the recipe part that builds the model."""
    from slimtorch.io.storage import resolve_model_file

    if recipe.model.checkpoint is not None:
        p = resolve_model_file(recipe.resolve(recipe.model.checkpoint))
        if p.is_file():
            return "files:" + file_hash(p)
    return "recipe:" + recipe.stage_fingerprint(-1)


def _inside(f: Path, run_dir: Path) -> bool:
    return Path(f).resolve().is_relative_to(run_dir.resolve())


def _why_stale(record: dict[str, Any], fingerprint: str, input_hash: str, run_dir: Path) -> str | None:
    """Why a complete stage cannot be reused, or ``None`` when it can."""
    if record.get("fingerprint") != fingerprint:
        return "its options changed since it ran"
    if record.get("input_hash") != input_hash:
        return "its input (the previous stage's output) changed since it ran"
    stored = record.get("output_hash")
    if not isinstance(stored, str):
        return "it was recorded without an output hash"
    if stored.startswith("files:"):
        files = [Path(f) if Path(f).is_absolute() else run_dir / f for f in record.get("output_files", [])]
        if not files or not all(f.is_file() for f in files) or files_hash(files) != stored:
            return "its output files changed or are missing since it ran"
    return None


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
