"""A shallower student made of a teacher's own layers: DistilBERT's initialisation.

Sanh et al. 2019 ("DistilBERT, a distilled version of BERT", §3) initialise a 6-layer student from the
12-layer BERT "by taking one layer out of two": same embeddings, same head, half the blocks, each block
a copy of a teacher block. :func:`layer_drop_student` does that for any model whose blocks are one
``nn.ModuleList``: ``encoder.layer`` (BERT, MiniLM, RoBERTa, ViT), ``model.layers`` (Llama, Mistral,
Qwen), ``transformer.h`` (GPT-2), with or without a task head around them (``bert.encoder.layer``, ...).

Which teacher layers are kept is a *layer mapping*: student layer ``i`` (0-based) is a copy of teacher
layer ``mapping[i]``. :func:`uniform_mapping` is the default: for ``k = L_t / L_s`` teacher layers per
student layer, student layer ``i <- (i + 1) k - 1``, i.e. every k-th layer ending with the last one
(TinyBERT's ``g(m) = m * k`` in 1-based numbering, Jiao et al. 2020 §4.1).

The copy's ``config.num_hidden_layers`` (and a per-layer ``layer_types`` list) is updated and each
block's ``layer_idx`` (KV-cache slot) renumbered, so the student runs, ``save_pretrained``s and reloads
with ``from_pretrained`` as an ordinary model of that depth.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from slimtorch.core.errors import SlimtorchError

#: Where the blocks of common Hugging Face models live (matched as a suffix of a ModuleList's name).
LAYER_LISTS = ("encoder.layer", "model.layers", "transformer.h", "decoder.layers", "layers", "h")


def find_layers(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The ``(name, ModuleList)`` of ``model``'s blocks.

    Args:
        model: the model.
        path: the ModuleList's dotted name (``"bert.encoder.layer"``); by default the one ModuleList whose
            name is or ends with an entry of :data:`LAYER_LISTS` (the first entry that matches wins).

    Raises:
        SlimtorchError: no such list, or ``path`` names no ModuleList; the message lists the ModuleLists.
    """
    lists = {n: m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)}
    if path is not None:
        if path not in lists:
            raise SlimtorchError(f"layers_path={path!r} is no non-empty ModuleList of {type(model).__name__}; "
                                 f"its ModuleLists are {sorted(lists) or 'none'}")
        return path, lists[path]
    for suffix in LAYER_LISTS:
        hits = [n for n in lists if n == suffix or n.endswith("." + suffix)]
        if len(hits) == 1:
            return hits[0], lists[hits[0]]
        if len(hits) > 1:
            raise SlimtorchError(f"{type(model).__name__} has several layer lists {hits}; pass layers_path=")
    raise SlimtorchError(f"cannot find the layers of {type(model).__name__}: no ModuleList named like "
                         f"{list(LAYER_LISTS)}; its ModuleLists are {sorted(lists) or 'none'}; pass layers_path=")


def num_layers(model: nn.Module, path: str | None = None) -> int:
    """How many blocks ``model`` has (see :func:`find_layers`)."""
    return len(find_layers(model, path)[1])


def uniform_mapping(teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """Teacher layer (0-based) of each student layer, spread evenly and ending with the teacher's last.

    Student layer ``i <- round((i + 1) * L_t / L_s) - 1``; when ``k = L_t / L_s`` is an integer that is
    ``(i + 1) k - 1``: every k-th teacher layer. ``uniform_mapping(6, 3) == (1, 3, 5)``.

    Raises:
        SlimtorchError: ``student_layers`` is not between 1 and ``teacher_layers``.
    """
    if isinstance(student_layers, bool) or not isinstance(student_layers, int) or not (
            1 <= student_layers <= teacher_layers):
        raise SlimtorchError(f"the student must have between 1 and {teacher_layers} layers (the teacher's "
                             f"count), got {student_layers!r}")
    return tuple(int(round((i + 1) * teacher_layers / student_layers)) - 1 for i in range(student_layers))


def check_mapping(mapping: Sequence[int], teacher_layers: int, student_layers: int | None = None) -> tuple[int, ...]:
    """``mapping`` as a tuple, after checking every entry is a teacher layer index (and its length).

    Raises:
        SlimtorchError: an entry outside ``0 .. teacher_layers - 1``, or a length other than ``student_layers``.
    """
    m = tuple(mapping)
    if not m or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < teacher_layers for i in m):
        raise SlimtorchError(f"layer mapping {list(m)}: each entry is a teacher layer index in 0..{teacher_layers - 1}"
                             f" (the teacher has {teacher_layers} layers)")
    if student_layers is not None and len(m) != student_layers:
        raise SlimtorchError(f"layer mapping {list(m)} has {len(m)} entries but the student has {student_layers} "
                             "layers: give one teacher layer per student layer")
    return m


def layer_drop_student(teacher: nn.Module, *, every: int | None = 2, mapping: Sequence[int] | None = None,
                       layers_path: str | None = None) -> nn.Module:
    """A copy of ``teacher`` that keeps only the mapped layers (DistilBERT initialisation, Sanh et al. 2019).

    Args:
        teacher: the model to copy (left unchanged).
        every: keep every ``every``-th layer (``L_t / every`` layers, :func:`uniform_mapping`); ignored when
            ``mapping`` is given. ``L_t`` must be divisible by ``every``.
        mapping: the teacher layer (0-based) each student layer copies, in order.
        layers_path: the ModuleList of blocks (default: found by :func:`find_layers`).

    Returns:
        The student, in the teacher's training mode, with ``config.num_hidden_layers`` updated.

    Raises:
        SlimtorchError: a bad ``every`` or ``mapping``, or no layer list found.
    """
    path, layers = find_layers(teacher, layers_path)
    n = len(layers)
    if mapping is None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1 or n % every:
            raise SlimtorchError(f"every={every!r}: keep every k-th of the teacher's {n} layers needs an integer "
                                 f"k >= 1 dividing {n}; or pass mapping=[teacher layer per student layer]")
        mapping = uniform_mapping(n, n // every)
    keep = check_mapping(mapping, n)
    student = copy.deepcopy(teacher)
    parent_name, _, child = path.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    old = getattr(parent, child)
    # The student's own (already copied) blocks: a second deep copy would give them private configs.
    setattr(parent, child, nn.ModuleList(old[i] if n_uses == 0 else copy.deepcopy(old[i])
                                         for n_uses, i in _uses(keep)))
    for new_idx, block in enumerate(getattr(parent, child)):
        for m in block.modules():  # attention modules index the KV cache by their layer number
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_idx
    _update_config(student, keep)
    return student


def _uses(keep: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(how many times layer i was kept before, i)`` per entry: a layer mapped twice is copied again."""
    seen: dict[int, int] = {}
    out = []
    for i in keep:
        out.append((seen.get(i, 0), i))
        seen[i] = seen.get(i, 0) + 1
    return out


def _update_config(model: nn.Module, keep: tuple[int, ...]) -> None:
    # A deep copy shares nothing with the teacher, so its configs (the model's and every submodule's,
    # often the same object) are edited in place.
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    for cfg in configs.values():
        if hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = len(keep)  # GPT-2's n_layer is an alias of this name
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) > max(keep):
            cfg.layer_types = [types[i] for i in keep]
