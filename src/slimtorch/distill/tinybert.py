"""TinyBERT-style layer distillation of a transformer into fewer layers, on unlabeled text.

Jiao et al. 2020 ("TinyBERT: Distilling BERT for Natural Language Understanding", §3.1) distil a
Transformer layer by layer. With a layer mapping ``g`` (student layer ``m`` learns from teacher layer
``g(m)``; default uniform, :func:`~slimtorch.distill.layer_drop.uniform_mapping`), the loss is

``L = w_e L_emb + w_h sum_m L_hid(m) + w_a sum_m L_att(m) [+ w_p L_pred]``

* ``L_att(m) = 1/h sum_{i=1..h} MSE(A_i^S, A_i^T)`` (eq. 7): the ``(T, T)`` attention maps of each of
  the ``h`` heads. TinyBERT fits the pre-softmax scores; Hugging Face models expose only the softmax
  probabilities (``output_attentions``), so those are fitted here (as MiniLM does, with KL there);
* ``L_hid(m) = MSE(H^S W_h, H^T)`` (eq. 8): the layer outputs ``(B, T, d)``, with a learned projection
  ``W_h`` (``d_S x d_T``) only when the widths differ;
* ``L_emb``: the embedding outputs. TinyBERT uses ``MSE(E^S W_e, E^T)`` (eq. 9); here it is the cosine
  embedding loss of DistilBERT (Sanh et al. 2019, §3: ``L_cos`` "aligns the directions of the student
  and teacher hidden states vectors"): ``1 - cos(E^S W_e, E^T)`` per token, averaged;
* ``L_pred = CE(softmax(z^T / t), log_softmax(z^S / t))`` (eq. 10), only for models with ``logits`` and
  ``prediction_weight > 0`` (task-specific distillation).

Means run over the real tokens only: with an ``attention_mask`` padded positions (and, for attention
maps, pairs with a padded query or key) are left out. Combined with the DistilBERT initialisation
(:func:`~slimtorch.distill.layer_drop.layer_drop_student`), this is the recipe behind the 6 -> 3 layer
MiniLM student: copy every 2nd layer, then distil on unlabeled text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.batches import ModelInputs, output_tensor
from slimtorch.core.config import Config, check_positive
from slimtorch.core.errors import SlimtorchError
from slimtorch.distill.distiller import as_inputs, freeze_
from slimtorch.distill.layer_drop import check_mapping, num_layers, uniform_mapping
from slimtorch.distill.output_fields import prepare_model


# ---- pure losses -----------------------------------------------------------------------------------------
def _token_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` float weights of the real tokens (all ones without a mask)."""
    if mask is None:
        return like.new_ones(like.shape[:2])
    if mask.shape != like.shape[:2]:
        raise SlimtorchError(f"attention_mask of shape {tuple(mask.shape)} does not fit features of shape "
                             f"{tuple(like.shape)}: expected (B, T) = {tuple(like.shape[:2])}")
    return mask.to(like.dtype)


