"""Sparse storage: a pruned model in compressed sparse row (CSR) form, so its file size follows its nonzeros.

A tensor ``W`` is viewed as a matrix ``(shape[0], prod(shape[1:]))`` (``(out, in*kh*kw)`` for a conv)
and stored as three arrays: ``values`` (the nonzeros, original dtype, row-major), ``col`` (their column
indices) and ``rowptr`` (``rowptr[r]:rowptr[r+1]`` slices row ``r``). Index arrays use the smallest
unsigned integer type that holds their largest value (uint8, uint16, uint32, else int64). A tensor is
stored sparse only when that is smaller than storing it dense; everything else (biases, BatchNorm
buffers, dense layers) is stored as it is.

Bytes of a CSR tensor: ``nnz * (itemsize + col_itemsize) + (rows + 1) * rowptr_itemsize``; e.g. a 90%
sparse ``300x784`` fp32 layer takes ``23520 * 6 + 301 * 2`` bytes instead of ``940800``.

"Nonzero" is decided on the bit pattern, so ``-0.0`` is kept as a value and the round trip is
bit-identical. The file is a safetensors file with the same JSON spec as :func:`slimtorch.save` (plus a
``sparse`` entry), so zoo models, pruned narrower or not, rebuild without code.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.storage import load_state_into, model_from_spec, model_spec, read_spec, write_safetensors
from slimtorch.prune.masks import make_permanent_

#: Suffixes of the three arrays of a CSR tensor ``key``: ``key.csr_values`` etc.
CSR_PARTS = ("csr_values", "csr_col", "csr_rowptr")
_INDEX_DTYPES = ((torch.uint8, 2**8 - 1), (torch.uint16, 2**16 - 1), (torch.uint32, 2**32 - 1))


def index_dtype(max_value: int) -> torch.dtype:
    """Smallest unsigned integer dtype holding ``max_value`` (int64 beyond uint32)."""
    for dtype, top in _INDEX_DTYPES:
        if max_value <= top:
            return dtype
    return torch.int64


def nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """Bool mask of elements whose bit pattern is not all zeros (``-0.0`` counts as nonzero)."""
    if t.is_floating_point() and t.element_size() in (2, 4, 8):
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.contiguous().view(ints) != 0
    return t != 0


def to_csr(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR arrays of ``t`` viewed as ``(shape[0], -1)``: ``{"csr_values", "csr_col", "csr_rowptr"}``."""
    mat = t.detach().reshape(t.shape[0], -1) if t.dim() > 1 else t.detach().reshape(1, -1)  # (R, C)
    keep = nonzero_bits(mat)
    rows, cols = keep.nonzero(as_tuple=True)  # row-major order
    counts = keep.sum(1)  # (R,)
    rowptr = torch.zeros(mat.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = counts.cumsum(0)
    return {
        "csr_values": mat[rows, cols].contiguous(),
        "csr_col": cols.to(index_dtype(max(mat.shape[1] - 1, 0))),
        "csr_rowptr": rowptr.to(index_dtype(int(rowptr[-1]))),
    }


def from_csr(parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The dense tensor of ``shape`` that :func:`to_csr` encoded."""
    values = parts["csr_values"]
    rowptr = parts["csr_rowptr"].to(torch.int64)
    cols = parts["csr_col"].to(torch.int64)
    n_rows = rowptr.numel() - 1
    n_cols = (int(torch.tensor(shape).prod()) // n_rows) if n_rows else 0
    rows = torch.repeat_interleave(torch.arange(n_rows), rowptr.diff())  # (nnz,)
    dense = torch.zeros(n_rows * n_cols, dtype=values.dtype)
    dense[rows * n_cols + cols] = values
    return dense.reshape(shape)


def csr_nbytes(t: torch.Tensor) -> int:
    """Bytes the CSR arrays of ``t`` take (without building them)."""
    rows = t.shape[0] if t.dim() > 1 else 1
    cols = t.numel() // rows if rows else 0
    nnz = int(nonzero_bits(t).sum())
    col_b = torch.empty(0, dtype=index_dtype(max(cols - 1, 0))).element_size()
    ptr_b = torch.empty(0, dtype=index_dtype(nnz)).element_size()
    return nnz * (t.element_size() + col_b) + (rows + 1) * ptr_b


def save_sparse(
    model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None
) -> Path:
    """Save ``model`` with every tensor that is smaller in CSR form stored as CSR.

    Masks (parametrizations) are baked into the saved weights; ``model`` itself is not changed.

    Args:
        model: any module (zoo models reload without code; others need ``load_sparse(path, model=...)``).
        path: a ``.safetensors`` file, or a directory (then ``path/model.sparse.safetensors``).
        metadata: extra JSON-serialisable information kept in the file.

    Returns:
        The path written.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p / "model.sparse.safetensors"
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = make_permanent_(copy.deepcopy(model))
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for key, t in model.state_dict().items():
        t = t.detach().contiguous()
        if t.numel() > 1 and csr_nbytes(t) < t.numel() * t.element_size():
            for part, arr in to_csr(t).items():
                tensors[f"{key}.{part}"] = arr
            sparse[key] = {"encoding": "csr", "shape": list(t.shape), "dtype": str(t.dtype)}
        else:
            tensors[key] = t.clone()
    spec = model_spec(model)
    spec["sparse"] = sparse
    if metadata:
        spec["metadata"] = metadata
    return write_safetensors(p, tensors, spec)


def read_sparse_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(dense state dict, spec)`` of a file written by :func:`save_sparse`."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.sparse.safetensors"
    if not p.exists():
        raise SlimtorchError(f"no sparse model file at {p}")
    spec = read_spec(p)
    if "sparse" not in spec:
        raise SlimtorchError(
            f"{p} was not written by save_sparse (no 'sparse' entry); read it with slimtorch.load"
        )
    raw = load_file(str(p))
    state = {k: v for k, v in raw.items() if k.rpartition(".")[2] not in CSR_PARTS}
    for key, info in spec["sparse"].items():
        parts = {part: raw[f"{key}.{part}"] for part in CSR_PARTS}
        state[key] = from_csr(parts, tuple(info["shape"]))
    return state, spec


def load_sparse(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load a :func:`save_sparse` file back into a dense model (bit-identical weights), in eval mode.

    Args:
        path: the file, or the directory it was saved into.
        model: skeleton to load into; needed when the model is not from the zoo.
    """
    state, spec = read_sparse_state(path)
    if model is None:
        model = model_from_spec(spec, path, {k: tuple(v.shape) for k, v in state.items()})
    load_state_into(model, state)
    return model.eval()
