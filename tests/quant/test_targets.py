"""Deployment targets: int8 weights that no CPU's kernel can saturate, checked on any machine.

Nothing here depends on which kernel ONNX Runtime picks on the test machine: saturation is shown with a
numpy emulation of the AVX2 u8 x s8 instruction sequence, and ONNX Runtime is only compared with the
simulation within a tolerance.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import slimtorch.quant.export.onnx_export as E
import slimtorch.quant.export.targets as T
from slimtorch.cli.main import main
from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics.cpu import CpuInfo
from slimtorch.quant import (
    QAT,
    Int8Dynamic,
    Int8Static,
    LowBitStatic,
    QuantConv2d,
    QuantLinear,
    export_onnx,
    load_quantized,
    quantize_,
    save_quantized,
)

HASWELL = CpuInfo("x86_64", "GenuineIntel", "Intel Core Processor (Haswell)",
                  {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx": False,
                   "avx512_bf16": False}, "cpuid")
SAPPHIRE = CpuInfo("x86_64", "GenuineIntel", "Intel Xeon", {**HASWELL.flags, "avx512f": True, "avx512_vnni": True,
                                                            "amx": True}, "cpuid")
GRAVITON = CpuInfo("aarch64", "0x41", "", {"neon_dotprod": True}, "/proc/cpuinfo")


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def _im2col(x: torch.Tensor, conv: nn.Conv2d) -> np.ndarray:
    """(B*L, C*kh*kw) patches in the weight's (in, kh, kw) order."""
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()


def _layer_inputs(model, x):
    """Each quantized layer's uint8 input codes as a (rows, K) matrix, recorded during a forward pass."""
    seen = {}

    def rec(name):
        def hook(m, args, out):
            codes = m.input_quant.quantize(args[0]).to(torch.float32)
            seen[name] = _im2col(codes, m) if isinstance(m, nn.Conv2d) else codes.reshape(-1, m.in_features).numpy()
        return hook

    hooks = [m.register_forward_hook(rec(n)) for n, m in _layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _adversarial_rows(w: np.ndarray) -> np.ndarray:
    """For each output row, the u8 input that maximises its pair sums: 255 where the weight is positive."""
    return np.where(w > 0, 255, 0).astype(np.int64)


def test_emulation_equals_the_exact_product_exactly_when_no_pair_saturates():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(16, 33))
    small = rng.integers(-64, 65, size=(8, 33))
    assert np.array_equal(T.pairwise_int16_matmul(a, small), a @ small.T)
    full = np.full((1, 4), 127)
    # 255*127 + 255*127 = 64,770 clips to 32,767 per pair: two pairs give 65,534 instead of 129,540
    assert T.pairwise_int16_matmul(np.full((1, 4), 255), full)[0, 0] == 2 * 32767
    assert T.reduction_pairs(np.array([[64, -64, 1]]))[0].tolist() == [128, 1]
    assert T.saturation_free(np.array([[64, -64, 64]])) and not T.saturation_free(np.array([[65, 64]]))


