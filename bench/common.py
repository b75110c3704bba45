"""Shared plumbing for benchmark scripts: result files, versions, checks, data location.

Every ``bench/<id>.py`` ends with :func:`write_result`, which writes ``bench/results/<id>.json`` in the
format BENCHMARKS.md fixes (id, command, seeds, versions, cpu, wall_s, rows, checks) and prints the table.
By default (``per_cpu=True``) the file keeps one set of rows and checks per CPU: a rerun replaces only the rows of
the CPU it ran on (``cpu_label``), so results measured on other CPUs stay as their own rows.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CHECKPOINTS_DIR = BENCH_DIR / "checkpoints"
#: ../shared/data beside the project; SLIMTORCH_DATA overrides it.
DATA_ROOT = Path(os.environ.get("SLIMTORCH_DATA", BENCH_DIR.parent.parent / "shared" / "data"))


def versions() -> dict[str, str]:
    """Versions of python, torch and the optional runtimes and peers that are installed."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnxruntime", "onnx", "numpy", "torch_pruning", "torchao", "slimtorch"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    out["threads"] = str(torch.get_num_threads())
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cpus"
    out["cpu"] = cpu_label()
    return out


#: Label of rows written before CPUs were recorded (the first round ran on Intel Xeons with AVX-512 VNNI
#: and AMX; see the issue on CPU correctness).
LEGACY_CPU = "Intel Xeon [x86-vnni, AMX] (before CPUs were recorded)"


def cpu() -> dict[str, Any]:
    """The CPU this benchmark runs on (model, kind, ISA flags), as every result file records it."""
    from slimtorch.metrics import cpu_info

    return cpu_info().to_dict()


def cpu_label(emulated: bool = False) -> str:
    """Short name of this CPU for per-CPU rows: ``AMD EPYC [x86-vnni]``; ``emulated`` marks a qemu run."""
    c = cpu()
    return f"{c['model'] or c['arch']} [{c['kind']}{', qemu-emulated' if emulated else ''}]"


def wall_clock_steps(opt: Any, budget_s: float, warmup: int, base_lr: float, min_lr: float):
    """Step indices of a run with a wall-clock budget, setting ``opt``'s learning rate before each step.

    The CPU is shared, so the schedule follows time, not steps: linear warmup over ``warmup`` steps, then cosine
    decay from ``base_lr`` to ``min_lr`` over the fraction of ``budget_s`` spent; it stops when the budget is
    used up. Yields ``(step, lr)``.
    """
    t0 = time.perf_counter()
    step = 0
    while (frac := (time.perf_counter() - t0) / budget_s) < 1.0:
        if step < warmup:
            lr = base_lr * (step + 1) / warmup
        else:
            lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        yield step, lr
        step += 1


def check(name: str, value: float, floor: str, passed: bool) -> dict[str, Any]:
    """One floor of BENCHMARKS.md, computed from the measured rows."""
    return {"name": name, "value": value, "floor": floor, "pass": bool(passed)}


def kd_trainee(student: Any, teacher: Any, example: Any) -> Any:
    """The fine-tune target for distillation from ``teacher``: a ``Distiller`` with Hinton KD at T=4 plus
    0.5 x cross-entropy (the setting of examples/cifar10_resnet20.yaml); the teacher is a frozen copy."""
    import copy

    from slimtorch.distill import KD, Distiller

    return Distiller(student, copy.deepcopy(teacher).eval(), [KD(temperature=4.0)], task_weight=0.5,
                     example_inputs=example)


class Timer:
    """Wall-clock since creation (``Timer().elapsed``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def write_result(bench_id: str, rows: list[dict[str, Any]], checks: list[dict[str, Any]], *,
                 seeds: list[int], wall_s: float, extra: dict[str, Any] | None = None,
                 per_cpu: bool = True, emulated: bool = False) -> Path:
    """Write ``bench/results/<bench_id>.json`` and print the rows and checks.

    With ``per_cpu`` every row and check carries ``cpu`` (:func:`cpu_label`); rows and checks of other CPUs
    already in the file are kept, and ``runs`` records each CPU's command, versions, wall time and extras.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{bench_id}.json"
    run = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": seeds,
        "versions": versions(),
        "cpu": cpu(),
        "wall_s": round(wall_s, 1),
        **(extra or {}),
    }
    doc: dict[str, Any] = {"id": bench_id, **run, "rows": rows, "checks": checks}
    if per_cpu:
        label = cpu_label(emulated)
        rows = [{"cpu": label, **r} for r in rows]
        checks = [{"cpu": label, **c} for c in checks]
        old = json.loads(path.read_text()) if path.exists() else {}
        runs = old.get("runs") or ({LEGACY_CPU: {k: old[k] for k in ("command", "seeds", "versions", "wall_s")
                                                 if k in old}} if old.get("rows") else {})
        keep_rows = [{"cpu": LEGACY_CPU, **r} if "cpu" not in r else r for r in old.get("rows", [])]
        keep_checks = [{"cpu": LEGACY_CPU, **c} if "cpu" not in c else c for c in old.get("checks", [])]
        runs[label] = run
        doc = {"id": bench_id, **run, "runs": runs,
               "rows": [r for r in keep_rows if r["cpu"] != label] + rows,
               "checks": [c for c in keep_checks if c["cpu"] != label] + checks}
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print_table(rows)
    for c in checks:
        print(f"[{'PASS' if c['pass'] else 'FAIL'}] {c['name']}: {c['value']} (floor {c['floor']})")
    print(f"wrote {path}")
    return path


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows as an aligned text table."""
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(f[i]) for f in fmt)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for f in fmt:
        print("  ".join(v.ljust(w) for v, w in zip(f, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class TensorBatches:
    """Shuffled mini-batches over in-memory tensors, a new order each pass (``fit`` takes it as data).

    Far cheaper than a per-item DataLoader on one thread.

    Args:
        x, y: the whole split, e.g. ``(60000, 1, 28, 28)`` images and ``(60000,)`` labels.
        batch_size: samples per batch (the last batch may be smaller).
        seed: seeds the shuffling generator (also handed to ``transform``).
        transform: optional ``transform(xb, generator) -> xb`` applied per batch (augmentation, flattening).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, transform=None) -> None:
        self.x, self.y, self.batch_size, self.transform = x, y, batch_size, transform
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            xb = self.x[idx]
            yield (self.transform(xb, self.gen) if self.transform else xb), self.y[idx]
