"""Stages that train a float model: ``train`` and ``distill``.

Both run :func:`slimtorch.train.fit` with the stage folder as ``out_dir``: a checkpoint per epoch, so a
killed run resumed with ``--resume`` loses at most the epoch it was in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtorch.core.config import Config, check_positive
from slimtorch.distill import KD, DistillLoss
from slimtorch.pipeline.artefacts import restore_float, save_float
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.options import FitOptions, ModelSource
from slimtorch.pipeline.stages import (
    DENSE,
    FLOAT_STATES,
    Product,
    StageDef,
    constant_state,
    keep_state,
    register_stage,
)


def run_train(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Train the current model (pruning masks, if any, keep their zeros)."""
    opts: FitOptions = spec.options
    ctx.fit(product.model, opts)
    return save_float(ctx, product.model, {"epochs": opts.epochs})


def restore_saved(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Reload a float stage's model from its folder."""
    return restore_float(ctx, Path(record["dir"]), record)


register_stage(
    StageDef(
        name="train",
        options=FitOptions,
        run=run_train,
        restore=restore_saved,
        accepts=FLOAT_STATES,
        produces=keep_state,
        trains=True,
        doc="train the current model (options: slimtorch.train.fit's)",
    )
)


def _distill_losses() -> tuple[DistillLoss, ...]:
    return (KD(),)


@dataclass
class DistillOptions(Config):
    """Options of the ``distill`` stage: the current model becomes the (frozen) teacher.

    Args:
        student: the student's model source (``None``: a fresh copy of the teacher's architecture,
            i.e. born-again distillation).
        losses: distillation loss configs of :mod:`slimtorch.distill` (``KD``, ``Hint``, ``RKD``, ...),
            each a mapping with a ``type`` key (default: one ``KD``).
        task_weight: weight of the hard-label cross-entropy.
        init_from_teacher: copy teacher weights into the student where names and shapes match.
        train: training options of the student.
    """

    student: ModelSource | None = None
    losses: tuple[DistillLoss, ...] = field(default_factory=_distill_losses)
    task_weight: float = 1.0
    init_from_teacher: bool = False
    train: FitOptions = field(default_factory=FitOptions)

    def __post_init__(self) -> None:
        check_positive("task_weight", self.task_weight, allow_zero=True)
        if not isinstance(self.init_from_teacher, bool):
            raise ValueError(f"init_from_teacher must be true or false, got {self.init_from_teacher!r}")
        if not isinstance(self.train, FitOptions):
            raise ValueError(f"train must be a mapping of training options, got {self.train!r}")
        if self.student is not None and not isinstance(self.student, ModelSource):
            raise ValueError(
                f"student must be a model source mapping (zoo/args/factory/checkpoint), got {self.student!r}"
            )
        self.losses = tuple(self.losses)


def build_student(ctx: StageContext, opts: DistillOptions, teacher: Any) -> Any:
    """The student the options describe, or a re-initialised copy of the teacher's architecture."""
    if opts.student is not None:
        return ctx.build_model(opts.student)
    student = copy.deepcopy(teacher)
    for m in student.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return student.requires_grad_(True).train()


def run_distill(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Train a student against the current model (the teacher) with the configured losses."""
    from slimtorch.distill import Distiller, init_from_teacher
    from slimtorch.prune import make_permanent_

    opts: DistillOptions = spec.options
    teacher = make_permanent_(copy.deepcopy(product.model)).eval()
    student = build_student(ctx, opts, teacher)
    if opts.init_from_teacher:
        init_from_teacher(student, teacher)
    example = ctx.example_inputs(student, 2)
    distiller = Distiller(student, teacher, list(opts.losses), task_weight=opts.task_weight, example_inputs=example)
    ctx.fit(distiller, opts.train)
    return save_float(ctx, student, {"epochs": opts.train.epochs, "teacher_stage": product.info.get("stage")})


def restore_student(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Reload the distilled student (a factory student is rebuilt from its own source)."""
    from slimtorch.storage import MODEL_FILE

    d = Path(record["dir"])
    like = spec.options.student or ctx.recipe.model
    model = ctx.restore_model(d / MODEL_FILE, like=like)
    return Product(model=model, state=DENSE, artefact=d / MODEL_FILE, info=record.get("info", {}))


register_stage(
    StageDef(
        name="distill",
        options=DistillOptions,
        run=run_distill,
        restore=restore_student,
        accepts=FLOAT_STATES,
        produces=constant_state(DENSE),
        trains=True,
        doc="train a student (student: model source) from the current model as teacher",
    )
)
