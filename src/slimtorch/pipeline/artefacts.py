"""Writing and re-reading the float model a stage leaves (dense, or pruned with masks).

A float stage leaves ``model.safetensors`` (``slimtorch.save``: reloads without code, pruned channels
included) in its folder. A masked model also gets ``model.sparse.safetensors`` (CSR storage of the
zeros, ``slimtorch.prune.save_sparse``) and that is its deployable file when it is smaller. On
``--resume`` the masks are put back from the zeros, so a later training stage keeps them at zero.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.io.storage import MODEL_FILE
from slimtorch.pipeline.context import StageContext
from slimtorch.pipeline.stage_def import DENSE, MASKED, Product

SPARSE_FILE = "model.sparse.safetensors"


def masked_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers that carry a pruning mask."""
    from slimtorch.prune import masked_layers

    return [n for n, _ in masked_layers(model)]


def save_float(ctx: StageContext, model: nn.Module, info: dict | None = None) -> Product:
    """Save ``model`` into the stage folder; the :class:`Product` has state ``dense`` or ``masked``."""
    from slimtorch import metrics
    from slimtorch.io.storage import save
    from slimtorch.prune import make_permanent_, save_sparse

    masked = masked_layer_names(model)
    info = {**(info or {}), "masked_layers": masked}
    plain = make_permanent_(copy.deepcopy(model)) if masked else model
    dense_path = save(plain, ctx.stage_dir / MODEL_FILE)
    if not masked:
        return Product(model=model, state=DENSE, artefact=dense_path, info=info)
    sparse_path = save_sparse(plain, ctx.stage_dir / SPARSE_FILE)
    best = min((dense_path, sparse_path), key=metrics.file_size)
    return Product(model=model, state=MASKED, artefact=best, info=info)


def restore_float(ctx: StageContext, stage_dir: Path, record: dict) -> Product:
    """The product :func:`save_float` wrote into ``stage_dir``, masks re-applied from the zeros."""
    model = ctx.restore_model(stage_dir / MODEL_FILE, like=ctx.recipe.model)
    masked = record.get("info", {}).get("masked_layers", [])
    remask_(model, masked)
    artefact = stage_dir / record["artefact_name"] if record.get("artefact_name") else stage_dir / MODEL_FILE
    return Product(model=model, state=MASKED if masked else DENSE, artefact=artefact, info=record.get("info", {}))


def restore_saved(ctx: StageContext, spec: Any, previous: Product, record: dict) -> Product:
    """The ``restore`` of every stage whose product :func:`save_float` wrote (train, prune)."""
    return restore_float(ctx, Path(record["dir"]), record)


@torch.no_grad()
def remask_(model: nn.Module, names: list[str]) -> None:
    """Mask the zeros of each named layer's weight (so training keeps them at zero)."""
    from slimtorch.prune import apply_mask_

    for name in names:
        m = model.get_submodule(name)
        apply_mask_(m, m.weight.detach() != 0)
