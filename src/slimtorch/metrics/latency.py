"""Latency: median wall time of many runs after warm-up, at a fixed thread count.

Runtimes are a registry: ``torch`` (eager, ``torch.inference_mode()``) and ``onnxruntime`` (the
model exported to ONNX on the fly, or an existing ``.onnx`` file such as a quantized export). A
runtime factory prepares one model and returns a zero-argument callable that runs one inference.

Absolute times depend on the machine and its load; compare models with :func:`compare_latency`,
which times both alternately in one run so they see the same conditions. It alternates *blocks* of
consecutive runs (``block=5``: the first run of a block is untimed), so every timed run follows a run of
the same model: the steady state of a model serving batch after batch. Alternating single runs
(``block=1``) instead charges each model for refilling the caches the other one evicted, which
penalises the model whose weights fit in cache: an int8 LeNet-5 (430 kB of weights; a channel-padded
export) measured 1.55-1.68x over its fp32 model (1.7 MB) in single alternating calls and 1.86-1.89x in
blocks of 10, in the same processes (bench/RESULTS.md, ``quant_int8``, shows both columns).

Two clocks: ``"wall"`` (default; what a user waits) and ``"cpu"`` (this process's CPU time). On a
machine shared with other jobs a call that spans a scheduler time slice is stretched by the other
jobs' slices, which penalises long calls more than short ones and biases wall-clock ratios. At
``threads=1`` every runtime here computes on the calling thread, so CPU time is the compute time
without that interference (it equals wall time on an idle machine); it is refused for ``threads > 1``,
where it would sum the threads' times.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.core.registry import Registry
from slimtorch.metrics._batches import Inputs, as_tuple, eval_mode
from slimtorch.metrics.ort import export_onnx_fp32, onnx_session, session_feed

#: A model to time: a module, a saved slimtorch model (``.safetensors`` file or run directory), or for
#: ``onnxruntime`` an ``.onnx`` file.
ModelLike = nn.Module | str | os.PathLike
#: ``factory(model, args, threads, stack) -> run_once``; resources are registered on ``stack``.
RuntimeFactory = Callable[[ModelLike, tuple[torch.Tensor, ...], int, contextlib.ExitStack], Callable[[], Any]]

RUNTIMES: Registry[RuntimeFactory] = Registry("runtime")

#: Clock name -> nanosecond counter.
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` for the block and restore the previous value."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _load_module(path: str | os.PathLike) -> nn.Module:
    """A model saved by :func:`slimtorch.save` (file or run directory)."""
    from slimtorch.io.storage import load

    return load(path)


@RUNTIMES.register("torch")
def _torch_runtime(model: ModelLike, args: tuple[torch.Tensor, ...], threads: int,
                   stack: contextlib.ExitStack) -> Callable[[], Any]:
    if not isinstance(model, nn.Module):
        if Path(model).suffix == ".onnx":
            raise ValueError(f"{model} is an ONNX file; time it with runtime='onnxruntime'")
        model = _load_module(model)
    stack.enter_context(eval_mode(model))
    stack.enter_context(torch_threads(threads))
    module = model

    def run() -> Any:
        with torch.inference_mode():
            return module(*args)

    return run


def is_onnx_file(model: ModelLike) -> bool:
    """Whether ``model`` is a path to an ONNX file (run as it is) rather than a module or a saved model."""
    return not isinstance(model, nn.Module) and Path(model).suffix == ".onnx"


def export_to_temp(model: ModelLike, args: tuple[torch.Tensor, ...], stack: contextlib.ExitStack) -> Path:
    """``model`` (a module or a saved model) exported to fp32 ONNX in a temporary folder ``stack`` removes."""
    module = model if isinstance(model, nn.Module) else _load_module(model)
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="slimtorch-onnx-"))
    return export_onnx_fp32(module, args, Path(workdir) / "model.onnx")


def ort_runner(path: Path, args: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any]:
    """One ONNX Runtime call of the file at ``path`` on ``args`` with ``threads`` intra-op threads."""
    session = onnx_session(path, threads)
    feed = session_feed(session, args)
    return lambda: session.run(None, feed)


@RUNTIMES.register("onnxruntime")
def _ort_runtime(model: ModelLike, args: tuple[torch.Tensor, ...], threads: int,
                 stack: contextlib.ExitStack) -> Callable[[], Any]:
    path = Path(model) if is_onnx_file(model) else export_to_temp(model, args, stack)
    return ort_runner(path, args, threads)


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, clock: str = "wall") -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then return ``repeats`` times in milliseconds on ``clock``."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append((now() - t0) / 1e6)
    return times


def _check_counts(threads: int, warmup: int, repeats: int, clock: str) -> None:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if clock not in CLOCKS:
        raise ValueError(f"clock: {clock!r} is not one of {sorted(CLOCKS)}")
    if clock == "cpu" and threads > 1:
        raise ValueError(f"clock='cpu' sums the CPU time of all threads; use it with threads=1, not "
                         f"{threads}")


def measure_latency(model: ModelLike, example_inputs: Inputs, runtime: str = "torch", threads: int = 1,
                    warmup: int = 10, repeats: int = 50, clock: str = "wall") -> float:
    """Median latency in milliseconds of one inference on ``example_inputs``.

    Args:
        model: a module, a saved slimtorch model (file or run dir), or (``onnxruntime``) an ``.onnx`` file.
        example_inputs: a tensor or tuple of positional tensors (their batch size is what is timed).
        runtime: ``"torch"`` or ``"onnxruntime"`` (see :data:`RUNTIMES`).
        threads: intra-op threads (``torch.set_num_threads`` restored afterwards / ORT session option).
        warmup: untimed runs first (lazy initialisation, caches, allocator).
        repeats: timed runs; the median is returned.
        clock: ``"wall"`` or ``"cpu"`` (threads=1 only; see the module docstring).
    """
    _check_counts(threads, warmup, repeats, clock)
    factory = RUNTIMES.get(runtime)
    args = as_tuple(example_inputs)
    with contextlib.ExitStack() as stack:
        run = factory(model, args, threads, stack)
        return statistics.median(time_calls(run, warmup, repeats, clock))


def compare_latency(model_a: ModelLike, model_b: ModelLike, example_inputs: Inputs,
                    runtime: str | tuple[str, str] = "torch", threads: int = 1, warmup: int = 10,
                    repeats: int = 50, clock: str = "wall", block: int = 5) -> dict[str, Any]:
    """Time two models alternately in one run; ``speedup = a_ms / b_ms`` (> 1: ``b`` is faster).

    Each round runs a block of ``block`` consecutive calls of each model, swapping which model goes
    first every round, so both see the same machine load. With ``block > 1`` the first call of a block
    is not timed: every timed call follows a call of the same model (steady state, as when a model serves
    batch after batch) rather than the other model's cache footprint. ``block=1`` times every call of
    strictly alternating single runs. Medians are taken per model.

    Args:
        model_a: the baseline (e.g. the dense fp32 model).
        model_b: the candidate (e.g. the pruned model, or an int8 ``.onnx`` file).
        example_inputs: the inputs both models get.
        runtime: one runtime for both, or ``(runtime_a, runtime_b)``.
        threads: intra-op threads for both.
        warmup: untimed runs of each model first.
        repeats: timed runs of each model.
        clock: ``"wall"`` or ``"cpu"`` (threads=1 only; see the module docstring).
        block: consecutive calls of one model per round (the first untimed when > 1); rounds continue
            until each model has at least ``repeats`` timed calls.

    Returns:
        ``{"a_ms", "b_ms", "speedup", "runtime", "threads", "repeats", "clock", "block"}``, ``repeats``
        being the timed calls per model.
    """
    _check_counts(threads, warmup, repeats, clock)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    runtime_a, runtime_b = (runtime, runtime) if isinstance(runtime, str) else runtime
    factory_a, factory_b = RUNTIMES.get(runtime_a), RUNTIMES.get(runtime_b)
    args = as_tuple(example_inputs)
    times_a: list[float] = []
    times_b: list[float] = []
    with contextlib.ExitStack() as stack:
        run_a = factory_a(model_a, args, threads, stack)
        run_b = factory_b(model_b, args, threads, stack)
        for _ in range(warmup):
            run_a()
            run_b()
        timed = max(block - 1, 1)
        for i in range(-(-repeats // timed)):
            order = ((run_a, times_a), (run_b, times_b))
            for run, times in order if i % 2 == 0 else order[::-1]:
                times.extend(time_calls(run, block - timed, timed, clock))
    a_ms, b_ms = statistics.median(times_a), statistics.median(times_b)
    if b_ms <= 0:
        raise SlimtorchError("model_b ran faster than the timer resolution; use a larger batch")
    return {
        "a_ms": a_ms,
        "b_ms": b_ms,
        "speedup": a_ms / b_ms,
        "runtime": runtime_a if runtime_a == runtime_b else f"{runtime_a}/{runtime_b}",
        "threads": threads,
        "repeats": len(times_a),
        "clock": clock,
        "block": block,
    }


def measure_latencies(models: list[ModelLike], example_inputs: Inputs, runtime: str = "torch", threads: int = 1,
                      warmup: int = 3, repeats: int = 15, clock: str = "wall", block: int = 5) -> list[float]:
    """Median latency (ms) of each of ``models``, timed round-robin in one run (:func:`compare_latency` for
    more than two models): each round runs a block of ``block`` calls of every model (the first untimed when
    ``block > 1``), the order rotating every round, until each model has ``repeats`` timed calls.

    Differences between the returned medians are what a latency table needs (all models saw the same load).
    """
    _check_counts(threads, warmup, repeats, clock)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if not models:
        return []
    factory = RUNTIMES.get(runtime)
    args = as_tuple(example_inputs)
    times: list[list[float]] = [[] for _ in models]
    with contextlib.ExitStack() as stack:
        runs = [factory(m, args, threads, stack) for m in models]
        for _ in range(warmup):
            for run in runs:
                run()
        timed = max(block - 1, 1)
        n = len(runs)
        for i in range(-(-repeats // timed)):
            for j in range(n):
                k = (i + j) % n
                times[k].extend(time_calls(runs[k], block - timed, timed, clock))
    return [statistics.median(t) for t in times]
