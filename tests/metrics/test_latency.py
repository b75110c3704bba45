"""Latency on torch and ONNX Runtime, ORT/torch agreement, alternating comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics import compare_latency, export_onnx_fp32, measure_latency, onnx_session
from slimtorch.models import create


def _mlp(depth: int, width: int = 384) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_latency_is_positive_and_finite(runtime):
    model = create("lenet5")
    ms = measure_latency(model, torch.randn(2, 1, 28, 28), runtime=runtime, warmup=2, repeats=5)
    assert 0 < ms < 10_000 and math.isfinite(ms)


def test_torch_threads_and_mode_restored():
    model = create("lenet5").train()
    before = torch.get_num_threads()
    measure_latency(model, torch.randn(1, 1, 28, 28), threads=1, warmup=1, repeats=2)
    assert torch.get_num_threads() == before
    assert model.training


def test_onnxruntime_output_equals_torch_with_dynamic_batch(tmp_path):
    model = create("lenet5").eval()
    path = export_onnx_fp32(model, torch.zeros(1, 1, 28, 28), tmp_path / "lenet5.onnx")
    x = torch.randn(5, 1, 28, 28)  # another batch size than the export's
    (ort_out,) = onnx_session(path, threads=1).run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(ort_out, model(x).numpy(), atol=1e-4)
    # an existing .onnx file can be timed directly (e.g. a quantized export), a saved model too
    assert measure_latency(path, x, runtime="onnxruntime", warmup=1, repeats=3) > 0
    saved = slimtorch.save(model, tmp_path / "run")
    for runtime in ("torch", "onnxruntime"):
        assert measure_latency(saved, x, runtime=runtime, warmup=1, repeats=3) > 0


def test_parametrized_model_exports_its_effective_weights(tmp_path):
    class Zero(nn.Module):
        def forward(self, w):
            return w * 0.0

    model = nn.Sequential(nn.Linear(4, 3))
    parametrize.register_parametrization(model[0], "weight", Zero())
    path = export_onnx_fp32(model, torch.zeros(1, 4), tmp_path / "m.onnx")
    x = torch.randn(2, 4)
    (out,) = onnx_session(path).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, model[0].bias.detach().expand(2, 3).numpy(), atol=1e-6)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_compare_latency_ratio_of_twice_as_deep_model(clock):
    x = torch.randn(256, 192)
    deep, shallow = _mlp(8, 192), _mlp(4, 192)  # ~1 ms vs ~0.5 ms of compute per call on one core
    res = compare_latency(deep, shallow, x, runtime="torch", threads=1, warmup=3, repeats=21, clock=clock)
    assert res["speedup"] == pytest.approx(res["a_ms"] / res["b_ms"])
    assert res["clock"] == clock
    if clock == "cpu":  # our own compute time: twice the layers, about twice the time
        assert 1.5 < res["speedup"] < 2.7
    else:  # wall time on a shared machine: other jobs' time slices stretch the longer calls more
        assert res["speedup"] > 1.2


def test_cpu_clock_matches_work_on_onnxruntime():
    x = torch.randn(256, 192)
    res = compare_latency(_mlp(8, 192), _mlp(4, 192), x, runtime="onnxruntime", warmup=3, repeats=21,
                          clock="cpu")
    assert 1.5 < res["speedup"] < 2.7


def test_compare_latency_across_runtimes():
    x = torch.randn(8, 384)
    res = compare_latency(_mlp(2), _mlp(2), x, runtime=("torch", "onnxruntime"), warmup=2, repeats=5)
    assert res["runtime"] == "torch/onnxruntime" and res["a_ms"] > 0 and res["b_ms"] > 0


def test_bad_arguments(tmp_path):
    model = nn.Linear(2, 2)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; valid: onnxruntime, onnxruntime-int8, torch"):
        measure_latency(model, x, runtime="tensorrt")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_latency(model, x, repeats=0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        compare_latency(model, model, x, threads=0)
    with pytest.raises(ValueError, match="clock='cpu' sums the CPU time of all threads"):
        measure_latency(model, x, threads=2, clock="cpu")
    with pytest.raises(ValueError, match="clock: 'gpu' is not one of \\['cpu', 'wall'\\]"):
        measure_latency(model, x, clock="gpu")
    with pytest.raises(SlimtorchError, match="no ONNX file at"):
        onnx_session(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="is an ONNX file; time it with runtime='onnxruntime'"):
        measure_latency(tmp_path / "m.onnx", x, runtime="torch")
    path = export_onnx_fp32(model, x, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="the ONNX graph takes 1 inputs"):
        measure_latency(path, (x, x), runtime="onnxruntime")


@pytest.mark.parametrize("name,kwargs", [
    ("char_gpt", dict(block_size=16, n_layer=1, n_embd=32, n_head=4)),
    ("vit_tiny", dict(dim=32, depth=1, heads=2)),
    ("vit_tiny", dict(dim=32, depth=1, heads=2, attn="torch")),  # nn.MultiheadAttention
    ("mobilenetv2_cifar", dict(width_mult=0.25)),
])
def test_zoo_models_export_and_agree(tmp_path, name, kwargs):
    from slimtorch.metrics import example_inputs_for, session_feed

    model = create(name, **kwargs).eval()
    x = example_inputs_for(model, 2)
    x = torch.randint(0, 65, x.shape) if not x.is_floating_point() else torch.randn_like(x)
    session = onnx_session(export_onnx_fp32(model, x, tmp_path / "m.onnx"))
    x3 = torch.cat([x, x[:1]])  # dynamic batch
    (out,) = session.run(None, session_feed(session, x3))
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x3).numpy(), atol=1e-4)


@pytest.fixture
def recording_runtime():
    """A runtime whose 'inference' appends the model's name to a shared log and sleeps 0.2 ms."""
    import time

    from slimtorch.metrics.latency import RUNTIMES

    calls: list[str] = []

    def factory(model, args, threads, stack):
        return lambda: (calls.append(model), time.sleep(2e-4))

    RUNTIMES.register("recording", factory)
    yield calls
    RUNTIMES._items.pop("recording")


def test_blocks_of_calls_alternate_and_skip_the_first_call_of_each_block(recording_runtime):
    res = compare_latency("a", "b", torch.zeros(1), runtime="recording", warmup=1, repeats=4, block=3)
    # warm-up a, b; then rounds of 3 calls per model, order swapped every round, 2 timed per block
    assert "".join(recording_runtime) == "ab" + "aaabbb" + "bbbaaa"
    assert res["repeats"] == 4 and res["block"] == 3


def test_block_one_times_strictly_alternating_single_calls(recording_runtime):
    res = compare_latency("a", "b", torch.zeros(1), runtime="recording", warmup=0, repeats=3, block=1)
    assert "".join(recording_runtime) == "ab" "ba" "ab" and res["repeats"] == 3


def test_block_must_be_positive():
    with pytest.raises(ValueError, match="block must be >= 1, got 0"):
        compare_latency(nn.Linear(2, 2), nn.Linear(2, 2), torch.zeros(1, 2), block=0)
