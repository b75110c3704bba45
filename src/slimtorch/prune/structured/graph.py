"""Channel dependency graph built by tracing one forward pass (the idea of DepGraph, Fang et al. 2023).

Every channel of every traced tensor is an *element*; operations couple elements (``a + b`` couples
channel ``i`` of ``a`` with channel ``i`` of ``b``; ``cat`` along channels places its inputs' elements
side by side; ``flatten`` repeats a channel's element over its spatial block of features; a depthwise
conv couples input channel ``i`` with output channel ``i``). Layers with weights are *leaves*: a
surgery rule (:mod:`.surgery`) says which of their index spaces (``"in"``, ``"out"``, ``"heads"``)
bind to which input/output tensor. The connected components of the coupling graph are the removable
units: removing a unit removes its positions in every coupled layer at once, so the pruned model stays
consistent. Components touching a model input, a model output, an ignored module or an operation the
tracer does not understand are *pinned* (never removed).

Tracing runs the model once on ``example_inputs`` with a ``TorchFunctionMode`` recording every torch
function on real tensors (so shapes, split sizes and flatten blocks are exact and Python control flow
such as ``if t > self.block_size`` simply runs), and forward hooks on the layers that have surgery
rules (they are leaves: their insides are not recorded). ``tracer="fx"`` first makes a
``torch.fx.symbolic_trace`` of the model with the same leaves and records *that* graph's run; it
fails, with the module and the reason, on code fx cannot trace, which is a useful static check but
costs about twice the build time, so the default is ``"concrete"``; ``"auto"`` tries fx and falls
back to concrete.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimtorch.core.batches import example_call
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import ROOT_NAME, FilterFn, _matches, display_name
from slimtorch.prune.structured.surgery import LayerSurgery, PinnedSurgery, find_surgery

#: A place channels can be removed from: ("module", fqn, space name) or ("param", fqn, str(dim)).
SpaceKey = tuple[str, str, str]

# Ops that act on each channel independently (their inputs and output share channel elements).
_ELEMENTWISE = {
    "relu",
    "relu_",
    "relu6",
    "gelu",
    "silu",
    "silu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "hardtanh",
    "hardtanh_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "selu",
    "celu",
    "mish",
    "softplus",
    "hardswish",
    "hardsigmoid",
    "dropout",
    "dropout_",
    "alpha_dropout",
    "feature_dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "square",
    "erf",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "detach",
    "softmax",
    "log_softmax",
    "__neg__",
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "true_divide",
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "pow",
    "__pow__",
    "where",
    "maximum",
    "minimum",
    "lerp",
    "masked_fill",
    "masked_fill_",
    "nan_to_num",
    "requires_grad_",
}
# Ops on (N, C, *spatial) tensors that keep dim 1 as channels.
_SPATIAL = {
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "interpolate",
    "upsample",
    "lp_pool2d",
    "max_pool2d_with_indices",
    "adaptive_max_pool2d_with_indices",
}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"}
_SHAPE_ONLY = {
    "__get__",
    "size",
    "dim",
    "numel",
    "__len__",
    "__bool__",
    "__format__",
    "__repr__",
    "__iter__",
    "is_floating_point",
    "__index__",
    "__int__",
    "__float__",
    "item",
    "tolist",
    "data_ptr",
    "element_size",
    "stride",
    "is_contiguous",
    "__contains__",
}


@dataclass
class ChannelGroup:
    """Coupled channels that are removed together.

    Attributes:
        members: for each coupled space, an int array ``(n_units, k)``: the positions unit ``u``
            occupies in that space (``k > 1`` e.g. for the spatial block of a flattened channel).
        n_units: number of removable units (channels, heads or channel groups).
        modules: fully qualified names of the modules touched (for reports and overrides).
    """

    members: dict[SpaceKey, np.ndarray]
    n_units: int
    modules: list[str]

    @property
    def producers(self) -> list[str]:
        """Modules whose output channels (or heads) are in the group, in forward order."""
        return [k[1] for k in self.members if k[0] == "module" and k[2] in ("out", "heads")]

    @property
    def name(self) -> str:
        """A short readable name: the first layer whose output channels are in the group."""
        return (self.producers or [k[1] for k in self.members])[0]


@dataclass
class DependencyGraph:
    """The removable channel groups of a model, plus what could not be pruned and why."""

    groups: list[ChannelGroup]
    space_sizes: dict[SpaceKey, int]
    notes: list[str] = field(default_factory=list)
    tracer: str = "concrete"
    build_s: float = 0.0


# ----------------------------------------------------------------------------------------------
@dataclass
class _Info:
    """What the tracer knows about one tensor: its channel dim and one element id per channel."""

    ch: int | None = None
    elems: np.ndarray | None = None
    param: tuple[str, tuple[int | None, ...]] | None = None  # param fqn, tensor dim -> param dim


def _fn_name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    return name.lstrip("_") if name.startswith("_") and not name.startswith("__") else name


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Recorder(TorchFunctionMode):
    """Records how channels flow through torch functions; leaves are bound by module hooks."""

    def __init__(self, named: list[tuple[str, nn.Module]], leaves: dict[nn.Module, tuple[str, LayerSurgery]]) -> None:
        super().__init__()
        self.leaves = leaves
        self.n_elems = 1  # element 0 is PIN: anything joined to it is never removed
        self.edges_a: list[np.ndarray] = []  # edges_a[i][j] is coupled with edges_b[i][j]
        self.edges_b: list[np.ndarray] = []
        self.infos: dict[int, _Info] = {}
        self.keep_alive: list[torch.Tensor] = []
        self.spaces: dict[SpaceKey, np.ndarray] = {}
        self.param_names: dict[int, str] = {}  # id(tensor) -> fqn (first name of a shared tensor)
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        for mn, m in named:
            for pn, p in list(m._parameters.items()) + list(m._buffers.items()):
                # integer buffers (BERT's token_type_ids, position ids) are indices, not channels
                if p is not None and p.is_floating_point() and id(p) not in self.param_names:
                    fqn = f"{mn}.{pn}" if mn else pn
                    self.param_names[id(p)] = fqn
                    self.param_shapes[fqn] = tuple(p.shape)
        self.depth = 0
        self.notes: list[str] = []
        self.modules = {m: n for n, m in named}

    # ---- elements ---------------------------------------------------------------------------
    def new(self, n: int) -> np.ndarray:
        ids = np.arange(self.n_elems, self.n_elems + n)
        self.n_elems += n
        return ids

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            a, b = np.broadcast_arrays(a, b)
        self.edges_a.append(a.ravel())
        self.edges_b.append(b.ravel())

    def pin(self, elems: np.ndarray | None, why: str) -> None:
        if elems is not None and len(elems):
            self.couple(elems, np.zeros_like(elems))
            if why and why not in self.notes:
                self.notes.append(why)

    def space(self, key: SpaceKey, size: int) -> np.ndarray:
        if key not in self.spaces:
            self.spaces[key] = self.new(size)
        return self.spaces[key]

    # ---- tensor bookkeeping -----------------------------------------------------------------
    def info(self, t: torch.Tensor) -> _Info | None:
        i = self.infos.get(id(t))
        if i is not None:
            return i
        name = self.param_names.get(id(t))
        if name is not None:
            return _Info(param=(name, tuple(range(t.ndim))))
        return None

    def set(self, t: torch.Tensor, info: _Info) -> None:
        self.infos[id(t)] = info
        self.keep_alive.append(t)

    def bind_param(self, info: _Info, dim: int, elems: np.ndarray) -> bool:
        """Couple ``elems`` with dim ``dim`` of a parameter-derived tensor; False if it cannot be sliced."""
        name, dmap = info.param  # type: ignore[misc]
        pdim = dmap[dim]
        if pdim is None or self.param_shapes[name][pdim] != len(elems):
            return False
        self.couple(self.space(("param", name, str(pdim)), len(elems)), elems)
        return True

    def where(self) -> str:
        """The innermost model module whose forward is running (read from the Python stack)."""
        return _innermost_module(sys._getframe(1), self.modules)

    # ---- the mode ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            name = _fn_name(func)
            if name not in _SHAPE_ONLY and _tensors(out):
                self.record(name, args, kwargs, out)
        return out

    def record(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:  # noqa: C901
        ins = [t for t in _tensors(list(args) + list(kwargs.values()))]
        outs = _tensors(out)
        infos = [self.info(t) for t in ins]
        if not any(i is not None for i in infos):
            return  # constants only (arange, zeros, ...): outputs stay untracked
        x, xi = ins[0], infos[0]
        if name in _ELEMENTWISE:
            return self.elementwise(ins, infos, outs)
        if name in _SPATIAL:
            if xi is not None and xi.ch == 1:
                return self.alias(outs, xi)
            return self.unknown(name, ins, infos, outs)
        if name in (
            "flatten",
            "view",
            "reshape",
            "unflatten",
            "squeeze",
            "unsqueeze",
            "view_as",
            "reshape_as",
        ):
            return self.reshape(name, x, xi, outs)
        if name in ("transpose", "swapaxes", "swapdims", "permute", "t", "movedim", "moveaxis", "mT"):
            return self.permute(name, x, xi, args, kwargs, outs[0])
        if name in ("expand", "expand_as", "broadcast_to"):
            return self.expand(x, xi, outs[0])
        if name == "__getitem__":
            return self.getitem(x, xi, args[1], outs[0])
        if name in ("cat", "concat", "concatenate"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return self.cat(list(args[0]), dim, outs[0])
        if name in ("split", "chunk", "tensor_split", "unbind", "split_with_sizes"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            return self.split(name, x, xi, dim, outs)
        if name in _REDUCE:
            return self.reduce(name, x, xi, args, kwargs, outs)
        if name == "pad":
            pad = args[1] if len(args) > 1 else kwargs["pad"]
            if xi is not None and xi.ch is not None:
                k = x.ndim - 1 - xi.ch  # pad pairs run from the last dim backwards
                if 2 * k + 1 < len(pad) and (pad[2 * k] or pad[2 * k + 1]):
                    return self.unknown(name, ins, infos, outs)
            return self.alias(outs, xi)
        return self.unknown(name, ins, infos, outs)

    # ---- op rules ---------------------------------------------------------------------------
    def alias(self, outs: list[torch.Tensor], info: _Info | None) -> None:
        if info is not None:
            for o in outs:
                self.set(o, info)

    def unknown(self, name: str, ins: list[torch.Tensor], infos: list[_Info | None], outs: list[torch.Tensor]) -> None:
        for i in infos:
            if i is not None and i.param is not None and i.elems is None:
                owner = i.param[0].rpartition(".")[0]
                mod = self.model_module(owner)
                raise SlimtorchError(
                    f"layer type {type(mod).__name__} (at '{display_name(owner)}') uses its parameter "
                    f"'{i.param[0]}' in '{name}', which structured pruning cannot follow, and has no surgery "
                    f"rule. Register one: `@register_surgery({type(mod).__name__}) "
                    "class MySurgery(LayerSurgery): ...` "
                    f"(slimtorch.prune.structured.register_surgery, see docs/structured_pruning.md), or pass "
                    f"exclude=('{owner}',) (alias ignore=('{owner}',)) to keep its channels."
                )
            if i is not None:
                self.pin(
                    i.elems,
                    f"'{name}' at {self.where()} is not understood channel-wise: its channels are kept",
                )

    def model_module(self, fqn: str) -> nn.Module:
        for m, n in self.modules.items():
            if n == fqn:
                return m
        return nn.Module()

    def elementwise(self, ins: list[torch.Tensor], infos: list[_Info | None], outs: list[torch.Tensor]) -> None:
        out = outs[0]
        nd = out.ndim
        # The first tracked input whose channel dim survives broadcasting at full size defines the output.
        ch, elems = None, None
        for t, i in zip(ins, infos):
            if i is not None and i.elems is not None:
                d = i.ch + nd - t.ndim
                if out.shape[d] == t.shape[i.ch]:
                    ch, elems = d, i.elems
                    break
        if ch is None:
            params = [(t, i) for t, i in zip(ins, infos) if i is not None and i.param is not None]
            if len(params) == 1 and len(ins) == 1:  # unary op on a parameter: still that parameter
                self.set(out, params[0][1])
            for i in infos:
                if i is not None and i.elems is not None:
                    self.pin(i.elems, "")
            return
        for t, i in zip(ins, infos):
            d_in = ch - (nd - t.ndim)  # the input dim aligned with the output channel dim
            size = t.shape[d_in] if d_in >= 0 else 1
            if i is not None and i.elems is not None:
                if i.ch == d_in and size == len(elems):
                    self.couple(i.elems, elems)
                else:
                    self.pin(i.elems, f"channels broadcast against another dim at {self.where()}: kept")
                    if size == len(elems):
                        self.pin(elems, "")
            elif size == len(elems) and size > 1:
                if i is None or i.param is None or not self.bind_param(i, d_in, elems):
                    self.pin(elems, f"a constant tensor is combined channel-wise at {self.where()}: kept")
        for o in outs:
            self.set(o, _Info(ch, elems))

    def reshape(self, name: str, x: torch.Tensor, xi: _Info | None, outs: list[torch.Tensor]) -> None:
        out = outs[0]
        if xi is None or xi.elems is None:
            return  # a reshaped parameter or constant stays untracked (pinned if it meets a channel)
        ins, oshape = list(x.shape), list(out.shape)
        # Group dims of equal products: each group maps a run of input dims onto a run of output dims.
        i = o = 0
        while i < len(ins) or o < len(oshape):
            i0, o0 = i, o
            pi = ins[i] if i < len(ins) else 1
            po = oshape[o] if o < len(oshape) else 1
            i, o = i + 1, o + 1
            while pi != po:
                if pi < po and i < len(ins):
                    pi *= ins[i]
                    i += 1
                elif po < pi and o < len(oshape):
                    po *= oshape[o]
                    o += 1
                else:  # products never meet (zero-size dims): give up on this tensor's channels
                    return self.pin(xi.elems, f"'{name}' at {self.where()}: channels kept")
            if i0 <= xi.ch < i:
                in_dims = [d for d in range(i0, i) if ins[d] != 1]
                out_dims = [d for d in range(o0, min(o, len(oshape))) if oshape[d] != 1]
                if in_dims == [xi.ch] and len(out_dims) == 1:
                    return self.set(out, _Info(out_dims[0], xi.elems))
                if len(out_dims) == 1 and xi.ch in in_dims:
                    # merging dims: a channel becomes a block of features (flatten before a Linear)
                    block = np.zeros([ins[d] for d in in_dims], dtype=np.int64)
                    shape = [1] * len(in_dims)
                    shape[in_dims.index(xi.ch)] = -1
                    block += xi.elems.reshape(shape)
                    return self.set(out, _Info(out_dims[0], block.reshape(-1)))
                self.pin(xi.elems, f"'{name}' splits the channel dim at {self.where()}: kept")
                return
        return

    def permute(
        self, name: str, x: torch.Tensor, xi: _Info | None, args: tuple, kwargs: dict, out: torch.Tensor
    ) -> None:
        if xi is None:
            return
        nd = x.ndim
        if name in ("t", "mT"):
            order = list(range(nd))
            order[-1], order[-2] = order[-2], order[-1]
        elif name in ("transpose", "swapaxes", "swapdims"):
            a, b = (args[1] % nd, args[2] % nd) if len(args) > 2 else (kwargs["dim0"] % nd, kwargs["dim1"] % nd)
            order = list(range(nd))
            order[a], order[b] = order[b], order[a]
        elif name == "permute":
            dims = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
            order = [d % nd for d in dims]
        else:  # movedim
            src, dst = args[1] % nd, args[2] % nd
            order = list(range(nd))
            order.insert(dst, order.pop(src))
        if xi.elems is not None:
            self.set(out, _Info(order.index(xi.ch), xi.elems))
        elif xi.param is not None:
            self.set(out, _Info(param=(xi.param[0], tuple(xi.param[1][d] for d in order))))

    def expand(self, x: torch.Tensor, xi: _Info | None, out: torch.Tensor) -> None:
        if xi is None:
            return
        lead = out.ndim - x.ndim
        if xi.elems is not None:
            if out.shape[xi.ch + lead] == len(xi.elems):
                self.set(out, _Info(xi.ch + lead, xi.elems))
            else:
                self.pin(xi.elems, "")
        elif xi.param is not None:
            dmap = tuple([None] * lead) + tuple(
                p if x.shape[d] == out.shape[d + lead] else None for d, p in enumerate(xi.param[1])
            )
            self.set(out, _Info(param=(xi.param[0], dmap)))

    def getitem(self, x: torch.Tensor, xi: _Info | None, idx: Any, out: torch.Tensor) -> None:
        if xi is None or xi.elems is None:
            return
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (torch.Tensor, list)) or (isinstance(i, np.ndarray)) for i in idx):
            return self.pin(xi.elems, f"advanced indexing at {self.where()}: channels kept")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        dim_in, dim_out, ch_out = 0, 0, None
        for i in idx:
            if i is Ellipsis:
                skip = x.ndim - n_real
                if dim_in <= xi.ch < dim_in + skip:
                    ch_out = dim_out + xi.ch - dim_in
                dim_in += skip
                dim_out += skip
            elif i is None:
                dim_out += 1
            elif isinstance(i, slice):
                if dim_in == xi.ch:
                    if i != slice(None):
                        return self.pin(xi.elems, f"a slice of the channels at {self.where()}: kept")
                    ch_out = dim_out
                dim_in += 1
                dim_out += 1
            else:  # an integer index drops the dim
                if dim_in == xi.ch:
                    return self.pin(xi.elems, f"a single channel is indexed at {self.where()}: kept")
                dim_in += 1
        if ch_out is None:
            ch_out = dim_out + xi.ch - dim_in
        self.set(out, _Info(ch_out, xi.elems))

    def cat(self, tensors: list[torch.Tensor], dim: int, out: torch.Tensor) -> None:
        dim %= out.ndim
        infos = [self.info(t) for t in tensors]
        tracked = [(t, i) for t, i in zip(tensors, infos) if i is not None and i.elems is not None]
        if not tracked:
            return
        ch = tracked[0][1].ch
        if dim == ch:  # channels of the inputs side by side
            parts = []
            for t, i in zip(tensors, infos):
                if i is not None and i.elems is not None and i.ch == dim:
                    parts.append(i.elems)
                else:
                    e = self.new(t.shape[dim])
                    if i is None or i.param is None or not self.bind_param(i, dim, e):
                        self.pin(e, f"a constant is concatenated to channels at {self.where()}: kept")
                    parts.append(e)
            return self.set(out, _Info(ch, np.concatenate(parts)))
        return self.elementwise(tensors, infos, [out])

    def split(self, name: str, x: torch.Tensor, xi: _Info | None, dim: int, outs: list[torch.Tensor]) -> None:
        if xi is None or xi.elems is None:
            return
        dim %= x.ndim
        if dim != xi.ch:
            return self.alias(outs, xi)
        if name == "unbind":
            return self.pin(xi.elems, f"channels unbound at {self.where()}: kept")
        start = 0
        for o in outs:
            n = o.shape[dim]
            self.set(o, _Info(dim, xi.elems[start : start + n]))
            start += n

    def reduce(
        self,
        name: str,
        x: torch.Tensor,
        xi: _Info | None,
        args: tuple,
        kwargs: dict,
        outs: list[torch.Tensor],
    ) -> None:
        if xi is None or xi.elems is None:
            return
        dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        if dims is None:
            return self.pin(xi.elems, f"'{name}' over all dims at {self.where()}: channels kept")
        dims = [d % x.ndim for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        if xi.ch in dims:
            return self.pin(xi.elems, f"'{name}' over the channel dim at {self.where()}: channels kept")
        ch = xi.ch if keep else xi.ch - sum(1 for d in dims if d < xi.ch)
        for o in outs:
            if o.is_floating_point() or o.ndim == x.ndim - (0 if keep else len(dims)):
                self.set(o, _Info(ch, xi.elems))

    # ---- leaves -----------------------------------------------------------------------------
    def leaf_call(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        fqn, rule = self.leaves[module]
        sizes = rule.spaces(module)
        elems = {s: self.space(("module", fqn, s), n) for s, n in sizes.items()}
        ins, outs = rule.bind(module, args, kwargs, output)
        pinned_rule = isinstance(rule, PinnedSurgery)
        shown = display_name(fqn)
        note = rule.note.format(fqn=shown) if pinned_rule else f"{shown}: an input it does not slice keeps its channels"
        bound = {id(t) for _, t, _ in ins}
        for t in _tensors(list(args) + list(kwargs.values())):
            i = self.info(t)
            if id(t) not in bound and i is not None and i.elems is not None:
                self.pin(i.elems, note)
        for s, t, dim in ins:
            dim %= t.ndim
            i = self.info(t)
            e = elems[s]
            if i is not None and i.elems is not None and i.ch == dim and len(i.elems) == len(e):
                self.couple(i.elems, e)
            elif i is not None and i.param is not None and i.elems is None and self.bind_param(i, dim, e):
                pass
            else:
                if i is not None and i.elems is not None:
                    self.pin(i.elems, f"{shown} reads its input channels along another dim: kept")
                self.pin(e, "")
        for a, ia, b, ib in rule.coupling(module):
            self.couple(elems[a][ia], elems[b][ib])
        for s, t, dim in outs:
            self.set(t, _Info(dim % t.ndim, elems[s]))
        if pinned_rule:
            for e in elems.values():
                self.pin(e, rule.note.format(fqn=shown))


def _leaves(
    named: list[tuple[str, nn.Module]], exclude: Sequence[str], filter_fn: FilterFn | None = None
) -> dict[nn.Module, tuple[str, LayerSurgery]]:
    leaves: dict[nn.Module, tuple[str, LayerSurgery]] = {}
    inside: set[str] = set()
    root = find_surgery(type(named[0][1])) if named else None
    if root is not None:
        # The model is itself one layer (nn.Linear(64, 32)): that layer is the only leaf. Its input and
        # output channels are the model's inputs and outputs, so the trace pins them (nothing removable
        # unless the rule has internal units, e.g. attention heads).
        return {named[0][1]: ("", root)}
    for name, m in named:
        parts = name.split(".")
        if any(".".join(parts[:i]) in inside for i in range(1, len(parts))):
            continue
        rule = None
        if name and _matches(name, exclude):
            rule = PinnedSurgery("{fqn} is in exclude=: its channels are kept")
        elif name:
            rule = find_surgery(type(m))
            if rule is not None and filter_fn is not None and not filter_fn(m, name):
                rule = PinnedSurgery("{fqn} is refused by filter_fn: its channels are kept")
        if rule is not None:
            leaves[m] = (name, rule)
            inside.add(name)
    return leaves


def _fx_module(model: nn.Module, leaves: dict[nn.Module, tuple[str, LayerSurgery]]) -> nn.Module:
    """``torch.fx.symbolic_trace`` with rule-carrying layers as leaves; on failure, says in which module."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        current = ROOT_NAME

        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return m in leaves or super().is_leaf_module(m, qualname)

        def call_module(self, m, forward, args, kwargs):  # noqa: ANN001
            prev, self.current = self.current, display_name(self.path_of_module(m))
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self.current = prev

    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... depending on what the code does
        raise SlimtorchError(
            f"torch.fx cannot trace {type(model).__name__}: in module '{tracer.current}': "
            f"{type(e).__name__}: {str(e).splitlines()[0]}. Pass exclude=('{tracer.current}',) (alias "
            f"ignore=('{tracer.current}',)) to treat that "
            "module as an opaque layer whose channels are kept, or use tracer='concrete'."
        ) from e
    return fx.GraphModule(model, graph)


