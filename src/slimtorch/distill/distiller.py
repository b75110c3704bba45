"""The :class:`Distiller`: student + frozen teachers + loss terms, as one ``nn.Module`` returning a dict.

It plugs into ``slimtorch.train.fit`` (``computes_loss = True``; ``fit`` optimises only parameters with
``requires_grad``: the student's and the adapters') and into any hand-written loop::

    distiller = Distiller(student, teacher, [KD(temperature=4)], task_weight=1.0)
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    for x, y in loader:
        out = distiller(x, y)
        opt.zero_grad(); out["loss"].backward(); opt.step()

Hugging Face models work as they are: the inputs may be a dict of named tensors (``input_ids``,
``attention_mask``, ...; every one reaches student and teachers), the logits are a ``ModelOutput``'s
``logits``, and a feature may be an output field (``Hint(student_layer="hidden_states.2",
teacher_layer="hidden_states.4")``, ``"attentions.1"``; see :mod:`slimtorch.distill.output_fields`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.batches import ModelInputs, output_tensor, split_batch
from slimtorch.core.config import check_positive
from slimtorch.core.labels import align, forward_batch
from slimtorch.core.selection import get_submodule
from slimtorch.distill import output_fields
from slimtorch.distill.cache import CachedTeacher
from slimtorch.distill.functional import normalize_weights
from slimtorch.distill.losses import DistillContext, DistillLoss, LossTerm, build_term


def task_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy; ``(B, T, C)`` logits are flattened against ``(B, T)`` targets."""
    if logits.dim() > 2:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def _first_tensor(output: Any) -> torch.Tensor:
    # Hooks may see tuples (e.g. attention modules returning (out, weights)); the first tensor is the feature.
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def as_inputs(inputs: Any) -> ModelInputs:
    """The model inputs a distiller is given: a tensor, a tuple of tensors, a dict of named tensors or
    :class:`~slimtorch.core.batches.ModelInputs`."""
    return split_batch((inputs,))[0]


