"""Sequential layer-wise calibration: one transformer block at a time, on the compressed blocks' outputs.

GPTQ (Frantar et al. 2023), SparseGPT (Frantar & Alistarh 2023), Wanda (Sun et al. 2024), AWQ (Lin et al.
2024) and SmoothQuant (Xiao et al. 2023) all compress a layer from statistics of its calibration inputs.
Collected on the whole model at once, every layer sees the *float* model's activations and the memory
holds the whole model's activations. Their reference implementations instead run the model **block by
block**:

1. find the repeated blocks (:func:`find_blocks`: the ``nn.ModuleList``/``nn.Sequential`` of transformer
   layers: our ``char_gpt``'s ``blocks``, Hugging Face ``model.layers``, ``encoder.layer``,
   ``transformer.h``);
2. capture the inputs of block 0 for every calibration batch, positional arguments and keywords
   (``attention_mask``, ``position_embeddings``, ...), with a hook that stops the forward there
   (:func:`capture_block_inputs`);
3. for each block: collect its layers' statistics by running the block alone on the cached inputs,
   compress the block, then run the *compressed* block once more to produce the next block's inputs.

Peak memory is the model's weights plus one block's activations for the calibration set (the cached
block inputs and outputs, ``2 * samples * seq * hidden`` floats) plus one layer's statistics, instead
of the activations of every layer. Layers outside the blocks (an LM head) are calibrated last with a
pass of the whole (already compressed) model.

The techniques (``prune``, ``quant``) never import each other, so this runner lives in ``core`` and
knows nothing of what a "step" does: :func:`calibrate_blockwise` calls ``step(layers, run)`` where
``run()`` feeds the calibration data through the part of the model holding ``layers``, and the step
hooks those layers (:func:`observe_inputs`) and compresses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from slimtorch.core.batches import ModelInputs, output_tensor, split_batch
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import display_name

#: ``run(limit=None) -> outputs``: feed the calibration data (its first ``limit`` batches) through the part
#: of the model that holds the layers being compressed; returns that part's output tensor per batch.
Runner = Callable[..., list[torch.Tensor]]
#: ``step(layers, run)``: compress ``layers`` (fqn -> module); ``run()`` feeds the calibration data to them.
Step = Callable[[dict[str, nn.Module], Runner], None]


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


def calibration_inputs(
    calib_data: Iterable[Any] | torch.Tensor | Mapping[str, Any] | None, what: str, min_length: int | None = None
) -> list[ModelInputs]:
    """Validated model inputs of every calibration batch (tensors, ``(x, y)`` pairs or dicts of inputs).

    Args:
        calib_data: an iterable of batches (a ``DataLoader`` works), or one tensor / one dict batch.
        what: the method asking (for messages: ``"SparseGPT"``).
        min_length: if given, the sequence length (dimension 1 of the main input) every batch must reach.

    Raises:
        SlimtorchError: no data, an empty batch, a batch shorter than ``min_length``, or a NaN/inf value;
            the message names the batch (0-based) and the input.
    """
    if calib_data is None:
        raise SlimtorchError(f"{what} needs calibration data: pass calib_data=<iterable of batches> "
                             "(tensors, (inputs, targets) pairs or dicts with input_ids/attention_mask)")
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        calib_data = [calib_data]
    out: list[ModelInputs] = []
    for i, batch in enumerate(calib_data):
        inputs, _ = split_batch(batch)
        for name, t in inputs.tensors():
            if t.numel() == 0:
                raise SlimtorchError(f"{what}: calibration batch {i} input {name!r} is empty "
                                     f"(shape {tuple(t.shape)}); every batch needs at least one sample")
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise SlimtorchError(f"{what}: calibration batch {i} contains {bad} NaN/inf value(s) in "
                                     f"input {name!r}; clean or drop that batch")
        first = inputs.first
        if min_length is not None and (first.dim() < 2 or first.shape[1] < min_length):
            have = first.shape[1] if first.dim() >= 2 else 0
            raise SlimtorchError(f"{what}: calibration batch {i} has sequence length {have}, shorter than the "
                                 f"required {min_length}; give longer sequences or lower the sequence length")
        out.append(inputs)
    if not out:
        raise SlimtorchError(f"{what}: calibration data is empty; give at least one batch")
    return out


def token_sequences(tokens: torch.Tensor, seq_len: int, num_samples: int, seed: int = 0) -> torch.Tensor:
    """``num_samples`` random windows of ``seq_len`` tokens from a 1-D token stream (the GPTQ/AWQ recipe).

    Returns:
        (num_samples, seq_len) long tensor.

    Raises:
        SlimtorchError: the stream is shorter than ``seq_len`` (too short for the sequence length).
    """
    tokens = tokens.reshape(-1)
    if seq_len < 1 or num_samples < 1:
        raise SlimtorchError(f"seq_len and num_samples must be >= 1, got {seq_len} and {num_samples}")
    if tokens.numel() < seq_len:
        raise SlimtorchError(f"the calibration text has {tokens.numel()} tokens, too short for the sequence "
                             f"length {seq_len}; give more text or a shorter seq_len")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (num_samples,), generator=g)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


@dataclass
class Blocks:
    """The repeated blocks of a model: the container's name and ``(fqn, block)`` in execution order."""

    container: str
    blocks: list[tuple[str, nn.Module]]


