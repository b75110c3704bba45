"""Stages that do not change the weights: ``export`` (write the ONNX file to deploy) and ``evaluate``."""

from __future__ import annotations

import copy
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtorch.core.config import Config, check_choice
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.stage_def import (
    EXPORTED,
    STATES,
    Product,
    StageDef,
    constant_state,
    keep_state,
    register_stage,
)

ONNX_FILE = "model.onnx"


@dataclass
class EvaluateOptions(Config):
    """The ``evaluate`` stage has no options: it measures the current product (every stage is measured)."""


def run_evaluate(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Nothing to change; the runner measures the product and writes the row."""
    return product


def restore_previous(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """A stage that did not change the product leaves the previous one."""
    return previous


register_stage(
    StageDef(
        name="evaluate",
        options=EvaluateOptions,
        run=run_evaluate,
        restore=restore_previous,
        accepts=frozenset(STATES),
        produces=keep_state,
        doc="measure the current model (accuracy, size, MACs, latency)",
    )
)


@dataclass
class ExportOptions(Config):
    """Options of the ``export`` stage.

    Args:
        format: ``onnx`` (the only format; int8 models as QDQ graphs ONNX Runtime runs with integer kernels).
        dynamic_batch: symbolic batch dimension.
        target: int8 deployment target (``portable``, ``x86-avx2``, ``x86-vnni``; see
            :mod:`slimtorch.quant.export.targets`); None: the target the quantize stage used.
    """

    format: str = "onnx"
    dynamic_batch: bool = True
    target: str | None = None

    def __post_init__(self) -> None:
        check_choice("format", self.format, ["onnx"])
        if self.target is not None:
            from slimtorch.quant.export.targets import check_target

            check_target(self.target)
        if not isinstance(self.dynamic_batch, bool):
            raise ValueError(f"dynamic_batch must be true or false, got {self.dynamic_batch!r}")


def run_export(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Write ``model.onnx``: the int8 QDQ file of a quantized model, else an fp32 graph."""
    from slimtorch.metrics import export_onnx_fp32, permanent_copy

    out = ctx.stage_dir / ONNX_FILE
    quant_target = product.info.get("target")
    if product.onnx is not None and spec.options.target in (None, quant_target):
        shutil.copyfile(product.onnx, out)
    else:
        example = ctx.example_inputs(product.model, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if product.state == "quantized":
                from slimtorch.quant.export.onnx_export import export_onnx

                export_onnx(product.model, out, example, dynamic_batch=spec.options.dynamic_batch,
                            target=spec.options.target)
            else:
                model = permanent_copy(copy.deepcopy(product.model))
                export_onnx_fp32(model, example, out, dynamic_batch=spec.options.dynamic_batch)
    info = dict(product.info)
    if product.state == "quantized":
        info["target"] = spec.options.target or quant_target
    return Product(model=product.model, state=EXPORTED, artefact=out, onnx=out, info=info)


def restore_export(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """The exported file of a completed ``export`` stage."""
    out = Path(record["dir"]) / ONNX_FILE
    return Product(model=previous.model, state=EXPORTED, artefact=out, onnx=out, info=dict(previous.info))


register_stage(
    StageDef(
        name="export",
        options=ExportOptions,
        run=run_export,
        restore=restore_export,
        accepts=frozenset(STATES) - {EXPORTED},
        produces=constant_state(EXPORTED),
        doc="write the deployable ONNX file (int8 QDQ for quantized models)",
    )
)
