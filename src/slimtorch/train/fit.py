"""``fit``: one model-agnostic training loop.

It trains any ``nn.Module`` on any dataset or iterable of batches (``(inputs, targets)`` pairs, a tuple of
inputs with a target, or dicts of named inputs such as ``input_ids``/``attention_mask`` with ``labels``;
every input reaches the model, see :func:`slimtorch.core.batches.split_batch`), with a loss callable or a
*loss module*. Without a ``loss_fn``, a model whose ``forward`` takes ``labels`` (Hugging Face heads) is
called with ``labels=target`` and its own ``loss`` is trained on (cross-entropy over labels that are not
-100, shifted for causal LMs, MSE for a regression head); any other model gets cross-entropy on its
logits (a ``ModelOutput``'s ``logits``). A given ``loss_fn`` always gets ``(logits, targets)``, shifted by
one position for causal LMs. A *loss module*, a module with ``computes_loss = True`` (the
distillation ``Distiller``), is called as ``module(inputs, targets)`` (plus ``index=`` when batches carry a
third item, e.g. sample indices for cached teacher outputs) and returns a dict with ``loss``
(what is backpropagated) and ``output`` (logits, for accuracy); its other entries are logged.

Per epoch it evaluates, appends a line to ``metrics.jsonl`` and writes ``checkpoint.pt`` atomically.
``resume=True`` continues from the last checkpoint; because every epoch's data order is drawn from a
generator seeded with ``(seed, epoch)`` and the RNG states are checkpointed, a killed-and-resumed run ends
with exactly the weights of an uninterrupted one. Under ``torchrun`` it trains with DDP (gloo).

``precision="auto"`` trains in bfloat16 autocast only where the CPU runs bf16 matmuls natively (AMX or
AVX-512-BF16, see :func:`slimtorch.metrics.cpu_info`) and in float32 elsewhere, where emulated bf16 is
slower than float32. The resolved precision is what the run records.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from slimtorch.core.batches import ModelInputs, output_tensor, split_batch
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.labels import align, counted, forward_batch
from slimtorch.io.storage import MODEL_FILE
from slimtorch.io.storage import save as save_model
from slimtorch.metrics import CpuInfo, check_input_shape, cpu_info, evaluate
from slimtorch.metrics.accuracy import loss_module_input
from slimtorch.train import distributed as dist_utils
from slimtorch.train.checkpoint import (
    CHECKPOINT_FILE,
    atomic_torch_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from slimtorch.train.optim import build_optimizer, build_schedule
from slimtorch.train.state import FitResult, TrainState

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS_FILE = "metrics.jsonl"
# Autocast dtype per precision name; None trains in plain float32.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: What ``fit(precision=...)`` accepts: a :data:`PRECISIONS` name, or ``"auto"`` (see :func:`resolve_precision`).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)
# The CPU flags that make bf16 matmuls native (CpuInfo.fast_bf16 is true when either is present).
_BF16_FLAGS = ("amx", "avx512_bf16")

log = logging.getLogger("slimtorch.train")


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that also takes language-model logits ``(B, T, V)`` with targets ``(B, T)``."""
    if outputs.dim() > 2:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(outputs, targets)


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision a run on ``device`` trains in: a key of :data:`PRECISIONS`.

    ``"auto"`` is ``"bf16"`` on a CPU with AMX or AVX-512-BF16 (:attr:`CpuInfo.fast_bf16`) and ``"fp32"``
    on any other CPU, where bf16 autocast is emulated and slower than float32; on other devices (whose
    bf16 support the CPU flags do not describe) it is ``"fp32"``. ``"bf16"`` on a CPU without those flags
    is kept but warned about.

    Args:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        device: the device the run trains on.

    Returns:
        ``"fp32"`` or ``"bf16"``.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISION_CHOICES`.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_CHOICES)}, got {precision!r}")
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        resolved = "bf16" if on_cpu and cpu_info().fast_bf16 else "fp32"
        log.info("precision 'auto' resolved to %r (%s)", resolved, cpu_info() if on_cpu else f"device {device}")
        return resolved
    if precision == "bf16" and on_cpu and not cpu_info().fast_bf16:
        warnings.warn(_slow_bf16_message(cpu_info()), UserWarning, stacklevel=3)
    return precision


def _slow_bf16_message(info: CpuInfo) -> str:
    missing = [f for f in _BF16_FLAGS if not info.flags.get(f)]
    return (f"precision='bf16': bf16 autocast will be slow on this CPU ({info.model or info.arch}, no "
            f"{' or '.join(missing)}), where bfloat16 matmuls are emulated and run slower than float32; "
            "use precision='fp32', or 'auto' to pick bf16 only on CPUs that run it natively")


def product_module(model: nn.Module) -> nn.Module:
    """The module a run produces: the student of a loss module, else the model itself."""
    if getattr(model, "computes_loss", False) and isinstance(getattr(model, "student", None), nn.Module):
        return model.student
    return model


def fit(
    model: nn.Module,
    train_data: Dataset | Iterable[Any],
    epochs: int = 1,
    *,
    loss_fn: LossFn | None = None,
    eval_data: Dataset | Iterable[Any] | None = None,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    batch_size: int = 128,
    eval_batch_size: int = 512,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    grad_clip: float | None = None,
    device: str | torch.device = "cpu",
    log_every: int = 10,
    precision: str = "fp32",
    channels_last: bool = False,
) -> FitResult:
    """Train ``model`` for ``epochs`` epochs.

    Args:
        model: the module to train (or a loss module, see the module docstring).
        train_data: a Dataset (batched and shuffled here, seeded) or any iterable of ``(x, y)`` batches or
            dict batches (``input_ids``, ``attention_mask``, ..., ``labels``).
        epochs: number of epochs.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; default: the model's own loss when it takes
            ``labels`` (Hugging Face), else cross-entropy (see the module docstring).
        eval_data: evaluated after every epoch (loss, accuracy, perplexity) when given.
        optimizer: ``"sgd"`` (Nesterov momentum), ``"adam"``, ``"adamw"`` or an optimizer instance.
        lr, momentum, weight_decay: optimizer settings (ignored for an optimizer instance, except lr schedule).
        schedule: ``"cosine"``, ``"step"`` (x0.1 at 50% and 75%) or ``"constant"``, applied per step.
        warmup_epochs: linear learning-rate warm-up length in epochs (fractions allowed).
        batch_size, eval_batch_size: batch sizes when datasets are given.
        out_dir: run directory for ``checkpoint.pt``, ``metrics.jsonl`` and the final ``model.safetensors``.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        overwrite: discard a previous run in ``out_dir`` (otherwise a previous run is an error).
        seed: seeds the data order and the RNGs.
        callbacks: objects with any of ``on_train_begin/on_step_end/on_epoch_end(state)``.
        progress: show a progress bar with running loss and throughput (rank 0 only).
        grad_clip: clip the global gradient norm to this value.
        device: where to train.
        log_every: refresh the progress bar every this many steps.
        precision: ``"fp32"``, ``"bf16"`` for bfloat16 autocast of the forward pass (weights, gradients and
            optimizer state stay float32), or ``"auto"``: ``"bf16"`` where the CPU has AMX or AVX-512-BF16,
            else ``"fp32"`` (:func:`resolve_precision`). On such CPUs bf16 trains convolutional nets 2-3x
            faster (ResNet-20 on 2 cores: 108 -> 40 s per CIFAR-10 epoch with ``channels_last``); on others
            it is emulated and slower than fp32, and ``"bf16"`` warns. The resolved value is what the run
            records: ``TrainState.precision``, ``FitResult.precision``, the checkpoint and the saved model's
            metadata. A resumed ``"auto"`` run resolves again, on the CPU it resumes on.
        channels_last: train in the NHWC memory format, which oneDNN's CPU convolutions prefer. The
            returned model is converted back to the default (contiguous) format.

    Returns:
        A :class:`FitResult` with the trained model, the per-epoch history and the precision it trained in.

    Raises:
        ValueError: a bad ``epochs``, ``batch_size``, ``lr`` or ``precision``.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    precision = resolve_precision(precision, device)
    distributed = dist_utils.maybe_init()
    is_main = dist_utils.rank() == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out else None
    if out is not None and is_main:
        _prepare_out_dir(out, resume, overwrite)
    dist_utils.barrier()

    torch.manual_seed(seed)
    device = torch.device(device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    is_loss_module = bool(getattr(model, "computes_loss", False))
    # No loss_fn: a model that takes labels (Hugging Face heads) computes its own loss, others cross-entropy.
    own_loss = loss_fn is None
    loss_fn = loss_fn or cross_entropy
    loader, sampler = _make_loader(train_data, batch_size, seed, distributed)
    _check_first_batch(product_module(model), loader)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False)")
    opt = build_optimizer(optimizer, params, lr, momentum, weight_decay)
    steps_per_epoch = _num_batches(loader)
    total_steps = steps_per_epoch * epochs
    sched = build_schedule(opt, schedule, total_steps, int(round(warmup_epochs * steps_per_epoch)))
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model)

    state = TrainState(model=model, optimizer=opt, epochs=epochs, total_steps=total_steps)
    state.precision, state.channels_last = precision, channels_last
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, state.step, history = ck["epoch"], ck["step"], list(ck["history"])
        set_rng_state(ck["rng"])
        if ck.get("precision", precision) != precision and is_main:
            # Legitimate (e.g. 'auto' resumed on another CPU), but the remaining epochs round differently.
            warnings.warn(f"resuming a run trained in {ck['precision']} with precision {precision!r}",
                          UserWarning, stacklevel=2)
    _call(callbacks, "on_train_begin", state)

    for epoch in range(start_epoch, epochs):
        state.epoch = epoch
        record = _train_one_epoch(net, model, loader, sampler, epoch, seed, opt, sched, loss_fn, own_loss,
                                  is_loss_module, grad_clip, device, state, callbacks, progress and is_main,
                                  log_every)
        if eval_data is not None:
            # A loss module is judged by what it produces (the student), with the plain task loss.
            ev = evaluate(product_module(model), eval_data, batch_size=eval_batch_size)
            record.update({f"val_{k}": v for k, v in ev.items()})
        record["lr"] = opt.param_groups[0]["lr"]
        history.append(record)
        state.metrics = record
        _call(callbacks, "on_epoch_end", state)
        if out is not None and is_main:
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch + 1, "step": state.step, "history": history, "rng": rng_state(),
                 "precision": precision},
                ckpt_path,
            )
        dist_utils.barrier()

    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    if out is not None and is_main:
        save_model(_without_parametrizations(product_module(model)), out,
                   metadata={"history": history[-1:] if history else [], "precision": precision})
    return FitResult(model=model, history=history, precision=precision)


def _train_one_epoch(net, model, loader, sampler, epoch, seed, opt, sched, loss_fn, own_loss, is_loss_module,
                     grad_clip, device, state, callbacks, show, log_every) -> dict[str, float]:
    from tqdm.auto import tqdm

    net.train()
    if sampler is not None:
        sampler.set_epoch(epoch)
    if hasattr(loader, "generator_seed"):
        loader.generator.manual_seed(loader.generator_seed * 100_003 + epoch)
    bar = tqdm(loader, total=_num_batches(loader), desc=f"epoch {epoch + 1}/{state.epochs}", disable=not show,
               leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    loss_sum, correct, seen, n_batches = 0.0, 0.0, 0, 0
    extras: dict[str, float] = {}
    for batch in bar:
        inputs, y = _split_batch(batch, is_loss_module)
        inputs = inputs.to(device)
        y = y.to(device) if isinstance(y, torch.Tensor) else y
        if state.channels_last:
            inputs = _channels_last(inputs)
        dtype = PRECISIONS[state.precision]
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss, logits, out = _forward(net, model, batch, inputs, y, loss_fn, own_loss, is_loss_module, extras)
        if not torch.isfinite(loss):
            raise SlimtorchError(f"loss became {float(loss)} at epoch {epoch + 1}, step {state.step}; lower the "
                                 "learning rate or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        sched.step()
        state.step += 1
        n = inputs.batch_size
        loss_sum += float(loss.detach()) * n
        seen += n
        n_batches += 1
        correct += _batch_correct(product_module(model), logits, y) * n
        state.metrics = {"loss": float(loss.detach())}
        state.batch_output = out
        _call(callbacks, "on_step_end", state)
        if show and state.step % log_every == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", ips=f"{seen / (time.perf_counter() - t0):.0f}/s")
    bar.close()
    wall = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
              "time_s": wall, "samples_per_s": seen / max(wall, 1e-9)}
    record.update({f"train_{k}": v / max(1, n_batches) for k, v in extras.items()})
    return record


def _forward(net, model, batch, inputs, y, loss_fn, own_loss, is_loss_module, extras):
    """One forward pass and its loss: ``(loss, logits, output)``; a loss module's extra scalars go to ``extras``.

    A plain model's loss is its own ``loss`` when ``own_loss`` and its ``forward`` takes ``labels``
    (Hugging Face heads, see :mod:`slimtorch.core.labels`), else ``loss_fn`` on its logits (a
    ``ModelOutput``'s ``logits``) against the target, shifted by one position for causal LMs.
    """
    if not is_loss_module:
        out, model_loss = forward_batch(net, inputs, y, with_labels=own_loss, signature_of=model)
        logits = output_tensor(out)
        if model_loss is not None:
            return model_loss, logits, out
        return loss_fn(*align(model, logits, y)), logits, out
    # A third batch item (e.g. sample indices from distill.IndexedDataset) goes to the loss module
    # as ``index=``, so a teacher whose outputs were cached can look them up.
    x = loss_module_input(inputs)
    out = net(x, y, index=batch[2]) if isinstance(batch, (tuple, list)) and len(batch) > 2 else net(x, y)
    if not isinstance(out, dict) or "loss" not in out:
        raise SlimtorchError(f"{type(model).__name__} has computes_loss=True but did not return a dict "
                             "with a 'loss' entry")
    for k, v in out.items():
        if k not in ("loss", "output") and isinstance(v, torch.Tensor) and v.numel() == 1:
            extras[k] = extras.get(k, 0.0) + float(v.detach())
    return out["loss"], out.get("output"), out


def _batch_correct(model: nn.Module, logits: torch.Tensor | None, y: Any) -> float:
    """Fraction of the batch's class-index targets (those not -100) that the logits' arg-max hits."""
    if logits is None or logits.dim() < 2 or not isinstance(y, torch.Tensor) or y.dtype != torch.long:
        return 0.0
    logits, y = align(model, logits.detach().float(), y)
    if logits.shape[:-1] != y.shape:
        return 0.0
    keep = counted(y)
    hits = (logits.argmax(-1) == y) & keep  # also right for (B, T) targets
    return float(hits.sum()) / max(1, int(keep.sum()))


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    holds_run = (out / CHECKPOINT_FILE).exists() or (out / MODEL_FILE).exists()
    if holds_run and overwrite:
        for name in (CHECKPOINT_FILE, MODEL_FILE, METRICS_FILE):
            (out / name).unlink(missing_ok=True)
    elif holds_run and not resume:
        raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue it or "
                              "overwrite=True (--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)


class _SeededLoader(DataLoader):
    """A DataLoader whose shuffle generator is re-seeded from ``(seed, epoch)`` every epoch."""

    generator_seed: int


def _make_loader(data: Any, batch_size: int, seed: int, distributed: bool):
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        if len(data) == 0:
            raise ValueError("train_data is empty")
        if distributed:
            sampler = DistributedSampler(data, shuffle=True, seed=seed)
            return DataLoader(data, batch_size=batch_size, sampler=sampler), sampler
        g = torch.Generator().manual_seed(seed)
        loader = _SeededLoader(data, batch_size=batch_size, shuffle=True, generator=g)
        loader.generator_seed = seed
        return loader, None
    if isinstance(data, Iterable):
        return data, None
    raise ValueError(f"train_data must be a Dataset or an iterable of (inputs, targets) batches, got "
                     f"{type(data).__name__}")


def _num_batches(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:
        raise ValueError("train_data has no len(); pass a Dataset, a DataLoader or a list of batches") from None


def _split_batch(batch: Any, is_loss_module: bool) -> tuple[ModelInputs, Any]:
    inputs, target = split_batch(batch)
    if target is None and not is_loss_module:
        keys = f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""
        raise ValueError(f"training batches need a target: (inputs, targets) pairs or dicts with 'labels'; "
                         f"got {type(batch).__name__}{keys}")
    return inputs, target


def _channels_last(inputs: ModelInputs) -> ModelInputs:
    def nhwc(v: Any) -> Any:
        return v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4 else v
    return ModelInputs(tuple(nhwc(a) for a in inputs.args), {k: nhwc(v) for k, v in inputs.kwargs.items()})


def _check_first_batch(model: nn.Module, loader: Any) -> None:
    if not hasattr(model, "input_shape"):
        return
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and len(dataset) > 0:
        check_input_shape(model, dataset[0][0])


def _without_parametrizations(model: nn.Module) -> nn.Module:
    """A copy with parametrizations (e.g. pruning masks) baked into plain weights, for saving."""
    if not any(hasattr(m, "parametrizations") for m in model.modules()):
        return model
    from slimtorch.metrics import permanent_copy  # leaves the original's parametrizations intact

    return permanent_copy(model)


def _call(callbacks: Sequence[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)
