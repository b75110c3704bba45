"""Command-line schemes for the low-bit configs (``slimtorch quantize --scheme w4a8|weight-only|w4-gptq|w8a8``).

A scheme is a name -> config type, default keys and data kind (:func:`~slimtorch.quant.api.register_scheme`);
the CLI builds the config with ``from_dict``, so each field is a ``--set KEY=VALUE``. The int8 schemes
live beside their configs in :mod:`slimtorch.quant.workflows.ptq`.
"""

from __future__ import annotations

from slimtorch.quant.api import register_scheme
from slimtorch.quant.workflows.low_bit_static import LowBitStatic
from slimtorch.quant.workflows.ptq import Int8Static
from slimtorch.quant.workflows.qat import QAT
from slimtorch.quant.workflows.weight_only import WeightOnly

register_scheme("w4a8", LowBitStatic, data="calib", trained=QAT,
                help="low-bit weights + int8 activations: --bits (4), --method rtn|adaround|gptq (LowBitStatic), "
                     "or --qat-epochs N for QAT with LSQ scales")
register_scheme("weight-only", WeightOnly, data="calib",
                help="weight-only integer codes (WeightOnly): --bits (4), --group-size (64), "
                     "--method rtn|gptq|adaround; activations stay float")
register_scheme("w4-gptq", WeightOnly, data="calib", defaults={"rounding": {"type": "GPTQ"}},
                help="4-bit weight-only GPTQ (WeightOnly with rounding=GPTQ): --group-size, "
                     "--set rounding.act_order=true, --set rounding.damp=0.01")
register_scheme("w8a8", Int8Static, data="calib",
                help="int8 weights and activations (Int8Static); with --smoothquant ALPHA the activation "
                     "outliers are first migrated into the weights (SmoothQuant)")
