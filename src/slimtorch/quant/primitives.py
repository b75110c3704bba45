"""Pure tensor math of quantization: integer grids, scale/zero-point choice, (fake) quantization.

Uniform affine quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", eq. 1)::

    q = clamp(round(x / s) + z, qmin, qmax)        x_hat = s * (q - z)

with scale ``s > 0`` and integer zero point ``z``. Rounding is half-to-even, the rule of ONNX
``QuantizeLinear`` and of ``torch.round``, so our simulation and ONNX Runtime agree bit for bit on
ties. Inside the representable range ``[s * (qmin - z), s * (qmax - z)]`` the round-trip error is at
most ``s / 2``.

Granularity is set by where ``scale`` / ``zero_point`` broadcast:

* per tensor: scalar parameters;
* per channel: ``axis=a`` and parameters of shape ``(x.shape[a],)``;
* per group: ``axis=a, group_size=g``: dimension ``a`` (the input dimension of a weight, ``1`` for
  ``(out, in)`` Linear and ``(out, in, kh, kw)`` Conv weights) is split into ``x.shape[a] // g``
  groups of ``g`` consecutive entries, and the parameters have shape ``x.shape[:a] + (n_groups,)``.

Options beyond the uniform grid:

* ``power_of_two=True`` in :func:`choose_qparams` rounds the scale up to ``2**k`` so that rescaling is
  a bit shift (fixed-point hardware);
* logarithmic quantization (Miyashita et al. 2016, "Convolutional Neural Networks using Logarithmic
  Data Representation"): ``x_hat = sign(x) * 2**round(log2 |x|)``, see :func:`quantize_log`.

Gradients: :func:`fake_quantize` uses the straight-through estimator (Bengio et al. 2013) for
``round``; written as ``clamp(round_ste(x / s) + z, qmin, qmax)`` it passes ``dL/dx`` unchanged
inside the range and zeros it where the value is clipped, and when ``s`` requires grad it yields the
LSQ scale gradient (Esser et al. 2020, eq. 3, without their gradient-scale factor).
"""

from __future__ import annotations

import math

import torch

#: Smallest scale we ever return (a constant tensor would otherwise give s = 0 and divide by zero).
MIN_SCALE = 1e-8


def check_bits(bits: int, name: str = "bits") -> None:
    """Raise ``ValueError`` unless ``bits`` is an integer in [2, 8]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an integer in [2, 8], got {bits!r}")


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-bit grid.

    Args:
        bits: 2..8.
        signed: ``[-2**(b-1), 2**(b-1) - 1]`` if True, else ``[0, 2**b - 1]``.
        narrow: drop the lowest code (``[-127, 127]`` for int8) so the signed grid is symmetric.
    """
    check_bits(bits)
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    return (qmin + 1 if narrow else qmin), qmax


def storage_dtype(bits: int, signed: bool) -> torch.dtype:
    """The integer dtype codes of this width are stored in (``int8``/``uint8``)."""
    check_bits(bits)
    return torch.int8 if signed else torch.uint8


def round_pow2(scale: torch.Tensor) -> torch.Tensor:
    """Round scales up to the next power of two (``2**ceil(log2 s)``), so no value gets clipped."""
    return torch.exp2(torch.ceil(torch.log2(scale.clamp_min(MIN_SCALE))))


