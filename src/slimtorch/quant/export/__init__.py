"""Deployment: ONNX QDQ / MatMulNBits export (:mod:`.onnx_export`), its lossless graph rewrites
(:mod:`.onnx_compact`, :mod:`.onnx_kernels`), deployment targets (:mod:`.targets`) and safetensors
save/load of quantized models (:mod:`.serialize`). Opt-in, benchmark-shaped rewrites live in
:mod:`.experimental`.
"""

from slimtorch.quant.export.onnx_export import ExportCheckError, compare_with_onnx, export_float_onnx, export_onnx

__all__ = ["ExportCheckError", "compare_with_onnx", "export_float_onnx", "export_onnx"]
