"""Quantization-aware training with learned step sizes (LSQ), on top of the PTQ fake-quant form.

Three public phases (DESIGN.md, API style 4)::

    report = quantize_(model, QAT(bits_w=4, bits_a=8), calib_data=loader)   # = prepare_qat_
    fit(model, train_data, epochs=...)          # or any training loop: only the model changes
    convert_qat_(model)                         # the same fake-quant form as Int8Static, exportable

``prepare_qat_`` reuses the static PTQ preparation (:func:`slimtorch.quant.workflows.ptq.prepare_`): BatchNorms
are folded into the preceding convolutions with their running statistics, Conv/Linear layers are
wrapped in :class:`~slimtorch.quant.modules.fake_quant.QuantConv2d` / ``QuantLinear`` (sharing the float
parameters, which stay trainable), and the activation ranges are calibrated on ``calib_data``. Every
quantizer is then replaced by an :class:`LSQFakeQuantize` whose scale is a trained parameter
(Esser et al. 2020, :mod:`slimtorch.quant.lsq`):

* weights: symmetric per-output-channel ``bits_w`` grid, scale initialised from the min-max range
  (``weight_init="minmax"``, the PTQ grid: the best start when fine-tuning a trained model for a few
  epochs) or as in the LSQ paper (``"lsq"``: ``2 mean|w| / sqrt(Qp)``, which is 1.5-2x coarser at
  4 bits and suits long training), gradient scale ``1 / sqrt(N_w Qp)`` with ``N_w`` weights per channel;
* activations: ``bits_a`` grid initialised from the calibrated range (observer), zero point kept
  fixed, gradient scale ``1 / sqrt(N_a Qp)`` with ``N_a`` features per sample.

**BatchNorm during QAT.** BN is folded before training with its running statistics and stays folded
(BN statistics frozen, the variant Krishnamoorthi 2018, section 3.2, recommends late in QAT), so the
trained and quantized weight is exactly the deployed folded weight and no re-folding is needed.

``convert_qat_`` turns each learned quantizer back into a plain frozen
:class:`~slimtorch.quant.modules.fake_quant.FakeQuantize` with the learned scale, i.e. the PTQ simulated form,
which :func:`slimtorch.quant.export.onnx_export.export_onnx` writes as an ONNX QDQ model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import Config, check_choice
from slimtorch.core.errors import SlimtorchError
from slimtorch.quant.api import QuantReport, register_quantizer
from slimtorch.quant.export.targets import DEFAULT_TARGET, check_target, get_target
from slimtorch.quant.lsq import grad_scale, lsq_grad_scale_factor, lsq_init_scale
from slimtorch.quant.modules.fake_quant import FakeQuantize
from slimtorch.quant.observers import OBSERVERS
from slimtorch.quant.primitives import check_bits, fake_quantize
from slimtorch.quant.workflows.ptq import Int8Static, calibrate, convert_, prepare_, quant_layers


class LSQFakeQuantize(FakeQuantize):
    """A :class:`FakeQuantize` whose scale is an ``nn.Parameter`` trained with the LSQ gradient.

    Args:
        bits, signed, axis: the grid (as :class:`FakeQuantize`).
        scale: initial scale(s); zero_point: fixed zero point(s).
        per_sample: ``N`` of the gradient scale counts one sample's elements (activations); otherwise
            the elements sharing a scale (weights).
    """

    def __init__(
        self,
        *,
        bits: int,
        signed: bool,
        axis: int | None,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        per_sample: bool,
    ) -> None:
        super().__init__(None, bits=bits, signed=signed, axis=axis)
        del self._buffers["scale"]
        self.scale = nn.Parameter(scale.detach().to(torch.float32).clone())
        self.zero_point = zero_point.detach().to(torch.int32).clone()
        self.per_sample = per_sample
        self.observing, self.quantizing = False, True

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point = zero_point.detach().to(torch.int32).clone()
        self.observing, self.quantizing = False, True

    def grad_numel(self, x: torch.Tensor) -> int:
        """``N`` of the LSQ gradient scale for input ``x``."""
        if (self.per_sample or self.axis == 0) and x.dim() > 1:
            return x[0].numel()
        return x.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return super().forward(x)
        with torch.no_grad():
            self.scale.clamp_(min=1e-8)  # a step size must stay positive
        s = grad_scale(self.scale, lsq_grad_scale_factor(self.grad_numel(x), self.qmax))
        return fake_quantize(x, s, self.zero_point, self.bits, self.signed, axis=self.axis)

    def to_frozen(self) -> FakeQuantize:
        """A plain frozen :class:`FakeQuantize` with the learned parameters (the PTQ form)."""
        q = FakeQuantize(None, bits=self.bits, signed=self.signed, axis=self.axis)
        q.set_qparams(self.scale.detach(), self.zero_point)
        return q


#: Global gradient-norm clip of QAT fine-tunes when the caller sets none (``slimtorch quantize --qat-epochs``,
#: the pipeline's QAT ``finetune`` and ``joint`` stages). QAT starts from a trained model, so its steps should
#: be small; with distillation added, ResNet-20 QAT (4-bit weights, BN folded, SGD lr 1e-3) diverged in five
#: steps without a clip (gradient norm 6 -> 70, accuracy 8 %) and reached 88.4 % with a clip of 1.0
#: (docs/low_bit.md). ``float("inf")`` turns clipping off.
QAT_GRAD_CLIP = 1.0


@dataclass
class QAT(Config):
    """Quantization-aware training with LSQ learned scales (Esser et al. 2020).

    Args:
        bits_w: weight bits (symmetric, per output channel when ``per_channel``), 2-8.
        bits_a: activation bits, 2-8 (8 for ONNX Runtime export).
        observer: activation range estimator used to initialise activation scales.
        per_channel: one weight scale per output channel.
        learn_scales: train the scales (LSQ); False keeps the initial scales fixed (plain STE QAT).
        fold_bn: fold BatchNorm into the preceding conv before training.
        weight_init: initial weight step sizes: ``"minmax"`` (PTQ grid) or ``"lsq"`` (``2 mean|w| / sqrt(Qp)``).
        first_last_bits: bits for the weights of the first and last quantized layers (None: ``bits_w``),
            the usual exception in low-bit QAT papers, LSQ included.
        num_batches: calibration batches for the initial activation ranges (None: all).
        include / exclude / filter_fn: which Conv/Linear layers to quantize.
        target: deployment target (:mod:`slimtorch.quant.export.targets`): ``portable`` trains 8-bit weights on
            the 7-bit grid that no int8 kernel can saturate.
    """

    bits_w: int = 4
    bits_a: int = 8
    observer: str = "minmax"
    per_channel: bool = True
    learn_scales: bool = True
    fold_bn: bool = True
    weight_init: str = "minmax"
    first_last_bits: int | None = None
    num_batches: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: Callable[[nn.Module, str], bool] | None = field(default=None, repr=False)
    target: str = DEFAULT_TARGET

    def __post_init__(self) -> None:
        check_target(self.target)
        check_bits(self.bits_w, "bits_w")
        check_bits(self.bits_a, "bits_a")
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "first_last_bits")
        check_choice("observer", self.observer, OBSERVERS.names())
        check_choice("weight_init", self.weight_init, ["minmax", "lsq"])
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)


def _lsq_weight(layer: nn.Module, bits: int, per_channel: bool, init: str) -> LSQFakeQuantize:
    """Symmetric signed LSQ weight quantizer starting from the min-max grid or the LSQ initial step."""
    axis = 0 if per_channel else None
    qmax = 2 ** (bits - 1) - 1
    if init == "lsq" or bits != layer.weight_quant.bits:
        scale = lsq_init_scale(layer.weight.detach(), qmax, axis)  # (out,) or ()
    else:
        scale = layer.weight_quant.scale.detach().reshape(-1 if per_channel else ())  # the calibrated PTQ grid
    return LSQFakeQuantize(
        bits=bits,
        signed=True,
        axis=axis,
        scale=scale,
        zero_point=torch.zeros(scale.shape, dtype=torch.int32),
        per_sample=False,
    )


def _lsq_act(q: FakeQuantize) -> LSQFakeQuantize:
    return LSQFakeQuantize(
        bits=q.bits, signed=q.signed, axis=q.axis, scale=q.scale, zero_point=q.zero_point, per_sample=True
    )


def prepare_qat_(model: nn.Module, config: QAT, calib_data: Iterable[Any] | None) -> QuantReport:
    """Fold BN, wrap layers, calibrate activation ranges, install LSQ quantizers (see module docstring).

    The model is returned in train mode, ready for any training loop; only the parameters change.
    """
    if calib_data is None:
        raise SlimtorchError(
            "QAT needs calibration data to initialise activation ranges: quantize_(model, QAT(...), calib_data=loader)"
        )
    ptq = Int8Static(
        observer=config.observer,
        per_channel=config.per_channel,
        weight_bits=config.bits_w,
        act_bits=config.bits_a,
        fold_bn=config.fold_bn,
        num_batches=config.num_batches,
        include=config.include,
        exclude=config.exclude,
        filter_fn=config.filter_fn,
        target=config.target,
    )
    report = prepare_(model, ptq)
    report.details["calibration"] = calibrate(model, calib_data, config.num_batches)
    convert_(model)
    layers = quant_layers(model)
    target = get_target(config.target)
    converted: dict[int, LSQFakeQuantize] = {}  # tied quantizers share one learned module

    def lsq(q: FakeQuantize | None) -> LSQFakeQuantize | None:
        if q is None:
            return None
        if id(q) not in converted:
            converted[id(q)] = _lsq_act(q)
        return converted[id(q)]

    by_name = dict(layers)
    for i, (_name, layer) in enumerate(layers):
        bits = config.bits_w
        if config.first_last_bits is not None and i in (0, len(layers) - 1):
            bits = config.first_last_bits
        bits = target.weight_bits(bits)
        layer.weight_quant = _lsq_weight(layer, bits, config.per_channel, config.weight_init)
        layer.output_quant = lsq(layer.output_quant)
    for _name, layer in layers:
        src = getattr(layer, "input_source", None)
        if src is not None and by_name[src].output_quant is not None:
            layer.input_quant = by_name[src].output_quant  # the same learned grid on both sides
        else:
            layer.input_quant = lsq(layer.input_quant)
    if not config.learn_scales:
        for m in model.modules():
            if isinstance(m, LSQFakeQuantize):
                m.scale.requires_grad_(False)
    model.train()
    report.scheme = f"qat_w{config.bits_w}a{config.bits_a}"
    report.details["config"] = {k: v for k, v in config.to_dict().items() if k != "filter_fn"}
    report.details["learned_scales"] = sum(m.scale.numel() for m in model.modules() if isinstance(m, LSQFakeQuantize))
    return report


def convert_qat_(model: nn.Module) -> nn.Module:
    """Replace every learned quantizer by a frozen :class:`FakeQuantize` (the PTQ simulated form).

    Shared (tied) quantizers stay shared. Returns ``model`` in eval mode.
    """
    frozen: dict[int, FakeQuantize] = {}
    for _name, layer in quant_layers(model):
        for role in ("input_quant", "weight_quant", "output_quant"):
            q = getattr(layer, role)
            if isinstance(q, LSQFakeQuantize):
                if id(q) not in frozen:
                    frozen[id(q)] = q.to_frozen()
                setattr(layer, role, frozen[id(q)])
    return model.eval()


def lsq_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned step sizes of a QAT-prepared model (e.g. for a separate optimizer group)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, LSQFakeQuantize) and id(m.scale) not in seen:
            seen.add(id(m.scale))
            out.append(m.scale)
    return out


@register_quantizer(QAT)
def _qat(model: nn.Module, config: QAT, calib_data: Iterable[Any] | None) -> QuantReport:
    return prepare_qat_(model, config, calib_data)
