"""Kernel-friendly rewrites of an exported QDQ graph: exact (bit-identical under the integer reference),
run by ONNX Runtime within the scales' tolerance, and applied only where safe."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx.inliner import inline_local_functions
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics.ort import onnx_session as ort_session
from slimtorch.models import create
from slimtorch.quant import Int8Static, export_onnx, quantize_
from slimtorch.quant.export.onnx_export import runtime_ops

from .onnx_reference import DEEP_MODEL, assert_within_steps, output_step, run_reference


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _graph(path):
    """The file's graph with its local functions inlined (the graph ONNX Runtime loads), and initializers."""
    g = inline_local_functions(onnx.load(str(path))).graph
    return g, {t.name: numpy_helper.to_array(t) for t in g.initializer}


def _conv_weights(g, inits):
    """The int8 weight every Conv computes with, in graph order: through its DequantizeLinear and, for a
    channel-padded weight, the constant Pad in front of it."""
    producer = {o: n for n in g.node for o in n.output}
    weights = []
    for conv in (n for n in g.node if n.op_type == "Conv"):
        src = producer[conv.input[1]].input[0]
        if src in inits:
            weights.append(inits[src])
            continue
        pad = producer[src]
        assert pad.op_type == "Pad" and len(pad.input) == 2  # constant 0
        w, widths = inits[pad.input[0]], inits[pad.input[1]]
        weights.append(np.pad(w, list(zip(widths[:w.ndim], widths[w.ndim:], strict=True))))
    return weights


def test_rgb_stem_is_padded_to_four_channels_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.randn(8, 3, 32, 32)
    quantize_(model, Int8Static(), calib_data=[x])
    plain = export_onnx(model, tmp_path / "plain.onnx", x[:1], pad_input_channels=0)
    padded = export_onnx(model, tmp_path / "pad.onnx", x[:1])  # the default pads to 4
    # exact: bit-identical under the integer reference (the new channel is zero and meets zero weights);
    # ONNX Runtime's integer kernels agree with it up to a few flipped codes (DEEP_MODEL)
    xs = x[:4].numpy()  # the reference's Conv is numpy: a few images
    ref = run_reference(padded, xs)
    assert np.array_equal(run_reference(plain, xs), ref)
    assert_within_steps(_run(padded, xs), ref, output_step(padded), **DEEP_MODEL)
    g, inits = _graph(padded)
    # one Pad on the quantized input (filled with its zero point: the new channel is exactly 0.0), one on
    # the stem's stored 3-channel weight, sharing the widths tensor
    pads = [n for n in g.node if n.op_type == "Pad"]
    q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert len(pads) == 2 and pads[0].input[0] == q.output[0] and pads[0].input[2] == q.input[2]
    assert pads[0].input[1] == pads[1].input[1]
    assert list(inits[pads[0].input[1]]) == [0, 0, 0, 0, 0, 1, 0, 0]
    assert inits[pads[1].input[0]].shape == (16, 3, 3, 3)  # the zero column is not stored
    stem_plain, stem = _conv_weights(*_graph(plain))[0], _conv_weights(g, inits)[0]
    assert stem.shape == (16, 4, 3, 3) and stem.dtype == np.int8
    assert np.array_equal(stem[:, :3], stem_plain) and not stem[:, 3].any()
    # the graph input keeps its 3 channels; ONNX Runtime still runs every conv on integer kernels
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 32, 32]
    ops = runtime_ops(padded, tmp_path)
    # (the weight Pad was folded into a constant at load: one Pad runs)
    assert ops["QLinearConv"] == 21 and "Conv" not in ops and ops["Pad"] == 1


@pytest.mark.parametrize("multiple", [4, 8])
def test_grey_5x5_first_conv_reads_its_kernel_columns_as_channels(multiple, tmp_path):
    """LeNet-5's 1-channel 5x5 conv: 5 shifted copies of the input become 5 channels (padded to the
    multiple) and the kernel 5x1: a reduction of 40 values per output instead of 100 (or 200) padded."""
    torch.manual_seed(0)
    model = create("lenet5").eval()
    x = torch.randn(16, 1, 28, 28)
    quantize_(model, Int8Static(), calib_data=[x])
    plain = export_onnx(model, tmp_path / "plain.onnx", x[:1], pad_input_channels=0)
    unfolded = export_onnx(model, tmp_path / "unfold.onnx", x[:1], pad_input_channels=multiple)
    ref = run_reference(unfolded, x.numpy())  # exact; ONNX Runtime within a few flipped codes
    assert np.array_equal(run_reference(plain, x.numpy()), ref)
    assert_within_steps(_run(unfolded, x.numpy()), ref, output_step(unfolded), **DEEP_MODEL)
    g, inits = _graph(unfolded)
    ops = collections.Counter(n.op_type for n in g.node)
    assert ops["Slice"] == 5 and ops["Concat"] == 1
    w, w_plain = _conv_weights(g, inits)[0], _conv_weights(*_graph(plain))[0]
    assert w.shape == (20, 8, 5, 1) and not w[:, 5:].any()  # 5 columns, rounded up to 8 for 4 and 8
    for j in range(5):  # channel j is kernel column j
        assert np.array_equal(w[:, j, :, 0], w_plain[:, 0, :, j])
    assert not any(n.op_type == "Pad" for n in _graph(plain)[0].node)
    assert runtime_ops(unfolded, tmp_path)["QLinearConv"] == 2


