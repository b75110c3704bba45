"""Quantized module forms: fake-quant wrappers (:mod:`.fake_quant`) and packed weight-only layers (:mod:`.packed`)."""

from slimtorch.quant.modules.fake_quant import QUANT_MODULES, FakeQuantize, QuantConv2d, QuantLinear
from slimtorch.quant.modules.packed import WEIGHT_ONLY_MODULES, WeightOnlyConv2d, WeightOnlyLinear

__all__ = [
    "QUANT_MODULES",
    "WEIGHT_ONLY_MODULES",
    "FakeQuantize",
    "QuantConv2d",
    "QuantLinear",
    "WeightOnlyConv2d",
    "WeightOnlyLinear",
]
