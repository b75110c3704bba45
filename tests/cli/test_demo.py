"""``slimtorch demo --fast``: the real pipeline on tiny settings; the JSON stage table's schema and numbers."""

from __future__ import annotations

import json

import torch
import yaml

from slimtorch.cli.demo import DEMO_RECIPE, demo_recipe
from slimtorch.cli.main import main
from slimtorch.pipeline import ROW_KEYS, parse_recipe

EXPECTED_STAGES = ["teacher", "student", "pruned", "int8"]


def test_demo_recipe_is_a_valid_recipe_with_the_four_stages():
    recipe = parse_recipe(yaml.safe_load(DEMO_RECIPE))
    assert [s.name for s in recipe.stages] == ["train", "distill", "prune", "quantize"]
    assert [s.label for s in recipe.stages] == EXPECTED_STAGES
    fast = parse_recipe(demo_recipe(fast=True))
    assert fast.stages[0].options.epochs == 2 and fast.model.args["hidden"] == [64]


def test_demo_fast_writes_the_stage_table_as_json(tmp_path, capsys):
    js = tmp_path / "demo.json"
    threads = torch.get_num_threads()
    assert main(["demo", "--fast", "--out", str(tmp_path / "run"), "--json", str(js), "--no-progress",
                 "--threads", str(threads + 1)]) == 0
    assert torch.get_num_threads() == threads  # the demo's thread count does not leak into the caller
    table = json.loads(js.read_text())
    assert [r["stage"] for r in table] == EXPECTED_STAGES
    for r in table:
        assert list(r) == list(ROW_KEYS)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms"] > 0 and r["size_bytes"] > 0
        assert isinstance(r["params"], int) and isinstance(r["macs"], int)
    teacher, student, pruned, int8 = table
    assert teacher["params"] == 64 * 64 + 64 + 64 * 10 + 10  # mlp hidden [64] on 8x8 digits
    assert student["params"] == pruned["params"] == int8["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert pruned["nonzero_params"] == student["nonzero_params"] - round(0.5 * (64 * 16 + 16 * 10))
    # int8 ONNX: one byte per weight plus the graph, against four bytes per weight in the fp32 file
    assert int8["runtime"] == "onnxruntime" and int8["size_bytes"] < student["size_bytes"] / 2
    assert (tmp_path / "run" / "04-quantize" / "model.onnx").stat().st_size == int8["size_bytes"]
    out = capsys.readouterr().out
    assert "smaller on disk" in out and "report:" in out and str(tmp_path / "run") in out
    assert (tmp_path / "run" / "report.html").is_file()


def test_demo_prints_its_recipe(capsys):
    assert main(["demo", "--print-recipe"]) == 0
    assert parse_recipe(yaml.safe_load(capsys.readouterr().out)).stages[3].label == "int8"


def test_demo_refuses_a_bad_thread_count(capsys):
    assert main(["demo", "--threads", "0", "--no-progress"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
