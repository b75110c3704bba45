"""CLI of the LLM methods: ``--nm N:M``, ``--smoothquant ALPHA``, ``--scheme w8a8``, weight-only to MatMulNBits."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

import slimtorch
from slimtorch.cli.main import main
from slimtorch.models import create
from slimtorch.prune import METHODS, check_nm
from slimtorch.quant import ROUNDING
from slimtorch.quant.export.matmul_nbits import expected_nbytes


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    return slimtorch.save(create("mlp", in_features=64, hidden=(32,), num_classes=10), tmp_path / "run")


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_nm_flag_sets_n_and_m(run_dir, tmp_path):
    out = tmp_path / "nm"
    assert main(["prune", str(run_dir), "--method", "nm", "--nm", "2:4", "--out", str(out)]) == 0
    assert all(check_nm(w, 2, 4) for w in _weights(slimtorch.load(out)))


@pytest.mark.parametrize(
    ("value", "msg"),
    [("2-4", r"--nm takes N:M with two integers, e.g. 2:4; got '2-4'"),
     ("a:b", r"--nm takes N:M with two integers"),
     ("4:2", r"--nm 4:2: N must be at least 1 and smaller than M .* got N=4, M=2"),
     ("0:4", r"got N=0, M=4")],
)
def test_bad_nm_values_are_refused(run_dir, tmp_path, capsys, value, msg):
    with pytest.raises(SystemExit) as e:
        main(["prune", str(run_dir), "--method", "nm", "--nm", value, "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert pytest.importorskip("re").search(msg, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "msg"),
    [(["--method", "magnitude", "--sparsity", "0.5", "--nm", "2:4"], "--nm sets n and m, which Magnitude does not"),
     (["--method", "nm", "--nm", "2:4", "--n", "1"], "give either --nm N:M or --n/--m, not both")],
)
def test_nm_flag_conflicts(run_dir, tmp_path, capsys, argv, msg):
    assert main(["prune", str(run_dir), *argv, "--out", str(tmp_path / "x")]) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "msg"),
    [(["--scheme", "w8a8", "--smoothquant", "1.5"], "--smoothquant takes alpha in [0, 1]"),
     (["--scheme", "w8a8", "--smoothquant", "-0.1"], "got -0.1"),
     (["--scheme", "weight-only", "--smoothquant", "0.5"], "WeightOnly keeps activations in float")],
)
def test_bad_smoothquant_values(run_dir, tmp_path, capsys, argv, msg):
    rc = main(["quantize", str(run_dir), *argv, "--data", "digits", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_weight_only_exports_matmul_nbits(run_dir, tmp_path, method):
    if method not in ROUNDING.names():
        pytest.skip(f"rounding {method!r} is not registered on this branch")
    out = tmp_path / "q"
    assert main(["quantize", str(run_dir), "--scheme", "weight-only", "--method", method, "--bits", "4",
                 "--group-size", "16", "--calib", "64", "--data", "digits", "--eval-n", "200",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    ops = [n.op_type for n in onnx.load(doc["files"]["int8_onnx"]).graph.node]
    assert ops.count("MatMulNBits") == 2
    assert doc["onnxruntime_vs_simulation"]["top1_agreement"] == 1.0
    # the saved weight-only model reloads without code and computes the same
    again = slimtorch.load(out)
    # the file is the MatMulNBits tensors (packed codes, scales, zero points), the fp32 biases (and AWQ's input
    # scales where they could not be folded) and < 2 KB of graph (names, attributes): no float weight matrix
    floats = sum(4 * t.numel() for k, t in again.state_dict().items() if k.endswith(("bias", "inv_scale")))
    assert doc["bytes"]["int8_onnx"] <= expected_nbytes(again) + floats + 2048
    assert doc["bytes"]["int8_onnx"] < doc["bytes"]["fp32_onnx"] / 2
    x = torch.randn(4, 64)
    from slimtorch.quant import load_quantized

    torch.testing.assert_close(again(x), load_quantized(out)(x), rtol=0, atol=0)


def test_smoothquant_value_must_be_a_number_or_auto(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quantize", str(run_dir), "--scheme", "w8a8", "--smoothquant", "half", "--out", str(tmp_path / "x")])
    assert "--smoothquant takes a number in [0, 1] or 'auto', got 'half'" in capsys.readouterr().err


def test_w8a8_scheme_with_smoothquant(run_dir, tmp_path):
    from slimtorch import quant

    if not hasattr(quant, "SmoothQuant"):
        pytest.skip("SmoothQuant is not on this branch")
    out = tmp_path / "sq"
    assert main(["quantize", str(run_dir), "--scheme", "w8a8", "--smoothquant", "0.5", "--calib", "64",
                 "--data", "digits", "--eval-n", "200", "--out", str(out)]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["config"]["type"] == "Int8Static" and doc["smoothquant"]["alpha"] == 0.5


@pytest.mark.parametrize(("method", "pattern"), [("sparsegpt", ["--sparsity", "0.5"]), ("wanda", ["--nm", "2:4"])])
def test_llm_pruning_methods(run_dir, tmp_path, method, pattern):
    if method not in METHODS.names():
        pytest.skip(f"pruning method {method!r} is not registered on this branch")
    out = tmp_path / method
    assert main(["prune", str(run_dir), "--method", method, *pattern, "--data", "digits", "--out", str(out)]) == 0
    ws = _weights(slimtorch.load(out))
    if "--nm" in pattern:
        assert all(check_nm(w, 2, 4) for w in ws)
    else:
        assert abs(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws) - 0.5) < 0.02
