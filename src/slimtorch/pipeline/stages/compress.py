"""Stages that compress: ``prune`` (any registered pruning config), ``quantize`` (any registered
quantization config) and ``share`` (k-means weight sharing).

Their technique options are the techniques' own configs (``type: Magnitude | NM | Channel``, ``type:
Int8Static | Int8Dynamic | WeightOnly | QAT``, ``type: WeightSharing``); the stage adds only what the
pipeline does around them (fine-tuning, export).
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimtorch.core.config import Config, check_choice
from slimtorch.core.registry import TypeRegistry
from slimtorch.pipeline.artefacts import masked_layer_names, remask_, restore_saved, save_float
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.options import FitOptions
from slimtorch.pipeline.stage_def import (
    FLOAT_STATES,
    MASKED,
    QUANTIZED,
    SHARED,
    Product,
    StageDef,
    constant_state,
    register_stage,
)

QUANT_STATE_FILE = "quantized.safetensors"
QUANT_ONNX_FILE = "model.onnx"
SLIM_FILE = "model.slim"


def _check_finetune(finetune: Any) -> None:
    if finetune is not None and not isinstance(finetune, FitOptions):
        raise ValueError(f"finetune must be a mapping of training options, got {finetune!r}")


# ---- prune ---------------------------------------------------------------------------------------
@dataclass
class PruneOptions(Config):
    """Pipeline options of the ``prune`` stage (the method's own options come from its config).

    Args:
        finetune: training after pruning (masks keep the zeros); ``None``: no fine-tuning. Schedules that
            train while pruning (``AGP``, ``Iterative``) bring their own ``epochs`` / ``finetune``.
    """

    finetune: FitOptions | None = None

    def __post_init__(self) -> None:
        _check_finetune(self.finetune)


def pruning_configs() -> dict[str, type[Config]]:
    """Every config type ``prune_`` has a handler for, by class name."""
    from slimtorch.prune.api import PRUNERS

    return {cls.__name__: cls for cls in PRUNERS}


@dataclass(frozen=True)
class TechniqueNeeds:
    """What a technique config needs from the stage that runs it (declared per config type in :data:`NEEDS`).

    Args:
        leaves_masks: the method leaves weight masks (state ``masked``); ``False``: it changes the
            structure and leaves a dense model (channel pruning), run on plain weights with calibration
            batches, existing masks re-applied afterwards.
        trains: the stage's ``finetune`` run trains the model *inside* the technique's prepared form
            (QAT's fake quantization), which the stage then converts.
    """

    leaves_masks: bool = True
    trains: bool = False


#: Config type -> what it needs; a type without an entry (or a registered base) needs the defaults.
NEEDS: TypeRegistry[TechniqueNeeds] = TypeRegistry("technique needs")
#: Pruning schedule type -> ``driver(ctx, model, cfg, schedule, example) -> PruneReport`` for schedules
#: that train while pruning (training goes through ``ctx.fit``: checkpoints, resume); others run ``prune_``.
SCHEDULE_DRIVERS: TypeRegistry[Callable[..., Any]] = TypeRegistry("schedule driver")


def needs_of(cfg: Any) -> TechniqueNeeds:
    """What ``cfg``'s type declared in :data:`NEEDS` (the built-in techniques register on first use)."""
    _register_builtin_needs()
    return NEEDS.find(type(cfg)) or TechniqueNeeds()


@functools.cache
def _register_builtin_needs() -> None:
    # Lazy: importing the pipeline does not import every technique.
    from slimtorch.prune import AGP, Channel, Iterative
    from slimtorch.quant.workflows.qat import QAT

    NEEDS.register(Channel, TechniqueNeeds(leaves_masks=False))
    NEEDS.register(QAT, TechniqueNeeds(trains=True))
    SCHEDULE_DRIVERS.register(AGP, _drive_agp)
    SCHEDULE_DRIVERS.register(Iterative, _drive_iterative)


def _drive_agp(ctx: StageContext, model: Any, cfg: Any, schedule: Any, example: Any) -> Any:
    # Driven here rather than by prune_(data=...) so training goes through ctx.fit (checkpoints,
    # resume). Masks exist from step 0 so a resumed checkpoint loads into the same structure.
    from slimtorch.prune import MaskPruner

    pruner = MaskPruner(model, cfg, example)
    ones_masks_(pruner.layers)
    ctx.fit(model, FitOptions.from_dict({"epochs": schedule.epochs, **schedule.finetune}), callbacks=[pruner])
    return pruner.report()


def _drive_iterative(ctx: StageContext, model: Any, cfg: Any, schedule: Any, example: Any) -> Any:
    from slimtorch.prune import iterative_prune_

    opts = FitOptions.from_dict({"epochs": schedule.epochs, **schedule.finetune})
    return iterative_prune_(model, cfg, lambda m, k: ctx.fit(m, opts, out_dir=ctx.stage_dir / f"round{k}"), example)


def prune_produces(spec: Any, state: str) -> str:
    """Structural pruning leaves a smaller dense model (state unchanged); mask methods leave masks."""
    return MASKED if needs_of(spec.technique).leaves_masks else state


def run_prune(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Prune the current model with the stage's config, then fine-tune if asked."""
    from slimtorch.prune import make_permanent_, prune_

    cfg, model = spec.technique, product.model
    example = ctx.example_inputs(model, 1)
    schedule = getattr(cfg, "active_schedule", None)
    driver = None if schedule is None else SCHEDULE_DRIVERS.find(type(schedule))
    if not needs_of(cfg).leaves_masks:
        masked = masked_layer_names(model)
        make_permanent_(model)  # surgery needs plain weights; the zeros are re-masked below
        report = prune_(model, cfg, example_inputs=example, data=ctx.calib_batches(model))
        remask_(model, [n for n in masked if _has(model, n)])
    elif driver is not None:
        report = driver(ctx, model, cfg, schedule, example)
    else:
        report = prune_(model, cfg, example_inputs=example)
    finetune = spec.options.finetune
    if finetune is not None and finetune.epochs > 0:
        ctx.fit(model, finetune, out_dir=ctx.stage_dir / "finetune")
    return save_float(
        ctx,
        model,
        {
            "method": type(cfg).__name__,
            "params_before": report.params_before,
            "nonzeros_before": report.nonzeros_before,
        },
    )


def _has(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.no_grad()
def ones_masks_(layers: list[tuple[str, Any]]) -> None:
    """All-ones masks on layers without one, so a schedule's checkpoints always hold the masked structure."""
    from slimtorch.prune import apply_mask_, get_mask

    for _, m in layers:
        if get_mask(m) is None:
            apply_mask_(m, torch.ones_like(m.weight, dtype=torch.bool))


register_stage(
    StageDef(
        name="prune",
        options=PruneOptions,
        run=run_prune,
        restore=restore_saved,  # masks come back from the zeros
        accepts=FLOAT_STATES,
        produces=prune_produces,
        techniques=pruning_configs,
        default_technique="Magnitude",
        trains=True,
        doc="prune (type: Magnitude | NM | Channel | ...), optionally fine-tune",
    )
)


# ---- quantize ------------------------------------------------------------------------------------
@dataclass
class QuantizeOptions(Config):
    """Pipeline options of the ``quantize`` stage.

    Args:
        export: write the int8 ONNX QDQ file (the deployed form, measured on ONNX Runtime) when the
            scheme can be exported; otherwise the quantized weights file is the artefact.
        finetune: the QAT training run with fake quantization on (``type: QAT``; without it QAT only
            calibrates its initial scales); its gradient norm is clipped at 1.0 unless ``grad_clip`` is
            set (``slimtorch.quant.workflows.qat.QAT_GRAD_CLIP``). Ignored by post-training schemes.
    """

    export: bool = True
    finetune: FitOptions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.export, bool):
            raise ValueError(f"export must be true or false, got {self.export!r}")
        _check_finetune(self.finetune)


def quantization_configs() -> dict[str, type[Config]]:
    """Every config type ``quantize_`` has a handler for, by class name."""
    import slimtorch.quant.workflows.ptq  # noqa: F401  (registers Int8Static / Int8Dynamic)
    import slimtorch.quant.workflows.qat  # noqa: F401  (registers QAT)
    from slimtorch.quant import QUANTIZERS

    return {cls.__name__: cls for cls in QUANTIZERS}


def _quantize_model(ctx: StageContext, spec: Any, model: Any, train: bool) -> Any:
    """``quantize_`` with the recipe's calibration batches; QAT trains (when ``train``) and is converted."""
    from slimtorch.prune import make_permanent_
    from slimtorch.quant import quantize_
    from slimtorch.quant.workflows.qat import QAT_GRAD_CLIP, convert_qat_

    cfg = spec.technique
    make_permanent_(model)  # masked zeros stay zeros: symmetric int8 maps 0 to 0
    trains = needs_of(cfg).trains
    model.train(trains)
    report = quantize_(model, cfg, calib_data=ctx.calib_batches(model))
    if trains:
        if train and spec.options.finetune is not None:
            ctx.fit(model, spec.options.finetune.with_default_clip(QAT_GRAD_CLIP))
        convert_qat_(model)
    return report


def write_quantized(ctx: StageContext, model: Any, stage_dir: Path, export: bool,
                    config: Any = None) -> tuple[Path, Path | None]:
    """Save a quantized model's tensors and, when ``export`` and the scheme allows, its int8 ONNX file.

    With ``config`` (the quantization config that produced ``model``) the tensors file records it as
    :func:`slimtorch.quant.save_quantized` does, so ``slimtorch eval``/``profile`` reload the stage folder
    with :func:`slimtorch.quant.load_quantized`.

    Returns:
        ``(artefact, onnx)``: the ONNX file twice when written, else the tensors file and ``None``.
    """
    from slimtorch.io.storage import model_spec, write_safetensors

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    spec = model_spec(model)
    if config is not None:
        record = {k: v for k, v in config.to_dict().items() if not callable(v)}
        spec["metadata"] = {"quant": {"type": type(config).__name__, "config": record}}
    state_path = write_safetensors(stage_dir / QUANT_STATE_FILE, state, spec)
    if not export:
        return state_path, None
    from slimtorch.core.errors import SlimtorchError
    from slimtorch.quant.export.onnx_export import ExportCheckError, export_onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx = export_onnx(model, stage_dir / QUANT_ONNX_FILE, ctx.example_inputs(model, 1))
    except ExportCheckError:
        raise  # a file that computes something else than the model must never be the stage's result
    except (SlimtorchError, ValueError, RuntimeError, NotImplementedError):
        return state_path, None  # e.g. weights below 8 bits: the packed weights file is the artefact
    return onnx, onnx


def run_quantize(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Quantize the current model; write the int8 ONNX file when the scheme allows it."""
    from slimtorch import metrics

    model = product.model
    example = ctx.example_inputs(model, ctx.recipe.measure.batch_size)
    counts = {
        "params": metrics.count_params(model),
        "nonzero_params": metrics.count_nonzero(model),
        "macs": int(metrics.count_macs(model, example)),
    }
    report = _quantize_model(ctx, spec, model, train=True)
    artefact, onnx = write_quantized(ctx, model, ctx.stage_dir, spec.options.export, config=spec.technique)
    info = {
        "scheme": report.scheme,
        "quantized_layers": len(report.quantized),
        "target": report.details.get("target"),
        "float_layers": report.skipped,
        "float_counts": counts,
    }
    return Product(model=model.eval(), state=QUANTIZED, artefact=artefact, onnx=onnx, info=info)


def restore_quantized(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Rebuild the quantized structure on the previous product and load the saved quantized tensors."""
    model = previous.model
    _quantize_model(ctx, spec, model, train=False)
    return load_quantized_product(model, record)


def load_quantized_product(model: Any, record: dict) -> Product:
    """Load a finished quantize-like stage's saved tensors into ``model`` (already in quantized structure)."""
    from safetensors.torch import load_file

    from slimtorch.io.storage import load_state_into

    d = Path(record["dir"])
    load_state_into(model, load_file(str(d / QUANT_STATE_FILE)))
    onnx = d / QUANT_ONNX_FILE if (d / QUANT_ONNX_FILE).exists() else None
    artefact = d / (record.get("artefact_name") or QUANT_STATE_FILE)
    return Product(model=model.eval(), state=QUANTIZED, artefact=artefact, onnx=onnx, info=record.get("info", {}))


register_stage(
    StageDef(
        name="quantize",
        options=QuantizeOptions,
        run=run_quantize,
        restore=restore_quantized,
        accepts=FLOAT_STATES,
        produces=constant_state(QUANTIZED),
        techniques=quantization_configs,
        default_technique="Int8Static",
        trains=True,
        doc="quantize (type: Int8Static | Int8Dynamic | WeightOnly | QAT); int8 is exported to ONNX",
    )
)


# ---- share ---------------------------------------------------------------------------------------
@dataclass
class ShareOptions(Config):
    """Pipeline options of the ``share`` stage (Deep Compression's weight sharing + Huffman file).

    Args:
        finetune: shared-centroid fine-tuning (``None``: none).
        codebook_dtype: ``float32`` or ``float16`` codebooks in the ``.slim`` file.
    """

    finetune: FitOptions | None = None
    codebook_dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_finetune(self.finetune)
        check_choice("codebook_dtype", self.codebook_dtype, ["float32", "float16"])


def sharing_configs() -> dict[str, type[Config]]:
    """The weight-sharing config."""
    from slimtorch.share import WeightSharing

    return {"WeightSharing": WeightSharing}


def run_share(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Cluster the weights, fine-tune the centroids, write the ``.slim`` file."""
    from slimtorch import share

    model = product.model
    share.cluster_(model, spec.technique)
    finetune = spec.options.finetune
    if finetune is not None and finetune.epochs > 0:
        ctx.fit(model, finetune)
    path = share.save(model, ctx.stage_dir / SLIM_FILE, codebook_dtype=spec.options.codebook_dtype)
    bits = {s.name: s.bits for s in share.sharing_summary(model)}
    return Product(model=model, state=SHARED, artefact=path, info={"bits": bits})


def restore_shared(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Decode the ``.slim`` file (its weights are the shared centroids)."""
    from slimtorch import share

    d = Path(record["dir"])
    skeleton = None if ctx.recipe.model.factory is None else copy.deepcopy(previous.model)
    model = share.load(d / SLIM_FILE, model=skeleton)
    return Product(model=model, state=SHARED, artefact=d / SLIM_FILE, info=record.get("info", {}))


register_stage(
    StageDef(
        name="share",
        options=ShareOptions,
        run=run_share,
        restore=restore_shared,
        accepts=FLOAT_STATES,
        produces=constant_state(SHARED),
        techniques=sharing_configs,
        default_technique="WeightSharing",
        trains=True,
        doc="k-means weight sharing + Huffman-coded .slim file (Deep Compression)",
    )
)
