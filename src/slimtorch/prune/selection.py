"""Which layers mask pruning touches (DESIGN.md, API style 3: what to touch is separate from how).

Default: the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d``, the classifier included (Han
et al. 2015 prune every layer), nothing excluded. Narrow it with ``include``/``exclude`` fnmatch
patterns on module names and/or ``filter_fn(module, fqn) -> bool``. A model that is itself one such
layer (``nn.Linear(64, 32)``) selects itself, under the name ``""`` (``"<root>"`` in messages and in
patterns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from slimtorch.core.config import check_range
from slimtorch.core.selection import FilterFn, _matches, display_name, named_modules_matching

#: Layer types mask pruning selects by default.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def select_layers(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of the layers to prune; an empty selection is an error naming the candidates."""
    layers = named_modules_matching(model, types, include or None, exclude or None, filter_fn)
    if not layers:
        candidates = [display_name(n) for n, _ in named_modules_matching(model, types)]
        raise ValueError(
            f"no layer of {type(model).__name__} is selected for pruning (include={list(include)}, "
            f"exclude={list(exclude)}, filter_fn={'set' if filter_fn else None}); layers of types "
            f"{[t.__name__ for t in types]}: {candidates[:20]}"
        )
    return layers


def check_overrides(overrides: Mapping[str, float], field: str = "overrides") -> None:
    """Every per-layer sparsity in ``overrides`` must be in [0, 1)."""
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{field} must be a mapping of layer-name pattern to sparsity, got {overrides!r}")
    for pattern, value in overrides.items():
        check_range(f"{field}[{pattern!r}]", value, 0, 1, hi_open=True)


def override_for(name: str, overrides: Mapping[str, float]) -> float | None:
    """The value of the first pattern in ``overrides`` that matches ``name`` (fnmatch), else ``None``."""
    for pattern, value in overrides.items():
        if _matches(name, (pattern,)):
            return float(value)
    return None


def unused_overrides(names: Sequence[str], overrides: Mapping[str, float]) -> list[str]:
    """Override patterns that match none of ``names`` (almost always a typo)."""
    return [p for p in overrides if not any(override_for(n, {p: 0.0}) is not None for n in names)]
