"""The example recipes and the documented recipe are valid recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from slimtorch.pipeline import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_three_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"mnist_deep_compression.yaml", "cifar10_resnet20.yaml", "char_gpt.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_is_valid(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.model.checkpoint is not None


def test_recipe_in_the_docs_is_valid():
    text = (ROOT / "docs" / "pipeline.md").read_text()
    block = re.search(r"## Recipe format\n\n```yaml\n(.*?)```", text, re.S).group(1)
    recipe = parse_recipe(yaml.safe_load(block))
    assert [s.name for s in recipe.stages] == ["train", "distill", "prune", "quantize"]
