"""Deployment targets: which integer scheme an exported int8 model uses so that it is exact on its CPUs.

Why a target is needed. ONNX Runtime's x86 int8 kernels (MLAS) multiply uint8 activations by int8
weights. With VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, ``vpdpbusd`` adds four u8 x s8 products straight into
int32: exact. On AVX2 without VNNI the kernel uses ``vpmaddubsw``, which multiplies u8 x s8 and adds each
*pair of adjacent products along the reduction axis* in **saturating int16**, then widens to int32::

    t = sat16(a[2k] * w[2k] + a[2k+1] * w[2k+1])          a in [0, 255], w in [-128, 127]

``255 * 127 + 255 * 127 = 64,770`` does not fit in int16 (32,767), so a full 8-bit weight grid silently
clips sums on AVX2 CPUs (many AMD EPYC and older Intel servers): measured on a digits CNN, 27% error on a
dot product and a 1.5 pt accuracy loss. The sum can never saturate when ``|w[2k]| + |w[2k+1]| <= 128``
(``255 * 128 = 32,640``), which 7-bit weights (``|w| <= 64``) guarantee in every layout: ONNX Runtime's
own remedy is ``reduce_range=True`` (7-bit weights) on such CPUs.

The targets:

=============  ==================  ===============================================================
name           weights             where it is exact
=============  ==================  ===============================================================
portable       7-bit (|w| <= 64)   every CPU ONNX Runtime runs on (the default)
x86-avx2       7-bit (|w| <= 64)   x86-64 with AVX2 (no VNNI needed); same graph as portable today
x86-vnni       8-bit               x86-64 with AVX-512 VNNI, AVX-VNNI or AMX only
=============  ==================  ===============================================================

The quantizer simulates the target's grid (a 7-bit weight is simulated as 7-bit), so ONNX Runtime and
the simulation agree on every CPU of the target. Graph rewrites (:mod:`slimtorch.quant.export.onnx_kernels`) are
part of the target too: each one is enabled where it measured faster.

No Arm target yet: the Arm kernels (``sdot``/``udot``, or ``smull`` widening to int32) do not add pairs in
int16, but no Arm machine was available to test on; ``portable`` is exact there too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimtorch.core.registry import Registry
from slimtorch.metrics.cpu import CpuInfo, cpu_info

#: Largest sum of two adjacent |weight codes| that a u8 x s8 pair can take without int16 saturation
#: (``255 * 128 = 32,640 <= 32,767``).
PAIR_LIMIT = 128


@dataclass(frozen=True)
class Target:
    """A deployment target of the int8 export.

    Attributes:
        name: registry name (``portable``, ``x86-avx2``, ``x86-vnni``).
        max_weight_bits: the widest weight grid that is exact on every CPU of the target (7 where u8 x s8
            pairs add in saturating int16, else 8).
        pad_input_channels: channel multiple for the first-conv rewrite of
            :func:`slimtorch.quant.export.onnx_kernels.pad_input_channels` (0: off).
        description: one line for ``--help`` and docs.
    """

    name: str
    max_weight_bits: int
    pad_input_channels: int
    description: str

    def weight_bits(self, bits: int) -> int:
        """The weight width actually used for a requested ``bits`` (never wider than the target allows)."""
        return min(bits, self.max_weight_bits)

    def host_belongs(self, cpu: CpuInfo | None = None) -> bool:
        """Whether ``cpu`` (default: this host) is one of the CPUs this target is exact on."""
        cpu = cpu or cpu_info()
        if self.name == "portable":
            return True
        is_x86 = cpu.kind.startswith("x86")
        if self.name == "x86-avx2":
            return is_x86 and bool(cpu.flags.get("avx2"))
        if self.name == "x86-vnni":
            return is_x86 and cpu.int8_dot_product
        return False


TARGETS: Registry[Target] = Registry("deployment target")
TARGETS.register("portable", Target(
    "portable", 7, 4, "correct on every CPU: 7-bit weights, so no int8 kernel can saturate (default)"))
TARGETS.register("x86-avx2", Target(
    "x86-avx2", 7, 4, "x86-64 with AVX2 and no VNNI: 7-bit weights (ONNX Runtime's reduce_range)"))
TARGETS.register("x86-vnni", Target(
    "x86-vnni", 8, 4, "x86-64 with AVX-512 VNNI, AVX-VNNI or AMX: full 8-bit weights (wrong on AVX2-only CPUs)"))

#: Default deployment target of every int8 config and of the export.
DEFAULT_TARGET = "portable"


def get_target(name: str | Target) -> Target:
    """The :class:`Target` named ``name`` (a ``Target`` passes through); unknown names list the valid ones."""
    return name if isinstance(name, Target) else TARGETS.get(name)


def check_target(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a registered target (for config ``__post_init__``)."""
    TARGETS.get(name)


