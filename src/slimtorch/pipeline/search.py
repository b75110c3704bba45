"""Auto-compression search: try a small space of recipes on a trained model, keep the Pareto front.

The space (``SPACES``) crosses magnitude-pruning sparsities, quantization schemes (none, int8 static
exported to ONNX Runtime, 4-bit weight-only) and the fine-tuning recipe (plain fine-tuning after
pruning, or one ``joint`` run distilling from the original model while AGP prunes and 8-bit QAT is on).
Candidates run cheapest first through the ordinary runner, each into its own run folder, until the
time budget is spent. A candidate is *admissible* when its accuracy drop against the starting model
is at most ``max_drop`` points; the best is the admissible candidate with the smallest target
(``size``: bytes on disk of the deployed file; ``latency``: its measured latency). The Pareto front
(no other candidate both more accurate and smaller / faster) is reported, and the best candidate's
recipe is written as YAML that ``slimtorch run`` reruns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtorch.core.config import check_choice
from slimtorch.core.errors import SlimtorchError
from slimtorch.io.atomic import atomic_write_text
from slimtorch.pipeline.recipe import Recipe, parse_recipe
from slimtorch.pipeline.runner import run_recipe, write_json_atomic

TARGETS = {"size": "size_bytes", "latency": "latency_ms"}
BEST_RECIPE_FILE = "best_recipe.yaml"

_INT8 = {"type": "Int8Static"}
_W4 = {"type": "WeightOnly", "bits": 4, "group_size": 32}

#: Search spaces: pruning sparsities x quantization schemes x fine-tuning (plain or joint distillation).
SPACES: dict[str, dict[str, Any]] = {
    "default": {"sparsity": [0.0, 0.5, 0.75, 0.9], "quant": {"none": None, "int8": _INT8, "w4": _W4}, "joint": True},
    "tiny": {"sparsity": [0.0, 0.5], "quant": {"int8": _INT8}, "joint": False},
}


@dataclass
class Candidate:
    """One recipe of the space and, once run, its final row."""

    name: str
    stages: list[dict[str, Any]]
    cost: float
    row: dict[str, Any] | None = None
    run_dir: Path | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def candidates(space: str, finetune_epochs: int, lr: float) -> list[Candidate]:
    """The candidates of ``space``, cheapest first (cost ~ training epochs, PTQ counted as a fraction)."""
    check_choice("space", space, list(SPACES))
    sp = SPACES[space]
    ft = {"epochs": finetune_epochs, "lr": lr}
    out = []
    for s in sp["sparsity"]:
        for qname, q in sp["quant"].items():
            if s == 0.0 and q is None:
                continue  # the starting model itself
            stages: list[dict[str, Any]] = []
            if s > 0:
                stages.append({"prune": {"type": "Magnitude", "sparsity": s, "finetune": ft}})
            if q is not None:
                stages.append({"quantize": dict(q)})
            out.append(Candidate(f"prune{int(100 * s)}-{qname}", stages, (finetune_epochs if s else 0) + 0.2))
        if sp["joint"] and s > 0:
            joint = {
                "prune": {"sparsity": s, "schedule": {"type": "AGP", "frequency": 10}},
                "quant": {"bits_w": 8, "bits_a": 8},
                "train": {**ft, "epochs": 2 * finetune_epochs},
            }
            out.append(Candidate(f"joint{int(100 * s)}-int8", [{"joint": joint}], 3 * finetune_epochs))
    return sorted(out, key=lambda c: c.cost)


def pareto_front(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows not dominated by another (higher-or-equal accuracy and lower-or-equal ``key``, one strictly)."""
    front = []
    for r in rows:
        dominated = any(
            o is not r
            and o["accuracy"] >= r["accuracy"]
            and o[key] <= r[key]
            and (o["accuracy"] > r["accuracy"] or o[key] < r[key])
            for o in rows
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r[key])


