"""Top-k accuracy, loss and perplexity of a model over a dataset.

Language models produce logits ``(B, T, V)`` for targets ``(B, T)``; they are flattened to
``(B*T, V)`` / ``(B*T,)`` so every token counts as one prediction. Loss is the mean over predictions,
perplexity is ``exp(loss)`` (meaningful for next-token cross-entropy).

Batches may be dicts of named inputs (``input_ids``, ``attention_mask``, ...) with ``labels``, and outputs
Hugging Face ``ModelOutput``s: accuracy is taken on their ``logits``, the loss is the model's own ``loss``
(called with ``labels=``) when its ``forward`` takes labels, and a causal LM's logits are shifted against
its labels (:mod:`slimtorch.core.labels`). Targets equal to ``-100`` (padding) are not predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from slimtorch.core.batches import ModelInputs, output_tensor
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.labels import align, counted, forward_batch
from slimtorch.metrics._batches import eval_mode, iter_batches, model_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flatten_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape to ``(N, C)`` logits and ``(N,)`` class indices.

    ``(B, C)`` + ``(B,)`` stay as they are; ``(B, T, V)`` + ``(B, T)`` become ``(B*T, V)`` + ``(B*T,)``.
    Soft (probability) targets of the logits' shape are turned into their argmax class.
    """
    if targets.is_floating_point() and targets.shape == logits.shape:
        targets = targets.argmax(-1)
    if logits.dim() != targets.dim() + 1:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not fit targets of shape {tuple(targets.shape)}: "
            "expected logits (..., C) for class-index targets (...)"
        )
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> int:
    """Number of predictions whose target is among the ``k`` highest logits.

    Args:
        logits: ``(N, C)`` or ``(B, T, V)``.
        targets: class indices ``(N,)`` or ``(B, T)``.
        k: how many top classes count as a hit.
    """
    logits, targets = flatten_logits(logits, targets)
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"topk must be between 1 and the number of classes ({logits.shape[-1]}), got {k}")
    top = logits.topk(k, dim=-1).indices  # (N, k)
    return int((top == targets.unsqueeze(-1)).any(-1).sum())


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction (in [0, 1]) of predictions whose target is among the ``k`` highest logits."""
    n = flatten_logits(logits, targets)[1].numel()
    if n == 0:
        raise ValueError("topk_accuracy of an empty batch is undefined")
    return topk_correct(logits, targets, k) / n


def loss_module_input(inputs: ModelInputs) -> Any:
    """What a loss module (``computes_loss = True``) is called with: the tensor of a one-tensor batch
    (as before dict batches existed), otherwise the :class:`ModelInputs` (the ``Distiller`` takes both)."""
    if len(inputs.args) == 1 and not inputs.kwargs and isinstance(inputs.args[0], torch.Tensor):
        return inputs.args[0]
    return inputs


def _forward(model: nn.Module, inputs: ModelInputs, y: Any,
             with_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run one batch; returns ``(logits, loss_or_None)``.

    Modules with ``computes_loss = True`` (e.g. a distiller) take ``(inputs, y)`` and return a dict with
    ``loss`` and ``output``. Other models return logits, a tuple whose first item is logits, or a dict /
    Hugging Face ``ModelOutput`` (its ``logits``); with ``with_labels`` a model whose ``forward`` takes
    ``labels`` gets them and its own ``loss`` is returned.
    """
    if getattr(model, "computes_loss", False):
        out = model(loss_module_input(inputs), y)
        if not isinstance(out, dict) or "output" not in out or "loss" not in out:
            raise ValueError(
                f"{type(model).__name__} has computes_loss=True, so its forward(x, y) must return a dict "
                "with 'loss' and 'output'"
            )
        return out["output"], out["loss"]
    out, model_loss = forward_batch(model, inputs, y, with_labels=with_labels)
    if isinstance(out, Mapping) and not isinstance(out.get("logits"), torch.Tensor) and isinstance(
            out.get("output"), torch.Tensor):
        out = out["output"]
    try:
        return output_tensor(out), model_loss
    except SlimtorchError:
        raise ValueError(f"could not find logits in the output of {type(model).__name__}") from None


