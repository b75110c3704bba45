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


def test_overrides_first_matching_pattern_wins_and_unused_ones_are_found():
    from slimtorch.core.selection import check_overrides, override_for, unused_overrides

    overrides = {"layer1.*": 0.2, "layer*": 0.5, "fc": 0.0}
    assert override_for("layer1.0.conv1", overrides) == 0.2
    assert override_for("layer2.conv", overrides) == 0.5
    assert override_for(["stem", "fc"], overrides) == 0.0  # any of several names (a channel group)
    assert override_for("stem", overrides) is None
    assert unused_overrides(["fc", "layer2.conv"], overrides) == ["layer1.*"]
    with pytest.raises(ValueError, match=r"overrides\['fc'\]: 1 is not in \[0, 1\)"):
        check_overrides({"fc": 1})


def test_an_empty_selection_names_the_candidates():
    from slimtorch.core.selection import Selector

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match=r"no layer of Sequential is selected for pruning .*\['0'\]"):
        Selector((nn.Linear,), exclude=("0",)).select_some(model, "pruning")
