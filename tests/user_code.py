"""A user's own code for the consent tests: a tiny CNN factory, and a module whose import leaves a marker.

Tests write these into ``tmp_path`` and put it on ``sys.path`` (:func:`install`), so the module names are
unique per test and nothing of ours pretends to be user code.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np

FACTORY_SOURCE = '''
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width=8, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def build(width=8, num_classes=3):
    return SmallCNN(width, num_classes)


def not_a_model(**kwargs):
    return "a string"
'''

MARKER_SOURCE = '''
from pathlib import Path

Path({marker!r}).write_text("imported")


def build(**kwargs):
    Path({marker!r}).write_text("called")
    from torch import nn
    return nn.Linear(4, 2)
'''


def install(tmp_path: Path, monkeypatch, source: str, **fmt: str) -> str:
    """Write ``source`` as a fresh module under ``tmp_path``, importable; returns its name."""
    name = f"user_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source.format(**fmt) if fmt else source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def separable_npz(path: Path, n_per_class: int = 20, size: int = 8) -> Path:
    """Three classes of ``(3, size, size)`` float images whose mean is the class index (easy to learn)."""
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), n_per_class)
    x = (0.3 * rng.randn(len(y), 3, size, size) + y[:, None, None, None]).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path