class _WideKernel(nn.Module):
    """A first conv with a wide kernel, padding 2 and the given stride: unfolding pads the width first."""

    def __init__(self, channels: int, kernel: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, kernel, padding=2, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(("channels", "kernel", "stride", "weight_shape"), [
    # RGB 5x5: 3 x 5 = 15 columns-as-channels, padded to 16 (80 values per output, against 4 x 25 = 100)
    (3, 5, (2, 1), (8, 16, 5, 1)),
    # width stride 2: shifted copies cannot stand for the kernel columns, so the input is only padded
    (3, 5, (1, 2), (8, 4, 5, 5)),
    # grey 4x4: 4 columns already fill 4 channels, no channel Pad at all
    (1, 4, (1, 1), (8, 4, 4, 1)),
])
def test_wide_first_kernels_unfold_only_with_unit_width_stride(channels, kernel, stride, weight_shape, tmp_path):
    torch.manual_seed(0)
    m = _WideKernel(channels, kernel, stride).eval()
    x = torch.randn(4, channels, 12, 10)
    quantize_(m, Int8Static(), calib_data=[x])
    plain = export_onnx(m, tmp_path / "plain.onnx", x[:1], pad_input_channels=0)
    path = export_onnx(m, tmp_path / "m.onnx", x[:1])
    ref = run_reference(path, x.numpy())  # exact; ONNX Runtime off by at most the one requantization
    assert np.array_equal(run_reference(plain, x.numpy()), ref)
    assert_within_steps(_run(path, x.numpy()), ref, output_step(path), 1)
    g, inits = _graph(path)
    assert _conv_weights(g, inits)[0].shape == weight_shape
    unfolds = weight_shape[-1] == 1
    assert any(n.op_type == "Slice" for n in g.node) == unfolds
    if channels * kernel % 4 == 0 and unfolds:  # only the width Pad (zero point), no channel Pad
        pads = [n for n in g.node if n.op_type == "Pad"]
        assert len(pads) == 1 and list(inits[pads[0].input[1]]) == [0, 0, 0, 2, 0, 0, 0, 2]


class _InputAlsoAdded(nn.Module):
    """``conv(x) + x``: the input is read by an Add as well, so its channel count must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class _FourChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(("model", "channels"), [(_InputAlsoAdded, 3), (_FourChannels, 4)])
def test_inputs_that_must_keep_their_channels_are_left_alone(model, channels, tmp_path):
    torch.manual_seed(0)
    m = model().eval()
    x = torch.randn(4, channels, 8, 8)
    quantize_(m, Int8Static(), calib_data=[x])
    path = export_onnx(m, tmp_path / "m.onnx", x[:1])
    g, inits = _graph(path)
    assert not any(n.op_type == "Pad" for n in g.node)
    assert _conv_weights(g, inits)[0].shape[1] == channels


def test_negative_multiple_is_refused(tmp_path):
    m = _FourChannels().eval()
    with pytest.raises(SlimtorchError, match="pad_input_channels must be >= 0, got -4"):
        export_onnx(m, tmp_path / "m.onnx", torch.randn(1, 4, 8, 8), pad_input_channels=-4)


def test_float_first_conv_keeps_its_max_pool_in_float(tmp_path):
    """A conv left in float feeding ``MaxPool -> Q``: the Q stays after the pool (4x fewer values)."""
    model = create("lenet5").eval()
    x = torch.randn(16, 1, 28, 28)
    quantize_(model, Int8Static(exclude=("features.0",)), calib_data=[x])
    path = export_onnx(model, tmp_path / "m.onnx", x[:1])
    g, _ = _graph(path)
    readers = {i: n for n in g.node for i in n.input}
    conv = next(n for n in g.node if n.op_type == "Conv" and n.input[0] == "input")
    pool = readers[conv.output[0]]
    assert pool.op_type == "MaxPool" and readers[pool.output[0]].op_type == "QuantizeLinear"
    assert not any(n.op_type == "Pad" for n in g.node)  # the float conv's input is not quantized