def accuracy(model: nn.Module, data: Dataset | Iterable[Any], batch_size: int = 256, topk: int = 1) -> float:
    """Top-``k`` accuracy in [0, 1], in eval mode under ``no_grad`` (the previous modes are restored).

    Args:
        model: classifier returning logits ``(B, C)`` or an LM returning ``(B, T, V)``.
        data: a ``Dataset`` of ``(x, y)`` items or any iterable of ``(x, y)`` batches (a DataLoader).
        batch_size: used only when ``data`` is a Dataset.
        topk: a prediction is correct if the target is among the ``topk`` highest logits.
    """
    return evaluate(model, data, batch_size=batch_size, topk=topk)["accuracy"]


def evaluate(model: nn.Module, data: Dataset | Iterable[Any], loss_fn: LossFn | None = None,
             batch_size: int = 256, topk: int = 1) -> dict[str, float]:
    """Mean loss, top-``k`` accuracy and perplexity over ``data``.

    The loss is averaged over predictions (samples, or tokens for an LM). ``loss_fn(logits, targets)``
    is assumed to return the mean over its batch, so each batch is weighted by its prediction count;
    the default is cross-entropy, or the model's own ``loss`` when its ``forward`` takes ``labels``
    (Hugging Face heads: cross-entropy over the labels that are not -100, shifted for causal LMs). For a
    module with ``computes_loss = True`` the ``loss`` it returns is used unless ``loss_fn`` is given, which
    is then applied to its ``output``.

    Args:
        model: the model; put in eval mode under ``torch.no_grad`` and restored afterwards.
        data: a ``Dataset`` of ``(x, y)`` or an iterable of batches: ``(x, y)`` pairs, ``((x1, x2), y)``,
            or dicts of named inputs with ``labels``.
        loss_fn: ``(logits, targets) -> scalar`` mean loss (causal-LM logits and labels already aligned);
            ``None`` for cross-entropy / the model's own loss.
        batch_size: used only when ``data`` is a Dataset.
        topk: ``k`` of the reported accuracy.

    Returns:
        ``{"loss", "accuracy", "perplexity"}`` with ``perplexity = exp(loss)`` and ``accuracy`` in [0, 1].
    """
    device = model_device(model)
    loss_sum, correct, count = 0.0, 0, 0
    target_of = product_of(model)
    with eval_mode(model), torch.no_grad():
        for inputs, y in iter_batches(data, batch_size):
            inputs, y = inputs.to(device), y.to(device)
            logits, model_loss = _forward(model, inputs, y, with_labels=loss_fn is None)
            logits, y = align(target_of, logits, y)
            flat_logits, flat_y = flatten_logits(logits, y)
            keep = counted(flat_y)  # padding labelled -100 is no prediction
            flat_logits, flat_y = flat_logits[keep], flat_y[keep]
            n = flat_y.numel()
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, y)) * n
            elif model_loss is not None:
                loss_sum += float(model_loss) * n
            else:
                loss_sum += float(F.cross_entropy(flat_logits.float(), flat_y, reduction="sum"))
            correct += topk_correct(flat_logits, flat_y, topk)
            count += n
    if count == 0:
        raise ValueError("evaluate got no data: the dataset or iterable of batches is empty")
    loss = loss_sum / count
    return {"loss": loss, "accuracy": correct / count, "perplexity": perplexity(loss)}


def product_of(model: nn.Module) -> nn.Module:
    """The model whose label convention applies: the student of a loss module, else the model itself."""
    student = getattr(model, "student", None)
    return student if getattr(model, "computes_loss", False) and isinstance(student, nn.Module) else model


def perplexity(loss: float) -> float:
    """``exp(loss)`` for a mean cross-entropy in nats (``inf`` instead of an overflow)."""
    return math.exp(loss) if loss < 700 else math.inf
