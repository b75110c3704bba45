"""Quantization: primitives, observers, post-training and quantization-aware schemes, ONNX export.

Entry points: :func:`quantize_` (dispatches on the config type, see :mod:`slimtorch.quant.api`) and
:func:`export_onnx`. Pure tensor math lives in :mod:`slimtorch.quant.primitives`, range estimation
in :mod:`slimtorch.quant.observers`.
"""

from slimtorch.quant.algorithms.adaround import AdaRound
from slimtorch.quant.algorithms.awq import AWQ, InputScaled
from slimtorch.quant.algorithms.equalization import CrossLayerEqualization, equalize_
from slimtorch.quant.algorithms.fold import fold_bn_
from slimtorch.quant.algorithms.gptq import GPTQ
from slimtorch.quant.algorithms.mse_clip import MSEClip
from slimtorch.quant.algorithms.rounding import ROUNDING, RTN, Rounding, register_rounding
from slimtorch.quant.algorithms.smoothquant import SmoothQuant
from slimtorch.quant.api import QUANTIZERS, SCHEMES, QuantReport, quantize_, register_quantizer, register_scheme
from slimtorch.quant.export.onnx_export import compare_with_onnx, export_float_onnx, export_onnx
from slimtorch.quant.export.serialize import load_quantized, register_preparer, save_quantized
from slimtorch.quant.modules.fake_quant import FakeQuantize, QuantConv2d, QuantLinear
from slimtorch.quant.observers import OBSERVERS, Observer, create_observer, register_observer
from slimtorch.quant.primitives import (
    choose_qparams,
    dequantize_affine,
    fake_quantize,
    qrange,
    quantize_affine,
)
from slimtorch.quant.workflows import schemes as _schemes  # noqa: F401  (registers the low-bit CLI schemes)
from slimtorch.quant.workflows.low_bit_static import LowBitStatic
from slimtorch.quant.workflows.mixed_precision import MixedPrecision
from slimtorch.quant.workflows.ptq import Int8Dynamic, Int8Static, calibrate, convert_, prepare_
from slimtorch.quant.workflows.qat import QAT, convert_qat_, prepare_qat_
from slimtorch.quant.workflows.weight_only import WeightOnly

__all__ = [
    "AdaRound",
    "AWQ",
    "SmoothQuant",
    "InputScaled",
    "GPTQ",
    "MSEClip",
    "ROUNDING",
    "RTN",
    "Rounding",
    "register_rounding",
    "QAT",
    "LowBitStatic",
    "CrossLayerEqualization",
    "MixedPrecision",
    "WeightOnly",
    "convert_qat_",
    "equalize_",
    "prepare_qat_",
    "OBSERVERS",
    "SCHEMES",
    "load_quantized",
    "register_preparer",
    "register_scheme",
    "save_quantized",
    "FakeQuantize",
    "Int8Dynamic",
    "Int8Static",
    "QuantConv2d",
    "QuantLinear",
    "calibrate",
    "compare_with_onnx",
    "convert_",
    "export_float_onnx",
    "export_onnx",
    "fold_bn_",
    "prepare_",
    "QUANTIZERS",
    "Observer",
    "QuantReport",
    "choose_qparams",
    "create_observer",
    "dequantize_affine",
    "fake_quantize",
    "qrange",
    "quantize_",
    "quantize_affine",
    "register_observer",
    "register_quantizer",
]
