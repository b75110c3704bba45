"""Distillation loss terms: one typed config per loss, one ``nn.Module`` term per config (via a registry).

A config (``KD(temperature=4, weight=1)``) is plain data: it validates itself, round-trips through
``to_dict``/``from_dict`` and is what a YAML recipe holds. :func:`build_term` turns it into a
:class:`LossTerm` module that the :class:`~slimtorch.distill.Distiller` owns, so learned pieces such
as FitNets adapters are parameters of the distiller and are trained with the student.

Adding a loss is one config class plus one term class decorated with ``@register_loss(ConfigClass)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import Config, check_choice, check_positive
from slimtorch.core.registry import Registry
from slimtorch.distill import functional as KF

#: Config class name -> LossTerm subclass.
LOSSES: Registry[type[LossTerm]] = Registry("distillation loss")

ADAPTERS = ("auto", "identity", "linear", "conv1x1")


def _as_tuple(v: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def _check_weight(weight: Any) -> None:
    check_positive("weight", weight, allow_zero=True)


def _check_teacher_index(teacher: Any) -> None:
    if isinstance(teacher, bool) or not isinstance(teacher, int) or teacher < 0:
        raise ValueError(f"teacher must be an index >= 0 into the teacher list, got {teacher!r}")


class DistillLoss(Config):
    """Base of the loss configs (every subclass has ``weight`` and ``name``)."""

    weight: float
    name: str

    def student_modules(self) -> tuple[str, ...]:
        """Student module names whose outputs this loss reads."""
        return ()

    def teacher_modules(self) -> tuple[str, ...]:
        """Teacher module names whose outputs this loss reads (of teacher ``self.teacher``)."""
        return ()


@dataclass
class KD(DistillLoss):
    """Soft-target KD (Hinton et al. 2015): ``weight * T^2 * KL(q_T || p_T)``, batchmean.

    With several teachers the target ``q_T`` is their (weighted) mean softened distribution.

    Args:
        temperature: T > 0 (Hinton et al. used 20 on MNIST).
        weight: multiplier of this term in the total loss (>= 0).
        name: key of this term in the distiller's output dict (default ``"kd"``).
    """

    temperature: float = 4.0
    weight: float = 1.0
    name: str = "kd"

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)
        _check_weight(self.weight)


@dataclass
class LogitMSE(DistillLoss):
    """Logit regression (Ba & Caruana 2014): ``weight * mean((z_s - z_t)^2)``; several teachers: their
    weighted mean logits."""

    weight: float = 1.0
    name: str = "logit_mse"

    def __post_init__(self) -> None:
        _check_weight(self.weight)


@dataclass
class Hint(DistillLoss):
    """FitNets hint (Romero et al. 2015): ``weight * mean((r(f_s) - f_t)^2)`` with a learned adapter ``r``.

    Args:
        student_layer: fully qualified student module name (``"layer2.1"``, ``"net.4"``).
        teacher_layer: teacher module name.
        weight: multiplier (>= 0).
        adapter: ``"auto"`` (identity if shapes match, else linear for ``(B, D)``/``(B, T, D)`` and a 1x1
            conv for ``(B, C, H, W)``), ``"identity"``, ``"linear"`` or ``"conv1x1"``.
        teacher: which teacher (index into the teacher list) provides the feature.
        name: key in the output dict (default ``"hint"``).
    """

    student_layer: str = ""
    teacher_layer: str = ""
    weight: float = 1.0
    adapter: str = "auto"
    teacher: int = 0
    name: str = "hint"

    def __post_init__(self) -> None:
        for k in ("student_layer", "teacher_layer"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                raise ValueError(f"Hint.{k} must name a module (e.g. 'layer2.1'), got {getattr(self, k)!r}")
        _check_weight(self.weight)
        check_choice("adapter", self.adapter, ADAPTERS)
        _check_teacher_index(self.teacher)

    def student_modules(self) -> tuple[str, ...]:
        return (self.student_layer,)

    def teacher_modules(self) -> tuple[str, ...]:
        return (self.teacher_layer,)


@dataclass
class AttentionTransfer(DistillLoss):
    """Activation attention transfer (Zagoruyko & Komodakis 2017), summed over layer pairs.

    ``weight * sum_pairs mean((Q_s - Q_t)^2)``, ``Q = normalize(vec(mean_c |A|^p))``. The default weight
    500 is the paper's ``beta / 2`` with ``beta = 1000``. Paired layers must have the same spatial size.

    Args:
        student_layers: one module name or a list of them.
        teacher_layers: as many teacher module names.
        weight: multiplier (>= 0).
        p: exponent of the attention map (the paper uses 2).
        teacher: which teacher provides the features.
        name: key in the output dict (default ``"at"``).
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    weight: float = 500.0
    p: float = 2.0
    teacher: int = 0
    name: str = "at"

    def __post_init__(self) -> None:
        self.student_layers = _as_tuple(self.student_layers)
        self.teacher_layers = _as_tuple(self.teacher_layers)
        if not self.student_layers or len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"AttentionTransfer needs one teacher layer per student layer, got student_layers="
                f"{list(self.student_layers)} and teacher_layers={list(self.teacher_layers)}"
            )
        _check_weight(self.weight)
        check_positive("p", self.p)
        _check_teacher_index(self.teacher)

    def student_modules(self) -> tuple[str, ...]:
        return self.student_layers

    def teacher_modules(self) -> tuple[str, ...]:
        return self.teacher_layers


