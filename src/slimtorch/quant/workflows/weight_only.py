"""Weight-only low-bit quantization of Linear / Conv2d layers: ``WeightOnly`` config and its handler.

``quantize_(model, WeightOnly(bits=4, group_size=64, rounding=GPTQ(act_order=True)), calib_data=loader)``
(shorthand: ``method="gptq"``) replaces
every selected layer by :class:`~slimtorch.quant.modules.packed.WeightOnlyLinear` /
:class:`~slimtorch.quant.modules.packed.WeightOnlyConv2d`, whose weights are stored as packed integer
codes with one scale and zero point per (output row, group of ``group_size`` inputs) and dequantized on
the fly. Activations stay in float. The integer codes come from the rounding sub-config
(:mod:`slimtorch.quant.algorithms.rounding`, any registered one):

* ``RTN()`` / ``"rtn"``: round to nearest on a min-max grid per group (no data needed);
* ``MSEClip()`` / ``"mse"``: round to nearest on the per-group clipped grid with the least squared error
  (:mod:`slimtorch.quant.algorithms.mse_clip`, no data needed);
* ``GPTQ()`` / ``"gptq"``: Frantar et al. 2022, error-compensating column sweep with the inputs' Hessian
  (:mod:`slimtorch.quant.algorithms.gptq`), layer group by layer group on calibration data;
* ``AWQ()`` / ``"awq"``: Lin et al. 2024, activation-aware per-input-channel scales folded into the
  preceding norm/Linear plus a clipping search (:mod:`slimtorch.quant.algorithms.awq`), block by block;
* ``AdaRound()`` / ``"adaround"``: Nagel et al. 2020, learned up/down rounding reconstructing each
  layer's output (:mod:`slimtorch.quant.algorithms.adaround`), layer by layer on calibration data.

RTN, GPTQ and AdaRound use the same grid (min-max per group), so they differ only in the rounding
decisions.
With ``bias_correction=True`` the expected output shift of each quantized layer,
``(W_hat - W) E[x]`` (Nagel et al. 2019, section 4.2, empirical variant), is subtracted from its bias.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.batches import ModelInputs
from slimtorch.core.blockwise import calibration_inputs, run_inputs
from slimtorch.core.config import Config
from slimtorch.core.selection import named_modules_matching
from slimtorch.quant.algorithms.adaround import AdaRound, adaround_weight
from slimtorch.quant.algorithms.awq import AWQ  # noqa: F401  (registers method="awq")
from slimtorch.quant.algorithms.equalization import bias_correction_delta, mean_layer_inputs
from slimtorch.quant.algorithms.gptq import GPTQ, layer_groups
from slimtorch.quant.algorithms.rounding import (
    ROUNDERS,
    ChoosesRounding,
    Rounding,
    layer_group_size,
    register_rounding,
    replace_with_codes,
)
from slimtorch.quant.api import QuantReport, register_quantizer
from slimtorch.quant.export.serialize import register_preparer
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WEIGHT_ONLY_MODULES, flat_weight
from slimtorch.quant.primitives import check_bits

#: Layer types that have no weight-only form; reported as skipped when they hold weights.
_NO_FORM_REASON = "no weight-only quantized form for this layer type"


@dataclass
class WeightOnly(ChoosesRounding, Config):
    """Weight-only quantization of Linear and Conv2d weights to ``bits``-bit integer codes.

    Args:
        bits: code width, 2-8.
        group_size: input features (fan-in entries) sharing one scale; ``None`` for one scale per
            output channel. Must divide each selected layer's fan-in.
        method: shorthand for a rounding algorithm by name (``"rtn"``, ``"mse"``, ``"gptq"``, ``"awq"``,
            ``"adaround"``: :data:`~slimtorch.quant.algorithms.rounding.ROUNDING`) with its default
            options; after construction it always holds the name of ``rounding``.
        rounding: the rounding sub-config (``GPTQ(act_order=True)``); default ``RTN()``.
        symmetric: signed codes with zero point 0 instead of unsigned codes with a zero point.
        include / exclude: fnmatch patterns on layer names (see :class:`slimtorch.core.Selector`).
        bias_correction: subtract the expected output shift ``(W_hat - W) E[x]`` from each bias.
        gptq_block_size, gptq_percdamp, gptq_act_order, adaround_iters, adaround_lr, adaround_reg,
            adaround_batch: shorthand for ``GPTQ(block_size=, damp=, act_order=)`` and
            ``AdaRound(iters=, lr=, reg=, batch=)`` with ``method=``; mapped onto ``rounding`` and reset
            to None (those of the other algorithm are ignored).
    """

    bits: int = 4
    group_size: int | None = 64
    method: str | None = None
    rounding: Rounding | None = None
    symmetric: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    gptq_block_size: int | None = field(default=None, repr=False)
    gptq_percdamp: float | None = field(default=None, repr=False)
    gptq_act_order: bool | None = field(default=None, repr=False)
    adaround_iters: int | None = field(default=None, repr=False)
    adaround_lr: float | None = field(default=None, repr=False)
    adaround_reg: float | None = field(default=None, repr=False)
    adaround_batch: int | None = field(default=None, repr=False)
    bias_correction: bool = False

    rounding_shorthand: ClassVar[tuple[str, ...]] = (*GPTQ.legacy_fields, *AdaRound.legacy_fields)

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size is not None:
            if (
                isinstance(self.group_size, bool)
                or not isinstance(self.group_size, int)
                or self.group_size < 1
            ):
                raise ValueError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        self._resolve_rounding()
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def needs_data(self) -> bool:
        """Whether the rounding algorithm (or bias correction) needs calibration data."""
        return self.rounding.needs_data or self.bias_correction




def _forward_fn(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(x, w_flat)``: the layer's forward with a replacement flat weight (bias included)."""
    shape = module.weight.shape
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w.view(shape), bias)
    m = module
    return lambda x, w: F.conv2d(x, w.view(shape), bias, m.stride, m.padding, m.dilation, m.groups)


