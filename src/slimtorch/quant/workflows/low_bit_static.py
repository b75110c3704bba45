"""Low-bit weights with 8-bit static activations (e.g. W4A8), weights rounded by RTN, AdaRound or GPTQ.

``quantize_(model, LowBitStatic(bits_w=4, bits_a=8, rounding=AdaRound(iters=500)), calib_data=loader)``
(shorthand: ``method="adaround"``):

1. fold BatchNorm into the preceding convolutions (:func:`slimtorch.quant.algorithms.fold.fold_bn_`), so the
   weights that are rounded are the ones an integer runtime executes;
2. choose the integer weights with the rounding sub-config (:mod:`slimtorch.quant.workflows.weight_only`) on a
   per-output-channel symmetric grid ``s = max|w| / (2^(b-1) - 1)`` (the grid of
   :class:`~slimtorch.quant.workflows.ptq.Int8Static`'s weight quantizer), the layers' inputs being
   float activations of the partly quantized model;
3. write the chosen grid values back as float weights and run static PTQ
   (:class:`~slimtorch.quant.workflows.ptq.Int8Static` with ``weight_bits=bits_w``), whose weight quantizers
   are then pinned to exactly the grid of step 2 (so the rounding decisions are kept), and calibrate
   the activation ranges.

The result is the same fake-quant form as ``Int8Static`` (exportable with
:func:`slimtorch.quant.export.onnx_export.export_onnx`). With ``method="rtn"`` it equals ``Int8Static`` with
``weight_bits=bits_w``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from slimtorch.core.config import Config, check_choice
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import set_submodule
from slimtorch.quant.algorithms.fold import find_conv_bn_pairs, fold_bn_
from slimtorch.quant.algorithms.rounding import ChoosesRounding, Rounding
from slimtorch.quant.api import QuantReport, quantize_, register_quantizer
from slimtorch.quant.export.targets import DEFAULT_TARGET, check_target, get_target
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear
from slimtorch.quant.observers import OBSERVERS
from slimtorch.quant.primitives import check_bits
from slimtorch.quant.workflows.ptq import Int8Static, calibrate, convert_, prepare_, quant_layers, trace_graph
from slimtorch.quant.workflows.weight_only import WeightOnly


@dataclass
class LowBitStatic(ChoosesRounding, Config):
    """Static quantization with ``bits_w``-bit weights chosen by RTN / AdaRound / GPTQ.

    Args:
        bits_w: weight bits, 2-8 (symmetric, per output channel).
        bits_a: activation bits, 2-8 (8 for ONNX Runtime).
        method: shorthand for a rounding algorithm by name (``"rtn"``, ``"mse"``, ``"adaround"``,
            ``"gptq"``); after construction it holds the name of ``rounding``.
        rounding: the rounding sub-config (``AdaRound(iters=500)``, ``GPTQ(act_order=True)``); default
            ``RTN()``. It rounds on the symmetric per-output-channel grid.
        observer: activation range estimator.
        adaround_iters, adaround_batch, gptq_act_order: shorthand for ``AdaRound(iters=, batch=)`` and
            ``GPTQ(act_order=)`` with ``method=``; mapped onto ``rounding`` and reset to None.
        include / exclude / filter_fn: which Conv/Linear layers to quantize.
        target: deployment target (:mod:`slimtorch.quant.export.targets`); ``portable`` narrows 8-bit weights
            to 7 bits (narrower widths are exact everywhere).
    """

    bits_w: int = 4
    bits_a: int = 8
    method: str | None = None
    rounding: Rounding | None = None
    observer: str = "minmax"
    adaround_iters: int | None = field(default=None, repr=False)
    adaround_batch: int | None = field(default=None, repr=False)
    gptq_act_order: bool | None = field(default=None, repr=False)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: Callable[[nn.Module, str], bool] | None = field(default=None, repr=False)
    target: str = DEFAULT_TARGET

    rounding_shorthand: ClassVar[tuple[str, ...]] = ("adaround_iters", "adaround_batch", "gptq_act_order")

    def __post_init__(self) -> None:
        check_target(self.target)
        check_bits(self.bits_w, "bits_w")
        check_bits(self.bits_a, "bits_a")
        check_choice("observer", self.observer, OBSERVERS.names())
        self._resolve_rounding()
        if getattr(self.rounding, "explicit_scales", False):
            raise ValueError("LowBitStatic with AWQ needs rounding=AWQ(explicit_scales=False): an explicit AWQ "
                             "input scale is a float multiplication the int8 graph would have to carry")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)


def dequantize_weight_only_(model: nn.Module) -> dict[str, GroupCodes]:
    """Replace every weight-only layer by a float Linear/Conv2d holding its dequantized weight.

    Returns:
        ``fqn -> GroupCodes`` of the replaced layers (their grids and integer codes).
    """
    out: dict[str, GroupCodes] = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, WeightOnlyLinear):
            new: nn.Module = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, WeightOnlyConv2d):
            new = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                bias=m.bias is not None,
            )
        else:
            continue
        codes = m.group_codes()
        with torch.no_grad():
            new.weight.copy_(codes.dequantize().view_as(new.weight))
            if m.bias is not None:
                new.bias.copy_(m.bias)
        set_submodule(model, name, new)
        out[name] = codes
    return out


@register_quantizer(LowBitStatic)
def low_bit_static_(model: nn.Module, config: LowBitStatic, calib_data: Iterable[Any] | None = None) -> QuantReport:
    """Quantize ``model`` in place (see the module docstring)."""
    if calib_data is None:
        raise SlimtorchError("LowBitStatic needs calibration data: quantize_(model, LowBitStatic(), calib_data=...)")
    calib = list(calib_data)  # iterated several times (weight method, then activation calibration)
    model.eval()
    graph, _ = trace_graph(model)
    folded = fold_bn_(model, find_conv_bn_pairs(model, graph))
    bits_w = get_target(config.target).weight_bits(config.bits_w)
    wo = quantize_(
        model,
        WeightOnly(
            bits=bits_w,
            group_size=None,
            rounding=config.rounding,
            symmetric=True,
            include=config.include,
            exclude=config.exclude,
        ),
        calib,
    )
    codes = dequantize_weight_only_(model)
    ptq = Int8Static(
        observer=config.observer,
        weight_bits=bits_w,
        act_bits=config.bits_a,
        fold_bn=False,
        include=config.include,
        exclude=config.exclude,
        filter_fn=config.filter_fn,
        target=config.target,
    )
    report = prepare_(model, ptq)
    for name, layer in quant_layers(model):
        if name in codes:  # pin the weight grid to the one the rounding was chosen on
            c = codes[name]
            layer.weight_quant.set_qparams(c.scale.reshape(-1), c.zero_point.reshape(-1))
    report.details["calibration"] = calibrate(model, calib)
    convert_(model)
    report.scheme = f"w{config.bits_w}a{config.bits_a}-{config.method}"
    report.folded = folded
    report.details["weight_method"] = wo.details["layers"]
    report.details["config"] = {k: v for k, v in config.to_dict().items() if k != "filter_fn"}
    return report
