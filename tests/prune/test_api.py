"""prune_ dispatch through the registry, and the report (params, nonzeros, MACs, table)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from slimtorch.core.config import Config
from slimtorch.metrics import count_macs, count_nonzero, count_params
from slimtorch.models import create
from slimtorch.prune import METHODS, PRUNERS, Magnitude, PruneReport, prune_, register_pruner


def test_report_counts_match_metrics_and_macs_scale_with_density():
    model = create("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    rep = prune_(model, Magnitude(0.9, scope="layer"), example_inputs=x)
    assert rep.params_before == rep.params_after == count_params(model) == 431_080
    assert rep.nonzeros_after == count_nonzero(model)
    assert rep.macs_before == count_macs(model, x)
    _, per_layer = count_macs(model, x, per_layer=True)
    for r in rep.layers:
        assert r.macs_before == per_layer[r.name]
        assert r.macs_after == round(per_layer[r.name] * r.nonzeros_after / r.params_after)
        assert r.shape_before == r.shape_after and r.kind == "magnitude"
    assert rep.macs_after == rep.macs_before - sum(r.macs_before - r.macs_after for r in rep.layers)
    assert rep.compression == pytest.approx(431_080 / rep.nonzeros_after)
    table = rep.table()
    assert "features.3" in table and "compression" in table and "90.00%" in table
    d = rep.to_dict()
    assert d["layers"][0]["sparsity"] == pytest.approx(0.9)


def test_report_without_inputs_has_no_macs():
    rep = prune_(nn.Sequential(nn.Linear(4, 4)), Magnitude(0.5))
    assert rep.macs_before is None and rep.layers[0].macs_before is None
    assert rep.table().splitlines()[-2].startswith("total")


def test_unknown_config_type_says_how_to_register():
    @dataclass
    class Mystery(Config):
        x: int = 1

    with pytest.raises(
        ValueError, match=r"no pruner is registered for Mystery; known configs: .*Magnitude.*register_pruner"
    ):
        prune_(nn.Linear(2, 2), Mystery())


def test_a_registered_custom_pruner_is_dispatched_and_offered_on_the_cli():
    @dataclass
    class Halve(Config):
        pass

    @register_pruner(Halve, name="halve-test")
    def halve(model, config, example_inputs=None, data=None):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        return PruneReport(method="halve")

    try:
        lin = nn.Linear(2, 2)
        w = lin.weight.detach().clone()
        assert prune_(lin, Halve()).method == "halve"
        assert torch.equal(lin.weight, w * 0.5)
        assert METHODS.get("halve-test") is Halve
    finally:
        PRUNERS.pop(Halve)
        METHODS._items.pop("halve-test")


def test_a_cli_method_needs_no_cli_code_its_options_come_through_set(tmp_path):
    """A config registered with a name is on the command line, built by from_dict from --set."""
    import slimtorch
    from slimtorch.cli.main import main

    @dataclass
    class Scale(Config):
        factor: float = 0.5
        exclude: tuple[str, ...] = ()

    seen = []

    @register_pruner(Scale, name="scale-test")
    def scale(model, config, example_inputs=None, data=None):
        seen.append(config)
        return PruneReport(method="scale")

    slimtorch.save(create("mlp", in_features=4, hidden=(4,)), tmp_path / "run")
    try:
        argv = ["prune", str(tmp_path / "run"), "--method", "scale-test", "--out", str(tmp_path / "p")]
        assert main([*argv, "--set", "factor=0.25", "--exclude", "net.0"]) == 0
        assert seen == [Scale(factor=0.25, exclude=("net.0",))]
        assert main([*argv, "--overwrite", "--set", "factr=2"]) == 2  # unknown keys name the allowed ones
        assert main([*argv, "--overwrite", "--ratio", "0.5"]) == 2  # a flag for a key Scale lacks
    finally:
        PRUNERS.pop(Scale)
        METHODS._items.pop("scale-test")


def test_mask_methods_are_registered():
    assert {"magnitude", "nm"} <= set(METHODS.names())
