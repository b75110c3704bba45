"""Export weight-only packed Linear layers as ONNX Runtime ``MatMulNBits`` nodes (int4 that runs).

``com.microsoft.MatMulNBits`` (ONNX Runtime contrib operator, ``docs/ContribOperators.md``) computes

    Y = A @ dequant(B)^T (+ bias),    dequant(B)[n, k] = (q[n, k] - zp[n, k // block_size]) * scale[n, k // block_size]

for a float ``A (..., K)`` and a weight ``(N, K)`` quantized in blocks of ``block_size`` consecutive input
features (a power of two >= 16). Its inputs, as this module writes them:

* ``B``: uint8 ``(N, k_blocks, blob_size)``, ``k_blocks = K / block_size``, ``blob_size = block_size * bits / 8``;
  the codes of one block packed low bits first along K: code ``j`` of a block sits in byte
  ``j // (8 / bits)`` at bit offset ``(j % (8 / bits)) * bits``;
* ``scales``: float32 ``(N, k_blocks)``;
* ``zero_points`` (asymmetric codes only): uint8 ``(N, ceil(k_blocks * bits / 8))``, packed per row the same way;
  without it ONNX Runtime uses ``2^(bits - 1)``;
* attributes ``K``, ``N``, ``bits``, ``block_size``, ``accuracy_level``.

Our :class:`~slimtorch.quant.modules.packed.WeightOnlyLinear` stores exactly these quantities (codes, one scale and
zero point per (output row, group)), so the file carries OUR codes: GPTQ/AWQ results run as they were computed,
nothing is re-quantized. ONNX Runtime's CPU kernels take ``bits`` in {2, 4, 8}; 3-bit codes are written in
4-bit containers and 5-7-bit codes in 8-bit ones (same values, the file is as large as the container's width).
Symmetric (signed) codes are shifted by ``2^(container - 1)`` so the default zero point applies and no zero
point tensor is written.

The graph is traced with the TorchScript exporter; each packed Linear becomes one ``MatMulNBits`` node through
an ``autograd.Function`` with a ``symbolic`` method, everything else exports as usual (fp32).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.quant import primitives as P

#: The ONNX domain of ONNX Runtime's contrib operators.
DOMAIN = "com.microsoft"
#: Code widths ONNX Runtime's CPU ``MatMulNBits`` kernels accept.
CONTAINER_BITS = (2, 4, 8)
#: Smallest block size the operator allows.
MIN_BLOCK = 16


def container_bits(bits: int) -> int:
    """The narrowest width ONNX Runtime runs that holds ``bits``-bit codes (3 -> 4, 5..7 -> 8)."""
    P.check_bits(bits)
    return next(c for c in CONTAINER_BITS if c >= bits)


def check_block_size(group_size: int, in_features: int, layer: str = "") -> None:
    """Raise unless ``group_size`` is a valid ``MatMulNBits`` block for ``in_features`` inputs.

    The operator needs a power of two >= 16 that divides K (our groups never straddle a row end).
    """
    where = f"layer {layer!r}: " if layer else ""
    fix = ("quantize with WeightOnly(group_size=16, 32, 64 or 128, ...) dividing every layer's input "
           "features, or exclude the layer")
    if group_size < MIN_BLOCK or group_size & (group_size - 1):
        raise SlimtorchError(f"{where}group size {group_size} cannot be exported to MatMulNBits: ONNX Runtime "
                             f"needs a power of two >= {MIN_BLOCK}; {fix}")
    if in_features % group_size:
        raise SlimtorchError(f"{where}group size {group_size} does not divide the {in_features} input features, "
                             f"which MatMulNBits needs; {fix}")


def pack_blocks(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Pack unsigned codes ``(N, K)`` into ``MatMulNBits``'s ``B``: uint8 ``(N, K / block_size, blob_size)``.

    ``bits`` must be a container width (2, 4 or 8); code ``j`` of each block goes to byte ``j // (8 / bits)``,
    bits ``[(j % (8 / bits)) * bits, ...)`` (low bits first).
    """
    if bits not in CONTAINER_BITS:
        raise ValueError(f"MatMulNBits packs 2, 4 or 8-bit codes, got bits={bits}")
    n, k = codes.shape
    if k % block_size:
        raise ValueError(f"block_size {block_size} does not divide K={k}")
    u = codes.astype(np.uint32)
    if u.size and u.max() >= 1 << bits:
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, got max {int(u.max())}")
    per = 8 // bits
    blob = block_size * bits // 8
    u = u.reshape(n, k // block_size, blob, per)  # (N, k_blocks, blob, per): consecutive codes share a byte
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, 1, 1, per)
    return (u << shifts).sum(axis=-1).astype(np.uint8)


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned zero points ``(N, k_blocks)`` into uint8 ``(N, ceil(k_blocks * bits / 8))`` (per row, as B)."""
    if bits not in CONTAINER_BITS:
        raise ValueError(f"MatMulNBits packs 2, 4 or 8-bit zero points, got bits={bits}")
    n, kb = zero_points.shape
    per = 8 // bits
    pad = (-kb) % per
    z = np.concatenate([zero_points.astype(np.uint32), np.zeros((n, pad), np.uint32)], axis=1)
    if z.size and z.max() >= 1 << bits:
        raise ValueError(f"zero points must lie in [0, {(1 << bits) - 1}], got max {int(z.max())}")
    z = z.reshape(n, (kb + pad) // per, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, 1, per)
    return (z << shifts).sum(axis=-1).astype(np.uint8)


@dataclass
class NBitsWeight:
    """The ``MatMulNBits`` inputs of one layer: ``B``, ``scales``, optional packed ``zero_points`` and attributes.

    Attributes:
        packed: uint8 ``(N, k_blocks, blob_size)``.
        scales: float32 ``(N, k_blocks)``.
        zero_points: uint8 ``(N, ceil(k_blocks * bits / 8))``, or None for the default ``2^(bits - 1)``.
        k, n: input and output features.
        bits: container width written in the node (2, 4 or 8).
        code_bits: width of the codes themselves (2-8).
        block_size: inputs per scale.
    """

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    k: int
    n: int
    bits: int
    code_bits: int
    block_size: int

    def nbytes(self) -> int:
        """Bytes of the weight's tensors in the file (codes, scales, zero points)."""
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.packed.nbytes + self.scales.nbytes + zp


