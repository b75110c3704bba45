"""Weight-only low-bit quantization of Linear / Conv2d layers: ``WeightOnly`` config and its handler.

``quantize_(model, WeightOnly(bits=4, group_size=64, method="gptq"), calib_data=loader)`` replaces
every selected layer by :class:`~slimtorch.quant.modules.packed.WeightOnlyLinear` /
:class:`~slimtorch.quant.modules.packed.WeightOnlyConv2d`, whose weights are stored as packed integer
codes with one scale and zero point per (output row, group of ``group_size`` inputs) and dequantized on
the fly. Activations stay in float. The integer codes come from one of the registered methods:

* ``"rtn"``: round to nearest on a min-max grid per group (no data needed);
* ``"gptq"``: Frantar et al. 2022, error-compensating column sweep with the inputs' Hessian
  (:mod:`slimtorch.quant.algorithms.gptq`), layer group by layer group on calibration data;
* ``"adaround"``: Nagel et al. 2020, learned up/down rounding reconstructing each layer's output
  (:mod:`slimtorch.quant.algorithms.adaround`), layer by layer on calibration data.

All methods use the same grid (min-max per group), so they differ only in the rounding decisions.
With ``bias_correction=True`` the expected output shift of each quantized layer,
``(W_hat - W) E[x]`` (Nagel et al. 2019, section 4.2, empirical variant), is subtracted from its bias.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.config import Config, check_choice, check_positive, check_range
from slimtorch.core.registry import Registry
from slimtorch.core.selection import display_name, named_modules_matching, set_submodule
from slimtorch.quant.algorithms.adaround import adaround_weight
from slimtorch.quant.algorithms.equalization import bias_correction_delta, mean_layer_inputs
from slimtorch.quant.algorithms.gptq import gptq_quantize, layer_groups, sequential_hessians
from slimtorch.quant.api import QuantReport, register_quantizer
from slimtorch.quant.calibration import iter_calibration
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WEIGHT_ONLY_MODULES, flat_weight
from slimtorch.quant.primitives import check_bits

#: Layer types that have no weight-only form; reported as skipped when they hold weights.
_NO_FORM_REASON = "no weight-only quantized form for this layer type"


@dataclass
class WeightOnly(Config):
    """Weight-only quantization of Linear and Conv2d weights to ``bits``-bit integer codes.

    Args:
        bits: code width, 2-8.
        group_size: input features (fan-in entries) sharing one scale; ``None`` for one scale per
            output channel. Must divide each selected layer's fan-in.
        method: ``"rtn"``, ``"gptq"`` or ``"adaround"`` (see :data:`WEIGHT_ONLY_METHODS`).
        symmetric: signed codes with zero point 0 instead of unsigned codes with a zero point.
        include / exclude: fnmatch patterns on layer names (see :class:`slimtorch.core.Selector`).
        gptq_block_size: GPTQ lazy-update block (columns); gptq_percdamp: Hessian damping as a fraction
            of its mean diagonal; gptq_act_order: process columns by decreasing Hessian diagonal.
        adaround_iters: Adam steps per layer; adaround_lr: its learning rate; adaround_reg: the
            rounding regulariser weight lambda; adaround_batch: samples per step.
        bias_correction: subtract the expected output shift ``(W_hat - W) E[x]`` from each bias.
    """

    bits: int = 4
    group_size: int | None = 64
    method: str = "rtn"
    symmetric: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    gptq_block_size: int = 128
    gptq_percdamp: float = 0.01
    gptq_act_order: bool = False
    adaround_iters: int = 1000
    adaround_lr: float = 1e-2
    adaround_reg: float = 0.01
    adaround_batch: int = 32
    bias_correction: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size is not None:
            if (
                isinstance(self.group_size, bool)
                or not isinstance(self.group_size, int)
                or self.group_size < 1
            ):
                raise ValueError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        check_choice("method", self.method, WEIGHT_ONLY_METHODS.names())
        check_positive("gptq_block_size", self.gptq_block_size)
        check_range("gptq_percdamp", self.gptq_percdamp, 0.0, 1.0)
        check_positive("adaround_iters", self.adaround_iters)
        check_positive("adaround_lr", self.adaround_lr)
        check_positive("adaround_reg", self.adaround_reg, allow_zero=True)
        check_positive("adaround_batch", self.adaround_batch)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def needs_data(self) -> bool:
        """Whether the method (or bias correction) needs calibration data."""
        return self.method != "rtn" or self.bias_correction


#: method name -> ``fn(model, layers, config, batches) -> {fqn: (GroupCodes, details)}``; the function
#: quantizes ``layers`` (fqn -> float module) and replaces them in ``model`` itself, in its own order.
WeightOnlyMethod = Callable[
    [nn.Module, dict[str, nn.Module], WeightOnly, list[tuple[torch.Tensor, ...]]], dict[str, dict[str, Any]]
]
WEIGHT_ONLY_METHODS: Registry[WeightOnlyMethod] = Registry("weight-only method")


def fan_in(module: nn.Module) -> int:
    """Entries per output row of the flattened weight (``in_features``, or ``in/groups * kh * kw``)."""
    return module.weight[0].numel()


def layer_group_size(module: nn.Module, name: str, group_size: int | None) -> int:
    """The group size for one layer (``fan_in`` when None), checked to divide its fan-in."""
    n = fan_in(module)
    if group_size is None:
        return n
    if n % group_size:
        what = "in_features" if isinstance(module, nn.Linear) else "fan-in (in_channels/groups*kh*kw)"
        raise ValueError(
            f"group_size {group_size} does not divide {what} {n} of layer {display_name(name)!r}; "
            f"choose a divisor of {n} or exclude the layer"
        )
    return group_size


def replace_with_codes(model: nn.Module, name: str, module: nn.Module, codes: GroupCodes) -> nn.Module:
    """Swap the float layer at ``name`` for its packed weight-only form and return the new module."""
    new = WEIGHT_ONLY_MODULES[type(module)].from_float(module, codes)
    set_submodule(model, name, new)
    return new


def _forward_fn(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(x, w_flat)``: the layer's forward with a replacement flat weight (bias included)."""
    shape = module.weight.shape
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w.view(shape), bias)
    m = module
    return lambda x, w: F.conv2d(x, w.view(shape), bias, m.stride, m.padding, m.dilation, m.groups)


