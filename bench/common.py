"""Shared plumbing for benchmark scripts: result files, versions, checks, data location.

Every ``bench/<id>.py`` ends with :func:`write_result`, which writes ``bench/results/<id>.json`` in the
format BENCHMARKS.md fixes (id, command, seeds, versions, wall_s, rows, checks) and prints the table.
"""

from __future__ import annotations

import json
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
    return out


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
                 seeds: list[int], wall_s: float, extra: dict[str, Any] | None = None) -> Path:
    """Write ``bench/results/<bench_id>.json`` and print the rows and checks."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "id": bench_id,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": seeds,
        "versions": versions(),
        "wall_s": round(wall_s, 1),
        "rows": rows,
        "checks": checks,
    }
    if extra:
        doc.update(extra)
    path = RESULTS_DIR / f"{bench_id}.json"
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