def nbits_weight(layer: nn.Module, name: str = "") -> NBitsWeight:
    """The ``MatMulNBits`` form of a :class:`~slimtorch.quant.modules.packed.WeightOnlyLinear` (its own codes).

    Raises:
        SlimtorchError: the layer's group size is not a valid block size (see :func:`check_block_size`).
    """
    gc = layer.group_codes()
    n, k = gc.codes.shape
    check_block_size(gc.group_size, k, name)
    cb = container_bits(gc.bits)
    q = gc.codes.to(torch.int32)  # (N, K)
    if gc.symmetric:
        # signed codes in [-2^(b-1), 2^(b-1)); shifting by the container's default zero point keeps
        # (u - 2^(cb-1)) == q, so no zero point tensor is needed
        u, zp = q + (1 << (cb - 1)), None
    else:
        u, zp = q, pack_zero_points(gc.zero_point.to(torch.int64).numpy(), cb)
    return NBitsWeight(
        packed=pack_blocks(u.numpy(), cb, gc.group_size),
        scales=gc.scale.to(torch.float32).numpy().copy(),
        zero_points=zp,
        k=k,
        n=n,
        bits=cb,
        code_bits=gc.bits,
        block_size=gc.group_size,
    )


def dequantize_nbits(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, k: int,
                     bits: int, block_size: int) -> torch.Tensor:
    """The float weight ``(N, K)`` that ``MatMulNBits`` inputs encode: ``(q - zp) * scale`` per block."""
    n = packed.shape[0]
    per, mask = 8 // bits, (1 << bits) - 1
    shifts = torch.arange(per, dtype=torch.int32) * bits
    q = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & mask).reshape(n, k)  # (N, K)
    kb = k // block_size
    if zero_points is None:
        z = torch.full((n, kb), 1 << (bits - 1), dtype=torch.int32)
    else:
        z = ((zero_points.to(torch.int32).unsqueeze(-1) >> shifts) & mask).reshape(n, -1)[:, :kb]  # (N, kb)
    w = (q.view(n, kb, block_size) - z.unsqueeze(-1)).float() * scales.view(n, kb, 1)
    return w.reshape(n, k)


class _MatMulNBitsOp(torch.autograd.Function):
    """``x @ W^T`` with ``W`` decoded from the node's own inputs; one ``MatMulNBits`` node when exported."""

    @staticmethod
    def forward(ctx, x, packed, scales, zero_points, k, n, bits, block_size, accuracy_level):  # noqa: ANN001
        return x @ dequantize_nbits(packed, scales, zero_points, k, bits, block_size).to(x.dtype).t()

    @staticmethod
    def symbolic(g, x, packed, scales, zero_points, k, n, bits, block_size, accuracy_level):  # noqa: ANN001
        inputs = [x, packed, scales] + ([] if zero_points is None else [zero_points])
        y = g.op(f"{DOMAIN}::MatMulNBits", *inputs, K_i=k, N_i=n, bits_i=bits, block_size_i=block_size,
                 accuracy_level_i=accuracy_level)
        sizes = x.type().varyingSizes()  # (..., K) with None for dynamic dims -> (..., N)
        if sizes is not None:
            y.setType(x.type().with_sizes([*sizes[:-1], n]))
        return y


