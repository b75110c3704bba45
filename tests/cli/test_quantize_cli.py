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


def _config(*argv):
    """The config ``slimtorch quantize`` builds for ``argv`` (no model, no data needed)."""
    from slimtorch.cli.main import build_parser
    from slimtorch.cli.quantize import scheme_config

    args = build_parser().parse_args(["quantize", "RUN", "--out", "o", *argv])
    return scheme_config(SCHEMES.get(args.scheme), args)


def test_configs_come_from_from_dict_with_flags_and_set():
    from slimtorch.quant import QAT, Int8Dynamic, Int8Static, WeightOnly
    from slimtorch.quant.algorithms.gptq import GPTQ
    from slimtorch.quant.workflows.low_bit_static import LowBitStatic

    flags = _config("--scheme", "int8", "--observer", "percentile", "--percentile", "99.9", "--per-tensor",
                    "--exclude", "fc", "--target", "x86-avx2", "--bits", "7")
    assert flags == Int8Static(observer="percentile", observer_kwargs={"percentile": 99.9}, per_channel=False,
                               exclude=("fc",), target="x86-avx2", weight_bits=7)
    sets = _config("--scheme", "int8", "--set", "observer=percentile", "--set", "observer_kwargs.percentile=99.9",
                   "--set", "per_channel=false", "--set", "exclude=[fc]", "--set", "target=x86-avx2",
                   "--set", "weight_bits=7")
    assert sets == flags
    # --set wins over a flag
    assert _config("--scheme", "int8", "--percentile", "99.0", "--set", "observer_kwargs.percentile=99.9",
                   "--observer", "percentile").observer_kwargs == {"percentile": 99.9}
    assert _config("--scheme", "int8-dynamic") == Int8Dynamic(granularity="tensor")
    assert _config("--scheme", "int8-dynamic", "--set", "granularity=token").granularity == "token"
    assert _config("--scheme", "w4a8", "--bits", "3", "--method", "gptq") == LowBitStatic(bits_w=3, method="gptq")
    assert _config("--scheme", "w4a8", "--qat-epochs", "2", "--bits", "3") == QAT(bits_w=3)
    assert _config("--scheme", "weight-only", "--bits", "3", "--group-size", "16") == WeightOnly(bits=3, group_size=16)
    gptq = _config("--scheme", "w4-gptq", "--set", "rounding.act_order=true", "--set", "rounding.damp=0.05")
    assert gptq == WeightOnly(rounding=GPTQ(act_order=True, damp=0.05)) and gptq.method == "gptq"


def test_bad_config_options_name_the_allowed_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]; allowed: \[.*'observer'.*\]"):
        _config("--scheme", "int8", "--set", "colour=red")
    with pytest.raises(ValueError, match=r"--group-size sets group_size, which Int8Static does not have; "
                                         r"allowed keys: \[.*'per_channel'.*\]"):
        _config("--scheme", "int8", "--group-size", "32")
    with pytest.raises(ValueError, match=r"--bits sets bits or bits_w or weight_bits, which Int8Dynamic"):
        _config("--scheme", "int8-dynamic", "--bits", "4")
    with pytest.raises(ValueError, match=r"rounding.*unknown key\(s\) \['act_ordr'\]; allowed: \[.*'act_order'"):
        _config("--scheme", "w4-gptq", "--set", "rounding.act_ordr=true")
    with pytest.raises(ValueError, match=r"--set observer.x: observer is not a nested config"):
        _config("--scheme", "int8", "--observer", "minmax", "--set", "observer.x=1")


def test_cli_refuses_a_flag_the_config_lacks(run_dir, tmp_path, capsys):
    assert main(["quantize", str(run_dir), "--scheme", "int8-dynamic", "--group-size", "8",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--group-size sets group_size, which Int8Dynamic does not have; allowed keys: [" in capsys.readouterr().err


def test_register_scheme_forms():
    from slimtorch.quant import Int8Static, register_scheme

    try:
        register_scheme("test-int8-mse", Int8Static, defaults={"observer": "mse"}, help="test")
        assert _config("--scheme", "test-int8-mse", "--per-tensor") == Int8Static(observer="mse", per_channel=False)

        @register_scheme("test-legacy", data="calib")  # former form: build(options) -> Config
        def _legacy(options):
            return Int8Static(observer=options["observer"], per_channel=not options["per_tensor"],
                              exclude=tuple(options["exclude"]))

        assert SCHEMES.get("test-legacy").build is _legacy
        assert _config("--scheme", "test-legacy", "--per-tensor", "--set", "weight_bits=6") == Int8Static(
            per_channel=False, weight_bits=6)
        with pytest.raises(ValueError, match="data must be 'calib', 'train' or 'none', got 'all'"):
            register_scheme("test-bad", Int8Static, data="all")
        with pytest.raises(ValueError, match="config must be a Config subclass"):
            register_scheme("test-bad", dict)
    finally:
        for name in ("test-int8-mse", "test-legacy"):
            SCHEMES._items.pop(name, None)


def test_set_reaches_a_gptq_scheme_end_to_end(run_dir, tmp_path):
    out = tmp_path / "g"
    assert main(["quantize", str(run_dir), "--scheme", "w4-gptq", "--group-size", "16", "--set",
                 "rounding.act_order=true", "--calib", "128", "--data", "digits", "--out", str(out),
                 "--eval-n", "300"]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["config"]["rounding"] == {**doc["config"]["rounding"], "type": "GPTQ", "act_order": True}
    assert doc["config"]["group_size"] == 16
    assert doc["accuracy"]["simulated"] > doc["accuracy"]["fp32"] - 0.08