def build_dependency_graph(
    model: nn.Module,
    example_inputs: Any,
    exclude: Sequence[str] = (),
    tracer: str = "concrete",
    *,
    filter_fn: FilterFn | None = None,
    ignore: Sequence[str] = (),
) -> DependencyGraph:
    """Trace ``model`` once and return its groups of coupled, removable channels.

    Args:
        model: the model (left unchanged; traced in eval mode without gradients).
        example_inputs: a tensor, a tuple of positional tensors or a dict of named tensors
            (``input_ids``, ``attention_mask``, ...) the model accepts (batch size 1 is enough).
        exclude: fnmatch patterns of module names whose channels must be kept; such modules are
            opaque (not traced inside), which also gets untraceable code out of the way.
        tracer: ``"fx"`` (``torch.fx.symbolic_trace``, error if it fails), ``"concrete"`` (run the
            model's own forward) or ``"auto"`` (fx, falling back to concrete).
        filter_fn: ``filter_fn(module, fqn) -> bool`` asked about each layer that has a surgery rule;
            a layer it refuses keeps its channels, as if excluded.
        ignore: the former name of ``exclude`` (its patterns are added to it).

    Returns:
        The :class:`DependencyGraph`.
    """
    if tracer not in ("auto", "fx", "concrete"):
        raise ValueError(f"tracer: {tracer!r} is not one of ['auto', 'fx', 'concrete']")
    t0 = time.perf_counter()
    call = example_call(example_inputs)
    exclude = tuple(exclude) + tuple(ignore)
    named = list(model.named_modules())
    leaves = _leaves(named, exclude, filter_fn)
    used = "concrete"
    fwd: nn.Module = model
    notes: list[str] = []
    if tracer in ("auto", "fx") and model not in leaves:  # a one-layer model has no graph for fx to trace
        try:
            fwd = _fx_module(model, leaves)
            used = "fx"
        except SlimtorchError as e:
            if tracer == "fx":
                raise
            notes.append(f"torch.fx failed ({e}); traced the model's forward instead")
    rec = _Recorder(named, leaves)
    handles = []
    for m in leaves:
        handles.append(m.register_forward_pre_hook(lambda mod, a: _enter(rec), with_kwargs=False))
        handles.append(m.register_forward_hook(lambda mod, a, kw, out: _leave(rec, mod, a, kw, out), with_kwargs=True))
    training = [m for _, m in named if m.training]  # eval mode: BatchNorm statistics stay untouched
    for m in training:
        m.training = False
    try:
        with torch.no_grad(), rec:
            for _, a in call.tensors():
                rec.set(a, _Info())  # model inputs: tracked as "seen" but with no channels
            out = call(fwd)
    except SlimtorchError:
        raise
    except Exception as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = _innermost_module(tb.tb_frame, rec.modules) if tb is not None else ROOT_NAME
        raise SlimtorchError(
            f"cannot trace {type(model).__name__}: the forward raised in module '{where}': "
            f"{type(e).__name__}: {e}. Check example_inputs, or pass exclude=('{where}',) (alias ignore=('{where}',)) "
            "to treat that "
            "module as an opaque layer whose channels are kept."
        ) from e
    finally:
        for h in handles:
            h.remove()
        for m in training:
            m.training = True
    for t in _tensors(out):
        i = rec.info(t)
        if i is not None and i.elems is not None:
            rec.pin(i.elems, "")  # the model's outputs (classifier / LM head size) never change
    graph = _components(rec)
    graph.notes = notes + rec.notes
    graph.tracer = used
    graph.build_s = time.perf_counter() - t0
    return graph


