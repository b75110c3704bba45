"""The ``onnxruntime-int8`` latency runtime: a model timed as an int8 QDQ graph on ONNX Runtime.

Pruning decisions for an int8 deployment need the int8 kernels' latency as a function of layer widths,
long before the pruned model is fine-tuned and quantized for real. This runtime gives that latency: the
module is exported to fp32 ONNX (:func:`~slimtorch.metrics.ort.export_onnx_fp32`) and quantized with
ONNX Runtime's own static quantizer into the QDQ format (per-channel signed int8 weights, unsigned int8
activations, calibrated on the timed inputs), which ONNX Runtime fuses into integer convolutions and
matmuls (``QLinearConv``, ``MatMulInteger``). Latency depends on the graph's shapes and operators, not
on the scale values, so a model quantized later by :func:`slimtorch.quant.quantize_` and exported with
:func:`slimtorch.quant.export_onnx` runs the same kernels (it lives above this layer, so it is not used
here). An ``.onnx`` file is timed as it is (give an already quantized file).

>>> compare_latency(dense, pruned, x, runtime="onnxruntime-int8")["speedup"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics.latency import RUNTIMES, ModelLike, export_to_temp, is_onnx_file, ort_runner
from slimtorch.metrics.ort import onnx_session, session_feed


class _Reader:
    """ONNX Runtime calibration reader yielding one feed (the timed inputs)."""

    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self.feeds = [feed]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self.feeds.pop() if self.feeds else None

    def rewind(self) -> None:  # newer onnxruntime calls it between calibration passes
        pass


def quantize_qdq_int8(fp32_path: Path, out_path: Path, feed: dict[str, np.ndarray]) -> Path:
    """ONNX Runtime's static QDQ int8 quantization of ``fp32_path`` (per-channel S8 weights, U8
    activations, min/max calibration on ``feed``, after ONNX Runtime's pre-processing) written to
    ``out_path`` (the pre-processed float graph is left beside it as ``*.pre.onnx``)."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_suffix(".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice at WARNING through the root logger
    try:
        quant_pre_process(str(fp32_path), str(pre))  # shape inference + fusions (BN folded, bias initializers)
        quantize_static(str(pre), str(out_path), _Reader(feed), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:  # the quantizer raises many types; report them uniformly
        raise SlimtorchError(f"ONNX Runtime could not quantize {fp32_path} to int8 QDQ: {e}") from e
    finally:
        root.setLevel(level)
    return out_path


@RUNTIMES.register("onnxruntime-int8")
def _ort_int8_runtime(model: ModelLike, args: tuple[torch.Tensor, ...], threads: int,
                      stack: contextlib.ExitStack) -> Callable[[], Any]:
    if is_onnx_file(model):
        path = Path(model)
    else:
        fp32 = export_to_temp(model, args, stack)
        path = quantize_qdq_int8(fp32, fp32.with_name("model.int8.onnx"), session_feed(onnx_session(fp32, 1), args))
    return ort_runner(path, args, threads)
