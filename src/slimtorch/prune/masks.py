"""Weight masks that survive training: a ``torch.nn.utils.parametrize`` parametrization.

``apply_mask_(layer, mask)`` makes ``layer.weight`` compute ``original * mask`` on every access, so:

* the forward pass always sees exact zeros where ``mask`` is False, whatever an optimizer did;
* the gradient reaching ``original`` is ``grad * mask``, exactly zero at pruned entries;
* ``original`` is zeroed at pruned entries when the mask is applied, so weight decay and momentum
  (both proportional to the stored value or to past gradients) leave them at zero from then on.

``make_permanent_(model)`` bakes ``original * mask`` into a plain ``weight`` parameter and removes the
parametrization; the zeros stay, the model no longer carries masks and can be saved.

Which layers get masks: by default the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d``, the
classifier included (Han et al. 2015 prune every layer), narrowed by the configs' ``include``/``exclude``
/``filter_fn`` through :class:`slimtorch.core.selection.Selector` (:func:`select_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from slimtorch.core.selection import FilterFn, Selector

#: Layer types mask pruning selects by default.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def select_layers(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    filter_fn: FilterFn | None = None,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of the layers to mask; an empty selection is an error naming the candidates."""
    return Selector(types, tuple(include), tuple(exclude), filter_fn).select_some(model, "pruning")


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` (``mask`` a bool buffer of the weight's shape).

    Args:
        mask: True where the weight is kept.
        ref_std: standard deviation of the dense weight when the layer was first pruned (used by the
            ``"std"`` criterion of Han et al. 2015, whose threshold is a multiple of the layer's std).
    """

    def __init__(self, mask: torch.Tensor, ref_std: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("ref_std", torch.tensor(float(ref_std)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def get_mask(module: nn.Module, name: str = "weight") -> WeightMask | None:
    """The :class:`WeightMask` on ``module.<name>``, or ``None`` if it has none."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:  # type: ignore[index]
        if isinstance(p, WeightMask):
            return p
    return None


def reference_std(module: nn.Module, name: str = "weight") -> float:
    """Std of the layer's dense weight: recorded at the first pruning, else computed now."""
    m = get_mask(module, name)
    if m is not None:
        return float(m.ref_std)
    weight = getattr(module, name).detach()
    return float(weight.float().std()) if weight.numel() > 1 else 1.0


@torch.no_grad()
def apply_mask_(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Mask ``module.<name>`` in place (a second call narrows the existing mask: ``old & new``).

    Args:
        module: the layer.
        mask: bool tensor of the parameter's shape, True = keep.
        name: the parameter to mask.
    """
    weight = getattr(module, name)
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=torch.bool)
    existing = get_mask(module, name)
    if existing is None:
        std = float(weight.detach().float().std()) if weight.numel() > 1 else 1.0
        parametrize.register_parametrization(module, name, WeightMask(mask, std))
        existing = get_mask(module, name)
    else:
        existing.mask &= mask  # masks only grow: a weight once pruned stays pruned
    original = module.parametrizations[name].original  # type: ignore[index]
    original.mul_(existing.mask)  # so momentum/weight decay start from exact zeros


def masked_layers(model: nn.Module, name: str = "weight") -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of every module whose ``<name>`` carries a :class:`WeightMask`."""
    return [(n, m) for n, m in model.named_modules() if get_mask(m, name) is not None]


@torch.no_grad()
def make_permanent_(model: nn.Module) -> nn.Module:
    """Remove every pruning mask, keeping the zeros in plain parameters (in place).

    Other parametrizations stacked on the same tensor are baked in too (``leave_parametrized=True``).
    Negative zeros produced by ``original * 0`` are normalised to ``+0.0``.

    Returns:
        ``model`` (for chaining).
    """
    for _, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):  # type: ignore[union-attr]
            if get_mask(module, name) is None:
                continue
            _own_class_(module)
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            p = getattr(module, name)
            p.data[p.data == 0] = 0.0  # -0.0 -> +0.0
    return model


def _own_class_(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its injected class.

    ``copy.deepcopy`` of a parametrized module shares the dynamically created ``Parametrized<Type>``
    class with the original, and ``remove_parametrizations`` deletes the tensor's property *from that
    class*, which would break the other copy (``AttributeError: no attribute 'weight'``).
    """
    cls = type(module)
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def sparsity(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros in ``tensor``."""
    n = tensor.numel()
    return 1.0 - int(torch.count_nonzero(tensor)) / n if n else 0.0