def test_portable_weights_cannot_saturate_and_8bit_weights_do_on_the_same_layer(digits_model, digits_data):
    x = digits_data["xtr"][:128]
    portable, vnni = copy.deepcopy(digits_model), copy.deepcopy(digits_model)
    assert quantize_(portable, Int8Static(), calib_data=[x]).details["target"] == "portable"
    quantize_(vnni, Int8Static(target="x86-vnni"), calib_data=[x])
    real_inputs = _layer_inputs(portable, digits_data["xte"])
    saturating = []
    for (name, p), (_, v) in zip(_layers(portable), _layers(vnni), strict=True):
        wp, wv = p.integer_weight().numpy(), v.integer_weight().numpy()
        assert p.weight_quant.bits == 7 and v.weight_quant.bits == 8
        # every pair of adjacent weights along the reduction axis, in both kernel layouts
        for layout in ("nchw", "nhwc"):
            assert T.reduction_pairs(wp, layout).max() <= 128
        flat_p, flat_v = wp.reshape(len(wp), -1).astype(np.int64), wv.reshape(len(wv), -1).astype(np.int64)
        # the emulated AVX2 kernel is exact for portable weights, on real inputs and on the worst input
        a = real_inputs[name].astype(np.int64)
        assert np.array_equal(T.pairwise_int16_matmul(a, flat_p), a @ flat_p.T)
        worst = _adversarial_rows(flat_v)
        if not T.saturation_free(wv):
            emulated = np.diagonal(T.pairwise_int16_matmul(worst, flat_v))
            exact = np.einsum("ok,ok->o", worst, flat_v)
            if (emulated != exact).any():
                saturating.append(name)
        worst_p = _adversarial_rows(flat_p)
        assert np.array_equal(np.diagonal(T.pairwise_int16_matmul(worst_p, flat_p)),
                              np.einsum("ok,ok->o", worst_p, flat_p))
    # the old full 8-bit scheme gives wrong sums on the AVX2 kernel (every layer of this net has such pairs)
    assert saturating == [n for n, _ in _layers(vnni)]


@pytest.mark.parametrize("config", [Int8Static(), Int8Dynamic(granularity="tensor"), QAT(bits_w=8, bits_a=8),
                                    LowBitStatic(bits_w=8)], ids=lambda c: type(c).__name__)
def test_every_int8_config_simulates_the_target_grid(config, digits_model, digits_data):
    model = copy.deepcopy(digits_model)
    quantize_(model, config, calib_data=[digits_data["xtr"][:64]])
    layers = _layers(model)
    assert layers and all(m.weight_quant.bits == 7 for _, m in layers)
    assert all(T.saturation_free(m.integer_weight().numpy()) for _, m in layers)
    assert T.model_target(model) == "portable"


def test_bad_target_names_the_valid_ones():
    for make in (lambda: Int8Static(target="arm9"), lambda: Int8Dynamic(target="arm9"),
                 lambda: QAT(target="arm9"), lambda: LowBitStatic(target="arm9")):
        with pytest.raises(ValueError, match="unknown deployment target 'arm9'; valid: portable, x86-avx2, x86-vnni"):
            make()


def test_export_records_the_target_and_agrees_with_the_simulation(digits_model, digits_data, tmp_path):
    quantize_(digits_model, Int8Static(), calib_data=[digits_data["xtr"][:128]])
    path = export_onnx(digits_model, tmp_path / "m.onnx", digits_data["xte"][:16])
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["slimtorch.target"] == "portable"
    result = E.check_export(digits_model, path, digits_data["xte"][:64])
    assert result["max_abs_diff"] <= result["allowed"]


def test_8bit_weights_are_refused_by_a_saturation_prone_target(digits_model, digits_data, tmp_path):
    quantize_(digits_model, Int8Static(target="x86-vnni"), calib_data=[digits_data["xtr"][:128]])
    for target in ("portable", "x86-avx2"):
        with pytest.raises(SlimtorchError, match=r"layer 'features.0' has 8-bit weights .* target "
                                                 rf"'{target}' needs weights quantized for it"):
            export_onnx(digits_model, tmp_path / "m.onnx", digits_data["xte"][:1], target=target)


def test_a_host_outside_the_target_warns_and_is_not_checked(digits_model, digits_data, tmp_path, monkeypatch):
    quantize_(digits_model, Int8Static(target="x86-vnni"), calib_data=[digits_data["xtr"][:128]])
    monkeypatch.setattr(T, "cpu_info", lambda: HASWELL)
    monkeypatch.setattr(E, "check_export", lambda *a, **k: pytest.fail("an AVX2 host cannot check x86-vnni"))
    with pytest.warns(UserWarning, match=r"target 'x86-vnni' .* this host \(Intel Core Processor \(Haswell\)"):
        path = export_onnx(digits_model, tmp_path / "m.onnx", digits_data["xte"][:1])
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["slimtorch.target"] == "x86-vnni"


