"""Quantization workflows, one config plus one registered handler each: static/dynamic int8 (:mod:`.ptq`),
QAT (:mod:`.qat`), weight-only (:mod:`.weight_only`), low-bit static (:mod:`.low_bit_static`) and mixed
precision (:mod:`.mixed_precision`). Use them through :func:`slimtorch.quant.quantize_`.
"""