class MatMulNBitsLinear(nn.Module):
    """Export-time stand-in for a packed Linear: holds the ``MatMulNBits`` tensors as buffers.

    Its forward decodes the weight from those buffers (so it equals the packed layer's ``x W^T + b`` exactly when
    the packing is right); under
    ``torch.onnx.export`` it becomes ``MatMulNBits`` (+ ``Add`` for the bias).
    """

    def __init__(self, layer: nn.Module, name: str = "", accuracy_level: int = 0) -> None:
        super().__init__()
        w = nbits_weight(layer, name)
        self.k, self.n, self.bits, self.block_size = w.k, w.n, w.bits, w.block_size
        self.accuracy_level = accuracy_level
        self.register_buffer("packed", torch.from_numpy(w.packed))
        self.register_buffer("scales", torch.from_numpy(w.scales))
        self.register_buffer("zero_points", None if w.zero_points is None else torch.from_numpy(w.zero_points))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        y = _MatMulNBitsOp.apply(x, self.packed, self.scales, self.zero_points, self.k, self.n,
                                 self.bits, self.block_size, self.accuracy_level)
        return y if self.bias is None else y + self.bias


#: ``accuracy_level`` values of the operator: 0 unset (A stays fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class KeywordCall(nn.Module):
    """``model(**dict(zip(keys, args)))``'s main output tensor: the TorchScript exporter passes inputs by
    position, Hugging Face models want them by name (and return a ``ModelOutput``)."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        from slimtorch.core.batches import output_tensor

        return output_tensor(self.model(**dict(zip(self.keys, args))))


def nbits_export_copy(model: nn.Module, accuracy_level: int = 0) -> nn.Module:
    """A copy of ``model`` whose packed Linear layers are :class:`MatMulNBitsLinear` (for ``torch.onnx.export``).

    Raises:
        SlimtorchError: a packed layer cannot be written as ``MatMulNBits`` (a packed Conv2d, or a group size
            that is not a power of two >= 16 dividing the input features), naming the layer.
    """
    from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear

    if accuracy_level not in ACCURACY_LEVELS:
        raise SlimtorchError(f"accuracy_level must be one of {ACCURACY_LEVELS} (0: fp32 activations, 4: int8), "
                             f"got {accuracy_level!r}")
    convs = [n for n, m in model.named_modules() if isinstance(m, WeightOnlyConv2d)]
    if convs:
        raise SlimtorchError(f"weight-only Conv2d layers {convs[:5]} have no MatMulNBits form (a matrix product "
                             "only); exclude them from WeightOnly (exclude=...) to export the model to ONNX")
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, WeightOnlyLinear):
            parent, _, attr = name.rpartition(".")
            holder = out.get_submodule(parent) if parent else out
            if not name:
                raise SlimtorchError("the model itself is one packed Linear; wrap it in a module to export it")
            setattr(holder, attr, MatMulNBitsLinear(m, name, accuracy_level))
    return out


def nbits_layers(model: nn.Module) -> list[str]:
    """Names of the packed weight-only layers of ``model`` (what :func:`nbits_export_copy` replaces)."""
    from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear

    return [n for n, m in model.named_modules() if isinstance(m, (WeightOnlyLinear, WeightOnlyConv2d))]


def check_tolerance(accuracy_level: int) -> float:
    """Allowed output difference vs the simulation, as a fraction of its peak |output|.

    With fp32 activations (levels 0, 1) ONNX Runtime dequantizes the same codes with the same scales and only
    the float summation order differs (relative error ~ K * 2^-24 per product sum): 1e-3 leaves a wide margin
    while one code off by one step moves an output by ``scale * |x|``, a few percent of its range at 4 bits.
    Lower activation precision (2, 3: half floats; 4: int8 blocks) adds its own rounding: 5%, as the QDQ check.
    """
    return 1e-3 if accuracy_level in (0, 1) else 0.05


def expected_nbytes(model: nn.Module) -> int:
    """Bytes the ``MatMulNBits`` tensors of ``model``'s packed layers take (packed codes, scales, zero points)."""
    from slimtorch.quant.modules.packed import WeightOnlyLinear

    return sum(nbits_weight(m, n).nbytes() for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear))



