"""``slimtorch prune``: magnitude (one-shot, AGP, iterative) and N:M on the bundled digits data."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

import slimtorch
from slimtorch.cli.main import main
from slimtorch.models import create
from slimtorch.prune import check_nm, load_sparse


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = create("mlp", in_features=64, hidden=(32,), num_classes=10)
    return slimtorch.save(model, tmp_path / "run")


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_magnitude_oneshot_with_finetune(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(
        [
            "prune",
            str(run_dir.parent),
            "--method",
            "magnitude",
            "--sparsity",
            "0.75",
            "--data",
            "digits",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "prune_report.json").read_text())
    assert doc["report"]["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert doc["accuracy_after"] is not None and doc["file_bytes"]["sparse"] < doc["file_bytes"]["model"]
    pruned = slimtorch.load(out)
    zeros = sum(int((w == 0).sum()) for w in _weights(pruned))
    assert zeros == round(0.75 * sum(w.numel() for w in _weights(pruned)))  # fine-tuning kept the zeros
    sparse = load_sparse(out / "model.sparse.safetensors")
    for a, b in zip(_weights(sparse), _weights(pruned)):
        assert torch.equal(a, b)
    assert "net.1" in capsys.readouterr().out


def test_magnitude_agp_and_iterative(run_dir, tmp_path):
    for schedule in ("agp", "iterative"):
        out = tmp_path / schedule
        rc = main(
            [
                "prune",
                str(run_dir),
                "--method",
                "magnitude",
                "--sparsity",
                "0.6",
                "--scope",
                "layer",
                "--schedule",
                schedule,
                "--rounds",
                "2",
                "--data",
                "digits",
                "--finetune-epochs",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        assert rc == 0
        for w in _weights(slimtorch.load(out)):
            assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)
        sched = json.loads((out / "prune_report.json").read_text())["config"]["schedule"]
        assert sched["type"] == {"agp": "AGP", "iterative": "Iterative"}[schedule]


def test_nm(run_dir, tmp_path):
    out = tmp_path / "nm"
    assert main(["prune", str(run_dir), "--method", "nm", "--n", "1", "--m", "4", "--out", str(out)]) == 0
    for w in _weights(slimtorch.load(out)):
        assert check_nm(w, 1, 4)
    with safe_open(str(out / "model.sparse.safetensors"), framework="pt") as f:
        assert "net.1.weight.csr_values" in f.keys()


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--method", "magnitude", "--sparsity", "1.5"], r"sparsity: 1\.5 is not in \[0, 1\)"),
        (["--method", "magnitude"], r"needs --sparsity"),
        (["--method", "magnitude", "--sparsity", "0.5", "--schedule", "agp"], r"give --finetune-epochs >= 1"),
        (
            ["--method", "magnitude", "--sparsity", "0.5", "--schedule", "iterative"],
            r"fine-tunes while pruning: give --data",
        ),
        (
            ["--method", "magnitude", "--sparsity", "0.5", "--finetune-epochs", "1"],
            r"--finetune-epochs needs --data",
        ),
        (["--method", "nm", "--n", "5", "--m", "4"], r"n=5 must be < m=4"),
        (["--method", "nm", "--n", "2", "--m", "3"], r"layer 'net.1' \(Linear\) has 64 input elements"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(run_dir, tmp_path, capsys, argv, msg):
    rc = main(["prune", str(run_dir), *argv, "--out", str(tmp_path / "bad")])
    assert rc == 2
    assert re.search(msg, capsys.readouterr().err)


def test_existing_output_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    args = ["prune", str(run_dir), "--method", "magnitude", "--sparsity", "0.5", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
