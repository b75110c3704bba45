"""Parameter distillation: initialise a student from a teacher's weights where shapes allow.

Two mappings (Sanh et al. 2019, "DistilBERT", §3 "Student initialization": take one layer out of two):

* ``"matching"``: copy every parameter and buffer whose name and shape are equal in both models.
* ``"every_k"``: the same for non-repeated parts; inside each stack of identical blocks (an
  ``nn.Sequential``/``nn.ModuleList`` whose children are all of one class, at the same name in both
  models) student block ``i`` takes teacher block ``i * k`` (``k = n_teacher // n_student`` by default),
  tensor by tensor where shapes match. E.g. ResNet-20 from ResNet-56: ``layer1.2`` <- ``layer1.6``.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.core.config import check_choice

MODES = ("matching", "every_k")


def _block_stacks(model: nn.Module) -> dict[str, int]:
    """``{fqn: number of blocks}`` for every container of >= 2 children of a single class."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            kids = list(m.children())
            if len(kids) >= 2 and len({type(c) for c in kids}) == 1 and not isinstance(kids[0], (nn.ReLU,)):
                out[name] = len(kids)
    return out


def _teacher_name(name: str, stacks: dict[str, tuple[int, int]], k: int | None) -> str:
    """Map a student tensor name into the teacher through the innermost block stack containing it."""
    for stack in sorted(stacks, key=len, reverse=True):
        prefix = f"{stack}." if stack else ""
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            idx, _, tail = rest.partition(".")
            if idx.isdigit() and tail:
                n_s, n_t = stacks[stack]
                step = k if k is not None else max(1, n_t // n_s)
                return f"{prefix}{min(int(idx) * step, n_t - 1)}.{tail}"
    return name


@torch.no_grad()
def init_from_teacher(
    student: nn.Module, teacher: nn.Module, mode: str = "matching", k: int | None = None
) -> dict[str, str]:
    """Copy teacher weights into ``student`` in place where names and shapes allow.

    Args:
        student: the model to initialise (changed in place).
        teacher: the trained model to copy from (unchanged).
        mode: ``"matching"`` or ``"every_k"`` (see module docstring).
        k: stride between teacher blocks for ``"every_k"`` (default ``n_teacher // n_student`` per stack).

    Returns:
        ``{student tensor name: teacher tensor name}`` for every tensor copied.

    Raises:
        ValueError: unknown mode, bad ``k``, or nothing could be copied.
    """
    check_choice("mode", mode, MODES)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    s_state, t_state = student.state_dict(), teacher.state_dict()
    stacks: dict[str, tuple[int, int]] = {}
    if mode == "every_k":
        t_stacks = _block_stacks(teacher)
        stacks = {n: (c, t_stacks[n]) for n, c in _block_stacks(student).items() if n in t_stacks}
    copied: dict[str, str] = {}
    for name, tensor in s_state.items():
        src = _teacher_name(name, stacks, k) if stacks else name
        t = t_state.get(src)
        if t is not None and t.shape == tensor.shape and t.dtype == tensor.dtype:
            tensor.copy_(t)  # state_dict tensors share storage with the module's parameters
            copied[name] = src
    if not copied:
        raise ValueError(
            f"init_from_teacher({mode!r}) found no tensor with the same name and shape in "
            f"{type(teacher).__name__} and {type(student).__name__}"
        )
    return copied
