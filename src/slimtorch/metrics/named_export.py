"""ONNX export of models with named inputs (Hugging Face transformers) without user wrappers.

A Hugging Face model takes keyword inputs (``input_ids``, ``attention_mask``, ``pixel_values``), returns a
``ModelOutput``, keeps a KV cache and picks an attention kernel; none of that exports as it is. This
module does what a user otherwise writes by hand:

* :class:`NamedInputs` wraps the model so the exporter sees ``forward(*tensors)`` in a fixed order of
  names, passes ``use_cache=False`` when the model has a KV cache (the cache objects are not tensors),
  and returns one tensor (``logits`` / ``last_hidden_state``, :func:`slimtorch.core.batches.output_tensor`);
* the graph inputs carry those names with a dynamic ``batch`` axis, and a dynamic ``sequence`` axis on
  integer token inputs (ids, masks, token types);
* :func:`export_named` runs the ``torch.export``-based exporter (``dynamo=True``) first. If it fails, it
  retries with ``attn_implementation="eager"`` (the SDPA kernel with grouped-query attention is the usual
  culprit), then with the legacy TorchScript exporter. A TorchScript trace freezes Python-side shape
  logic (measured: BERT's and GPT-2's masks came out wrong by up to 2.6 in fp32 even at the traced shape),
  so a file from that fallback is run with ONNX Runtime at two other shapes and refused if it disagrees;
* exporter chatter (thousands of lines of graph on stderr) is captured; a failure is one short
  :class:`~slimtorch.core.errors.SlimtorchError` naming the op that failed and what to try.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.core.batches import ModelInputs, output_tensor
from slimtorch.core.errors import SlimtorchError

#: Opset of the ``torch.export``-based exporter (its lowest well-supported one).
DYNAMO_OPSET = 18


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (duck-typed: no transformers import)."""
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def needs_named_export(model: nn.Module, example_inputs: Any) -> bool:
    """Whether ``model`` / ``example_inputs`` need :func:`export_named` (a HF model or named inputs)."""
    return is_hf_model(model) or isinstance(example_inputs, (Mapping, ModelInputs))


