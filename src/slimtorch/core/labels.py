"""How a batch's target meets a model's output, including Hugging Face's label conventions.

Fine-tuning, evaluation, gradient importance and distillation all score a model output against a target
(:func:`slimtorch.core.batches.split_batch` gives both). Plain models return logits that line up with
their targets. Hugging Face models differ in two ways, handled here once:

* **They compute their own loss** when called with ``labels=`` (every ``...ForSequenceClassification``,
  ``...ForCausalLM``, ``...ForImageClassification``): cross-entropy, or MSE for a regression head, with
  positions labelled :data:`IGNORE_INDEX` (``-100``, padding) left out. :func:`forward_batch` passes the
  target as ``labels=`` when asked to and the model's ``forward`` takes a ``labels`` argument, and returns
  the model's ``loss``.
* **Causal LMs shift**: their ``labels`` are the input ids themselves and the logit at position ``t``
  predicts label ``t + 1``. :func:`align` drops the last logit and the first label for such models
  (:func:`shifts_labels`), so accuracy and a user's ``loss_fn`` see aligned pairs.

``transformers`` is never imported: models are recognised by their ``config`` and ``can_generate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from slimtorch.core.batches import ModelInputs

#: Target value of positions that count in no loss or accuracy (PyTorch's and Hugging Face's default).
IGNORE_INDEX = -100


def takes_argument(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` has a parameter called ``name`` (``**kwargs`` alone does not count)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # builtins / C extensions without a signature
        return False


def takes_labels(model: nn.Module) -> bool:
    """Whether the model computes its own loss from ``labels=`` (the Hugging Face convention)."""
    return takes_argument(model, "labels")


def shifts_labels(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal LM, whose logit at ``t`` predicts label ``t + 1``.

    Recognised as a model with a ``config`` that is not encoder-decoder and that can generate text
    (``model.can_generate()``, true for ``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...; false for BERT,
    ViT and sequence classifiers). Encoder-decoder models (T5) shift inside, so their logits and labels
    already line up.
    """
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    can_generate = getattr(model, "can_generate", None)
    try:
        return bool(callable(can_generate) and can_generate())
    except Exception:  # a user class may define can_generate differently; then it is not an HF causal LM
        return False


def align(model: nn.Module, logits: torch.Tensor, target: Any) -> tuple[torch.Tensor, Any]:
    """``(logits, target)`` paired position by position.

    For a causal LM (:func:`shifts_labels`) whose ``(B, T)`` target has the logits' leading shape,
    returns ``(logits[:, :-1], target[:, 1:])``; otherwise both unchanged.
    """
    if (isinstance(target, torch.Tensor) and logits.dim() == 3 and target.shape == logits.shape[:2]
            and shifts_labels(model)):
        return logits[:, :-1], target[:, 1:]
    return logits, target


def forward_batch(model: nn.Module, inputs: ModelInputs, target: Any = None, *, with_labels: bool = False,
                  signature_of: nn.Module | None = None) -> tuple[Any, torch.Tensor | None]:
    """Run ``model`` on ``inputs``; returns ``(output, model_loss)``.

    With ``with_labels`` and a target, a model whose ``forward`` takes ``labels`` (checked on
    ``signature_of``, default ``model``: pass the unwrapped module when ``model`` is a DDP wrapper) is
    called with ``labels=target`` and ``model_loss`` is the ``loss`` its output holds. Otherwise, or when
    the inputs already hold ``labels``, ``model_loss`` is ``None``.
    """
    if (with_labels and target is not None and "labels" not in inputs.kwargs
            and takes_labels(signature_of if signature_of is not None else model)):
        out = model(*inputs.args, **inputs.kwargs, labels=target)
        loss = out.get("loss") if isinstance(out, Mapping) else None
        return out, loss if isinstance(loss, torch.Tensor) else None
    return inputs(model), None


def counted(target: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the class-index target positions that count (those not :data:`IGNORE_INDEX`)."""
    return target != IGNORE_INDEX
