"""The ``joint`` stage: distillation, gradual pruning and quantization-aware training in one run.

One ``fit`` run of a :class:`~slimtorch.distill.Distiller` whose student has fake quantization on
(``QAT``, LSQ step sizes, Esser et al. 2020) while a :class:`~slimtorch.prune.MaskPruner` tightens its
masks on the AGP schedule ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3`` (Zhu & Gupta 2017). The
loss is the Distiller's ``task_weight * CE(student, y) + sum_k w_k * L_k(student, teacher)`` (Hinton
et al. 2015 soft targets by default). This is the end-to-end joint optimisation; compare it with the
same epochs spent on ``distill``, ``prune`` and ``quantize`` one after another (bench/demo.py does).

The teacher is the current model. The student is the ``student`` model source, or (default) a copy
of the current model that starts from its weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from slimtorch.core.config import Config, check_positive
from slimtorch.distill import KD, DistillLoss
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.options import FitOptions, ModelSource
from slimtorch.pipeline.stage_def import (
    FLOAT_STATES,
    QUANTIZED,
    Product,
    StageDef,
    constant_state,
    register_stage,
)
from slimtorch.pipeline.stages.compress import load_quantized_product, ones_masks_, write_quantized
from slimtorch.prune import AGP, Magnitude
from slimtorch.quant.workflows.qat import QAT, QAT_GRAD_CLIP


def _default_prune() -> Magnitude:
    return Magnitude(sparsity=0.5, schedule=AGP())


def _default_losses() -> tuple[DistillLoss, ...]:
    return (KD(),)


@dataclass
class JointOptions(Config):
    """Options of the ``joint`` stage.

    Args:
        student: the student's model source (``None``: a copy of the current model, with its weights).
        losses: distillation losses (default one ``KD``).
        task_weight: weight of the hard-label loss.
        prune: a ``Magnitude`` config whose schedule is ``AGP`` (its ``epochs``/``finetune`` are unused:
            the joint run's ``train`` options decide the run).
        quant: the ``QAT`` config (8-bit weights and activations export to ONNX Runtime int8).
        train: options of the one training run.
        export: write the int8 ONNX QDQ file when the bit widths allow it.
    """

    student: ModelSource | None = None
    losses: tuple[DistillLoss, ...] = field(default_factory=_default_losses)
    task_weight: float = 1.0
    prune: Magnitude = field(default_factory=_default_prune)
    quant: QAT = field(default_factory=lambda: QAT(bits_w=8, bits_a=8))
    train: FitOptions = field(default_factory=FitOptions)
    export: bool = True

    def __post_init__(self) -> None:
        check_positive("task_weight", self.task_weight, allow_zero=True)
        if not isinstance(self.prune, Magnitude) or not isinstance(self.prune.schedule, AGP):
            raise ValueError(
                "prune must be a Magnitude config with schedule: {type: AGP, ...} (the joint run "
                "prunes gradually while it trains)"
            )
        if not isinstance(self.quant, QAT):
            raise ValueError(f"quant must be a QAT config mapping, got {self.quant!r}")
        if not isinstance(self.train, FitOptions):
            raise ValueError(f"train must be a mapping of training options, got {self.train!r}")
        if not isinstance(self.export, bool):
            raise ValueError(f"export must be true or false, got {self.export!r}")
        self.losses = tuple(self.losses)


def _prepare_student(ctx: StageContext, opts: JointOptions, teacher: Any) -> tuple[Any, Any]:
    """The student with fake quantization on and all-ones masks (the structure a checkpoint holds)."""
    from slimtorch.prune import MaskPruner
    from slimtorch.quant import quantize_

    student = ctx.build_model(opts.student) if opts.student is not None else copy.deepcopy(teacher)
    student.requires_grad_(True).train()
    quantize_(student, opts.quant, calib_data=ctx.calib_batches(student))
    pruner = MaskPruner(student, opts.prune)  # no example inputs: MACs come from the measurement
    ones_masks_(pruner.layers)
    return student, pruner


def _finish(student: Any) -> Any:
    from slimtorch.prune import make_permanent_
    from slimtorch.quant.workflows.qat import convert_qat_

    make_permanent_(student)
    return convert_qat_(student)


def run_joint(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Distil + AGP-prune + QAT in one ``fit`` run, then write the int8 file."""
    from slimtorch.distill import Distiller
    from slimtorch.prune import make_permanent_

    opts: JointOptions = spec.options
    teacher = make_permanent_(copy.deepcopy(product.model)).eval()
    student, pruner = _prepare_student(ctx, opts, teacher)
    distiller = Distiller(
        student,
        teacher,
        list(opts.losses),
        task_weight=opts.task_weight,
        example_inputs=ctx.example_inputs(student, 2),
    )
    ctx.fit(distiller, opts.train.with_default_clip(QAT_GRAD_CLIP), callbacks=[pruner])
    sparsity = pruner.sparsity()
    _finish(student)
    artefact, onnx = write_quantized(ctx, student, ctx.stage_dir, opts.export)
    info = {"scheme": "qat", "pruned_sparsity": sparsity, "epochs": opts.train.epochs}
    return Product(model=student.eval(), state=QUANTIZED, artefact=artefact, onnx=onnx, info=info)


def restore_joint(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Rebuild the student's structure and load the saved quantized tensors."""
    from slimtorch.prune import make_permanent_

    teacher = make_permanent_(copy.deepcopy(previous.model)).eval()
    student, _ = _prepare_student(ctx, spec.options, teacher)
    _finish(student)
    return load_quantized_product(student, record)


register_stage(
    StageDef(
        name="joint",
        options=JointOptions,
        run=run_joint,
        restore=restore_joint,
        accepts=FLOAT_STATES,
        produces=constant_state(QUANTIZED),
        trains=True,
        doc="one training run: distillation + AGP pruning + QAT fake quantization",
    )
)
