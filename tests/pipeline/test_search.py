"""Search: Pareto front by formula, candidates, the best recipe reruns, bad inputs."""

from __future__ import annotations

import json

import pytest

from slimtorch.pipeline import load_recipe, parse_recipe, run_recipe
from slimtorch.pipeline.search import candidates, pareto_front, search


def test_pareto_front_keeps_only_undominated_rows():
    rows = [
        {"n": "a", "accuracy": 0.9, "size_bytes": 100},
        {"n": "b", "accuracy": 0.95, "size_bytes": 100},
        {"n": "c", "accuracy": 0.8, "size_bytes": 10},
        {"n": "d", "accuracy": 0.7, "size_bytes": 50},
    ]
    assert [r["n"] for r in pareto_front(rows, "size_bytes")] == ["c", "b"]


def test_default_space_crosses_sparsity_bits_and_distillation_cheapest_first():
    cands = candidates("default", finetune_epochs=2, lr=0.01)
    names = [c.name for c in cands]
    assert len(names) == len(set(names)) == 4 * 3 - 1 + 3
    assert names[0] in ("prune0-int8", "prune0-w4") and "joint90-int8" in names and "prune90-w4" in names
    assert [c.cost for c in cands] == sorted(c.cost for c in cands)
    for c in cands:  # every candidate is a valid recipe
        parse_recipe({"model": {"zoo": "mlp"}, "stages": c.stages})


def test_search_finds_the_front_and_writes_a_best_recipe_that_reruns(tmp_path):
    teacher = parse_recipe(
        {
            "model": {"zoo": "mlp", "args": {"hidden": [32]}},
            "data": {"name": "digits"},
            "stages": [{"train": {"epochs": 3, "lr": 0.1}}],
        }
    )
    run_recipe(teacher, tmp_path / "teacher", progress=False, report=False)
    base = {
        "model": {"zoo": "mlp", "checkpoint": str(tmp_path / "teacher" / "01-train")},
        "data": {"name": "digits"},
        "measure": {"repeats": 3, "warmup": 1},
    }
    res = search(
        base,
        tmp_path / "search",
        max_drop=5.0,
        target="size",
        budget_min=5,
        space="tiny",
        finetune_epochs=1,
        progress=False,
    )
    done = [c for c in res["candidates"] if c.get("accuracy") is not None]
    assert {c["candidate"] for c in done} == {"prune0-int8", "prune50-int8"}
    for c in done:
        assert c["drop_pt"] == pytest.approx(100 * (res["baseline"]["accuracy"] - c["accuracy"]))
    assert res["front"] == pareto_front([{k: c[k] for k in res["front"][0]} for c in done], "size_bytes")
    best = res["best"]
    assert best["drop_pt"] <= 5.0 and best["size_bytes"] == min(c["size_bytes"] for c in done)
    assert best["size_bytes"] < res["baseline"]["size_bytes"] / 2
    rerun = run_recipe(load_recipe(res["best_recipe"]), tmp_path / "rerun", progress=False, report=False)
    assert rerun[-1]["accuracy"] == best["accuracy"] and rerun[-1]["size_bytes"] == best["size_bytes"]
    assert json.loads((tmp_path / "search" / "search.json").read_text())["best"]["candidate"] == best["candidate"]


def test_bad_search_inputs(tmp_path):
    base = {"model": {"zoo": "mlp"}, "data": {"name": "digits"}}
    with pytest.raises(ValueError, match="search needs a trained model: give model.checkpoint"):
        search(base, tmp_path)
    with pytest.raises(ValueError, match="target: 'speed' is not one of"):
        search(base, tmp_path, target="speed")
    with pytest.raises(ValueError, match="max_drop must be >= 0"):
        search(base, tmp_path, max_drop=-1)
    with pytest.raises(ValueError, match="space: 'huge' is not one of"):
        candidates("huge", 1, 0.01)
