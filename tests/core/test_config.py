"""Config base class: validation helpers, dict round-trip, unknown keys, nested configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from slimtorch.core import Config, Registry, check_choice, check_positive, check_range


@dataclass
class Inner(Config):
    bits: int = 8

    def __post_init__(self):
        check_range("bits", self.bits, 2, 8)


@dataclass
class Outer(Config):
    ratio: float = 0.5
    mode: str = "global"
    layers: tuple[str, ...] = ("fc",)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        check_range("ratio", self.ratio, 0, 1, hi_open=True)
        check_choice("mode", self.mode, ["global", "layer"])


def test_round_trip_with_nested_config_and_tuples():
    c = Outer(ratio=0.25, mode="layer", layers=("a", "b"), inner=Inner(bits=4))
    d = c.to_dict()
    assert d == {
        "ratio": 0.25, "mode": "layer", "layers": ["a", "b"], "inner": {"bits": 4, "type": "Inner"}, "version": 1
    }
    assert Outer.from_dict(d) == c
    d.pop("version")
    assert Outer.from_dict(d) == c  # dicts written before the version key still load


def test_from_dict_checks_the_version_and_reports_every_bad_field_at_once():
    with pytest.raises(ValueError, match=r"version: 7 is not a config schema version"):
        Outer.from_dict({"version": 7})
    with pytest.raises(ValueError) as e:
        Outer.from_dict({"ratio": 1.5, "mode": "bogus", "extra": 1}, path="p")
    lines = str(e.value).splitlines()
    assert lines[0].startswith("p: unknown key(s) ['extra']")
    e2 = pytest.raises(ValueError, Outer.from_dict, {"ratio": 1.5, "mode": "bogus"}, path="p")
    assert "p.ratio: 1.5 is not in [0, 1)" in str(e2.value) and "p.mode" in str(e2.value)


def test_unknown_key_lists_allowed_with_path():
    with pytest.raises(ValueError, match=r"stages\[0\]\.prune: unknown key\(s\) \['ratioo'\]; allowed: .*'ratio'"):
        Outer.from_dict({"ratioo": 0.3}, path="stages[0].prune")


def test_validation_messages():
    with pytest.raises(ValueError, match=r"ratio: 1.5 is not in \[0, 1\)"):
        Outer(ratio=1.5)
    with pytest.raises(ValueError, match=r"mode: 'x' is not one of \['global', 'layer'\]"):
        Outer(mode="x")
    with pytest.raises(ValueError, match=r"inner.bits|bits: 9 is not in \[2, 8\]"):
        Outer.from_dict({"inner": {"bits": 9}})
    with pytest.raises(ValueError, match="must be a number"):
        check_range("x", float("nan"), 0, 1)
    with pytest.raises(ValueError, match="must be > 0, got 0"):
        check_positive("T", 0)
    check_positive("w", 0, allow_zero=True)


def test_type_key_selects_subclass_and_rejects_others():
    assert Config.from_dict({"type": "Inner", "bits": 3}) == Inner(bits=3)
    with pytest.raises(ValueError, match="'Nope' is not one of"):
        Inner.from_dict({"type": "Nope"})


def test_registry_lookup_and_errors():
    r: Registry = Registry("widget")
    r.register("alpha", 1)

    @r.register("beta")
    def beta():
        return 2

    assert r.get("ALPHA") == 1 and r.get("beta")() == 2
    assert r.names() == ["alpha", "beta"] and "alpha" in r and len(r) == 2
    with pytest.raises(ValueError, match=r"unknown widget 'alpah'; valid: alpha, beta\. Did you mean 'alpha'"):
        r.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        r.register("alpha", 3)
