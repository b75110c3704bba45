"""Module selection by type, include/exclude patterns and filter_fn."""

from __future__ import annotations

import pytest
from torch import nn

from slimtorch.core.selection import get_submodule, named_modules_matching, set_submodule
from slimtorch.models import create


def test_patterns_select_subtrees_and_exclude():
    m = create("resnet20")
    convs = named_modules_matching(m, (nn.Conv2d,))
    assert len(convs) == 21  # 19 3x3 convs + 2 projection shortcuts
    l1 = named_modules_matching(m, (nn.Conv2d,), include="layer1")
    assert [n for n, _ in l1] == [f"layer1.{b}.conv{i}" for b in range(3) for i in (1, 2)]
    no_short = named_modules_matching(m, (nn.Conv2d,), exclude="*.shortcut.*")
    assert len(no_short) == 19
    only_first = named_modules_matching(m, (nn.Conv2d,), filter_fn=lambda mod, n: mod.in_channels == 3)
    assert [n for n, _ in only_first] == ["conv1"]


def test_get_and_set_submodule():
    m = create("lenet5")
    assert isinstance(get_submodule(m, "classifier.1"), nn.Linear)
    with pytest.raises(ValueError, match=r"no module named 'classifer.1'.*classifier\.1"):
        get_submodule(m, "classifer.1")
    set_submodule(m, "classifier.1", nn.Linear(800, 10))
    assert m.classifier[1].out_features == 10