def export_matmul_nbits(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any,
                        dynamic_axes: dict[str, dict[int, str]] | None = None, accuracy_level: int = 0,
                        check: bool = True, opset: int = 17) -> Path:
    """Write ``model`` with every packed Linear as a ``MatMulNBits`` node (the rest fp32); see the module doc.

    Args:
        model: a model with :class:`~slimtorch.quant.modules.packed.WeightOnlyLinear` layers (``WeightOnly``).
        path: output ``.onnx`` file.
        example_inputs: a tensor or tuple of tensors, or a dict of named tensors (``input_ids``,
            ``attention_mask``, ...: a Hugging Face model is called with them as keywords, the graph inputs
            keep their names, and the batch and sequence dimensions are dynamic by default).
        dynamic_axes: ``{graph input/output name: {dim: label}}`` (inputs are ``input`` or ``input0..``, the
            output ``output``); default: dim 0 of each is ``batch``.
        accuracy_level: the node attribute (:data:`ACCURACY_LEVELS`): 0 keeps activations fp32 (exact up to
            float summation order), 4 lets ONNX Runtime quantize them to int8 per block (faster, approximate).
        check: run the file with ONNX Runtime on ``example_inputs`` and raise (removing the file) if it
            differs from the simulation by more than :func:`check_tolerance` of its peak output.
        opset: ONNX opset of the default domain.

    Returns:
        The path written.
    """
    import warnings

    import onnx

    export_model = nbits_export_copy(model, accuracy_level).eval()
    if isinstance(example_inputs, Mapping):  # named inputs (a tokenizer's output): graph inputs keep the names
        names = list(example_inputs)
        inputs = tuple(example_inputs[k] for k in names)
        export_model, model = KeywordCall(export_model, names), KeywordCall(model, names)
        default = {n: {0: "batch", 1: "sequence"} if t.dim() >= 2 else {0: "batch"} for n, t in zip(names, inputs)}
        with torch.no_grad():
            out_dim = export_model(*inputs).dim()  # the export copy is in eval mode; the user's model untouched
        default["output"] = {0: "batch", 1: "sequence"} if out_dim >= 3 else {0: "batch"}
    else:
        inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
        default = {n: {0: "batch"} for n in [*names, "output"]}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    axes = dynamic_axes if dynamic_axes is not None else default
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(export_model, inputs, str(p), dynamo=False, opset_version=opset,
                              input_names=names, output_names=["output"], dynamic_axes=axes,
                              do_constant_folding=True,
                              custom_opsets={DOMAIN: 1})
    except Exception as e:  # the exporter raises many unrelated types; report them uniformly
        raise SlimtorchError(f"MatMulNBits export of {type(model).__name__} to {p} failed: {e}") from e
    proto = onnx.load(str(p))
    onnx.helper.set_model_props(proto, {"slimtorch.format": "MatMulNBits"})
    onnx.save(proto, str(p))
    if check:
        try:
            check_nbits_export(model, p, inputs, accuracy_level)
        except SlimtorchError as e:
            p.unlink(missing_ok=True)  # a file that computes something else must not be left for deployment
            raise SlimtorchError(f"{e} (the file was removed)") from None
    return p


@torch.no_grad()
def check_nbits_export(model: nn.Module, path: str | os.PathLike[str], inputs: tuple[Any, ...],
                       accuracy_level: int = 0) -> dict[str, float]:
    """Run ``path`` in ONNX Runtime on ``inputs`` and compare with ``model``; ``{"max_abs_diff", "allowed"}``.

    Raises:
        SlimtorchError: the difference exceeds :func:`check_tolerance` of the simulation's peak |output|.
    """
    from slimtorch.core.batches import output_tensor
    from slimtorch.metrics.ort import onnx_session, session_feed

    was = model.training
    model.eval()
    try:
        ours = output_tensor(model(*inputs)).float()
    finally:
        model.train(was)
    sess = onnx_session(path)
    theirs = torch.from_numpy(sess.run(None, session_feed(sess, inputs))[0]).float()
    if ours.shape != theirs.shape:
        raise SlimtorchError(f"ONNX Runtime's output of {path} has shape {tuple(theirs.shape)}, the model's "
                             f"{tuple(ours.shape)}")
    diff = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    allowed = check_tolerance(accuracy_level) * float(ours.abs().max()) + 1e-6
    if diff > allowed:
        raise SlimtorchError(f"ONNX Runtime's MatMulNBits output of {path} differs from the simulation by "
                             f"{diff:.4g} (allowed {allowed:.4g})")
    return {"max_abs_diff": diff, "allowed": allowed}
