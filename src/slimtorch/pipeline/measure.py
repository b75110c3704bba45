"""Measure one stage's product: the row of the stage table and the per-layer sparsity / bit widths.

The row has the fixed public names ``stage, accuracy, size_bytes, params, nonzero_params, macs,
latency_ms, runtime`` (what ``slimtorch run --json`` and ``slimtorch demo --json`` write). Accuracy
and latency are those of the deployed form: an ONNX file (int8 QDQ or exported) is evaluated and
timed on ONNX Runtime; a torch model is timed on the recipe's runtime (ONNX Runtime through an fp32
export by default, torch when it cannot be exported, and the row says which). ``size_bytes`` is the
size of the stage's deployable file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.core.errors import SlimtorchError
from slimtorch.pipeline.context import StageContext, fit_inputs
from slimtorch.pipeline.stage_def import QUANTIZED, Product

#: The public columns of a stage row, in table order.
ROW_KEYS = ("stage", "accuracy", "size_bytes", "params", "nonzero_params", "macs", "latency_ms", "runtime")
_LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


def onnx_accuracy(
    path: str | Path, dataset: Any, like: nn.Module | None = None, batch_size: int = 256, threads: int = 1
) -> float:
    """Top-1 accuracy of an ONNX classifier on ``dataset`` run by ONNX Runtime.

    Args:
        path: the ``.onnx`` file (single input, logits output; ``(B, T, V)`` LM logits are flattened).
        dataset: ``(x, y)`` pairs.
        like: the torch model the file was exported from; inputs are reshaped as it declares.
        batch_size: evaluation batch size (the graph must have a dynamic batch dimension).
        threads: ONNX Runtime intra-op threads.
    """
    from torch.utils.data import DataLoader

    from slimtorch.metrics import onnx_session

    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    correct, count = 0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if like is not None:
            x = fit_inputs(like, x)
        logits = session.run(None, {name: x.numpy()})[0]
        pred = np.asarray(logits).argmax(-1)
        correct += int((pred == y.numpy()).sum())
        count += int(y.numel())
    return correct / max(1, count)


def bit_width(module: nn.Module) -> int:
    """Bits per stored weight of a layer: quantized (fake-quant or packed), shared (index bits) or float."""
    wq = getattr(module, "weight_quant", None)
    if wq is not None and isinstance(getattr(wq, "bits", None), int):
        return int(wq.bits)
    if isinstance(getattr(module, "bits", None), int) and hasattr(module, "qweight"):
        return int(module.bits)
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:  # type: ignore[union-attr]
            if isinstance(getattr(p, "bits", None), int) and hasattr(p, "centroids"):
                return int(p.bits)
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor):
        return torch.finfo(w.dtype).bits if w.dtype.is_floating_point else torch.iinfo(w.dtype).bits
    return 32


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """Per Linear / Conv / Embedding (or packed quantized) layer: ``name, params, sparsity, bits``."""
    out = []
    for name, m in model.named_modules():
        packed = hasattr(m, "qweight") and isinstance(getattr(m, "bits", None), int)
        if not (isinstance(m, _LAYER_TYPES) or packed) or name.endswith(("original", "parametrizations")):
            continue
        w = getattr(m, "weight", None) if not packed else None
        if isinstance(w, torch.Tensor):
            with torch.no_grad():
                n, nz = w.numel(), int(torch.count_nonzero(w.detach()))
        else:
            n = int(getattr(m, "in_features", 0)) * int(getattr(m, "out_features", 0))
            nz = n
        out.append(
            {
                "name": name or type(m).__name__,
                "params": n,
                "sparsity": 1.0 - nz / n if n else 0.0,
                "bits": bit_width(m),
            }
        )
    return out


def measure(ctx: StageContext, stage: str, product: Product) -> dict[str, Any]:
    """The stage-table row of ``product`` plus ``loss`` / ``layers`` / ``artefact`` details.

    Args:
        ctx: the run context (test data, measurement options).
        stage: the row's name (``"03-prune"``).
        product: what the stage produced.
    """
    from slimtorch import metrics

    opts = ctx.recipe.measure
    model = product.model
    test = ctx.test_set
    inputs = ctx.example_inputs(model, opts.batch_size)
    row: dict[str, Any] = {"stage": stage}
    loss = None
    if product.onnx is not None:
        row["accuracy"] = onnx_accuracy(product.onnx, test, like=model, threads=opts.threads)
    else:
        ev = metrics.evaluate(model, test)
        row["accuracy"], loss = ev["accuracy"], ev["loss"]
    row["size_bytes"] = metrics.file_size(product.artefact) if product.artefact else metrics.model_size_bytes(model)
    counts = product.info.get("float_counts")
    if counts:  # quantization keeps the weights' number, zeros and MACs: counted on the float model before it
        row.update({k: counts[k] for k in ("params", "nonzero_params", "macs")})
    else:
        row["params"] = metrics.count_params(model)
        row["nonzero_params"] = metrics.count_nonzero(model)
        row["macs"] = int(metrics.count_macs(model, inputs))
    row["latency_ms"], row["runtime"] = _latency(model, product.onnx, inputs, opts, product.state != QUANTIZED)
    row["loss"] = loss
    row["state"] = product.state
    row["artefact"] = (
        str(Path(product.artefact).relative_to(ctx.run_dir))
        if product.artefact and Path(product.artefact).is_relative_to(ctx.run_dir)
        else (str(product.artefact) if product.artefact else None)
    )
    row["layers"] = layer_table(model)
    row["cpu"] = metrics.cpu_info().to_dict()  # latency and int8 correctness depend on the CPU
    row["target"] = product.info.get("target")
    return row


def _latency(
    model: nn.Module, onnx: Path | None, inputs: torch.Tensor, opts: Any, exportable: bool
) -> tuple[float, str]:
    from slimtorch.metrics import measure_latency

    kw = {"threads": opts.threads, "warmup": opts.warmup, "repeats": opts.repeats}
    if onnx is not None:
        return measure_latency(onnx, inputs, "onnxruntime", **kw), "onnxruntime"
    if opts.runtime == "onnxruntime" and exportable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return measure_latency(model, inputs, "onnxruntime", **kw), "onnxruntime"
        except (SlimtorchError, RuntimeError, ValueError):
            pass  # not exportable: timed in torch, and the row says so
    return measure_latency(model, inputs, "torch", **kw), "torch"


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """Only the fixed public keys of a row (the ``--json`` stage table)."""
    return {k: row.get(k) for k in ROW_KEYS}
