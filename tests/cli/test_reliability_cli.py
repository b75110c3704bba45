"""CLI faults and bad arguments (issue 18): a full disk, a read-only folder or an output path under a file is
one named line (exit 2) with no partial file; bad arguments are refused with a message; a quantize killed
during its ONNX export leaves no partial model.int8.onnx and its rerun is not refused."""

from __future__ import annotations

import errno
import importlib
import os

import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.io import atomic
from slimtorch.models import create

DISK_FULL = "No space left on device (the disk is full; free space or choose another --out folder)"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create("mlp", in_features=64, hidden=(16,), num_classes=10).eval()
    return slimtorch.save(model, tmp_path_factory.mktemp("run") / "run").parent


@pytest.fixture
def disk_full(monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_fsync", full)


def _no_partials(folder):
    return [p.name for p in folder.rglob(".tmp-*")] if folder.exists() else []


TRAIN = ["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--data", "digits", "--epochs", "1",
         "--no-progress", "--precision", "fp32"]


# ---- disk full: one mechanism (the fsync every atomic write makes), tested once per writer ----------------
def test_train_disk_full(tmp_path, capsys, disk_full):
    assert main([*TRAIN, "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "slimtorch train: error: cannot write checkpoint" in err and DISK_FULL in err
    assert _no_partials(tmp_path) == [] and not (tmp_path / "t" / "checkpoint.pt").exists()


def test_run_disk_full(tmp_path, capsys, disk_full):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {zoo: mlp, args: {hidden: [8]}}\nstages: [{evaluate: {}}]\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "slimtorch run: error: cannot write recipe" in err and DISK_FULL in err
    assert _no_partials(tmp_path) == []


def test_share_disk_full(run_dir, tmp_path, capsys, disk_full):
    out = tmp_path / "m.slim"
    assert main(["share", str(run_dir), "--bits", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write .slim file {out}" in err and DISK_FULL in err
    assert list(tmp_path.iterdir()) == []


def test_quantize_disk_full(run_dir, tmp_path, capsys, disk_full):
    out = tmp_path / "q"
    assert main(["quantize", str(run_dir), "--scheme", "int8-dynamic", "--out", str(out)]) == 2
    assert DISK_FULL in capsys.readouterr().err
    assert _no_partials(tmp_path) == []


def test_save_and_onnx_export_disk_full(tmp_path, disk_full):
    from slimtorch.metrics.ort import export_onnx_fp32

    m = create("mlp", in_features=4, hidden=(3,), num_classes=2)
    with pytest.raises(atomic.StorageError, match=f"cannot write model file .*m.safetensors: {DISK_FULL[:20]}"):
        slimtorch.save(m, tmp_path / "m.safetensors")
    with pytest.raises(atomic.StorageError, match="cannot write ONNX model .*m.onnx: No space left"):
        export_onnx_fp32(m, torch.randn(1, 4), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_data_cache_disk_full_warns_and_leaves_nothing(tmp_path, monkeypatch, disk_full):
    import numpy as np

    from slimtorch.data.cache import cached_arrays, decoded_dir

    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="could not write the toy cache .*No space left on device"):
        arrays = cached_arrays("toy", "k1", lambda: {"x": np.arange(5)})
    assert arrays["x"].tolist() == [0, 1, 2, 3, 4]
    assert not decoded_dir("toy", "k1").exists()


# ---- read-only folder, output path under a file ------------------------------------------------------------
def test_read_only_output_folder(tmp_path, capsys, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    assert main([*TRAIN, "--out", str(tmp_path / "t")]) == 2
    assert "Read-only file system (the file system is read-only; choose a writable --out folder)" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("command", ["train", "quantize", "share"])
def test_output_path_under_a_file(run_dir, tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = {"train": [*TRAIN, "--out", str(blocker / "t")],
            "quantize": ["quantize", str(run_dir), "--scheme", "int8-dynamic", "--out", str(blocker / "q")],
            "share": ["share", str(run_dir), "--bits", "4", "--out", str(blocker / "m.slim")]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"slimtorch {command}: error:" in err and ("is in the way" in err or "Not a directory" in err), err
    assert blocker.read_text() == "x"


# ---- quantize killed during the ONNX export ------------------------------------------------------------------
def test_quantize_killed_during_export_leaves_no_partial_file_and_reruns(run_dir, tmp_path, capsys, monkeypatch):
    onnx_export = importlib.import_module("slimtorch.quant.export.onnx_export")
    real = onnx_export._export

    def killed(model, path, *a, **k):
        path.write_bytes(b"partial onnx")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "_export", killed)
    out = tmp_path / "q"
    cmd = ["quantize", str(run_dir), "--scheme", "int8", "--data", "digits", "--calib", "64", "--eval-n", "50",
           "--out", str(out)]
    assert main(cmd) == 130
    assert not (out / "model.int8.onnx").exists() and _no_partials(out) == []
    monkeypatch.setattr(onnx_export, "_export", real)
    assert main(cmd) == 0  # the interrupted attempt is replaced, not refused
    assert (out / "model.int8.onnx").is_file() and (out / "quant_report.json").is_file()
    assert main(cmd) == 2  # a complete run is still protected
    assert "already holds a run; pass --overwrite to replace it" in capsys.readouterr().err


# ---- bad arguments -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [(["--scheme", "weight-only", "--bits", "0"], r"bits must be an integer in \[2, 8\], got 0"),
     (["--scheme", "weight-only", "--group-size", "0"], "group_size must be a positive integer or None, got 0"),
     (["--scheme", "int8-dynamic", "--exclude", "nothing_like_this"],
      r"--exclude nothing_like_this: matches no module of the model \(fnmatch patterns on module names such as "
      r"\['net', 'net.0'")],
)
def test_quantize_bad_arguments(run_dir, tmp_path, capsys, extra, message):
    import re

    assert main(["quantize", str(run_dir), *extra, "--out", str(tmp_path / "q")]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_prune_exclude_matching_nothing(run_dir, tmp_path, capsys):
    rc = main(["prune", str(run_dir), "--method", "magnitude", "--sparsity", "0.5", "--exclude", "fc9",
               "--out", str(tmp_path / "p")])
    assert rc == 2
    assert "--exclude fc9: matches no module of the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [(["--model-arg", "hidden=[-5]"],
      "bad arguments for model 'mlp' (in_features=64, num_classes=10, hidden=[-5]): Trying to create tensor with "
      "negative dimension -5"),
     (["--warmup-epochs", "-1"], "warmup_epochs must be a non-negative number, got -1.0"),
     (["--lr", "1e40"], "lr=1e+40 does not fit in float32")],
)
def test_train_bad_arguments(tmp_path, capsys, extra, message):
    assert main([*TRAIN, *extra, "--out", str(tmp_path / "t")]) == 2
    assert message in capsys.readouterr().err


def test_train_diverging_keeps_the_good_model(tmp_path, capsys):
    out = tmp_path / "t"
    assert main([*TRAIN, "--out", str(out)]) == 0
    good = (out / "model.safetensors").read_bytes()
    assert main([*TRAIN, "--lr", "1e20", "--overwrite", "--out", str(out)]) == 2
    assert "lower the learning rate" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == good


def test_train_resume_after_changing_the_architecture(tmp_path, capsys):
    out = tmp_path / "t"
    assert main([*TRAIN, "--out", str(out)]) == 0
    rc = main([*TRAIN[:4], "hidden=[12]", *TRAIN[5:], "--epochs", "2", "--resume", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "written for another model or optimizer" in err and "size mismatch" in err


def test_teacher_built_for_other_data(tmp_path, capsys):
    teacher = slimtorch.save(create("mlp", in_features=784, hidden=(8,), num_classes=10), tmp_path / "t")
    rc = main(["distill", "--teacher", str(teacher.parent), "--student", "mlp", "--student-arg", "hidden=[4]",
               "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "d")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--teacher {teacher.parent} was built for other data than --data digits" in err


def test_recipe_data_option_root(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {zoo: mlp}\ndata: {name: digits, options: {root: /tmp}}\nstages: [{evaluate: {}}]\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "r")]) == 2
    assert "options.root: root is a field of data itself (data: {root: ...}), not a dataset option" in (
        capsys.readouterr().err)
