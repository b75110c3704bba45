"""Command-line schemes for the low-bit configs (``slimtorch quantize --scheme w4a8|weight-only``).

Each builder maps the CLI options onto one config class; the int8 schemes live beside their configs in
:mod:`slimtorch.quant.workflows.ptq`.
"""

from __future__ import annotations

from typing import Any

from slimtorch.core.config import Config
from slimtorch.quant.api import register_scheme
from slimtorch.quant.workflows.low_bit_static import LowBitStatic
from slimtorch.quant.workflows.qat import QAT
from slimtorch.quant.workflows.weight_only import WeightOnly


@register_scheme("w4a8", data="calib", help="low-bit weights + int8 activations: --bits (4), --method "
                 "rtn|adaround|gptq (LowBitStatic), or --qat-epochs N for QAT with LSQ scales")
def _w4a8_scheme(options: dict[str, Any]) -> Config:
    bits = options.get("bits") or 4
    exclude = tuple(options.get("exclude") or ())
    if options.get("qat_epochs"):
        return QAT(bits_w=bits, bits_a=8, observer=options.get("observer") or "minmax", exclude=exclude)
    return LowBitStatic(bits_w=bits, bits_a=8, method=options.get("method") or "rtn",
                        observer=options.get("observer") or "minmax", exclude=exclude)


@register_scheme("weight-only", data="calib", help="weight-only integer codes (WeightOnly): --bits (4), "
                 "--group-size (64), --method rtn|gptq|adaround; activations stay float")
def _weight_only_scheme(options: dict[str, Any]) -> WeightOnly:
    return WeightOnly(bits=options.get("bits") or 4, group_size=options.get("group_size") or 64,
                      method=options.get("method") or "rtn", exclude=tuple(options.get("exclude") or ()))