#: Attribute on the root module naming the target it was quantized for.
TARGET_ATTR = "slimtorch_target"


def mark_target(model: Any, target: Target) -> None:
    """Record on ``model`` the target it was quantized for (read back by :func:`model_target`)."""
    object.__setattr__(model, TARGET_ATTR, target.name)


def model_target(model: Any) -> str | None:
    """The target ``model`` was quantized for, or None (a float model, or one quantized before targets)."""
    return getattr(model, TARGET_ATTR, None)


def warn_if_host_cannot_check(target: Target, what: str = "this model") -> bool:
    """Warn (and return False) when this host's CPU is not one the target is exact on."""
    cpu = cpu_info()
    if target.host_belongs(cpu):
        return True
    warnings.warn(f"{what} is built for target {target.name!r} ({target.description}); this host "
                  f"({cpu}) is not such a CPU, so ONNX Runtime's results here cannot check it and may "
                  "be wrong here: deploy it only on CPUs of that target, or use target='portable'",
                  UserWarning, stacklevel=3)
    return False


def reduction_pairs(codes: np.ndarray, layout: str = "nchw") -> np.ndarray:
    """``|w[2k]| + |w[2k+1]|`` for every adjacent pair along a weight's reduction axis.

    Args:
        codes: integer weight codes, ``(out, in)`` (Linear) or ``(out, in, kh, kw)`` (Conv).
        layout: the order in which the kernel walks the reduction: ``"nchw"`` (``in, kh, kw``, ONNX's own
            layout) or ``"nhwc"`` (``kh, kw, in``, the layout ONNX Runtime's x86 convolutions use).

    Returns:
        ``(out, ceil(K / 2))`` int64 pair sums (an odd ``K`` pairs its last weight with a zero).
    """
    w = np.asarray(codes).astype(np.int64)
    if layout == "nhwc" and w.ndim == 4:
        w = w.transpose(0, 2, 3, 1)
    elif layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    w = np.abs(w.reshape(w.shape[0], -1))
    if w.shape[1] % 2:
        w = np.pad(w, ((0, 0), (0, 1)))
    return w[:, 0::2] + w[:, 1::2]


def saturation_free(codes: np.ndarray) -> bool:
    """Whether no u8 x s8 pair of this weight can saturate int16, in both kernel layouts."""
    return all(int(reduction_pairs(codes, lay).max(initial=0)) <= PAIR_LIMIT for lay in ("nchw", "nhwc"))


def pairwise_int16_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Emulate an AVX2 u8 x s8 integer matmul (``vpmaddubsw`` then ``vpmaddwd``): what MLAS computes.

    Args:
        a: ``(M, K)`` uint8 activations.
        w: ``(N, K)`` int8 weights (rows are output channels, ``K`` the reduction axis).

    Returns:
        ``(M, N)`` int64 results, each the sum over ``k`` of ``sat16(a[2k] w[2k] + a[2k+1] w[2k+1])``. It
        equals the exact product ``a @ w.T`` exactly when no pair saturates.
    """
    a64, w64 = np.asarray(a).astype(np.int64), np.asarray(w).astype(np.int64)
    if a64.shape[1] % 2:
        a64, w64 = np.pad(a64, ((0, 0), (0, 1))), np.pad(w64, ((0, 0), (0, 1)))
    prod = a64[:, None, :] * w64[None, :, :]  # (M, N, K)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)
    return pairs.sum(-1)


__all__ = ["DEFAULT_TARGET", "PAIR_LIMIT", "TARGETS", "TARGET_ATTR", "Target", "check_target", "get_target",
           "mark_target", "model_target",
           "pairwise_int16_matmul", "reduction_pairs", "saturation_free", "warn_if_host_cannot_check"]
