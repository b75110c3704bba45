"""What a stage is, and the stage registry: recipe stage name -> options, technique configs, runner.

A stage is one :class:`StageDef` registered in :data:`STAGES`::

    register_stage(StageDef(name="prune", options=PruneOptions, techniques=pruning_configs,
                            default_technique="Magnitude", accepts=FLOAT_STATES, produces=prune_produces,
                            run=run_prune, restore=restore_saved))

Recipe options of a stage are split in two: keys that are fields of the stage's own ``options``
class (e.g. ``finetune``) and everything else, which (with ``type``) is parsed into the technique's
config class (``Magnitude``, ``Int8Static``, ...): the recipe never keeps a second copy of a
technique's options.

Model states. Every stage says which states of the model it can take and what it leaves:

* ``dense``: a float model (untrained, trained, distilled or channel-pruned);
* ``masked``: float with pruning masks (zeros that must stay zero);
* ``quantized``: quantized layers (fake-quant for accuracy, an int8 ONNX file for deployment);
* ``shared``: k-means weight sharing (a ``.slim`` file);
* ``exported``: an ONNX file is the product.

``share`` after ``quantize`` is refused because clustering needs float weights, and so on; the error
lists the order that works (:data:`ALLOWED_ORDER`).

The built-in stages live in the :mod:`slimtorch.pipeline.stages` package and register themselves when
``slimtorch.pipeline`` is imported; they import this module, never the other way round (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimtorch.core.config import Config
from slimtorch.core.registry import Registry

DENSE, MASKED, QUANTIZED, SHARED, EXPORTED = "dense", "masked", "quantized", "shared", "exported"
STATES = (DENSE, MASKED, QUANTIZED, SHARED, EXPORTED)
FLOAT_STATES = frozenset({DENSE, MASKED})

#: Human description of the stage orders that work (shown when a recipe's order is refused).
ALLOWED_ORDER = (
    "train | distill (float model) -> prune (any number of times) -> quantize | share | joint -> export; "
    "evaluate may come anywhere; train, distill and prune need a float model, so they come before "
    "quantize, share, joint and export"
)


@dataclass
class Product:
    """What the pipeline carries from one stage to the next.

    Attributes:
        model: the torch model (with masks / fake-quant modules / shared weights attached, if any).
        state: one of :data:`STATES`.
        artefact: the deployable file of the last stage that wrote one (its size is "bytes on disk").
        onnx: an ONNX file that is the deployed form (int8 QDQ or exported); accuracy and latency are then
            measured on ONNX Runtime.
        info: facts later stages and the report need (e.g. ``masked_layers``, ``quant_scheme``).
    """

    model: nn.Module
    state: str = DENSE
    artefact: Path | None = None
    onnx: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageDef:
    """One kind of stage.

    Attributes:
        name: the recipe key (``train``, ``prune``, ...).
        options: the stage's own options class (fields other than the technique's).
        run: ``run(ctx, spec, product) -> Product``; writes its files into ``ctx.stage_dir``.
        restore: ``restore(ctx, spec, previous_product, record) -> Product``: rebuilds the product of a
            completed stage from its folder (for ``--resume``).
        accepts: model states the stage can take.
        produces: ``produces(spec, state_before) -> state_after``.
        techniques: ``() -> {config class name: class}`` of the technique configs the stage accepts
            (``None``: the stage has no technique config).
        default_technique: the ``type`` used when the recipe gives none.
        trains: whether the stage trains (its progress survives a kill epoch by epoch).
        doc: one line for ``--help`` and error messages.
    """

    name: str
    options: type[Config]
    run: Callable[..., Product]
    restore: Callable[..., Product]
    accepts: frozenset[str]
    produces: Callable[[Any, str], str]
    techniques: Callable[[], dict[str, type[Config]]] | None = None
    default_technique: str | None = None
    trains: bool = False
    doc: str = ""


#: Stage name -> definition.
STAGES: Registry[StageDef] = Registry("stage")


def register_stage(stage: StageDef) -> StageDef:
    """Add a stage kind to :data:`STAGES` (its ``name`` becomes a recipe key)."""
    STAGES.register(stage.name, stage, overwrite=True)
    return stage


def stage_dir_name(index: int, name: str) -> str:
    """``NN-<stage>`` (1-based, two digits) for stage ``index`` (0-based)."""
    return f"{index + 1:02d}-{name}"


def keep_state(spec: Any, state: str) -> str:
    """``produces`` of a stage that leaves the model's state as it is."""
    return state


def constant_state(new: str) -> Callable[[Any, str], str]:
    """``produces`` of a stage that always leaves ``new``."""

    def produces(spec: Any, state: str) -> str:
        return new

    return produces


def get_stage(name: str) -> StageDef:
    """The definition of stage ``name`` (unknown names list the valid ones)."""
    return STAGES.get(name)


def stage_names() -> list[str]:
    """Every registered stage name."""
    return STAGES.names()