def freeze_(model: nn.Module) -> nn.Module:
    """Teacher setup: eval mode and ``requires_grad=False`` on every parameter (in place)."""
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """Trains ``student`` to match ``teachers`` under the given loss terms.

    ``forward(inputs, targets, index=None)`` returns ``{"loss", "output", "task", <term names>...}``:
    ``loss`` is what to backpropagate, ``output`` the student's logits, and every other entry the
    *weighted* (detached) contribution of one term, so they sum to ``loss``.

    Teachers are frozen (eval mode, ``requires_grad=False``, run under ``torch.no_grad()``); they stay in
    eval mode when ``distiller.train()`` is called. Features are captured by module name with forward
    hooks that exist only during a forward call, so the student is left untouched afterwards.

    Args:
        student: the model being trained.
        teachers: one module or a list; a :class:`~slimtorch.distill.CachedTeacher` takes ``index`` instead
            of the inputs (offline distillation).
        losses: loss configs (``KD``, ``LogitMSE``, ``Hint``, ``AttentionTransfer``, ``RKD``,
            ``SimilarityPreserving``) or dicts with a ``type`` key.
        task_weight: weight of the hard-label loss (>= 0; 0 = soft targets only).
        teacher_weights: one weight per teacher for averaged soft targets (default: equal).
        task_loss: ``task_loss(logits, targets)`` (causal-LM logits already shifted against their labels);
            default: the student's own loss when its ``forward`` takes ``labels`` (Hugging Face heads),
            else cross-entropy.
        example_inputs: a batch of inputs (tensor, tuple, or dict of named tensors) used once to discover
            feature shapes (for adapters) and check class counts; by default built from
            ``student.input_shape`` (and ``input_dtype``) when present.
    """

    computes_loss = True

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | Sequence[nn.Module],
        losses: Sequence[DistillLoss | dict[str, Any]] = (),
        *,
        task_weight: float = 1.0,
        teacher_weights: Sequence[float] | None = None,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        example_inputs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        check_positive("task_weight", task_weight, allow_zero=True)
        teacher_list = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        if not teacher_list or not all(isinstance(t, nn.Module) for t in teacher_list):
            raise ValueError("teachers must be an nn.Module or a non-empty list of nn.Modules")
        if any(t is student for t in teacher_list):
            raise ValueError("the student cannot be its own teacher; pass a frozen copy (copy.deepcopy)")
        self.student = student
        self.teachers = nn.ModuleList(freeze_(t) for t in teacher_list)
        self.teacher_weights = normalize_weights(teacher_weights, len(teacher_list))
        self.task_weight = float(task_weight)
        self._own_task_loss = task_loss is None
        self.task_loss = task_loss or task_cross_entropy
        self.terms = nn.ModuleList(build_term(c) for c in losses)
        if self.task_weight == 0 and not len(self.terms):
            raise ValueError("nothing to train: task_weight is 0 and no distillation losses were given")
        self._names = self._term_names()
        self._student_layers, self._teacher_layers = self._resolve_layers()
        self._probe(example_inputs)

    # ---- construction helpers -------------------------------------------------------------------
    def _term_names(self) -> list[str]:
        names: list[str] = []
        for term in self.terms:
            base = term.config.name or type(term.config).__name__.lower()
            name, i = base, 2
            while name in names or name in ("loss", "output", "task"):
                name, i = f"{base}_{i}", i + 1
            names.append(name)
        return names

    def _resolve_layers(self) -> tuple[dict[str, nn.Module], list[dict[str, nn.Module]]]:
        """Module objects for every feature a term reads; unknown names list the closest ones."""
        student_layers: dict[str, nn.Module] = {}
        teacher_layers: list[dict[str, nn.Module]] = [{} for _ in self.teachers]
        # Features that are fields of the model output ("hidden_states.3"), read after the forward.
        self._student_fields: set[str] = set()
        self._teacher_fields: list[set[str]] = [set() for _ in self.teachers]
        for term in self.terms:
            cfg = term.config
            if not (cfg.student_modules() or cfg.teacher_modules()):
                continue
            t = getattr(cfg, "teacher", 0)
            if t >= len(self.teachers):
                raise ValueError(
                    f"{type(cfg).__name__}.teacher={t} but only {len(self.teachers)} teacher(s) given"
                )
            if isinstance(self.teachers[t], CachedTeacher):
                raise ValueError(
                    f"{type(cfg).__name__} reads teacher features, but teacher {t} is a CachedTeacher "
                    "(it stores logits only); pass the live teacher module"
                )
            for name in cfg.student_modules():
                if output_fields.is_output_field(self.student, name):
                    self._student_fields.add(name)
                else:
                    student_layers[name] = _layer(self.student, name, "student")
            for name in cfg.teacher_modules():
                if output_fields.is_output_field(self.teachers[t], name):
                    self._teacher_fields[t].add(name)
                else:
                    teacher_layers[t][name] = _layer(self.teachers[t], name, f"teacher {t}")
        output_fields.prepare_model(self.student, self._student_fields)
        for teacher, fields in zip(self.teachers, self._teacher_fields):
            output_fields.prepare_model(teacher, fields)
        return student_layers, teacher_layers

    def _example(self, example_inputs: Any) -> ModelInputs | None:
        if example_inputs is not None:
            return as_inputs(example_inputs)
        shape = getattr(self.student, "input_shape", None)
        if shape is None:
            return None
        p = next(self.student.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = getattr(self.student, "input_dtype", torch.float32)
        if dtype == torch.long:
            return ModelInputs((torch.zeros((2, *shape), dtype=torch.long, device=device),))
        g = torch.Generator().manual_seed(0)
        return ModelInputs((torch.randn((2, *shape), generator=g).to(device=device, dtype=dtype),))

    @torch.no_grad()
    def _probe(self, example_inputs: Any) -> None:
        """One eval-mode forward to check class counts and let terms build adapters from real shapes."""
        x = self._example(example_inputs)
        needs_shapes = bool(self._student_layers) or bool(self._student_fields)
        if x is None:
            if needs_shapes:
                raise ValueError(
                    "feature losses need example_inputs=... (a small input batch) because the "
                    "student has no input_shape attribute to build one from"
                )
            return
        was_training = self.student.training
        self.student.eval()
        try:
            index = torch.arange(x.batch_size, device=x.first.device)
            ctx = self._context(x, None, index)[0]
        finally:
            self.student.train(was_training)
        for term in self.terms:
            term.setup(ctx)

    # ---- forward ----------------------------------------------------------------------------------
    @contextmanager
    def _capture(self) -> Iterator[tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]]:
        student_feats: dict[str, torch.Tensor] = {}
        teacher_feats: list[dict[str, torch.Tensor]] = [{} for _ in self.teachers]
        handles = []

        def keep(store: dict[str, torch.Tensor], name: str):
            def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                store[name] = _first_tensor(out)

            return hook

        for name, m in self._student_layers.items():
            handles.append(m.register_forward_hook(keep(student_feats, name)))
        for store, layers in zip(teacher_feats, self._teacher_layers):
            for name, m in layers.items():
                handles.append(m.register_forward_hook(keep(store, name)))
        try:
            yield student_feats, teacher_feats
        finally:
            for h in handles:
                h.remove()

    def _context(
        self, inputs: ModelInputs, targets: Any, index: torch.Tensor | None
    ) -> tuple[DistillContext, torch.Tensor | None]:
        """Student and teacher forwards; returns the loss context and the student's own loss (or ``None``)."""
        own = self._own_task_loss and self.task_weight > 0
        with self._capture() as (student_feats, teacher_feats):
            student_in = self._with_flags(inputs, self._student_fields)
            out, own_loss = forward_batch(self.student, student_in, targets, with_labels=own)
            logits = output_tensor(out)
            student_feats.update({f: output_fields.read(out, f, "student") for f in self._student_fields})
            with torch.no_grad():
                teacher_logits = []
                for i, t in enumerate(self.teachers):
                    z, t_out = self._run_teacher(t, self._with_flags(inputs, self._teacher_fields[i]), index)
                    teacher_logits.append(z)
                    teacher_feats[i].update(
                        {f: output_fields.read(t_out, f, f"teacher {i}") for f in self._teacher_fields[i]})
        for i, z in enumerate(teacher_logits):
            if z.shape[-1] != logits.shape[-1]:
                raise ValueError(
                    f"student has {logits.shape[-1]} classes but teacher {i} has {z.shape[-1]}; "
                    "distillation needs the same class set"
                )
        ctx = DistillContext(logits, teacher_logits, self.teacher_weights, targets, student_feats, teacher_feats)
        return ctx, own_loss

    @staticmethod
    def _with_flags(inputs: ModelInputs, fields: set[str]) -> ModelInputs:
        flags = output_fields.forward_flags(fields)
        return ModelInputs(inputs.args, {**inputs.kwargs, **flags}) if flags else inputs

    @staticmethod
    def _run_teacher(teacher: nn.Module, inputs: ModelInputs, index: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        if isinstance(teacher, CachedTeacher):
            if index is None:
                raise ValueError(
                    "a CachedTeacher needs the sample indices: wrap the dataset in IndexedDataset "
                    "and call distiller(x, y, index=index)"
                )
            z = teacher(index)
            return z, z
        out = inputs(teacher)
        return output_tensor(out), out

    def forward(
        self, inputs: Any, targets: torch.Tensor | None = None, index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Student forward, teacher forwards (no grad), every loss term.

        Args:
            inputs: a batch for the student (and the live teachers): a tensor, a tuple of tensors, a dict
                of named tensors (``input_ids``, ``attention_mask``, ...) or ``ModelInputs``.
            targets: hard labels for the task loss (``None`` = no task term, e.g. an unlabeled transfer set).
            index: ``(B,)`` dataset positions, needed only by cached teachers.

        Returns:
            dict with ``loss``, ``output`` (student logits), ``task`` and one entry per loss term.
        """
        ctx, own_loss = self._context(as_inputs(inputs), targets, index)
        out: dict[str, torch.Tensor] = {"output": ctx.student_logits}
        total = ctx.student_logits.new_zeros(())
        if targets is not None and self.task_weight > 0:
            if own_loss is None:
                own_loss = self.task_loss(*align(self.student, ctx.student_logits, targets))
            task = self.task_weight * own_loss
            out["task"] = task.detach()
            total = total + task
        for name, term in zip(self._names, self.terms):
            value = term.weight * term(ctx)
            out[name] = value.detach()
            total = total + value
        out["loss"] = total
        return out

    def train(self, mode: bool = True) -> Distiller:
        """Set the student (and adapters) to ``mode``; teachers always stay in eval mode."""
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and adapter parameters (what an optimizer should get)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def loss_terms(self) -> dict[str, LossTerm]:
        """Loss modules by their output-dict name."""
        return dict(zip(self._names, self.terms))  # type: ignore[arg-type]


def _layer(model: nn.Module, name: str, whose: str) -> nn.Module:
    try:
        return get_submodule(model, name)
    except ValueError as e:
        raise ValueError(f"{whose} layer: {e}") from None
