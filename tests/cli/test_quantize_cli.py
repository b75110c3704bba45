"""``slimtorch quantize``: int8 PTQ of a digits MLP, int8 ONNX output, report, reload, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.data import load
from slimtorch.models import create
from slimtorch.quant import SCHEMES, QuantLinear, compare_with_onnx, load_quantized


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create("mlp", in_features=64, hidden=(32,), num_classes=10)
    ds = load("digits", "train")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return slimtorch.save(model.eval(), tmp_path_factory.mktemp("run") / "run").parent


def test_int8_percentile(run_dir, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", str(run_dir), "--scheme", "int8", "--observer", "percentile", "--calib", "256",
               "--data", "digits", "--out", str(out), "--eval-n", "300"])
    assert rc == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["config"]["type"] == "Int8Static" and doc["config"]["observer"] == "percentile"
    acc = doc["accuracy"]
    assert acc["fp32"] > 0.9
    assert acc["simulated"] >= acc["fp32"] - 0.02 and acc["onnxruntime_int8"] >= acc["fp32"] - 0.02
    assert doc["onnxruntime_vs_simulation"]["top1_agreement"] >= 0.99
    assert doc["bytes"]["smaller_x"] > 2.5
    assert (out / "model.int8.onnx").exists() and (out / "model.fp32.onnx").exists()
    assert "ONNX Runtime vs simulation" in capsys.readouterr().out
    # the saved simulation reloads without calibration data and still matches the exported int8 model
    again = load_quantized(out)
    assert isinstance(again.net[1], QuantLinear) and again.net[1].input_quant.quantizing
    x = torch.stack([load("digits", "test")[i][0] for i in range(64)])
    cmp = compare_with_onnx(again, out / "model.int8.onnx", [x])
    peak = float(again(x).abs().max())
    assert cmp["top1_agreement"] >= 0.98 and cmp["max_abs_diff"] < 0.05 * peak, (cmp, peak)


def test_dynamic_scheme_needs_no_data(run_dir, tmp_path):
    out = tmp_path / "d"
    assert main(["quantize", str(run_dir), "--scheme", "int8-dynamic", "--out", str(out)]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["config"]["type"] == "Int8Dynamic" and "int8_onnx" in doc["files"]


def test_schemes_come_from_the_registry():
    assert {"int8", "int8-dynamic"} <= set(SCHEMES)


def test_bad_input(run_dir, tmp_path, capsys):
    assert main(["quantize", str(run_dir), "--scheme", "int8", "--out", str(tmp_path / "x")]) == 2
    assert "needs data: give --data" in capsys.readouterr().err
    assert main(["quantize", str(run_dir), "--scheme", "int8", "--data", "digits", "--calib", "0",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--calib must be >= 1, got 0" in capsys.readouterr().err
    out = tmp_path / "z"
    out.mkdir()
    slimtorch.save(create("mlp", in_features=64), out)
    assert main(["quantize", str(run_dir), "--scheme", "int8", "--data", "digits", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(run_dir), "--scheme", "int3", "--out", str(tmp_path / "w")])


@pytest.mark.parametrize(
    "extra, config_type",
    [(["--scheme", "w4a8", "--method", "adaround"], "LowBitStatic"),
     (["--scheme", "w4a8", "--qat-epochs", "1", "--lr", "0.001"], "QAT"),
     (["--scheme", "weight-only", "--bits", "4", "--group-size", "16", "--method", "gptq"], "WeightOnly")],
)
def test_low_bit_schemes(run_dir, tmp_path, extra, config_type):
    out = tmp_path / "q"
    assert main(["quantize", str(run_dir), *extra, "--calib", "128", "--data", "digits", "--out", str(out),
                 "--eval-n", "300"]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["config"]["type"] == config_type
    # 4-bit weights on a 32-unit MLP: the simulated model keeps most of the float accuracy.
    assert doc["accuracy"]["simulated"] > doc["accuracy"]["fp32"] - 0.08


def test_qat_fine_tune_clips_the_gradient_norm(run_dir, tmp_path, monkeypatch, capsys):
    import slimtorch.cli.quantize as cli_quantize
    from slimtorch.quant.workflows.qat import QAT_GRAD_CLIP

    seen: list = []
    real_fit = cli_quantize.fit
    monkeypatch.setattr(cli_quantize, "fit", lambda *a, **k: seen.append(k["grad_clip"]) or real_fit(*a, **k))
    base = ["quantize", str(run_dir), "--scheme", "w4a8", "--qat-epochs", "1", "--calib", "128", "--data", "digits",
            "--eval-n", "100"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--grad-clip", "inf", "--out", str(tmp_path / "b")]) == 0
    assert seen == [QAT_GRAD_CLIP, float("inf")]
    for bad in ("0", "-1", "nan"):
        assert main([*base, "--grad-clip", bad, "--out", str(tmp_path / "c")]) == 2
        assert f"--grad-clip must be > 0 (inf: no clipping), got {float(bad)}" in capsys.readouterr().err
