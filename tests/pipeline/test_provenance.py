"""Run-folder provenance (issue 18): fingerprints and input/output hashes per stage, an edited interrupted
stage starts over (and says so), another recipe is refused without overwrite, temp files are swept."""

from __future__ import annotations

import json

import pytest
import torch

from slimtorch.pipeline import parse_recipe, run_recipe
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.provenance import STARTED_FILE, RunMismatchError


def _recipe(stages, hidden=16, seed=0):
    return parse_recipe({"model": {"zoo": "mlp", "args": {"hidden": [hidden]}}, "data": {"name": "digits"},
                         "measure": {"repeats": 3, "warmup": 1}, "seed": seed, "stages": stages})


def _train(epochs, lr):
    return {"train": {"epochs": epochs, "lr": lr, "batch_size": 256}}


class _KillInSecondEpoch:
    def on_epoch_end(self, state):
        if state.epoch == 1:  # before epoch 2's checkpoint: epoch 1's is on disk
            raise KeyboardInterrupt


def _weights(stage_dir):
    return torch.load(stage_dir / "checkpoint.pt", weights_only=True)["model"]


def test_kill_then_resume_with_an_edited_recipe_restarts_the_stage(tmp_path, monkeypatch):
    original = StageContext.fit

    def killing_fit(self, model, options, callbacks=(), out_dir=None):
        return original(self, model, options, [*callbacks, _KillInSecondEpoch()], out_dir)

    monkeypatch.setattr(StageContext, "fit", killing_fit)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_recipe([_train(3, 0.1), {"evaluate": {}}]), run, progress=False, report=False)
    stage = run / "01-train"
    assert (stage / "checkpoint.pt").is_file() and not (stage / "stage.json").exists()
    monkeypatch.setattr(StageContext, "fit", original)

    edited = _recipe([_train(2, 0.05), {"evaluate": {}}])  # epochs 3 -> 2, lr 0.1 -> 0.05
    lines: list[str] = []
    rows = run_recipe(edited, run, resume=True, progress=False, report=False, log=lines.append)
    assert lines[0] == "[1/2] 01-train: its options changed since the interrupted attempt; starting it over"
    fresh_rows = run_recipe(edited, tmp_path / "fresh", progress=False, report=False)
    a, b = _weights(stage), _weights(tmp_path / "fresh" / "01-train")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the edited run, not a continuation of the old one
    assert rows[0]["accuracy"] == fresh_rows[0]["accuracy"]
    record = json.loads((stage / "stage.json").read_text())
    assert record["options"] == {"epochs": 2, "batch_size": 256}  # lr 0.05 is the default, left out
    assert [json.loads(x)["epoch"] for x in (stage / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_interrupted_stage_with_unchanged_options_continues(tmp_path, monkeypatch):
    original = StageContext.fit

    def killing_fit(self, model, options, callbacks=(), out_dir=None):
        return original(self, model, options, [*callbacks, _KillInSecondEpoch()], out_dir)

    monkeypatch.setattr(StageContext, "fit", killing_fit)
    recipe = _recipe([_train(2, 0.1)])
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path, progress=False, report=False)
    monkeypatch.setattr(StageContext, "fit", original)
    started = json.loads((tmp_path / "01-train" / STARTED_FILE).read_text())
    assert started["fingerprint"] == recipe.stage_fingerprint(0)
    lines: list[str] = []
    run_recipe(recipe, tmp_path, resume=True, progress=False, report=False, log=lines.append)
    assert lines[0] == "[1/1] 01-train: continuing the interrupted attempt"


def test_stage_records_chain_input_and_output_hashes(tmp_path):
    run_recipe(_recipe([_train(1, 0.1), {"prune": {"type": "Magnitude", "sparsity": 0.5}}]), tmp_path,
               progress=False, report=False)
    first = json.loads((tmp_path / "01-train" / "stage.json").read_text())
    second = json.loads((tmp_path / "02-prune" / "stage.json").read_text())
    assert first["input_hash"].startswith("recipe:")
    assert second["input_hash"] == first["output_hash"] and first["output_hash"].startswith("files:")
    assert first["output_files"] == ["01-train/model.safetensors"]


def test_changed_output_file_makes_the_stage_run_again(tmp_path):
    recipe = _recipe([_train(1, 0.1), {"evaluate": {}}])
    run_recipe(recipe, tmp_path, progress=False, report=False)
    with open(tmp_path / "01-train" / "model.safetensors", "ab") as f:
        f.write(b" ")  # edited behind the runner's back
    lines: list[str] = []
    run_recipe(recipe, tmp_path, resume=True, progress=False, report=False, log=lines.append)
    assert lines[0] == "[1/2] 01-train: its output files changed or are missing since it ran; running it again"


@pytest.mark.parametrize(
    "other, what",
    [(dict(hidden=32), r"model: .*\"hidden\": \[16\].* in the run, .*\"hidden\": \[32\].* in the recipe"),
     (dict(seed=1), r"seed: 0 in the run, 1 in the recipe"),
     (dict(stages=[{"evaluate": {}}]), r"stages: \[\"train\"\] in the run, \[\"evaluate\"\] in the recipe")],
)
def test_resume_with_a_different_recipe_is_refused(tmp_path, other, what):
    run_recipe(_recipe([_train(1, 0.1)]), tmp_path, progress=False, report=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    stages = other.pop("stages", [_train(1, 0.1)])
    with pytest.raises(RunMismatchError, match=rf"holds a run of a different recipe \({what}.*Pass --overwrite"):
        run_recipe(_recipe(stages, **other), tmp_path, resume=True, progress=False, report=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing deleted
    rows = run_recipe(_recipe(stages, **other), tmp_path, overwrite=True, progress=False, report=False)
    assert len(rows) == 1


def test_resume_into_a_train_folder_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RunMismatchError, match=r"not a recipe run \(no recipe\.yaml"):
        run_recipe(_recipe([{"evaluate": {}}]), tmp_path, resume=True, progress=False, report=False)


def test_temp_files_are_swept_at_start(tmp_path):
    recipe = _recipe([{"evaluate": {}}])
    run_recipe(recipe, tmp_path, progress=False, report=False)
    (tmp_path / ".tmp-abc.json").write_text("{")
    (tmp_path / "01-evaluate" / ".tmp-def.safetensors").write_bytes(b"x")
    run_recipe(recipe, tmp_path, resume=True, progress=False, report=False)
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.slow  # a subprocess start and a SIGKILL: ~15 s on an idle 2-core machine
def test_sigkill_of_slimtorch_run_then_resume_with_an_edited_recipe(tmp_path, capsys):
    """The real thing: ``slimtorch run`` killed with SIGKILL mid-training, the recipe edited, ``--resume``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "r.yaml"
    body = "model: {{zoo: mlp, args: {{hidden: [16]}}}}\nmeasure: {{repeats: 3, warmup: 1}}\n" \
           "stages: [{{train: {{epochs: {e}, lr: {lr}, batch_size: {b}, precision: fp32}}}}]\n"
    recipe.write_text(body.format(e=200, lr=0.1, b=32))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same threads as here: bit-identical weights
    cmd = [sys.executable, "-m", "slimtorch.cli.main", "run", str(recipe), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "01-train" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "01-train" / "stage.json").exists()

    recipe.write_text(body.format(e=1, lr=0.05, b=256))  # edited: epochs 200 -> 1, lr 0.1 -> 0.05, batch 256
    from slimtorch.cli.main import main

    assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "[1/1] 01-train: its options changed since the interrupted attempt; starting it over" in err
    assert not list(out.rglob(".tmp-*"))
    lines = (out / "01-train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
    edited = {"model": {"zoo": "mlp", "args": {"hidden": [16]}}, "measure": {"repeats": 3, "warmup": 1},
              "stages": [{"train": {"epochs": 1, "lr": 0.05, "batch_size": 256, "precision": "fp32"}}]}
    run_recipe(parse_recipe(edited), tmp_path / "fresh", progress=False, report=False)
    a, b = _weights(out / "01-train"), _weights(tmp_path / "fresh" / "01-train")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the edited recipe's result, not the killed run's
