"""``slimtorch run`` and ``slimtorch report`` in-process: JSON stage table, errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from slimtorch.cli.main import main
from slimtorch.pipeline import ROW_KEYS

RECIPE = """
name: cli-test
model: {zoo: mlp, args: {hidden: [16]}}
data: {name: digits}
measure: {repeats: 3, warmup: 1}
stages:
  - train: {epochs: 1, lr: 0.1}
  - evaluate: {label: final}
"""


def test_run_writes_the_json_stage_table_and_report(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out, js = tmp_path / "run", tmp_path / "table.json"
    assert main(["run", str(recipe), "--out", str(out), "--json", str(js), "--no-progress"]) == 0
    table = json.loads(js.read_text())
    assert [r["stage"] for r in table] == ["01-train", "final"]
    assert all(list(r) == list(ROW_KEYS) for r in table)
    assert table[0]["params"] == 64 * 16 + 16 + 16 * 10 + 10 and table[0]["runtime"] == "onnxruntime"
    assert 0.0 <= table[0]["accuracy"] <= 1.0 and table[0]["size_bytes"] > 4 * table[0]["params"]
    printed = capsys.readouterr()
    assert "report:" in printed.out and "[1/2] 01-train" in printed.err
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "slimtorch run: cli-test" in (out / "report.html").read_text()
    # the same folder again: refused, and said so
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["run", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "complete in an earlier run, skipped" in capsys.readouterr().err


def test_bad_recipe_lists_every_problem_and_exits_2(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: {zoo: mlp}\nstages:\n  - train: {epochs: -1}\n  - shrink: {}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "slimtorch run: error: 2 problems in" in err
    assert "stages[0].train.epochs must be >= 0, got -1" in err and "unknown stage 'shrink'" in err
    assert not (tmp_path / "o").exists()


def test_report_of_a_folder_without_stages_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no completed stage" in capsys.readouterr().err


def test_search_trains_a_zoo_model_then_writes_the_best_recipe(tmp_path, capsys):
    js = tmp_path / "search.json"
    argv = [
        "search",
        "--model",
        "mlp",
        "--data",
        "digits",
        "--space",
        "tiny",
        "--train-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--max-drop",
        "100",
        "--out",
        str(tmp_path / "s"),
        "--json",
        str(js),
        "--no-progress",
    ]
    assert main(argv) == 0
    result = json.loads(js.read_text())
    assert result["best"]["candidate"] in ("prune0-int8", "prune50-int8")
    assert (tmp_path / "s" / "best_recipe.yaml").is_file()
    assert "Pareto front:" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse refuses an unknown target before anything runs
        main([*argv[:-3], "--target", "speed"])
    assert "invalid choice: 'speed' (choose from 'latency', 'size')" in capsys.readouterr().err
