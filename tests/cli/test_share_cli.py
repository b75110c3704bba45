"""``slimtorch share`` end to end on the bundled digits data, and its user errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.cli.share import parse_bits
from slimtorch.data import load as load_data
from slimtorch.metrics import accuracy
from slimtorch.models import create
from slimtorch.share import load, read_header
from slimtorch.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create("mlp", in_features=64, hidden=(32,), num_classes=10)
    fit(model, load_data("digits", "train"), 3, lr=0.1, progress=False)
    with torch.no_grad():  # a pruned model: the smallest half of each weight matrix is zero
        for layer in (model.net[1], model.net[3]):
            w = layer.weight
            w.mul_((w.abs() > w.abs().median()).float())
    out = tmp_path_factory.mktemp("runs") / "pruned"
    slimtorch.save(model, out)
    return out


def test_share_with_finetuning(run_dir, tmp_path, capsys):
    out = tmp_path / "m.slim"
    rc = main(
        [
            "share",
            str(run_dir),
            "--bits",
            "fc=3",
            "--finetune-epochs",
            "1",
            "--data",
            "digits",
            "--lr",
            "1e-3",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "r.json"),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "net.1.weight" in printed and "accuracy_finetuned" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["file_bytes"] == out.stat().st_size
    assert report["ratio"] > 4
    header = read_header(out)
    assert {l["bits"] for l in header["layers"]} == {3}
    model = load(out)
    for layer in (model.net[1], model.net[3]):
        assert torch.unique(layer.weight[layer.weight != 0]).numel() <= 8
    test = load_data("digits", "test")
    # 3-bit sharing of a 2-layer MLP costs little; the stored model is the one that was evaluated.
    assert accuracy(model, test) == pytest.approx(report["accuracy_finetuned"], abs=1e-9)
    assert report["accuracy_finetuned"] > report["accuracy_before"] - 0.05


def test_share_without_data_and_reshare_a_slim_file(run_dir, tmp_path):
    first = tmp_path / "a.slim"
    assert main(["share", str(run_dir), "--bits", "4", "--out", str(first)]) == 0
    second = tmp_path / "b.slim"
    assert main(["share", str(first), "--bits", "4", "--index-bits", "4", "--out", str(second)]) == 0
    assert {l["index_bits"] for l in read_header(second)["layers"]} == {4}


def test_parse_bits():
    assert parse_bits("5") == 5
    assert parse_bits("conv=8, fc=5") == {"conv": 8, "fc": 5}
    assert parse_bits("features.0=6") == {"features.0": 6}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", "fc=17"], r"bits\['fc'\]: 17 is not in \[1, 16\]"),
        (["--bits", "0"], r"bits: 0 is not in \[1, 16\]"),
        (["--bits", "fc=x"], "fc='x' is not an integer"),
        (["--bits", "eight"], "expected an int or KIND=BITS"),
        (["--finetune-epochs", "1"], "--finetune-epochs needs --data"),
        (["--index-bits", "many"], "--index-bits: expected an int or 'auto'"),
    ],
)
def test_user_errors(run_dir, tmp_path, capsys, extra, message):
    rc = main(["share", str(run_dir), "--out", str(tmp_path / "m.slim"), *extra])
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)


def test_refuses_to_overwrite_and_bad_suffix(run_dir, tmp_path, capsys):
    out = tmp_path / "m.slim"
    out.write_bytes(b"x")
    assert main(["share", str(run_dir), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["share", str(run_dir), "--out", str(out), "--overwrite"]) == 0
    assert main(["share", str(run_dir), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "must name a .slim file" in capsys.readouterr().err