def _takes(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` accepts keyword ``name`` (by name, or ``use_cache`` through ``**kwargs``
    of a model whose config has a cache setting)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return True
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return var_kw and name == "use_cache" and getattr(getattr(model, "config", None), "use_cache", None) is not None


class NamedInputs(nn.Module):
    """``forward(*tensors)`` -> ``model(**dict(zip(names, tensors)), **fixed)`` -> one output tensor.

    Args:
        model: the wrapped model (shared, not copied).
        names: the model's input names, in graph order.
        fixed: constant keyword arguments (``use_cache=False``).
        output_key: which field of a ``ModelOutput`` to return (None: ``logits``, else
            ``last_hidden_state``, ..., see :data:`slimtorch.core.batches.OUTPUT_KEYS`).
    """

    def __init__(self, model: nn.Module, names: list[str], fixed: dict[str, Any] | None = None,
                 output_key: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.fixed = dict(fixed or {})
        self.output_key = output_key

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, tensors)), **self.fixed)
        return output_tensor(out, self.output_key)


def named_inputs(example_inputs: Any) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """``(names, tensors)`` of a dict / ``BatchEncoding`` / :class:`ModelInputs` of keyword tensors.

    Non-tensor values and ``labels``-like targets are refused or dropped by
    :func:`slimtorch.core.batches.split_batch`.
    """
    from slimtorch.core.batches import split_batch

    inputs = example_inputs if isinstance(example_inputs, ModelInputs) else split_batch(example_inputs)[0]
    if inputs.args:
        raise SlimtorchError("named export takes keyword inputs only (a dict such as {'input_ids': ..., "
                             f"'attention_mask': ...}}); got {len(inputs.args)} positional input(s)")
    bad = [k for k, v in inputs.kwargs.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SlimtorchError(f"example inputs {bad} are not tensors; pass only tensor inputs to export")
    return list(inputs.kwargs), tuple(inputs.kwargs.values())


def wrap_for_export(model: nn.Module, example_inputs: Any, output_key: str | None = None
                    ) -> tuple[NamedInputs, list[str], tuple[torch.Tensor, ...]]:
    """The exportable wrapper of ``model`` and its named example tensors.

    A tensor (or tuple) example for a HF model is taken as its main input (``input_ids`` for text models,
    ``pixel_values`` for vision models: the forward's first parameter).
    """
    if isinstance(example_inputs, (Mapping, ModelInputs)):
        names, tensors = named_inputs(example_inputs)
    else:
        tensors = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params[: len(tensors)]]
    fixed = {"use_cache": False} if _takes(model, "use_cache") and "use_cache" not in names else {}
    return NamedInputs(model, names, fixed, output_key), names, tensors


def dynamic_axes_of(names: list[str], tensors: tuple[torch.Tensor, ...]) -> dict[str, dict[int, str]]:
    """``batch`` on axis 0 of every input; ``sequence`` on axis 1 of integer inputs of rank >= 2 (tokens)."""
    axes = {}
    for n, t in zip(names, tensors):
        a = {0: "batch"} if t.dim() else {}
        if t.dim() >= 2 and not t.is_floating_point():
            a[1] = "sequence"
        axes[n] = a
    return axes


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture what exporters print (Python and C++ level, stdout and stderr) and silence their logs."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreters)
                    pass
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield buf
        finally:
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


_OP_PATTERNS = (
    r"aten::[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?",
    r"(?:torch\.ops\.)?aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?",
    r"Unsupported FX nodes: \{[^}]{0,120}\}",
    r"'[A-Za-z0-9_]+' (?:is not|not) (?:supported|implemented)",
)


def failing_op(text: str) -> str | None:
    """The first operator named in an exporter's error text (``aten::diff``, ``aten.linalg_eigh``), if any."""
    for pat in _OP_PATTERNS:
        m = re.search(pat, text)
        if m:
            return m.group(0)
    return None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "-"))]
    text = lines[0] if lines else type(e).__name__
    return text[:160] + ("..." if len(text) > 160 else "")


def _run_dynamo(wrapper: nn.Module, tensors: tuple[torch.Tensor, ...], names: list[str], path: Path,
                axes: dict[str, dict[int, str]] | None) -> None:
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = None
    if axes:
        shapes = (tuple({ax: dims.setdefault(label, Dim(label)) for ax, label in axes[n].items()} or None
                        for n in names),)
    prog = torch.onnx.export(wrapper, tensors, None, dynamo=True, opset_version=DYNAMO_OPSET, input_names=names,
                             output_names=["output"], dynamic_shapes=shapes, optimize=True, verify=False,
                             report=False)
    prog.save(str(path))
    strip_debug_info(path)


def strip_debug_info(path: Path) -> None:
    """Remove what the ``torch.export`` exporter records for debugging: per-node stack traces and module
    paths (``metadata_props``, ``doc_string``) and value names' type annotations; on a small model they
    are most of the file (measured: 300 of 370 KB on a 2-layer BERT)."""
    import onnx

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.ClearField("doc_string")
    for vi in (*proto.graph.input, *proto.graph.output, *proto.graph.initializer):
        del vi.metadata_props[:]
    del proto.graph.value_info[:]
    del proto.graph.metadata_props[:]
    onnx.save(proto, str(path))


def _run_torchscript(wrapper: nn.Module, tensors: tuple[torch.Tensor, ...], names: list[str], path: Path,
                     axes: dict[str, dict[int, str]] | None, opset: int) -> None:
    out_axes = {0: "batch"}
    if axes and any(1 in a for a in axes.values()):
        out_axes[1] = "sequence"
    torch.onnx.export(wrapper, tensors, str(path), dynamo=False, opset_version=opset, input_names=names,
                      output_names=["output"],
                      dynamic_axes={**axes, "output": out_axes} if axes else None, do_constant_folding=True)


@contextlib.contextmanager
def _attention(model: nn.Module, impl: str | None) -> Iterator[None]:
    """Temporarily switch a HF model to attention implementation ``impl`` (None: leave it)."""
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "_attn_implementation", None)
    if impl is None or cfg is None or old == impl:
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter(impl)
        else:
            cfg._attn_implementation = impl
    except Exception:  # a model that cannot switch keeps its own
        yield
        return
    try:
        yield
    finally:
        if setter is not None:
            setter(old)
        else:
            cfg._attn_implementation = old


def _other_shapes(names: list[str], tensors: tuple[torch.Tensor, ...],
                  axes: dict[str, dict[int, str]]) -> list[tuple[torch.Tensor, ...]]:
    """Two input sets at other batch sizes / sequence lengths than the example (for checking a trace)."""
    out = []
    for rep, cut in ((2, 1), (1, 2)):
        ts = []
        for n, t in zip(names, tensors):
            x = t.repeat(rep, *([1] * (t.dim() - 1))) if t.dim() else t
            if 1 in axes.get(n, {}) and x.shape[1] > cut + 1:
                x = x[:, : x.shape[1] - cut]
            ts.append(x)
        out.append(tuple(ts))
    return out


def check_at_other_shapes(wrapper: nn.Module, path: Path, names: list[str], tensors: tuple[torch.Tensor, ...],
                          axes: dict[str, dict[int, str]], rtol: float,
                          reference: Callable[..., torch.Tensor] | None = None) -> float:
    """Largest ONNX-vs-torch difference, relative to the peak |output|, at two other input shapes.

    ``reference`` computes the expected output (default: ``wrapper`` itself).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for ts in _other_shapes(names, tensors, axes):
        with torch.no_grad():
            ref = (reference or wrapper)(*ts).float()
        got = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in zip(names, ts)})[0]).float()
        if got.shape != ref.shape:
            return float("inf")
        worst = max(worst, float((got - ref).abs().max()) / (float(ref.abs().max()) + 1e-12))
    return worst


def export_named(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str], *,
                 dynamic: bool = True, exporter: str = "auto", opset: int = 17, output_key: str | None = None,
                 check_rtol: float = 1e-3, reference: Callable[..., torch.Tensor] | None = None,
                 prepare: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> Path:
    """Export ``model`` with named inputs (HF models as they are) to ONNX; see the module docstring.

    Args:
        model: a HF model or any module taking keyword tensors; exported in eval mode (restored after).
        example_inputs: a dict / ``BatchEncoding`` of tensors (``input_ids``, ``attention_mask``, ...), or a
            tensor for the model's first input.
        path: the ``.onnx`` file.
        dynamic: dynamic ``batch`` (and ``sequence`` for token inputs) axes.
        exporter: ``"auto"`` (torch.export, then eager attention, then TorchScript), ``"dynamo"`` or
            ``"torchscript"``.
        opset: opset of the TorchScript fallback.
        output_key: the ``ModelOutput`` field to export (default ``logits`` / ``last_hidden_state``).
        check_rtol: a TorchScript file must match the model within this fraction of the peak |output| at
            two other shapes.
        reference: the expected output for that check (default: the model).
        prepare: a context manager factory entered around each exporter call (e.g. integer constants of
            quantized layers).

    Returns:
        The path written.

    Raises:
        SlimtorchError: one short message naming the failing op and what to try.
    """
    from slimtorch.metrics._batches import eval_mode

    if exporter not in ("auto", "dynamo", "torchscript"):
        raise SlimtorchError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    wrapper, names, tensors = wrap_for_export(model, example_inputs, output_key)
    if dynamic and tensors and tensors[0].dim() and tensors[0].shape[0] == 1:
        # torch.export specialises size-1 dims; an example batch of 2 keeps the batch axis symbolic
        tensors = tuple(t.repeat(2, *([1] * (t.dim() - 1))) if t.dim() else t for t in tensors)
    axes = dynamic_axes_of(names, tensors) if dynamic else None
    plans: list[tuple[str, str | None]] = []
    if exporter in ("auto", "dynamo"):
        plans += [("dynamo", None)]
        if exporter == "auto" and getattr(getattr(model, "config", None), "_attn_implementation", None) not in (
                None, "eager"):
            plans += [("dynamo", "eager")]
    if exporter in ("auto", "torchscript"):
        plans += [("torchscript", "eager" if is_hf_model(model) else None)]
    errors: list[tuple[str, BaseException, str]] = []
    with eval_mode(model):
        for kind, attn in plans:
            try:
                with _attention(model, attn), quiet() as log, (prepare() if prepare else contextlib.nullcontext()):
                    if kind == "dynamo":
                        _run_dynamo(wrapper, tensors, names, p, axes)
                    else:
                        _run_torchscript(wrapper, tensors, names, p, axes, opset)
            except Exception as e:  # exporters raise many unrelated types; summarised below
                errors.append((kind + (f" ({attn} attention)" if attn else ""), e, log.getvalue()))
                continue
            if kind == "torchscript" and axes:
                with _attention(model, attn):
                    err = check_at_other_shapes(wrapper, p, names, tensors, axes, check_rtol, reference)
                if err > check_rtol:
                    p.unlink(missing_ok=True)
                    errors.append((kind, SlimtorchError(
                        f"the traced graph is wrong at other input shapes (off by {err:.3g} of the peak output): "
                        "the trace froze shape-dependent code"), ""))
                    continue
            return p
    raise export_error(type(model).__name__, errors)


def export_error(what: str, errors: list[tuple[str, BaseException, str]]) -> SlimtorchError:
    """One short error for failed export attempts: the op that failed, each exporter's reason, what to try."""
    op = next((o for _, e, log in errors for o in [failing_op(str(e) + "\n" + log)] if o), None)
    tried = "; ".join(f"{kind}: {_first_line(e)}" for kind, e, _ in errors)
    hint = ("replace or remove that op (or wrap it so it runs outside the exported part), or export with "
            "dynamic=False" if op else "export with dynamic=False, or with exporter='torchscript'/'dynamo' "
            "to see one exporter's reason")
    where = f" at op {op}" if op else ""
    return SlimtorchError(f"ONNX export of {what} failed{where} ({tried}). Try: {hint}")


__all__ = ["DYNAMO_OPSET", "NamedInputs", "check_at_other_shapes", "dynamic_axes_of", "export_error",
           "export_named", "failing_op", "is_hf_model", "named_inputs", "needs_named_export", "quiet",
           "wrap_for_export"]
