"""Runner: stage folders, completion markers, resume after a kill, refusal of another run, the report."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from slimtorch.pipeline import ROW_KEYS, parse_recipe, run_recipe, stage_records, write_report
from slimtorch.pipeline.context import StageContext
from slimtorch.train import load_checkpoint

MEASURE = {"repeats": 3, "warmup": 1}


def _recipe(stages, **extra):
    return parse_recipe(
        {
            "model": {"zoo": "mlp", "args": {"hidden": [16]}},
            "data": {"name": "digits"},
            "measure": MEASURE,
            "stages": stages,
            **extra,
        }
    )


TRAIN_PRUNE = [
    {"train": {"epochs": 2, "lr": 0.1, "batch_size": 128}},
    {"prune": {"type": "Magnitude", "sparsity": 0.5}},
    {"evaluate": {"label": "final"}},
]


def test_stages_run_in_order_each_in_its_folder(tmp_path):
    rows = run_recipe(_recipe(TRAIN_PRUNE), tmp_path / "run", progress=False, report=False)
    run = tmp_path / "run"
    assert [r["stage"] for r in rows] == ["01-train", "02-prune", "final"]
    for d in ("01-train", "02-prune", "03-evaluate"):
        assert (run / d / "stage.json").is_file()
    assert (run / "01-train" / "model.safetensors").is_file() and (run / "01-train" / "checkpoint.pt").is_file()
    assert (run / "recipe.yaml").is_file()
    train, pruned, final = rows
    assert set(ROW_KEYS) <= set(train)
    # Magnitude pruning zeroes round(0.5 * n) weights of the selected Linear layers (64*16 + 16*10).
    assert train["nonzero_params"] - pruned["nonzero_params"] == round(0.5 * (64 * 16 + 16 * 10))
    assert pruned["params"] == train["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert final["accuracy"] == pruned["accuracy"] and final["nonzero_params"] == pruned["nonzero_params"]
    assert pruned["size_bytes"] < train["size_bytes"]  # CSR file of the pruned weights
    assert {lay["name"] for lay in pruned["layers"]} == {"net.1", "net.3"}
    assert json.loads((run / "stages.json").read_text()) == [{k: r[k] for k in ROW_KEYS} for r in rows]


@pytest.mark.parametrize("fast, trained", [(True, "bf16"), (False, "fp32")], ids=["native-bf16", "no-bf16"])
def test_train_stage_precision_auto_follows_the_cpu_and_is_logged(tmp_path, monkeypatch, fast, trained):
    from slimtorch.metrics import CpuInfo
    from slimtorch.metrics.cpu import FLAG_NAMES

    flags = {**dict.fromkeys(FLAG_NAMES, False), "avx2": True, "avx512f": fast, "avx512_bf16": fast}
    info = CpuInfo("x86_64", "AuthenticAMD", "Test EPYC", flags)
    monkeypatch.setattr(importlib.import_module("slimtorch.train.fit"), "cpu_info", lambda: info)
    monkeypatch.setattr(importlib.import_module("slimtorch.metrics"), "cpu_info", lambda: info)
    lines: list[str] = []
    run_recipe(_recipe([{"train": {"epochs": 1, "lr": 0.1}}]), tmp_path / "run", progress=False, report=False,
               log=lines.append)
    assert load_checkpoint(tmp_path / "run" / "01-train" / "checkpoint.pt")["precision"] == trained
    assert f"  precision auto -> {trained} on Test EPYC" in "\n".join(lines)


def test_folder_holding_another_run_is_refused(tmp_path):
    run_recipe(_recipe([{"evaluate": {}}]), tmp_path, progress=False, report=False)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume to continue it or --overwrite"):
        run_recipe(_recipe([{"evaluate": {}}]), tmp_path, progress=False, report=False)
    rows = run_recipe(
        _recipe([{"evaluate": {"label": "again"}}]), tmp_path, overwrite=True, progress=False, report=False
    )
    assert [r["stage"] for r in rows] == ["again"]


def test_resume_skips_complete_stages_and_reruns_the_rest(tmp_path):
    recipe = _recipe(TRAIN_PRUNE)
    first = run_recipe(recipe, tmp_path, progress=False, report=False)
    marker = tmp_path / "01-train" / "stage.json"
    stamp = marker.stat().st_mtime_ns
    (tmp_path / "02-prune" / "stage.json").unlink()  # as if killed before the prune stage finished
    lines: list[str] = []
    again = run_recipe(recipe, tmp_path, resume=True, progress=False, report=False, log=lines.append)
    assert lines[0] == "[1/3] 01-train: complete in an earlier run, skipped"
    assert marker.stat().st_mtime_ns == stamp
    assert any(line.startswith("[2/3] 02-prune: prune (Magnitude)") for line in lines)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]
    assert [r["nonzero_params"] for r in again] == [r["nonzero_params"] for r in first]


def test_a_changed_stage_reruns_from_there(tmp_path):
    run_recipe(_recipe(TRAIN_PRUNE), tmp_path, progress=False, report=False)
    changed = [TRAIN_PRUNE[0], {"prune": {"type": "Magnitude", "sparsity": 0.75}}, TRAIN_PRUNE[2]]
    lines: list[str] = []
    rows = run_recipe(_recipe(changed), tmp_path, resume=True, progress=False, report=False, log=lines.append)
    assert "skipped" in lines[0] and not any("skipped" in line for line in lines[1:])
    assert rows[1]["nonzero_params"] == rows[0]["nonzero_params"] - round(0.75 * (64 * 16 + 16 * 10))


class _Kill:
    def on_epoch_end(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


def test_kill_during_training_loses_at_most_the_current_epoch(tmp_path, monkeypatch):
    recipe = _recipe([{"train": {"epochs": 3, "lr": 0.1, "batch_size": 128}}])
    clean = run_recipe(recipe, tmp_path / "clean", progress=False, report=False)
    original = StageContext.fit

    def killing_fit(self, model, options, callbacks=(), out_dir=None):
        return original(self, model, options, [*callbacks, _Kill()], out_dir)

    monkeypatch.setattr(StageContext, "fit", killing_fit)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "killed", progress=False, report=False)
    stage = tmp_path / "killed" / "01-train"
    assert not (stage / "stage.json").exists() and (stage / "checkpoint.pt").exists()
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 survived, epoch 2 was lost
    monkeypatch.setattr(StageContext, "fit", original)
    resumed = run_recipe(recipe, tmp_path / "killed", resume=True, progress=False, report=False)
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 3
    assert resumed[0]["accuracy"] == clean[0]["accuracy"]
    a = torch.load(tmp_path / "clean" / "01-train" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(stage / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_report_holds_the_real_numbers_and_plots(tmp_path):
    rows = run_recipe(_recipe(TRAIN_PRUNE[:2]), tmp_path, progress=False, report=False)
    md_path, html_path = write_report(tmp_path)
    md, html = md_path.read_text(), html_path.read_text()
    acc = f"{100 * rows[1]['accuracy']:.2f}%"
    assert acc in md and acc in html
    assert f"{rows[0]['size_bytes'] / rows[1]['size_bytes']:.2f}x" in md
    assert f"{rows[0]['nonzero_params'] / rows[1]['nonzero_params']:.2f}x" in md
    assert html.count("data:image/png;base64,") == 4  # accuracy vs size, vs latency, two per-layer plots
    assert "onnxruntime" in md and "net.1" in md
    for name in ("accuracy_vs_size", "accuracy_vs_latency", "layers_01-train", "layers_02-prune"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["row"]["stage"] for r in stage_records(tmp_path)] == ["01-train", "02-prune"]


def test_report_of_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no completed stage"):
        write_report(tmp_path)


def test_stages_on_the_same_point_share_one_plot_label():
    from slimtorch.pipeline.report import point_labels

    pts = [(1000.0, 90.0, "source"), (200.0, 89.0, "int8"), (200.0, 89.0, "final"), (500.0, 89.5, "pruned")]
    assert point_labels(pts) == [(1000.0, 90.0, "source"), (200.0, 89.0, "int8 = final"), (500.0, 89.5, "pruned")]