def _has_linear(m: nn.Module) -> bool:
    return any(isinstance(c, nn.Linear) for c in m.modules())


def find_blocks(model: nn.Module) -> Blocks | None:
    """The ``nn.ModuleList``/``nn.Sequential`` of same-type blocks holding the model's Linear layers.

    Among the containers whose children are all of one class, each a container (not itself a Linear)
    holding at least one ``nn.Linear``, the one with the most parameters wins (``model.layers`` of a
    Llama, ``encoder.layer`` of BERT, ``transformer.h`` of GPT-2, ``blocks`` of our ``char_gpt``).
    None when the model has no such container.
    """
    best: tuple[int, Blocks] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        kids = list(mod.named_children())
        kind = type(kids[0][1])
        if kind is nn.Linear or any(type(c) is not kind for _, c in kids) or not _has_linear(kids[0][1]):
            continue
        size = sum(p.numel() for p in mod.parameters())
        if best is None or size > best[0]:
            fqn = [(f"{name}.{k}" if name else k, c) for k, c in kids]
            best = (size, Blocks(name, fqn))
    return None if best is None else best[1]


def _no_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keywords of a captured block call with any KV cache dropped (a replay must not grow a cache)."""
    out = {k: v for k, v in kwargs.items() if "past_key" not in k and k != "layer_past"}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def capture_block_inputs(model: nn.Module, block: nn.Module, batches: list[ModelInputs],
                         block_name: str = "block 0") -> list[ModelInputs]:
    """The arguments ``block`` is called with for each batch (the forward stops at the block).

    Raises:
        SlimtorchError: the block is not called on some batch (naming it and the batch).
    """
    got: list[ModelInputs] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        det = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        got.append(ModelInputs(det, _no_cache(dict(kwargs))))
        raise _Stop

    h = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, inp in enumerate(batches):
                n = len(got)
                try:
                    inp(model)
                except _Stop:
                    pass
                if len(got) == n:
                    raise SlimtorchError(f"{display_name(block_name)!r} was never called on calibration batch {i}")
    finally:
        h.remove()
    return got


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns (the tensor, or the first element of a tuple/ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = tuple(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise SlimtorchError(f"cannot take the hidden states from a block output of type {type(out).__name__}")


def next_inputs(inputs: ModelInputs, hidden: torch.Tensor) -> ModelInputs:
    """``inputs`` with the hidden states (first positional argument or ``hidden_states=``) replaced."""
    if inputs.args:
        return ModelInputs((hidden, *inputs.args[1:]), inputs.kwargs)
    if "hidden_states" in inputs.kwargs:
        return ModelInputs((), {**inputs.kwargs, "hidden_states": hidden})
    raise SlimtorchError("a block was called without positional arguments or hidden_states=; cannot chain blocks")


def observe_inputs(layers: dict[str, nn.Module], run: Callable[[], Any],
                   observe: Callable[[str, torch.Tensor], None]) -> None:
    """Call ``observe(fqn, x)`` with the input of every layer in ``layers`` each time it runs during ``run()``.

    Raises:
        SlimtorchError: a layer never received an input (it is not on the forward path of the
            calibration data, e.g. an unused head); the message names it.
    """
    seen: set[str] = set()

    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            seen.add(name)
            observe(name, args[0].detach())
        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in seen]
    if missing:
        raise SlimtorchError(
            f"layer(s) {[display_name(n) for n in missing]} never received an input during calibration: they are "
            "not called by the model's forward on these batches; exclude them (exclude=[...])")


@dataclass
class BlockwiseStats:
    """What a block-wise calibration did.

    Attributes:
        mode: ``"sequential"`` (block by block) or ``"whole-model"``.
        blocks: number of blocks run one at a time (0 in whole-model mode).
        activation_bytes: the largest activation cache held (block inputs + outputs over the calibration set).
        seconds_per_block: wall time of each block's step.
    """

    mode: str
    blocks: int = 0
    activation_bytes: int = 0
    seconds_per_block: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "blocks": self.blocks, "activation_bytes": self.activation_bytes,
                "seconds_per_block": [round(s, 4) for s in self.seconds_per_block]}


def _bytes(inputs: list[ModelInputs]) -> int:
    return sum(t.numel() * t.element_size() for inp in inputs for _, t in inp.tensors())


def calibrate_blockwise(model: nn.Module, layers: dict[str, nn.Module], batches: list[ModelInputs], step: Step, *,
                        sequential: bool = True, desc: str = "calibrate") -> BlockwiseStats:
    """Run ``step`` over ``layers``, one transformer block at a time when ``sequential`` (module docstring).

    Args:
        model: the model (compressed in place by ``step``).
        layers: fqn -> layer to compress (the selection).
        batches: the calibration inputs (:func:`calibration_inputs`).
        step: ``step(sub_layers, run)``: hook ``sub_layers`` (:func:`observe_inputs`), call ``run()``, compress.
            Called once per block holding selected layers, then once for the layers outside the blocks.
        sequential: block by block (feeding each block the compressed previous block's outputs); False,
            or a model without repeated blocks: one ``step`` over all layers on whole-model passes.
        desc: progress bar label.

    Returns:
        :class:`BlockwiseStats`.
    """
    def run_model(limit: int | None = None) -> list[torch.Tensor]:
        with torch.no_grad():
            return [output_tensor(inp(model)) for inp in batches[:limit]]

    found = find_blocks(model) if sequential else None
    if found is None:
        step(layers, run_model)
        return BlockwiseStats("whole-model")
    stats = BlockwiseStats("sequential", len(found.blocks))
    name0, block0 = found.blocks[0]
    inputs = capture_block_inputs(model, block0, batches, name0)
    inside: set[str] = set()
    for name, block in tqdm(found.blocks, desc=desc, unit="block", leave=False):
        t0 = time.perf_counter()
        sub = {n: m for n, m in layers.items() if n.startswith(name + ".")}
        inside |= set(sub)
        if sub:
            step(sub, _runner(block, inputs))
        with torch.no_grad():
            outs = [next_inputs(inp, block_output(inp(block))) for inp in inputs]
        stats.activation_bytes = max(stats.activation_bytes, _bytes(inputs) + _bytes(outs))
        inputs = outs
        stats.seconds_per_block.append(time.perf_counter() - t0)
    del inputs
    rest = {n: m for n, m in layers.items() if n not in inside}
    if rest:
        step(rest, run_model)
    return stats


def _runner(block: nn.Module, inputs: list[ModelInputs]) -> Runner:
    def run(limit: int | None = None) -> list[torch.Tensor]:
        with torch.no_grad():
            return [block_output(inp(block)) for inp in inputs[:limit]]
    return run


def subsample_rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` evenly spaced rows of ``x`` (n, k) (deterministic)."""
    n = x.shape[0]
    if n <= limit:
        return x
    idx = torch.linspace(0, n - 1, limit).round().long()
    return x[idx]


def sample_matrix(x: torch.Tensor) -> torch.Tensor:
    """A Linear layer input ``(..., in)`` as samples ``(n, in)`` (every leading position is one sample)."""
    return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)




def run_inputs(model: nn.Module, inputs: ModelInputs | tuple[Any, ...]) -> Any:
    """``model`` on one batch given as :class:`ModelInputs` or as a tuple of positional arguments."""
    return inputs(model) if isinstance(inputs, ModelInputs) else model(*inputs)


def input_groups(layers: dict[str, nn.Module], run: Callable[..., Any]) -> list[list[str]]:
    """``layers`` in execution order, consecutive layers reading the same input tensor grouped together.

    Layers of one group (the q, k and v projections of attention; gate and up of a SwiGLU MLP) see the same
    input, so they are calibrated together; a later group's inputs depend on the earlier groups' outputs.
    ``run(1)`` is called once (the first batch). Layers that never run raise (see
    :func:`observe_inputs`).
    """
    order: list[tuple[str, torch.Tensor]] = []  # the tensors are kept alive so identity tests are sound

    def observe(name: str, x: torch.Tensor) -> None:
        if name not in {n for n, _ in order}:
            order.append((name, x))

    observe_inputs(layers, lambda: run(1), observe)
    groups: list[list[str]] = []
    last: torch.Tensor | None = None
    for name, t in order:
        if groups and last is not None and t.data_ptr() == last.data_ptr() and t.shape == last.shape:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = t
    return groups
