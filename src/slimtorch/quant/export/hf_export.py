"""QDQ export of quantized Hugging Face models (and any model with named inputs), no wrapper needed.

``export_onnx`` sends a model here when it is a HF model or its example inputs are a dict
(``{"input_ids": ..., "attention_mask": ...}``). The export itself is
:func:`slimtorch.metrics.named_export.export_named` (``torch.export``-based exporter first, KV cache off,
attention implementation switched to ``eager`` if SDPA fails, TorchScript as the checked last resort,
named inputs with dynamic ``batch`` / ``sequence`` axes, one short error). Under ``torch.export`` the
fake-quant modules emit their ``QuantizeLinear`` / ``DequantizeLinear`` nodes through
:mod:`slimtorch.quant.modules.onnx_ops`, with the integer codes registered as buffers for the trace
(:func:`~slimtorch.quant.modules.onnx_ops.export_constants`); embeddings export as ``Gather`` of int8 rows
+ per-row ``DequantizeLinear`` (:mod:`slimtorch.quant.modules.embedding`). The graph is then tidied like
every QDQ export (:func:`slimtorch.quant.export.onnx_export.tidy_qdq_graph`) and checked against the
simulation on the example inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from slimtorch.metrics.named_export import export_named, wrap_for_export
from slimtorch.quant.export import targets as T
from slimtorch.quant.modules.onnx_ops import export_constants


def export_named_qdq(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any, *,
                     dynamic: bool, target: T.Target, check: bool, tolerance: float) -> Path:
    """Write the quantized ``model`` (named inputs) as an ONNX QDQ file; see the module docstring.

    Args:
        model: a model quantized by :func:`slimtorch.quant.quantize_`.
        path: output file.
        example_inputs: a dict of named tensors (or a tensor for the model's first input).
        dynamic: dynamic ``batch`` / ``sequence`` axes.
        target: deployment target, stored in the file's metadata.
        check: run the file with ONNX Runtime on the example and compare with the simulation.
        tolerance: the check's allowance, a fraction of the peak |output|.

    Returns:
        The path written.

    Raises:
        SlimtorchError: the export failed (one short message) or the check failed (the file is removed).
    """
    from slimtorch.quant.export.onnx_export import ExportCheckError, _quantized_layers, check_export, tidy_qdq_graph

    out = export_named(model, example_inputs, path, dynamic=dynamic, check_rtol=tolerance,
                       prepare=lambda: export_constants(model))
    proto = onnx.load(str(out))
    tidy_qdq_graph(proto)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "slimtorch.target": target.name})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    if check and _quantized_layers(model) and T.warn_if_host_cannot_check(target, f"the exported file {out}"):
        wrapper, _, tensors = wrap_for_export(model, example_inputs)
        try:
            check_export(wrapper, out, tensors)
        except ExportCheckError as e:
            out.unlink(missing_ok=True)
            raise ExportCheckError(f"{e} (the file was removed)") from None
    return out
