"""Pruning: weight masks (unstructured magnitude, N:M, with schedules) and structured channel removal.

>>> from slimtorch.prune import prune_, Magnitude, AGP, make_permanent_
>>> report = prune_(model, Magnitude(sparsity=0.9, scope="global"))
>>> print(report.table())
>>> make_permanent_(model)          # bake the zeros in, drop the masks

One-shot LLM pruning from calibration activations, unstructured or N:M, block by block:

>>> prune_(model, SparseGPT(sparsity=0.5), data=calib)   # Frantar & Alistarh 2023
>>> prune_(model, Wanda(n=2, m=4), calib_data=calib)      # Sun et al. 2024

Masks keep shapes (smaller on disk with :func:`save_sparse`, faster only on sparse hardware); the
structured part (``Channel``) returns a physically smaller dense model.
"""

from slimtorch.prune.api import METHODS, PRUNERS, prune_, register_pruner
from slimtorch.prune.calibrated import CalibratedPruning
from slimtorch.prune.magnitude import CRITERIA, Magnitude, global_masks, layer_masks, lowest_k_mask
from slimtorch.prune.masks import (
    DEFAULT_TYPES,
    WeightMask,
    apply_mask_,
    get_mask,
    make_permanent_,
    masked_layers,
    select_layers,
)
from slimtorch.prune.nm import NM, check_nm, nm_mask
from slimtorch.prune.pruner import MaskPruner, iterative_prune_
from slimtorch.prune.report import LayerReport, PruneReport
from slimtorch.prune.schedules import AGP, Iterative, OneShot, Schedule, agp_sparsity, iterative_sparsity
from slimtorch.prune.sparse import from_csr, load_sparse, save_sparse, to_csr
from slimtorch.prune.sparsegpt import SparseGPT, sparsegpt_prune
from slimtorch.prune.structured import Channel, build_dependency_graph, register_importance, register_surgery
from slimtorch.prune.wanda import Wanda, wanda_mask, wanda_scores

__all__ = [
    "AGP",
    "CalibratedPruning",
    "SparseGPT",
    "Wanda",
    "sparsegpt_prune",
    "wanda_mask",
    "wanda_scores",
    "CRITERIA",
    "Channel",
    "DEFAULT_TYPES",
    "METHODS",
    "NM",
    "PRUNERS",
    "Iterative",
    "LayerReport",
    "Magnitude",
    "MaskPruner",
    "OneShot",
    "PruneReport",
    "Schedule",
    "WeightMask",
    "agp_sparsity",
    "apply_mask_",
    "build_dependency_graph",
    "check_nm",
    "from_csr",
    "get_mask",
    "global_masks",
    "iterative_prune_",
    "iterative_sparsity",
    "layer_masks",
    "load_sparse",
    "lowest_k_mask",
    "make_permanent_",
    "masked_layers",
    "nm_mask",
    "prune_",
    "register_importance",
    "register_pruner",
    "register_surgery",
    "save_sparse",
    "select_layers",
    "to_csr",
]
