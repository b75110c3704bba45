"""One meaning for "a batch" and "a model output", shared by every technique.

Users bring their own data and models (DESIGN.md): a batch may be a tensor, an ``(inputs, targets)``
pair, a tuple of positional inputs with a target, or a dict of named inputs such as a Hugging Face
``BatchEncoding`` (``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``). A model output may
be a tensor, a tuple, or a dict-like Hugging Face ``ModelOutput``. Calibration, importance, fine-tuning,
evaluation, distillation and export all go through :func:`split_batch` and :func:`output_tensor`, so a
mask or a second input is never silently dropped.

``transformers`` is never imported here: ``ModelOutput`` and ``BatchEncoding`` are ``Mapping``s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError

#: Keys of a dict batch that hold the target, not a model input (first match wins).
TARGET_KEYS = ("labels", "label", "targets", "target", "y")

#: Keys tried, in order, when one tensor must be taken from a dict-like model output.
OUTPUT_KEYS = ("logits", "last_hidden_state", "output", "out", "pooler_output")


@dataclass(frozen=True)
class ModelInputs:
    """The arguments of one forward call: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model: nn.Module) -> Any:
        """Run ``model`` on these inputs."""
        return model(*self.args, **self.kwargs)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every input tensor with a name (``arg0``, ``arg1``, ... or the keyword)."""
        for i, a in enumerate(self.args):
            if isinstance(a, torch.Tensor):
                yield f"arg{i}", a
        for k, v in self.kwargs.items():
            if isinstance(v, torch.Tensor):
                yield k, v

    @property
    def first(self) -> torch.Tensor:
        """The first input tensor (the main input: ``x``, ``input_ids`` or ``pixel_values``)."""
        for _, t in self.tensors():
            return t
        raise SlimtorchError("the batch holds no tensor input")

    @property
    def batch_size(self) -> int:
        """Leading dimension of the first input tensor."""
        t = self.first
        return int(t.shape[0]) if t.dim() else 1

    def to(self, device: torch.device | str) -> ModelInputs:
        """A copy with every tensor moved to ``device``."""
        def mv(v: Any) -> Any:
            return v.to(device) if isinstance(v, torch.Tensor) else v
        return ModelInputs(tuple(mv(a) for a in self.args), {k: mv(v) for k, v in self.kwargs.items()})

    def select(self, index: slice | torch.Tensor) -> ModelInputs:
        """Rows ``index`` of every tensor whose leading dimension is the batch (others kept as they are)."""
        n = self.batch_size

        def sel(v: Any) -> Any:
            return v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
        return ModelInputs(tuple(sel(a) for a in self.args), {k: sel(v) for k, v in self.kwargs.items()})

    def as_export_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` in the form ``torch.onnx.export`` / ``torch.export`` take them."""
        return tuple(self.args), dict(self.kwargs)


def split_batch(batch: Any) -> tuple[ModelInputs, Any | None]:
    """Split a batch into the model's inputs and the target (``None`` when there is none).

    Accepted forms:

    * a tensor: one positional input, no target;
    * a dict (e.g. ``BatchEncoding``): every key except :data:`TARGET_KEYS` is a keyword input;
    * ``(inputs, target)``: ``inputs`` a tensor, a tuple of positional tensors or a dict of keywords;
    * ``(inputs,)``: inputs only; ``(inputs, target, extra...)``: extras (e.g. sample indices) ignored.

    Raises:
        SlimtorchError: for anything else, naming the type received.
    """
    if isinstance(batch, torch.Tensor):
        return ModelInputs((batch,)), None
    if isinstance(batch, Mapping):
        kwargs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
        target = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if not kwargs:
            raise SlimtorchError(f"the dict batch has no model input, only the keys {sorted(batch)}")
        return ModelInputs((), dict(kwargs)), target
    if isinstance(batch, (tuple, list)) and batch:
        inputs = _as_inputs(batch[0])
        target = batch[1] if len(batch) > 1 else None
        return inputs, target
    raise SlimtorchError(
        "a batch must be a tensor, an (inputs, targets) pair or a dict of named inputs "
        f"(input_ids, attention_mask, ...), got {type(batch).__name__}"
    )


def _as_inputs(x: Any) -> ModelInputs:
    if isinstance(x, ModelInputs):
        return x
    if isinstance(x, torch.Tensor):
        return ModelInputs((x,))
    if isinstance(x, Mapping):
        return ModelInputs((), dict(x))
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return ModelInputs(tuple(x))
    raise SlimtorchError(
        "the inputs of a batch must be a tensor, a tuple of tensors or a dict of named tensors, "
        f"got {type(x).__name__}"
    )


def example_call(example_inputs: Any) -> ModelInputs:
    """Example inputs as one forward call: a tensor, a tuple/list of positional tensors, or a dict of
    keyword tensors (``{"input_ids": ..., "attention_mask": ...}``, a ``BatchEncoding``).

    Unlike a batch (:func:`split_batch`), a tuple here is never ``(inputs, target)``: every item is an input.

    Raises:
        ValueError: for anything else, naming the type received.
    """
    if isinstance(example_inputs, ModelInputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return ModelInputs((example_inputs,))
    if isinstance(example_inputs, Mapping) and example_inputs:
        return ModelInputs((), dict(example_inputs))
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return ModelInputs(tuple(example_inputs))
    raise ValueError(
        "example_inputs must be a tensor, a tuple of tensors (the model's positional arguments) or a dict of "
        f"named tensors (input_ids, attention_mask, ...), got {type(example_inputs).__name__}"
    )


def model_inputs(batch: Any) -> ModelInputs:
    """The inputs of a batch (:func:`split_batch` without the target)."""
    return split_batch(batch)[0]


def output_tensor(out: Any, key: str | None = None) -> torch.Tensor:
    """One tensor from a model output: the tensor itself, ``out[key]``, or the first of :data:`OUTPUT_KEYS`.

    Tuples (``return_dict=False`` outputs) give their first tensor.

    Raises:
        SlimtorchError: ``key`` missing, or no tensor found; the message lists what the output holds.
    """
    if isinstance(out, torch.Tensor):
        if key is not None:
            raise SlimtorchError(f"the model returned a tensor, which has no field {key!r}")
        return out
    if isinstance(out, Mapping):
        if key is not None:
            if key not in out or not isinstance(out[key], torch.Tensor):
                raise SlimtorchError(
                    f"the model output has no tensor {key!r}; it holds {sorted(out.keys())}")
            return out[key]
        for k in OUTPUT_KEYS:
            if isinstance(out.get(k), torch.Tensor):
                return out[k]
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
        raise SlimtorchError(f"the model output holds no tensor; it holds {sorted(out.keys())}")
    if isinstance(out, (tuple, list)):
        if key is not None:
            raise SlimtorchError(f"the model returned a {type(out).__name__}, which has no field {key!r}")
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise SlimtorchError(f"cannot take a tensor from a model output of type {type(out).__name__}")