def test_host_membership():
    get = T.get_target
    assert all(get("portable").host_belongs(c) for c in (HASWELL, SAPPHIRE, GRAVITON))
    assert get("x86-avx2").host_belongs(HASWELL) and get("x86-avx2").host_belongs(SAPPHIRE)
    assert not get("x86-avx2").host_belongs(GRAVITON)
    assert get("x86-vnni").host_belongs(SAPPHIRE) and not get("x86-vnni").host_belongs(HASWELL)
    assert not get("x86-vnni").host_belongs(GRAVITON)
    assert (HASWELL.kind, SAPPHIRE.kind, GRAVITON.kind) == ("x86-avx2", "x86-vnni", "arm64")


def test_the_check_names_the_first_layer_that_diverges(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    x = torch.randn(32, 8)
    quantize_(model, Int8Static(), calib_data=[x])
    path = export_onnx(model, tmp_path / "m.onnx", x)
    real = E._run_onnx

    def faulty(p, inputs):
        # a runtime that gets the 12-input layer wrong (as a saturating kernel would), and so the model
        out = real(p, inputs)
        wrong = p.parent == tmp_path or inputs[0].shape[-1] == 12  # the whole model, or that layer alone
        return out * 1.5 + 1.0 if wrong else out

    monkeypatch.setattr(E, "_run_onnx", faulty)
    with pytest.raises(E.ExportCheckError, match=r"differs from the simulation by .* first layer that diverges is '4'"):
        E.check_export(model, path, x)
    with pytest.raises(E.ExportCheckError, match=r"first layer that diverges is '4'.*\(the file was removed\)"):
        export_onnx(model, tmp_path / "again.onnx", x)
    assert not (tmp_path / "again.onnx").exists()  # never left behind for deployment


def test_export_restores_each_submodule_mode(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    quantize_(model, Int8Dynamic(granularity="tensor"))
    model.train()
    model[1].eval()  # a frozen part kept in eval by its owner
    export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 8))
    assert model.training and model[0].training and not model[1].training


def test_files_saved_before_targets_reload_with_their_8bit_weights(digits_model, digits_data, tmp_path):
    quantize_(digits_model, Int8Static(target="x86-vnni"), calib_data=[digits_data["xtr"][:64]])
    path = save_quantized(digits_model, tmp_path / "q", Int8Static(target="x86-vnni"))
    # rewrite the metadata as an older slimtorch wrote it: a config without a target
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        spec, tensors = json.loads(f.metadata()["slimtorch"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del spec["metadata"]["quant"]["config"]["target"]
    save_file(tensors, str(path), metadata={"slimtorch": json.dumps(spec)})
    from tests.quant.conftest import DigitsNet

    again = load_quantized(path, model=DigitsNet())
    assert [m.weight_quant.bits for _, m in _layers(again)] == [8] * 4
    x = digits_data["xte"][:32]
    assert torch.allclose(again(x), digits_model(x), atol=1e-5)


def test_cli_target(tmp_path):
    import slimtorch
    from slimtorch.models import create

    torch.manual_seed(0)
    run = slimtorch.save(create("mlp", in_features=64, hidden=(16,), num_classes=10).eval(),
                         tmp_path / "run" / "model.safetensors").parent
    out = tmp_path / "q"
    assert main(["quantize", str(run), "--scheme", "int8", "--calib", "64", "--data", "digits", "--eval-n", "64",
                 "--target", "x86-avx2", "--out", str(out)]) == 0
    doc = json.loads((out / "quant_report.json").read_text())
    assert doc["target"] == "x86-avx2" and doc["config"]["target"] == "x86-avx2" and doc["cpu"]["kind"]
    onnx_props = {p.key: p.value for p in onnx.load(str(out / "model.int8.onnx")).metadata_props}
    assert onnx_props["slimtorch.target"] == "x86-avx2"
    with pytest.raises(SystemExit):
        main(["quantize", str(run), "--scheme", "int8", "--target", "arm9", "--out", str(tmp_path / "x")])