@WEIGHT_ONLY_METHODS.register("rtn")
def _rtn(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: WeightOnly,
    batches: list[tuple[torch.Tensor, ...]],
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, m in layers.items():
        w = flat_weight(m)
        codes = GroupCodes.round_to_nearest(
            w, config.bits, layer_group_size(m, name, config.group_size), config.symmetric
        )
        replace_with_codes(model, name, m, codes)
        out[name] = {"weight_mse": (codes.dequantize() - w).pow(2).mean().item()}
    return out


def _gptq_input_matrix(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How a layer's input becomes GPTQ's sample matrix (n, fan_in); None if GPTQ cannot handle it."""
    if isinstance(module, nn.Linear):
        return lambda x: x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        m = module

        def unfold(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B * L, C * kh * kw)
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, C*kh*kw, L)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])

        return unfold
    return None


@WEIGHT_ONLY_METHODS.register("gptq")
def _gptq(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: WeightOnly,
    batches: list[tuple[torch.Tensor, ...]],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    plain = {n: m for n, m in layers.items() if _gptq_input_matrix(m) is None}
    if plain:  # grouped convolutions: GPTQ's shared Hessian does not apply, fall back to RTN
        for n, d in _rtn(model, plain, config, batches).items():
            out[n] = {**d, "note": "grouped conv: GPTQ not applicable, rounded to nearest"}
    todo = {n: m for n, m in layers.items() if n not in plain}
    if not todo:
        return out
    for group in layer_groups(model, todo, batches[0]):
        hess = sequential_hessians(
            model,
            {n: todo[n] for n in group},
            lambda: batches,
            {n: _gptq_input_matrix(todo[n]) for n in group},
        )
        for name in group:
            m = todo[name]
            h, count = hess[name]
            w = flat_weight(m)
            g = layer_group_size(m, name, config.group_size)
            if count == 0:  # never ran on the calibration data: nothing to compensate
                codes, info = (
                    GroupCodes.round_to_nearest(w, config.bits, g, config.symmetric),
                    {"note": "not run"},
                )
            else:
                codes, stats = gptq_quantize(
                    w,
                    h,
                    bits=config.bits,
                    group_size=g,
                    symmetric=config.symmetric,
                    block_size=config.gptq_block_size,
                    percdamp=config.gptq_percdamp,
                    act_order=config.gptq_act_order,
                )
                info = {"gptq_loss": stats.loss, "samples": count, "dead_inputs": stats.dead}
            replace_with_codes(model, name, m, codes)
            out[name] = {**info, "weight_mse": (codes.dequantize() - w).pow(2).mean().item()}
    return out


class _Stop(Exception):
    pass


def _capture(
    model: nn.Module, module: nn.Module, batches: list[tuple[torch.Tensor, ...]], output: bool
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
                    model(*args)
                except _Stop:
                    pass
    finally:
        h.remove()
    return torch.cat(got) if got else None


@WEIGHT_ONLY_METHODS.register("adaround")
def _adaround(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: WeightOnly,
    batches: list[tuple[torch.Tensor, ...]],
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
                iters=config.adaround_iters,
                batch_size=config.adaround_batch,
                lr=config.adaround_lr,
                reg_weight=config.adaround_reg,
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
    already = tuple(WEIGHT_ONLY_MODULES.values())
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
    batches: list[tuple[torch.Tensor, ...]] = []
    if config.needs_data:
        if calib_data is None:
            what = f"method {config.method!r}" if config.method != "rtn" else "bias_correction"
            raise ValueError(
                f"WeightOnly {what} needs calibration data: pass calib_data=<iterable of batches>"
            )
        batches = [(x,) for x in iter_calibration(calib_data, model)]
    was_training = model.training
    model.eval()
    means = mean_layer_inputs(model, layers, batches) if config.bias_correction else {}
    floats = {n: m.weight.detach().clone() for n, m in layers.items()} if config.bias_correction else {}
    details = WEIGHT_ONLY_METHODS.get(config.method)(model, layers, config, batches)
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