def _innermost_module(frame: Any, modules: dict[nn.Module, str]) -> str:
    """Walk up from ``frame`` to the first frame running a method of one of ``modules``; its name."""
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and obj in modules:
            return display_name(modules[obj])
        frame = frame.f_back
    return ROOT_NAME


def _enter(rec: _Recorder) -> None:
    rec.depth += 1


def _leave(rec: _Recorder, mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
    rec.depth -= 1
    if rec.depth == 0:
        rec.leaf_call(mod, args, kwargs, out)


def _components(rec: _Recorder) -> DependencyGraph:
    """Connected components of the element graph -> groups of removable units."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = rec.n_elems
    a = np.concatenate(rec.edges_a) if rec.edges_a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(rec.edges_b) if rec.edges_b else np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    pinned = label[0]
    # Spaces in forward order (producers before consumers); every position as (label, space, pos).
    keys = sorted((k for k in rec.spaces if len(rec.spaces[k])), key=lambda k: int(rec.spaces[k][0]))
    lab = np.concatenate([label[rec.spaces[k]] for k in keys])
    kid = np.concatenate([np.full(len(rec.spaces[k]), i) for i, k in enumerate(keys)])
    pos = np.concatenate([np.arange(len(rec.spaces[k])) for k in keys])
    keep = lab != pinned
    lab, kid, pos = lab[keep], kid[keep], pos[keep]
    order = np.lexsort((pos, kid, lab))
    lab, kid, pos = lab[order], kid[order], pos[order]
    sizes = {k: len(v) for k, v in rec.spaces.items()}
    if not len(lab):
        return DependencyGraph([], sizes)
    # runs of equal (label, space); a unit (= one component) is a sequence of runs
    brk = np.r_[True, (lab[1:] != lab[:-1]) | (kid[1:] != kid[:-1])]
    run_start = np.flatnonzero(brk)
    run_len = np.diff(np.r_[run_start, len(lab)])
    run_kid = kid[run_start]
    unit_start = np.flatnonzero(np.r_[True, lab[run_start][1:] != lab[run_start][:-1]])
    unit_end = np.r_[unit_start[1:], len(run_start)]
    rk, rl = run_kid.tolist(), run_len.tolist()
    # units with the same spaces and counts form one group
    by_sig: dict[tuple, list[int]] = {}
    for a, b in zip(unit_start.tolist(), unit_end.tolist()):
        by_sig.setdefault((tuple(rk[a:b]), tuple(rl[a:b])), []).append(a)
    groups = []
    for (ks, counts), first_runs in by_sig.items():
        r0 = np.array(first_runs)
        r0 = r0[np.argsort(pos[run_start[r0]], kind="stable")]  # by position in the first (producer) space
        members = {}
        for j, (k, c) in enumerate(zip(ks, counts)):
            members[keys[k]] = pos[run_start[r0 + j][:, None] + np.arange(c)]  # (n_units, c)
        gkeys = [keys[k] for k in ks]
        modules = list(dict.fromkeys(k[1] if k[0] == "module" else k[1].rpartition(".")[0] for k in gkeys))
        groups.append(ChannelGroup(members, len(r0), modules))
    groups.sort(key=lambda g: min(_order(rec, k) for k in g.members))
    return DependencyGraph(groups, sizes)


def _order(rec: _Recorder, key: SpaceKey) -> int:
    return int(rec.spaces[key][0])