def search(
    base: dict[str, Any],
    out: str | Path,
    *,
    max_drop: float = 1.0,
    target: str = "size",
    budget_min: float = 10.0,
    space: str = "default",
    finetune_epochs: int = 2,
    lr: float = 0.01,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Search the space on the model ``base`` describes.

    Args:
        base: recipe fields shared by every candidate (``model`` with a trained ``checkpoint``, ``data``,
            ``seed``, ``measure``); candidates add their ``stages``.
        out: folder for the candidates' run folders, ``search.json`` and ``best_recipe.yaml``.
        max_drop: largest admissible accuracy drop against the starting model, in points.
        target: ``size`` or ``latency``.
        budget_min: no candidate starts after this many minutes.
        space: a key of :data:`SPACES`.
        finetune_epochs: fine-tuning epochs after pruning (joint runs get twice as many, as they also
            replace the quantization stage's calibration).
        lr: fine-tuning learning rate.
        progress: show a progress bar over candidates.
        log: receives one line per candidate.

    Returns:
        ``{"baseline", "candidates", "front", "best", "best_recipe"}`` (rows are plain dicts).
    """
    from tqdm.auto import tqdm

    check_choice("target", target, list(TARGETS))
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 points, got {max_drop}")
    if budget_min <= 0:
        raise ValueError(f"budget_min must be > 0, got {budget_min}")
    if not base.get("model", {}).get("checkpoint"):
        raise SlimtorchError("search needs a trained model: give model.checkpoint (a run folder or .safetensors)")
    say = log or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = TARGETS[target]
    cands = candidates(space, finetune_epochs, lr)
    deadline = time.monotonic() + 60 * budget_min
    baseline: dict[str, Any] | None = None
    bar = tqdm(cands, desc="search", disable=not progress, dynamic_ncols=True)
    for c in bar:
        if time.monotonic() > deadline:
            c.error = "not run: time budget spent"
            continue
        bar.set_postfix(candidate=c.name)
        recipe = _recipe(base, c.stages, c.name)
        c.run_dir = out / "candidates" / c.name
        try:
            rows = run_recipe(recipe, c.run_dir, overwrite=True, progress=False, report=False)
        except (SlimtorchError, ValueError, RuntimeError) as e:
            c.error = f"{type(e).__name__}: {e}"
            say(f"{c.name}: failed ({c.error})")
            continue
        baseline = baseline or rows[0]
        c.row = {
            **{k: rows[-1][k] for k in ("accuracy", "size_bytes", "latency_ms", "runtime", "nonzero_params")},
            "candidate": c.name,
            "drop_pt": 100 * (rows[0]["accuracy"] - rows[-1]["accuracy"]),
        }
        say(
            f"{c.name}: accuracy {c.row['accuracy']:.4f} ({-c.row['drop_pt']:+.2f} pt), "
            f"{c.row['size_bytes']} bytes, {c.row['latency_ms']:.4g} ms ({c.row['runtime']})"
        )
    bar.close()
    done = [c for c in cands if c.row is not None]
    if not done or baseline is None:
        raise SlimtorchError("no candidate finished within the budget; raise --budget-min")
    rows = [c.row for c in done]
    front = pareto_front(rows, key)
    admissible = [c for c in done if c.row["drop_pt"] <= max_drop]
    # ties on the target (e.g. int8 files of equal size) go to the more accurate candidate
    best = min(admissible, key=lambda c: (c.row[key], -c.row["accuracy"])) if admissible else None
    result: dict[str, Any] = {
        "target": target,
        "max_drop_pt": max_drop,
        "baseline": {k: baseline[k] for k in ("accuracy", "size_bytes", "latency_ms", "runtime")},
        "candidates": [{"candidate": c.name, "stages": c.stages, **(c.row or {}), "error": c.error} for c in cands],
        "front": front,
        "best": best.row if best else None,
        "best_recipe": None,
    }
    if best is not None:
        path = out / BEST_RECIPE_FILE
        atomic_write_text(
            path,
            f"# slimtorch search: best by {target} within {max_drop} pt of the starting model\n"
            + _recipe(base, best.stages, f"search best: {best.name}").to_yaml()
        )
        result["best_recipe"] = str(path)
    write_json_atomic(out / "search.json", result)
    return result


def _recipe(base: dict[str, Any], stages: list[dict[str, Any]], name: str) -> Recipe:
    return parse_recipe({**base, "name": name, "stages": stages}, source=f"search candidate {name}")
