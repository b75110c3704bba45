"""The type registry behind every config -> handler and layer -> rule table."""

from __future__ import annotations

import pytest

from slimtorch.core.registry import Registry


def test_type_registry_finds_the_nearest_registered_base():
    from slimtorch.core.registry import TypeRegistry

    class A:
        pass

    class B(A):
        pass

    class C:
        pass

    reg = TypeRegistry("handler")
    reg.register(A, "a")
    assert reg.get(B) == "a" and reg.find(C) is None and A in reg and B not in reg
    reg.register(B)("b")
    assert reg.get(B) == "b" and reg.types() == [A, B]
    with pytest.raises(ValueError, match="no handler registered for C; known: A, B"):
        reg.get(C)
    with pytest.raises(ValueError, match="a handler for A is already registered"):
        reg.register(A, "other")
    with pytest.raises(ValueError, match="a handler is registered for a class, got 'A'"):
        reg.register("A", "x")


def test_layer_rule_registry_answers_for_a_declared_kind_at_its_place_in_the_mro():
    from slimtorch.core.registry import LayerRuleRegistry

    class Base:
        pass

    class Declares(Base):
        slimtorch_kind = "pad"

    class Inherits(Declares):
        pass

    class Own(Declares):
        pass

    rules: LayerRuleRegistry[str] = LayerRuleRegistry("rule")
    rules.register(Base, "base")
    assert rules.find(Declares) == "base"  # kind without a rule: the base's
    rules.register_kind("pad", "pad rule")
    rules.register(Own, "own")
    assert rules.find(Declares) == rules.find(Inherits) == "pad rule"
    assert rules.find(Own) == "own" and rules.find(Base) == "base" and rules.find(int) is None
    assert rules.kinds() == ["pad"] and rules.types() == [Base, Own]
    assert rules.pop(Own) == "own" and rules.find(Own) == "pad rule"


def test_case_sensitive_registry_and_find():
    reg = Registry("config type", case_sensitive=True)
    reg.register("AGP", 1)
    reg.register("agp", 2)  # another name when case counts
    assert reg.get("AGP") == 1 and reg.find("agp") == 2 and reg.find("Agp") is None and reg.find(3) is None
    assert reg.names() == ["AGP", "agp"] and "AGP" in reg and "Agp" not in reg
    with pytest.raises(ValueError, match=r"unknown config type 'Agp'; valid: AGP, agp"):
        reg.get("Agp")


def test_config_types_and_schedule_drivers_are_core_registries():
    from slimtorch.core.config import CONFIG_TYPES, Config
    from slimtorch.core.registry import TypeRegistry
    from slimtorch.prune import Magnitude
    from slimtorch.prune.pruner import SCHEDULE_DRIVERS
    from slimtorch.prune.schedules import AGP, OneShot

    assert isinstance(CONFIG_TYPES, Registry) and CONFIG_TYPES.get("Magnitude") is Magnitude
    assert CONFIG_TYPES.find("magnitude") is None and CONFIG_TYPES.find("NoSuchConfig") is None
    assert isinstance(SCHEDULE_DRIVERS, TypeRegistry) and {OneShot, AGP} <= set(SCHEDULE_DRIVERS)

    class OneShotLater(OneShot):  # a subclass without its own driver runs its base's
        pass

    assert SCHEDULE_DRIVERS.get(OneShotLater) is SCHEDULE_DRIVERS.get(OneShot)

    class NotASchedule(Config):
        pass

    with pytest.raises(ValueError, match=r"no schedule driver registered for NotASchedule; known: AGP, Iterative"):
        SCHEDULE_DRIVERS.get(NotASchedule)