@dataclass
class RKD(DistillLoss):
    """Relational KD (Park et al. 2019): ``weight * (distance_weight * L_D + angle_weight * L_A)``.

    Args:
        weight: overall multiplier (>= 0).
        distance_weight: lambda_D (paper: 1).
        angle_weight: lambda_A (paper: 2).
        student_layer: module whose output is the student embedding; ``""`` = the logits.
        teacher_layer: same for the teacher.
        teacher: which teacher provides the embedding.
        name: key in the output dict (default ``"rkd"``).
    """

    weight: float = 1.0
    distance_weight: float = 1.0
    angle_weight: float = 2.0
    student_layer: str = ""
    teacher_layer: str = ""
    teacher: int = 0
    name: str = "rkd"

    def __post_init__(self) -> None:
        _check_weight(self.weight)
        check_positive("distance_weight", self.distance_weight, allow_zero=True)
        check_positive("angle_weight", self.angle_weight, allow_zero=True)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ValueError("RKD: distance_weight and angle_weight are both 0; at least one must be > 0")
        if bool(self.student_layer) != bool(self.teacher_layer):
            raise ValueError("RKD: give both student_layer and teacher_layer, or neither (= logits)")
        _check_teacher_index(self.teacher)

    def student_modules(self) -> tuple[str, ...]:
        return (self.student_layer,) if self.student_layer else ()

    def teacher_modules(self) -> tuple[str, ...]:
        return (self.teacher_layer,) if self.teacher_layer else ()