def _check_same_shape(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise SlimtorchError(f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in shape")


def embedding_cosine_loss(student: torch.Tensor, teacher: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """DistilBERT's cosine embedding loss: ``mean over real tokens of 1 - cos(s_tok, t_tok)``.

    Args:
        student, teacher: ``(B, T, D)`` (the student already projected to the teacher's width).
        mask: ``(B, T)``, 1 for real tokens, 0 for padding (``None``: every token counts).
    """
    _check_same_shape(student, teacher, "embedding_cosine_loss")
    w = _token_mask(mask, student)
    per_token = 1.0 - F.cosine_similarity(student, teacher, dim=-1)  # (B, T)
    return (per_token * w).sum() / w.sum().clamp(min=1)


def hidden_mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT eq. 8, ``MSE(H^S W_h, H^T)``: mean of ``(s - t)^2`` over real tokens and the ``D`` features.

    Args:
        student, teacher: ``(B, T, D)``.
        mask: ``(B, T)`` real-token mask (``None``: every token).
    """
    _check_same_shape(student, teacher, "hidden_mse_loss")
    w = _token_mask(mask, student)
    sq = (student - teacher).pow(2).mean(-1)  # (B, T)
    return (sq * w).sum() / w.sum().clamp(min=1)


def attention_mse_loss(student: torch.Tensor, teacher: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """TinyBERT eq. 7, ``1/h sum_i MSE(A_i^S, A_i^T)``: mean over heads and (query, key) pairs of real tokens.

    Args:
        student, teacher: attention maps ``(B, h, T, T)`` (same number of heads).
        mask: ``(B, T)`` real-token mask; a pair counts when both its query and key are real.
    """
    _check_same_shape(student, teacher, "attention_mse_loss (the student needs the teacher's head count)")
    b, h, t, _ = student.shape
    m = _token_mask(mask, student.new_empty(b, t))
    pairs = (m[:, :, None] * m[:, None, :]).unsqueeze(1)  # (B, 1, T, T)
    sq = (student - teacher).pow(2) * pairs
    return sq.sum() / (pairs.sum() * h).clamp(min=1)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """TinyBERT eq. 10: ``-sum_c softmax(z^T/t)_c log_softmax(z^S/t)_c``, averaged over samples (positions)."""
    check_positive("temperature", temperature)
    p = F.softmax(teacher_logits / temperature, dim=-1)
    return -(p * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


# ---- config -----------------------------------------------------------------------------------------------
@dataclass
class TinyBERT(Config):
    """Layer-distillation settings (Jiao et al. 2020; the cosine embedding loss of Sanh et al. 2019).

    Args:
        mapping: teacher layer (0-based) each student layer learns from, e.g. ``(1, 3, 5)`` for 6 -> 3;
            ``None`` = uniform, student layer ``i <- (i + 1) k - 1`` with ``k = L_t / L_s``.
        embedding_weight: weight ``w_e`` of the embedding-output cosine loss (>= 0).
        hidden_weight: weight ``w_h`` of the hidden-state MSE, summed over mapped layers (>= 0).
        attention_weight: weight ``w_a`` of the attention-map MSE, summed over mapped layers (>= 0); > 0
            switches both models to eager attention (SDPA never returns the maps) and needs equal head counts.
        prediction_weight: weight ``w_p`` of the soft cross-entropy on ``logits`` (>= 0; 0 for general
            distillation of an encoder without a head).
        temperature: ``t`` of the prediction loss (> 0).
    """

    mapping: tuple[int, ...] | None = None
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    prediction_weight: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.mapping is not None:
            if isinstance(self.mapping, (str, bytes)) or not hasattr(self.mapping, "__iter__"):
                raise ValueError(f"TinyBERT.mapping must be a list of teacher layer indices, got {self.mapping!r}")
            self.mapping = tuple(self.mapping)
            if not self.mapping or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.mapping):
                raise ValueError(f"TinyBERT.mapping must be a non-empty list of teacher layer indices >= 0, got "
                                 f"{list(self.mapping)}")
        for name in ("embedding_weight", "hidden_weight", "attention_weight", "prediction_weight"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("temperature", self.temperature)
        if not (self.embedding_weight or self.hidden_weight or self.attention_weight or self.prediction_weight):
            raise ValueError("TinyBERT: every loss weight is 0; at least one of embedding_weight, hidden_weight, "
                             "attention_weight, prediction_weight must be > 0")


# ---- the loss module --------------------------------------------------------------------------------------
def _hidden_size(model: nn.Module, whose: str) -> int:
    d = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(d, int):
        raise SlimtorchError(f"the {whose} ({type(model).__name__}) has no config.hidden_size; TinyBERT "
                             "distillation needs a Hugging Face transformer")
    return d


def _projection(d_s: int, d_t: int) -> nn.Module:
    return nn.Identity() if d_s == d_t else nn.Linear(d_s, d_t, bias=False)


class TinyBERTDistiller(nn.Module):
    """Student + frozen teacher + TinyBERT losses as one loss module (``computes_loss = True``).

    ``forward(inputs, targets=None)`` runs both models on ``inputs`` (a dict of named tensors such as
    ``input_ids``/``attention_mask``, a tensor, or ``ModelInputs``) with ``output_hidden_states`` (and
    ``output_attentions``) and returns ``{"loss", "output", "embedding", "hidden", "attention",
    "prediction"}``: ``loss`` to backpropagate, ``output`` the student's main output (``logits`` or
    ``last_hidden_state``) and each weighted, detached term (terms with weight 0 are left out).
    ``targets`` are ignored: general distillation needs no labels. It plugs into
    :func:`slimtorch.train.fit`, which optimises the student and the projections and saves the student.

    Args:
        student: e.g. :func:`~slimtorch.distill.layer_drop.layer_drop_student` of the teacher.
        teacher: the Hugging Face transformer to imitate; frozen (eval mode, no gradients).
        config: the :class:`TinyBERT` settings.
        student_layers_path, teacher_layers_path: the blocks' ModuleList when it cannot be found.

    Raises:
        SlimtorchError: the mapping does not fit the layer counts, the models are no HF transformers, or
            attention maps are distilled between models with different head counts.
    """

    computes_loss = True

    def __init__(self, student: nn.Module, teacher: nn.Module, config: TinyBERT | None = None, *,
                 student_layers_path: str | None = None, teacher_layers_path: str | None = None) -> None:
        super().__init__()
        if student is teacher:
            raise SlimtorchError("the student cannot be its own teacher; pass layer_drop_student(teacher)")
        self.config = config if config is not None else TinyBERT()
        n_s, n_t = num_layers(student, student_layers_path), num_layers(teacher, teacher_layers_path)
        self.mapping = (check_mapping(self.config.mapping, n_t, n_s) if self.config.mapping is not None
                        else uniform_mapping(n_t, n_s))
        self.student = student
        self.teacher = freeze_(teacher)
        d_s, d_t = _hidden_size(student, "student"), _hidden_size(teacher, "teacher")
        # W_e and W_h of TinyBERT eqs. 8-9: trained with the student, identity when the widths agree.
        self.embedding_proj = _projection(d_s, d_t)
        self.hidden_proj = _projection(d_s, d_t)
        self._flags = {"output_hidden_states": True}
        if self.config.attention_weight > 0:
            h_s = getattr(student.config, "num_attention_heads", None)
            h_t = getattr(teacher.config, "num_attention_heads", None)
            if h_s != h_t:
                raise SlimtorchError(f"attention-map distillation compares head by head, but the student has {h_s} "
                                     f"heads and the teacher {h_t}; set attention_weight=0 or keep the head count")
            self._flags["output_attentions"] = True
            prepare_model(student, ["attentions"])
            prepare_model(teacher, ["attentions"])

    def train(self, mode: bool = True) -> TinyBERTDistiller:
        """Set the student and projections to ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, inputs: Any, targets: Any = None, index: Any = None) -> dict[str, torch.Tensor]:
        """The TinyBERT loss on one batch (``targets``/``index`` are accepted for ``fit`` and ignored)."""
        x = as_inputs(inputs)
        x = ModelInputs(x.args, {**x.kwargs, **self._flags})
        s_out = x(self.student)
        with torch.no_grad():
            t_out = x(self.teacher)
        mask = x.kwargs.get("attention_mask")
        s_h, t_h = self._fields(s_out, "hidden_states", "student"), self._fields(t_out, "hidden_states", "teacher")
        token_mask = mask if mask is not None and mask.shape == s_h[0].shape[:2] else None
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if c.embedding_weight:
            terms["embedding"] = c.embedding_weight * embedding_cosine_loss(
                self.embedding_proj(s_h[0]), t_h[0], token_mask)
        if c.hidden_weight:
            terms["hidden"] = c.hidden_weight * sum(
                hidden_mse_loss(self.hidden_proj(s_h[i + 1]), t_h[j + 1], token_mask)
                for i, j in enumerate(self.mapping))
        if c.attention_weight:
            s_a, t_a = self._fields(s_out, "attentions", "student"), self._fields(t_out, "attentions", "teacher")
            terms["attention"] = c.attention_weight * sum(
                attention_mse_loss(s_a[i], t_a[j], token_mask) for i, j in enumerate(self.mapping))
        if c.prediction_weight:
            terms["prediction"] = c.prediction_weight * soft_cross_entropy(
                output_tensor(s_out, "logits"), output_tensor(t_out, "logits"), c.temperature)
        loss = sum(terms.values())
        out = {k: v.detach() for k, v in terms.items()}
        out.update(loss=loss, output=output_tensor(s_out))
        return out

    @staticmethod
    def _fields(out: Any, name: str, whose: str) -> tuple[torch.Tensor, ...]:
        value = out.get(name) if hasattr(out, "get") else None
        if not value:
            raise SlimtorchError(f"the {whose} returned no {name!r} (called with output_{name}=True); TinyBERT "
                                 "distillation needs a Hugging Face transformer that returns them")
        return tuple(value)
