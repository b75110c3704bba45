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
from slimtorch.pipeline.artefacts import restore_float, restore_saved, save_float
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.options import FitOptions, ModelSource
from slimtorch.pipeline.stage_def import (
    DENSE,
    FLOAT_STATES,
    Product,
    StageDef,
    keep_state,
    register_stage,
)


def run_train(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Train the current model (pruning masks, if any, keep their zeros)."""
    opts: FitOptions = spec.options
    ctx.fit(product.model, opts)
    return save_float(ctx, product.model, {"epochs": opts.epochs})


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
    """Options of the ``distill`` stage (Hinton et al. 2015 soft targets by default).

    Args:
        student: the student's model source. ``None``: the current model itself, which keeps its weights
            (and pruning masks) and is fine-tuned by distillation (e.g. after channel pruning).
        teacher: the teacher's model source (typically a checkpoint). ``None``: a frozen copy of the
            current model.
        losses: distillation loss configs of :mod:`slimtorch.distill` (``KD``, ``Hint``, ``RKD``, ...),
            each a mapping with a ``type`` key (default: one ``KD``).
        task_weight: weight of the hard-label cross-entropy.
        init_from_teacher: copy teacher weights into the student where names and shapes match.
        train: training options of the student.
    """

    student: ModelSource | None = None
    teacher: ModelSource | None = None
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
        for name in ("student", "teacher"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, ModelSource):
                raise ValueError(f"{name} must be a model source mapping (zoo/args/factory/checkpoint), got {v!r}")
        self.losses = tuple(self.losses)


def distill_produces(spec: Any, state: str) -> str:
    """A new student is dense; the current model distilled in place keeps its state (masks)."""
    return state if spec.options.student is None else DENSE


def run_distill(ctx: StageContext, spec: Any, product: Product) -> Product:
    """Train the student against the teacher with the configured losses."""
    from slimtorch.distill import Distiller, init_from_teacher
    from slimtorch.prune import make_permanent_

    opts: DistillOptions = spec.options
    if opts.teacher is not None:
        teacher = ctx.build_model(opts.teacher).eval()
    else:
        teacher = make_permanent_(copy.deepcopy(product.model)).eval()
    student = product.model if opts.student is None else ctx.build_model(opts.student)
    student.requires_grad_(True).train()
    if opts.init_from_teacher:
        init_from_teacher(student, teacher)
    example = ctx.example_inputs(student, 2)
    distiller = Distiller(student, teacher, list(opts.losses), task_weight=opts.task_weight, example_inputs=example)
    ctx.fit(distiller, opts.train)
    return save_float(ctx, student, {"epochs": opts.train.epochs})


def restore_student(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """Reload the distilled student (masks re-applied when the current model was distilled in place)."""
    from slimtorch.io.storage import MODEL_FILE

    d = Path(record["dir"])
    if spec.options.student is None:
        return restore_float(ctx, d, record)
    model = ctx.restore_model(d / MODEL_FILE, like=spec.options.student)
    return Product(model=model, state=DENSE, artefact=d / MODEL_FILE, info=record.get("info", {}))


register_stage(
    StageDef(
        name="distill",
        options=DistillOptions,
        run=run_distill,
        restore=restore_student,
        accepts=FLOAT_STATES,
        produces=distill_produces,
        trains=True,
        doc="train a student (default: the current model) from a teacher (default: the current model)",
    )
)
