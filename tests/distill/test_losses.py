"""Loss configs: validation (bad input names the value), registry coverage, dict round trip."""

from __future__ import annotations

import pytest

from slimtorch.distill import (
    DIST,
    KD,
    LOSSES,
    RKD,
    AttentionTransfer,
    DistillLoss,
    Hint,
    LogitMSE,
    SimilarityPreserving,
    build_term,
)

CONFIGS = [
    KD(temperature=3.0, weight=0.5),
    LogitMSE(weight=2.0),
    Hint("net.2", "net.4", weight=0.1, adapter="linear"),
    AttentionTransfer(["a", "b"], ["c", "d"], weight=10.0),
    RKD(weight=1.0, student_layer="x", teacher_layer="y"),
    SimilarityPreserving("x", "y"),
    DIST(temperature=4.0, intra_weight=2.0),
]


def test_every_registered_loss_has_a_config_here():
    assert sorted(type(c).__name__.lower() for c in CONFIGS) == LOSSES.names()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_through_dict(cfg):
    d = cfg.to_dict()
    d["type"] = type(cfg).__name__
    assert DistillLoss.from_dict(d) == cfg
    assert build_term(d).config == cfg


@pytest.mark.parametrize("T", [0, -2.0])
def test_temperature_must_be_positive(T):
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {T}"):
        KD(temperature=T)


@pytest.mark.parametrize(
    "make",
    [
        lambda: KD(temperature=2, weight=-1),
        lambda: LogitMSE(weight=-0.1),
        lambda: Hint("a", "b", weight=-1),
        lambda: AttentionTransfer("a", "b", weight=-5),
        lambda: RKD(weight=-1),
        lambda: SimilarityPreserving("a", "b", weight=-3),
        lambda: DIST(weight=-2),
    ],
)
def test_negative_weights_rejected(make):
    with pytest.raises(ValueError, match="weight must be >= 0, got -"):
        make()


def test_other_bad_configs():
    with pytest.raises(ValueError, match="Hint.student_layer must name a module"):
        Hint("", "b")
    with pytest.raises(ValueError, match="adapter: 'mlp' is not one of"):
        Hint("a", "b", adapter="mlp")
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        AttentionTransfer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="both 0"):
        RKD(distance_weight=0, angle_weight=0)
    with pytest.raises(ValueError, match="teacher must be an index >= 0"):
        Hint("a", "b", teacher=-1)
    with pytest.raises(ValueError, match="unknown key"):
        DistillLoss.from_dict({"type": "KD", "alpha": 0.5})
    with pytest.raises(ValueError, match="distillation loss configs"):
        build_term("kd")  # type: ignore[arg-type]