def choose_qparams(
    min_val: torch.Tensor | float,
    max_val: torch.Tensor | float,
    bits: int = 8,
    symmetric: bool = True,
    signed: bool = True,
    *,
    narrow: bool = False,
    power_of_two: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (elementwise for per-channel/group).

    Asymmetric: the range is widened to contain 0 (so zero padding and ReLU zeros are exact), then
    ``s = (max - min) / (qmax - qmin)`` and ``z = clamp(qmin - round(min / s), qmin, qmax)``.

    Symmetric: ``s = max(|min|, |max|) / h`` with ``h = (qmax - qmin) // 2`` (127 for 8 bits) and ``z``
    at the grid's middle: 0 for signed grids, ``2**(b-1)`` for unsigned ones.

    Args:
        min_val: observed minimum(s); any shape, broadcast against ``max_val``.
        max_val: observed maximum(s).
        bits: 2..8.
        symmetric: symmetric (zero point in the middle) or asymmetric (min/max mapped to the ends).
        signed: signed or unsigned integer grid.
        narrow: use the narrow signed range (see :func:`qrange`).
        power_of_two: round the scale up to a power of two.

    Returns:
        ``(scale, zero_point)``: float32 scale > 0 and int32 zero point, of the broadcast shape.
    """
    qmin, qmax = qrange(bits, signed, narrow)
    lo = torch.as_tensor(min_val, dtype=torch.float64)
    hi = torch.as_tensor(max_val, dtype=torch.float64)
    if torch.any(lo > hi):
        raise ValueError(f"min_val must be <= max_val, got min {lo.max().item()} > max {hi.min().item()}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("min_val/max_val contain NaN or inf; the observed data is not finite")
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        half = (qmax - qmin) // 2
        scale = torch.maximum(-lo, hi) / half
        zp = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = scale.clamp_min(MIN_SCALE)
    if power_of_two:
        scale = round_pow2(scale)
    if not symmetric:
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale.to(torch.float32), zp.to(torch.int32)


def _view_params(p: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """Reshape a scale/zero point so it broadcasts against ``x`` (grouped ``x`` already unflattened)."""
    p = torch.as_tensor(p, device=x.device)
    if axis is None:
        if p.numel() != 1:
            raise ValueError(f"per-tensor quantization needs one scale, got shape {tuple(p.shape)}")
        return p.reshape(())
    a = axis % x.dim()
    if group_size is None:
        if p.numel() != x.shape[a]:
            raise ValueError(
                f"per-channel quantization along axis {axis} needs {x.shape[a]} parameters, got "
                f"{p.numel()}"
            )
        shape = [1] * x.dim()
        shape[a] = x.shape[a]
        return p.reshape(shape)
    # x was unflattened to (..., n_groups, group_size, ...) with the group index at dim a.
    lead = tuple(x.shape[: a + 1])
    if p.numel() != math.prod(lead):
        raise ValueError(f"per-group quantization needs parameters of shape {lead}, got {tuple(p.shape)}")
    return p.reshape(*lead, *([1] * (x.dim() - a - 1)))


def group_view(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """``x`` with dimension ``axis`` split into ``(n_groups, group_size)``.

    Raises:
        ValueError: if ``group_size`` does not divide ``x.shape[axis]``.
    """
    a = axis % x.dim()
    n = x.shape[a]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if n % group_size != 0:
        raise ValueError(
            f"group_size {group_size} does not divide dimension {a} of size {n} (tensor shape "
            f"{tuple(x.shape)}); choose a divisor of {n}"
        )
    return x.unflatten(a, (n // group_size, group_size))


def _prepare(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None,
             group_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if group_size is not None:
        if axis is None:
            raise ValueError("per-group quantization needs an axis (the input dimension, e.g. 1)")
        x = group_view(x, axis, group_size)
    s = _view_params(scale, x, axis, group_size).to(x.dtype if x.is_floating_point() else torch.float32)
    z = _view_params(zero_point, x, axis, group_size)
    return x, s, z


def quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    bits: int = 8,
    signed: bool = True,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    narrow: bool = False,
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s) + z, qmin, qmax)``, stored as int8/uint8.

    Args:
        x: float tensor.
        scale: scale(s), see the module docstring for the shapes of each granularity.
        zero_point: integer zero point(s), same shape as ``scale``.
        bits: 2..8.
        signed: signed (int8 storage) or unsigned (uint8 storage) grid.
        axis: channel axis (per-channel) or grouped axis (per-group); None for per-tensor.
        group_size: group length along ``axis`` (per-group).
        narrow: narrow signed range.
    """
    qmin, qmax = qrange(bits, signed, narrow)
    shape = x.shape
    xv, s, z = _prepare(x, torch.as_tensor(scale), torch.as_tensor(zero_point), axis, group_size)
    q = torch.clamp(torch.round(xv / s) + z, qmin, qmax)
    return q.reshape(shape).to(storage_dtype(bits, signed))


def dequantize_affine(
    q: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Float values ``s * (q - z)`` of integer codes ``q`` (inverse of :func:`quantize_affine`)."""
    shape = q.shape
    qv, s, z = _prepare(q.to(torch.int32), torch.as_tensor(scale), torch.as_tensor(zero_point), axis,
                        group_size)
    return ((qv - z).to(dtype) * s.to(dtype)).reshape(shape)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient in the backward pass (STE)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    bits: int = 8,
    signed: bool = True,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    narrow: bool = False,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, differentiable with the straight-through estimator.

    ``dL/dx`` passes through where ``x`` lies inside the grid's range and is zero where it is clipped.
    A ``scale`` (or ``zero_point``) that requires grad receives the LSQ gradient.
    """
    qmin, qmax = qrange(bits, signed, narrow)
    shape = x.shape
    scale = torch.as_tensor(scale, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    xv, s, z = _prepare(x, scale, zero_point, axis, group_size)
    z = round_ste(z.to(xv.dtype)) if z.is_floating_point() else z.to(xv.dtype)
    q = torch.clamp(round_ste(xv / s) + z, qmin, qmax)
    return ((q - z) * s).reshape(shape)


# --- logarithmic (power-of-two levels) quantization -------------------------------------------------


def log_levels(max_abs: torch.Tensor | float, bits: int) -> tuple[torch.Tensor, int]:
    """Exponent range of a ``bits``-bit logarithmic grid covering ``max_abs``.

    One bit is the sign and one code is zero, so there are ``n = 2**(bits-1) - 1`` exponents
    ``e_max - n + 1 .. e_max`` with ``e_max = round(log2 max_abs)``.

    Returns:
        ``(e_min, n)``: float tensor of the smallest exponent (same shape as ``max_abs``) and ``n``.
    """
    check_bits(bits)
    n = 2 ** (bits - 1) - 1
    m = torch.as_tensor(max_abs, dtype=torch.float32).clamp_min(MIN_SCALE)
    e_max = torch.round(torch.log2(m))
    return e_max - (n - 1), n


def quantize_log(x: torch.Tensor, max_abs: torch.Tensor | float, bits: int = 4) -> torch.Tensor:
    """Logarithmic codes (Miyashita et al. 2016): ``sign(x) * (e - e_min + 1)``, 0 for zero.

    ``e = round(log2 |x|)`` clamped above at ``e_max``; values whose exponent falls below ``e_min``
    become 0. ``max_abs`` broadcasts against ``x`` (scalar, or per-channel shaped like ``x``).
    """
    e_min, n = log_levels(max_abs, bits)
    e_min = e_min.to(x.device)
    mag = x.abs().to(torch.float32)
    e = torch.round(torch.log2(mag.clamp_min(torch.finfo(torch.float32).tiny)))
    code = (e - e_min + 1).clamp(max=n)
    code = torch.where((code < 1) | (mag == 0), torch.zeros_like(code), code)
    return (torch.sign(x) * code).to(torch.int8)


def dequantize_log(q: torch.Tensor, max_abs: torch.Tensor | float, bits: int = 4) -> torch.Tensor:
    """Float values of logarithmic codes: ``sign(q) * 2**(|q| - 1 + e_min)``, 0 for code 0."""
    e_min, _ = log_levels(max_abs, bits)
    qf = q.to(torch.float32)
    val = torch.exp2(qf.abs() - 1 + e_min.to(q.device))
    return torch.where(qf == 0, torch.zeros_like(val), torch.sign(qf) * val)


def fake_quantize_log(x: torch.Tensor, max_abs: torch.Tensor | float, bits: int = 4) -> torch.Tensor:
    """Logarithmic quantize-dequantize with a straight-through gradient."""
    xq = dequantize_log(quantize_log(x, max_abs, bits), max_abs, bits).to(x.dtype)
    return x + (xq - x).detach()


def reduce_minmax(x: torch.Tensor, axis: int | None = None, group_size: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` per tensor, per channel (``axis``) or per group (``axis`` + ``group_size``).

    The result has the parameter shape :func:`quantize_affine` expects for that granularity.
    """
    if axis is None:
        return x.min(), x.max()
    if group_size is not None:
        x = group_view(x, axis, group_size)
        a = axis % (x.dim() - 1)
        flat = x.reshape(*x.shape[: a + 1], -1)  # (*lead, n_groups, group members x trailing dims)
        return flat.amin(-1), flat.amax(-1)
    a = axis % x.dim()
    xt = x.movedim(a, 0).reshape(x.shape[a], -1)  # (C, everything else)
    return xt.amin(1), xt.amax(1)


def dynamic_fake_quantize(x: torch.Tensor, granularity: str = "token", bits: int = 8) -> torch.Tensor:
    """Asymmetric unsigned fake quantization with the range of ``x`` itself (STE gradient).

    ``granularity="token"``: one ``[min, max]`` per row (over the last dimension), shape ``(..., 1)``;
    ``"tensor"``: one for all of ``x``. Both ranges are widened to contain 0, as in ONNX
    ``DynamicQuantizeLinear``.
    """
    qmin, qmax = qrange(bits, False)
    if granularity == "token":
        lo = x.detach().amin(-1, keepdim=True).clamp(max=0)  # (..., 1)
        hi = x.detach().amax(-1, keepdim=True).clamp(min=0)
    else:
        lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
    s = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
    z = torch.clamp(qmin - torch.round(lo / s), qmin, qmax)
    q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    return x + ((q - z) * s - x).detach()
