"""Recipes that chain the techniques: YAML -> typed stage configs -> runner (one folder per stage) -> report.

>>> from slimtorch.pipeline import load_recipe, run_recipe
>>> recipe = load_recipe("examples/mnist_deep_compression.yaml")
>>> rows = run_recipe(recipe, "runs/mnist", resume=True)      # one row per stage
>>> # runs/mnist/report.html: stage table, ratios, accuracy-vs-size/latency plots, per-layer sparsity/bits

A stage kind is one :class:`StageDef` in :data:`STAGES` (see :mod:`slimtorch.pipeline.stage_def`); the
built-in ones are the :mod:`slimtorch.pipeline.stages` package.
"""

from slimtorch.pipeline.measure import ROW_KEYS, layer_table, measure, onnx_accuracy, public_row
from slimtorch.pipeline.options import DataSpec, FitOptions, MeasureOptions, ModelSource
from slimtorch.pipeline.recipe import (
    Recipe,
    RecipeError,
    StageSpec,
    load_recipe,
    parse_recipe,
    parse_recipe_text,
)
from slimtorch.pipeline.report import build_report, write_report
from slimtorch.pipeline.runner import run_recipe, stage_records
from slimtorch.pipeline.stages import (  # the package: importing it registers the built-in stages
    ALLOWED_ORDER,
    STAGES,
    Product,
    StageDef,
    get_stage,
    register_stage,
    stage_names,
)

__all__ = [
    "ALLOWED_ORDER",
    "ROW_KEYS",
    "STAGES",
    "DataSpec",
    "FitOptions",
    "MeasureOptions",
    "ModelSource",
    "Product",
    "Recipe",
    "RecipeError",
    "StageDef",
    "StageSpec",
    "build_report",
    "get_stage",
    "layer_table",
    "load_recipe",
    "measure",
    "onnx_accuracy",
    "parse_recipe",
    "parse_recipe_text",
    "public_row",
    "register_stage",
    "run_recipe",
    "stage_records",
    "stage_names",
    "write_report",
]
