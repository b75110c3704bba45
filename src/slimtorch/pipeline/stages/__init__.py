"""The built-in stages, one module per family; importing this package registers them in :data:`STAGES`.

* :mod:`~slimtorch.pipeline.stages.train`: ``train``, ``distill``, ``evaluate``;
* :mod:`~slimtorch.pipeline.stages.compress`: ``prune``, ``quantize``, ``share``;
* :mod:`~slimtorch.pipeline.stages.joint`: ``joint`` (distillation + pruning + QAT in one run);
* :mod:`~slimtorch.pipeline.stages.deploy`: ``export``.

What a stage is (:class:`StageDef`, :class:`Product`, the model states) lives in
:mod:`slimtorch.pipeline.stage_def`, which these modules import; it never imports them, so the package
has no import cycle. ``slimtorch.pipeline`` imports this package, so the built-ins are registered as
soon as any pipeline module is. The names of ``stage_def`` stay importable from here.
"""

from slimtorch.pipeline.stage_def import (
    ALLOWED_ORDER,
    DENSE,
    EXPORTED,
    FLOAT_STATES,
    MASKED,
    QUANTIZED,
    SHARED,
    STAGES,
    STATES,
    Product,
    StageDef,
    constant_state,
    get_stage,
    keep_state,
    register_stage,
    stage_dir_name,
    stage_names,
)
from slimtorch.pipeline.stages import compress, deploy, joint, train  # noqa: F401  (registration)

__all__ = [
    "ALLOWED_ORDER", "DENSE", "EXPORTED", "FLOAT_STATES", "MASKED", "QUANTIZED", "SHARED", "STAGES", "STATES",
    "Product", "StageDef", "constant_state", "get_stage", "keep_state", "register_stage", "stage_dir_name",
    "stage_names",
]
