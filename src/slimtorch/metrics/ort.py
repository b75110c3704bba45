"""ONNX export (fp32) and ONNX Runtime sessions with a fixed, reproducible thread set-up."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics._batches import Inputs, as_tuple, eval_mode
from slimtorch.metrics.counting import permanent_copy

#: ONNX opset used for every export (supported by every onnxruntime >= 1.14).
OPSET = 17


def input_names(n: int) -> list[str]:
    """Graph input names: ``input`` for one input, ``input0, input1, ...`` for several."""
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def export_onnx_fp32(model: nn.Module, example_inputs: Inputs, path: str | os.PathLike[str],
                     opset: int = OPSET, dynamic_batch: bool = True) -> Path:
    """Export ``model`` (in eval mode) to an ONNX file with the legacy TorchScript exporter.

    Parametrizations (e.g. pruning masks) are baked in on a copy first, so the graph holds plain
    weights. The first dimension of every input and of the output is dynamic when ``dynamic_batch``.

    Args:
        model: the module to export.
        example_inputs: a tensor or tuple of positional tensors used for tracing.
        path: the ``.onnx`` file to write (parent directories are created).
        opset: ONNX opset version.
        dynamic_batch: mark dim 0 of inputs and output as ``batch``.

    Returns:
        The path written.

    Raises:
        SlimtorchError: if the exporter fails (the message names the model and the exporter's error).
    """
    args = as_tuple(example_inputs)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = permanent_copy(model)
    names = input_names(len(args))
    axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    try:
        # Not under no_grad: in eval mode without grad nn.MultiheadAttention takes its fused fast path
        # (aten::_native_multi_head_attention), which the TorchScript exporter cannot translate.
        # Tracer warnings (Python-side shape checks frozen into the trace) concern shapes other than
        # the batch, which the export keeps fixed anyway.
        with eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, args, str(p), dynamo=False, opset_version=opset, input_names=names,
                              output_names=["output"], dynamic_axes=axes, do_constant_folding=True)
    except Exception as e:  # the exporter raises many unrelated types; report them uniformly
        raise SlimtorchError(f"ONNX export of {type(model).__name__} to {p} failed: {e}") from e
    return p


def onnx_session(path: str | os.PathLike[str], threads: int = 1,
                 optimized_path: str | os.PathLike[str] | None = None) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` with ``threads`` intra-op threads, 1 inter-op thread, sequential execution.

    All graph optimizations are on and ONNX Runtime logs errors only. This is the one place the library
    opens ONNX Runtime sessions (latency, quantized-export checks, the CLI).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads.
        optimized_path: if given, ONNX Runtime writes the graph it actually executes (after its fusions,
            e.g. QDQ -> integer kernels) to this file.

    Raises:
        SlimtorchError: if the file is missing or ONNX Runtime cannot load it.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    p = Path(path)
    if not p.is_file():
        raise SlimtorchError(f"no ONNX file at {p}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception classes
        raise SlimtorchError(f"ONNX Runtime cannot load {p}: {e}") from e


def session_feed(session: ort.InferenceSession, example_inputs: Inputs | Mapping[str, torch.Tensor]
                 ) -> dict[str, object]:
    """Map the session's graph inputs to numpy copies of ``example_inputs``: positional tensors in graph-input
    order, or a dict of named tensors (``input_ids``, ``attention_mask``, ...) by name (other keys ignored)."""
    if isinstance(example_inputs, Mapping):
        names = [gi.name for gi in session.get_inputs()]
        missing = [n for n in names if n not in example_inputs]
        if missing:
            raise ValueError(f"the ONNX graph takes the inputs {names}; {missing} are missing from the given "
                             f"{sorted(example_inputs)}")
        return {n: example_inputs[n].detach().cpu().numpy() for n in names}
    args = as_tuple(example_inputs)
    graph_inputs = session.get_inputs()
    if len(graph_inputs) != len(args):
        raise ValueError(
            f"the ONNX graph takes {len(graph_inputs)} inputs ({[i.name for i in graph_inputs]}) "
            f"but {len(args)} example inputs were given"
        )
    return {gi.name: t.detach().cpu().numpy() for gi, t in zip(graph_inputs, args)}
