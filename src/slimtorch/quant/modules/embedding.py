"""Int8 embedding tables: one symmetric scale per row, exported as ``Gather`` of int8 rows + ``DequantizeLinear``.

A transformer's word embedding is often its largest tensor (all-MiniLM-L6-v2: 30,522 x 384 = 47 MB of its
90 MB in fp32); left in float it caps an int8 file at ~1.5x smaller. Each row (token) ``e_v`` gets its own
scale ``s_v`` from its largest magnitude (symmetric min-max) and int8 codes ``q_v = round(e_v / s_v)``, so a rare token
with small values keeps its precision (per-row, "axis 0", as in ONNX Runtime's ``GatherBlockQuantized``
with one block per row). The lookup of ids ``(B, T)`` exports as::

    Gather(codes int8 (V, D), ids) -> rows (B*T, D)      Gather(scales (V,), ids) -> (B*T,)
    DequantizeLinear(rows, row scales, axis=0) -> Reshape (B, T, D)

which reads only the ``B*T`` rows it needs (a ``DequantizeLinear`` of the whole table before the
``Gather`` would dequantize all ``V`` rows on every call: ONNX Runtime does not constant-fold it).

Why 8 bits even for the ``portable`` target (7-bit weights): the 7-bit limit exists because x86 int8
*matmul* kernels add pairs of u8 x s8 products in saturating int16 (:mod:`slimtorch.quant.export.targets`).
An embedding is never a matmul operand: its rows are dequantized to float right after the ``Gather``,
so no integer kernel can saturate and every target gets the full 8-bit grid.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.quant.modules import onnx_ops
from slimtorch.quant.modules.fake_quant import FakeQuantize, _QuantMixin, _untraced
from slimtorch.quant.observers import create_observer

#: Weight bits of embedding tables on every target (see the module docstring).
EMBEDDING_BITS = 8


class _GatherDQ(torch.autograd.Function):
    """TorchScript-exporter form of :func:`slimtorch.quant.modules.onnx_ops.gather_dq`."""

    @staticmethod
    def forward(ctx, ids, codes, scale):  # noqa: ANN001 - autograd signature
        return codes[ids].float() * scale[ids].unsqueeze(-1)

    @staticmethod
    def symbolic(g, ids, codes, scale):  # noqa: ANN001
        flat = g.op("Reshape", ids, g.op("Constant", value_t=torch.tensor([-1])))
        rows = g.op("Gather", codes, flat, axis_i=0)
        s = g.op("Gather", scale, flat, axis_i=0)
        y = g.op("DequantizeLinear", rows, s, axis_i=0)
        shape = g.op("Concat", g.op("Shape", ids), g.op("Constant", value_t=torch.tensor([codes.type().sizes()[1]])),
                     axis_i=0)
        return g.op("Reshape", y, shape)


class QuantEmbedding(_QuantMixin, nn.Embedding):
    """``nn.Embedding`` with int8 rows (per-row symmetric scales), simulated in float."""

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits: int = EMBEDDING_BITS) -> QuantEmbedding:
        """Wrap ``emb`` (its weight is shared, not copied) and freeze its per-row grid."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update(emb.__dict__)
        new._modules = {}
        obs = create_observer("minmax", bits=bits, symmetric=True, signed=True, axis=0)
        new._init_quant(None, FakeQuantize(obs), None, False, False)
        new.calibrate_weight()
        return new

    def export_buffers(self) -> dict[str, torch.Tensor]:
        return {onnx_ops.CODES: self.integer_weight().to(torch.int8), onnx_ops.SCALE: self._scales()}

    def _scales(self) -> torch.Tensor:
        return self.weight_quant.scale.flatten().expand(self.num_embeddings).contiguous().float()  # (V,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) int -> (..., D)
        mode = onnx_ops.export_mode()
        if mode == "dynamo":
            return onnx_ops.gather_dq(getattr(self, onnx_ops.CODES), getattr(self, onnx_ops.SCALE), ids)
        if mode == "torchscript":
            with _untraced():
                codes, scale = self.integer_weight().to(torch.int8), self._scales()
            return _GatherDQ.apply(ids, codes, scale)
        return F.embedding(ids, self._fake_quant_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def quantizers(self) -> dict[str, Any]:
        return {"weight": self.weight_quant}


def quantize_embeddings_(model: nn.Module, names: list[str], bits: int = EMBEDDING_BITS) -> list[str]:
    """Replace the embeddings ``names`` of ``model`` by :class:`QuantEmbedding`; returns the names."""
    from slimtorch.core.selection import set_submodule

    for name in names:
        set_submodule(model, name, QuantEmbedding.from_float(model.get_submodule(name), bits))
    return names