class _Stop(Exception):
    pass


def _capture(
    model: nn.Module, module: nn.Module, batches: list[ModelInputs], output: bool
) -> torch.Tensor | None:
    """Inputs (or outputs) of ``module`` over all batches, concatenated along dim 0; forward stops early."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor | None = None) -> None:
        got.append((out if output else inputs[0]).detach())
        raise _Stop

    h = module.register_forward_hook(hook) if output else module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for args in batches:
                try:
                    run_inputs(model, args)
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat(got) if got else None


@register_rounding("adaround", AdaRound)
def _adaround(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: WeightOnly,
    batches: list[ModelInputs],
) -> dict[str, dict[str, Any]]:
    float_model = copy.deepcopy(model)  # targets come from the float network (asymmetric reconstruction)
    float_layers = dict(float_model.named_modules())
    order = [n for grp in layer_groups(model, layers, batches[0]) for n in grp]
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(order):
        m = layers[name]
        g = layer_group_size(m, name, config.group_size)
        w = flat_weight(m)
        x = _capture(model, m, batches, output=False)  # (N, ...) inputs from the partly quantized model
        y = _capture(float_model, float_layers[name], batches, output=True)  # (N, ...) float outputs
        if x is None or y is None:
            codes, info = (
                GroupCodes.round_to_nearest(w, config.bits, g, config.symmetric),
                {"note": "not run"},
            )
        else:
            codes, stats = adaround_weight(
                w,
                _forward_fn(m),
                x,
                y,
                bits=config.bits,
                group_size=g,
                symmetric=config.symmetric,
                iters=config.rounding.iters,
                batch_size=config.rounding.batch,
                lr=config.rounding.lr,
                reg_weight=config.rounding.reg,
                seed=i,
            )
            info = {"rtn_recon": stats.rtn_loss, "adaround_recon": stats.final_loss, "flipped": stats.flipped}
        replace_with_codes(model, name, m, codes)
        out[name] = {**info, "weight_mse": (codes.dequantize() - w).pow(2).mean().item()}
    return out


def select_layers(model: nn.Module, config: WeightOnly) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Selected Linear/Conv2d layers, and weighted layers that stay in float with the reason."""
    chosen = dict(named_modules_matching(model, tuple(WEIGHT_ONLY_MODULES), config.include, config.exclude))
    chosen = {n: m for n, m in chosen.items() if type(m) in WEIGHT_ONLY_MODULES}
    skipped: dict[str, str] = {}
    for n, m in list(chosen.items()):
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            skipped[n] = f"padding_mode={m.padding_mode!r} has no weight-only form"
            del chosen[n]
    already = tuple(form for _, form in WEIGHT_ONLY_MODULES.items())
    for n, m in named_modules_matching(model, (nn.Module,), config.include, config.exclude):
        if n in chosen or n in skipped or isinstance(m, already):
            continue
        own = [p for p in m.parameters(recurse=False) if p.dim() > 1]  # weight matrices, not biases/norms
        if own and not isinstance(m, _NORM_TYPES):
            skipped[n] = f"{type(m).__name__}: {_NO_FORM_REASON}"
    for n, m in chosen.items():
        layer_group_size(m, n, config.group_size)  # fail before touching the model
    return chosen, skipped


#: Normalisation layers hold weights but are never quantized (their size is negligible).
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@register_quantizer(WeightOnly)
def weight_only_(
    model: nn.Module, config: WeightOnly, calib_data: Iterable[Any] | None = None
) -> QuantReport:
    """Quantize the selected Linear/Conv2d weights of ``model`` in place (see the module docstring)."""
    layers, skipped = select_layers(model, config)
    batches: list[ModelInputs] = []
    if config.needs_data:
        what_needs = f"method {config.method!r}" if config.rounding.needs_data else "bias_correction"
        batches = calibration_inputs(calib_data, f"WeightOnly {what_needs}", model=model)
    was_training = model.training
    model.eval()
    means = mean_layer_inputs(model, layers, batches) if config.bias_correction else {}
    floats = {n: m.weight.detach().clone() for n, m in layers.items()} if config.bias_correction else {}
    details = ROUNDERS.get(type(config.rounding))(model, layers, config, batches)
    if config.bias_correction:
        for name, w in floats.items():
            new = model.get_submodule(name)
            if name not in means:
                continue
            delta = bias_correction_delta(w, new.weight.detach(), means[name])  # (out,)
            new.bias = nn.Parameter(delta.neg() if new.bias is None else new.bias.detach() - delta)
            details[name]["bias_shift"] = delta.abs().max().item()
    model.train(was_training)
    return QuantReport(
        scheme=f"w{config.bits}-{config.method}",
        quantized=list(layers),
        skipped=skipped,
        details={"config": config.to_dict(), "layers": details, "calib_batches": len(batches)},
    )


@register_preparer(WeightOnly)
def _prepare_weight_only(model: nn.Module, config: WeightOnly) -> None:
    """Nothing to add: :func:`~slimtorch.quant.export.serialize.load_quantized` rebuilds the packed layers from
    the layer table the file records (which layers, bits, group size), so no calibration data is needed."""