@dataclass
class SimilarityPreserving(DistillLoss):
    """Similarity-preserving KD (Tung & Mori 2019): ``weight * ||G_s - G_t||_F^2 / B^2``.

    Compares batch similarity matrices, so the paired layers may have any widths (useful for MLPs,
    where attention maps need equal sizes). The paper's CIFAR weight is 3000.

    Args:
        student_layer: student module name.
        teacher_layer: teacher module name.
        weight: multiplier (>= 0).
        teacher: which teacher provides the feature.
        name: key in the output dict (default ``"sp"``).
    """

    student_layer: str = ""
    teacher_layer: str = ""
    weight: float = 3000.0
    teacher: int = 0
    name: str = "sp"

    def __post_init__(self) -> None:
        for k in ("student_layer", "teacher_layer"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                raise ValueError(f"SimilarityPreserving.{k} must name a module, got {getattr(self, k)!r}")
        _check_weight(self.weight)
        _check_teacher_index(self.teacher)

    def student_modules(self) -> tuple[str, ...]:
        return (self.student_layer,)

    def teacher_modules(self) -> tuple[str, ...]:
        return (self.teacher_layer,)


@dataclass
class DistillContext:
    """Everything a loss term may read during one distiller forward.

    Attributes:
        student_logits: ``(B, C)`` (or ``(B, T, C)``).
        teacher_logits: one tensor per teacher, same shape as the student's.
        teacher_weights: normalised weight per teacher (sums to 1).
        targets: hard labels, or ``None``.
        student_features: captured student outputs by module name.
        teacher_features: per teacher, captured outputs by module name.
    """

    student_logits: torch.Tensor
    teacher_logits: list[torch.Tensor]
    teacher_weights: list[float]
    targets: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: list[dict[str, torch.Tensor]] = field(default_factory=list)


class LossTerm(nn.Module):
    """A loss config turned into a module. ``forward(ctx)`` returns the *unweighted* scalar loss.

    Args:
        config: the loss config.
    """

    def __init__(self, config: DistillLoss) -> None:
        super().__init__()
        self.config = config

    @property
    def weight(self) -> float:
        return float(self.config.weight)

    def setup(self, ctx: DistillContext) -> None:
        """Build learned parts (adapters) from the feature shapes of a probe forward; default: nothing."""


def register_loss(config_cls: type[DistillLoss]):
    """Class decorator registering a :class:`LossTerm` subclass as the handler of ``config_cls``."""

    def deco(term_cls: type[LossTerm]) -> type[LossTerm]:
        LOSSES.register(config_cls.__name__, term_cls)
        return term_cls

    return deco


def build_term(config: DistillLoss | dict[str, Any]) -> LossTerm:
    """The loss module for ``config`` (a config object, or a dict with a ``type`` key such as ``"KD"``)."""
    if isinstance(config, dict):
        config = DistillLoss.from_dict(config)
    if not isinstance(config, DistillLoss):
        raise ValueError(
            f"losses must be distillation loss configs (one of {LOSSES.names()}), got {type(config).__name__}"
        )
    return LOSSES.get(type(config).__name__)(config)


@register_loss(KD)
class KDTerm(LossTerm):
    """:class:`KD` handler: averaged soft targets of every teacher, then :func:`soft_target_loss`."""

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        t = self.config.temperature
        if len(ctx.teacher_logits) == 1:
            return KF.kd_loss(ctx.student_logits, ctx.teacher_logits[0], t)
        q = KF.average_soft_targets(ctx.teacher_logits, t, ctx.teacher_weights)
        return KF.soft_target_loss(ctx.student_logits, q, t)


@register_loss(LogitMSE)
class LogitMSETerm(LossTerm):
    """:class:`LogitMSE` handler (several teachers: weighted mean of their logits)."""

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        target = sum(w * z for w, z in zip(ctx.teacher_weights, ctx.teacher_logits))
        return KF.logit_mse_loss(ctx.student_logits, target)


def _make_adapter(kind: str, s: torch.Tensor, t: torch.Tensor, where: str) -> nn.Module:
    """An adapter mapping student feature ``s`` to teacher feature ``t``'s shape (shapes from a probe)."""
    mismatch = (
        f"{where}: student feature {tuple(s.shape)} cannot be mapped to teacher feature {tuple(t.shape)}"
    )
    if kind == "auto":
        if s.shape == t.shape:
            kind = "identity"
        elif s.dim() == 4:
            kind = "conv1x1"
        elif s.dim() in (2, 3):
            kind = "linear"
        else:
            raise ValueError(f"{mismatch} by any adapter")
    if kind == "identity":
        if s.shape != t.shape:
            raise ValueError(f"{mismatch} with adapter='identity'; use 'auto', 'linear' or 'conv1x1'")
        return nn.Identity()
    if kind == "conv1x1":
        if s.dim() != 4 or t.dim() != 4 or s.shape[2:] != t.shape[2:]:
            raise ValueError(f"{mismatch} by a 1x1 conv (needs (B, C, H, W) maps with the same H, W)")
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
    # linear over the last dim: (B, D_s) -> (B, D_t) or (B, T, D_s) -> (B, T, D_t)
    if s.dim() != t.dim() or s.dim() not in (2, 3) or s.shape[:-1] != t.shape[:-1]:
        raise ValueError(
            f"{mismatch} by a linear adapter (needs (B, D) or (B, T, D) with equal leading dims)"
        )
    return nn.Linear(s.shape[-1], t.shape[-1])


@register_loss(Hint)
class HintTerm(LossTerm):
    """:class:`Hint` handler; owns the adapter (created in :meth:`setup` from the probe shapes)."""

    def __init__(self, config: Hint) -> None:
        super().__init__(config)
        self.adapter: nn.Module = nn.Identity()

    def setup(self, ctx: DistillContext) -> None:
        c = self.config
        s = ctx.student_features[c.student_layer]
        t = ctx.teacher_features[c.teacher][c.teacher_layer]
        where = f"Hint({c.student_layer!r} -> {c.teacher_layer!r})"
        self.adapter = _make_adapter(c.adapter, s, t, where).to(device=s.device, dtype=s.dtype)

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        c = self.config
        s = self.adapter(ctx.student_features[c.student_layer])
        return KF.hint_loss(s, ctx.teacher_features[c.teacher][c.teacher_layer])


@register_loss(AttentionTransfer)
class AttentionTransferTerm(LossTerm):
    """:class:`AttentionTransfer` handler: sum of per-pair attention losses."""

    def setup(self, ctx: DistillContext) -> None:
        self.forward(ctx)  # fails early, with both shapes, if a pair's attention maps differ in size

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        c = self.config
        feats = ctx.teacher_features[c.teacher]
        return sum(
            KF.attention_transfer_loss(ctx.student_features[s], feats[t], c.p)
            for s, t in zip(c.student_layers, c.teacher_layers)
        )


@register_loss(RKD)
class RKDTerm(LossTerm):
    """:class:`RKD` handler (distance and/or angle terms on logits or named embeddings)."""

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        c = self.config
        s = ctx.student_features[c.student_layer] if c.student_layer else ctx.student_logits
        t = (
            ctx.teacher_features[c.teacher][c.teacher_layer]
            if c.teacher_layer
            else ctx.teacher_logits[c.teacher]
        )
        s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
        loss = s.new_zeros(())
        if c.distance_weight:
            loss = loss + c.distance_weight * KF.rkd_distance_loss(s, t)
        if c.angle_weight:
            loss = loss + c.angle_weight * KF.rkd_angle_loss(s, t)
        return loss


@register_loss(SimilarityPreserving)
class SimilarityPreservingTerm(LossTerm):
    """:class:`SimilarityPreserving` handler."""

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        c = self.config
        return KF.similarity_loss(
            ctx.student_features[c.student_layer], ctx.teacher_features[c.teacher][c.teacher_layer]
        )
