"""One-call model profile (params, nonzeros, bytes on disk, MACs, latency) and ratios between two.

Latency keys are ``latency_ms_<runtime>`` (e.g. ``latency_ms_torch``, ``latency_ms_onnxruntime``) so
a profile is a flat row for :func:`slimtorch.metrics.render_table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from slimtorch.metrics._batches import Inputs, as_tuple
from slimtorch.metrics.counting import count_nonzero, count_params, model_size_bytes
from slimtorch.metrics.latency import RUNTIMES, compare_latency, measure_latency
from slimtorch.metrics.macs import count_macs

LATENCY_PREFIX = "latency_ms_"


def profile(model: nn.Module, example_inputs: Inputs, runtimes: Sequence[str] = ("torch",), threads: int = 1,
            warmup: int = 10, repeats: int = 50, clock: str = "wall") -> dict[str, Any]:
    """Measure a model.

    Args:
        model: the module (parametrized weights are measured as used; see :mod:`.counting`).
        example_inputs: a tensor or tuple of tensors; MACs and latency are for this batch.
        runtimes: runtimes to time (``"torch"``, ``"onnxruntime"``); ``()`` skips timing.
        threads: intra-op threads for timing.
        warmup: untimed runs per runtime.
        repeats: timed runs per runtime (the median is reported).
        clock: ``"wall"`` or ``"cpu"`` (see :mod:`slimtorch.metrics.latency`).

    Returns:
        ``{"params", "nonzero_params", "size_bytes", "macs", "batch_size", "threads",
        "latency_ms_<runtime>" for each runtime}``.
    """
    for r in runtimes:
        RUNTIMES.get(r)  # fail on an unknown runtime before the slow parts
    args = as_tuple(example_inputs)
    out: dict[str, Any] = {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "size_bytes": model_size_bytes(model),
        "macs": count_macs(model, args),
        "batch_size": int(args[0].shape[0]) if args[0].dim() > 0 else 1,
        "threads": threads,
    }
    for r in runtimes:
        out[LATENCY_PREFIX + r] = measure_latency(model, args, r, threads, warmup, repeats, clock)
    return out


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def compare(profile_a: dict[str, Any], profile_b: dict[str, Any]) -> dict[str, float]:
    """Ratios ``a / b`` of two profiles (``a`` the baseline, ``b`` the compressed model).

    Returns:
        ``size_x`` (times smaller on disk), ``macs_x`` (times fewer MACs), ``params_x`` (times fewer
        parameters), ``nonzero_x`` (times fewer nonzero parameters) and ``speedup_<runtime>`` for every
        runtime timed in both. Values > 1 mean ``b`` is smaller / faster. Latencies from two separate
        ``profile`` calls saw different machine load; :func:`compare_models` times them alternately.
    """
    pairs = {"size_x": "size_bytes", "macs_x": "macs", "params_x": "params", "nonzero_x": "nonzero_params"}
    out = {k: _ratio(profile_a[v], profile_b[v]) for k, v in pairs.items()
           if v in profile_a and v in profile_b}
    for key in profile_a:
        if key.startswith(LATENCY_PREFIX) and key in profile_b:
            out["speedup_" + key[len(LATENCY_PREFIX):]] = _ratio(profile_a[key], profile_b[key])
    return out


def compare_models(model_a: nn.Module, model_b: nn.Module, example_inputs: Inputs,
                   runtimes: Sequence[str] = ("torch",), threads: int = 1, warmup: int = 10,
                   repeats: int = 50, clock: str = "wall") -> dict[str, Any]:
    """Profile two models and compare them, timing each runtime with :func:`compare_latency` (alternating).

    Returns:
        ``{"a": profile_a, "b": profile_b, "ratios": compare(...)}``; the profiles' latencies are the
        medians of the alternating run, so the speedups are ratios within one run.
    """
    pa = profile(model_a, example_inputs, runtimes=(), threads=threads)
    pb = profile(model_b, example_inputs, runtimes=(), threads=threads)
    for r in runtimes:
        t = compare_latency(model_a, model_b, example_inputs, r, threads, warmup, repeats, clock)
        pa[LATENCY_PREFIX + r], pb[LATENCY_PREFIX + r] = t["a_ms"], t["b_ms"]
    return {"a": pa, "b": pb, "ratios": compare(pa, pb)}
