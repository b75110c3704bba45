"""The YAML reader for user text: plain data only, no anchors or aliases, bounded size and depth."""

from __future__ import annotations

import time

import pytest

from slimtorch.core.safe_yaml import MAX_DEPTH, YAMLRefused, load_yaml


def test_plain_data_loads():
    assert load_yaml("a: {b: [1, 2.5, true, null]}\nc: x") == {"a": {"b": [1, 2.5, True, None]}, "c": "x"}


@pytest.mark.parametrize("text,msg", [
    ("a: &x [1]\nb: 2", r"YAML anchor &x at line 1, column 4"),
    ("a: *x", r"YAML alias \*x at line 1, column 4"),
    ("a: &x 1", r"YAML anchor &x"),  # anchors on scalars too
    ("base: &b {k: 1}\nd:\n  <<: *b", r"YAML anchor &b"),  # merge keys are aliases
])
def test_anchors_and_aliases_are_refused(text, msg):
    with pytest.raises(YAMLRefused, match=msg + r".*aliases and anchors are not allowed"):
        load_yaml(text)


def test_a_billion_laughs_is_refused_at_once():
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.perf_counter()
    with pytest.raises(YAMLRefused, match="YAML anchor &a"):
        load_yaml("\n".join(levels))
    assert time.perf_counter() - t0 < 0.5


def test_size_limit_is_checked_before_parsing():
    with pytest.raises(YAMLRefused, match=r"--set x= is 2001 bytes; YAML input is limited to 2000 bytes"):
        load_yaml("a" * 2001, source="--set x=", max_bytes=2000)


def test_nesting_limit():
    load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(YAMLRefused, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))


@pytest.mark.parametrize("text,msg", [
    ("a: !!python/object/apply:os.system ['true']", "could not determine a constructor"),
    ("a: [1", r"malformed YAML at line 1, column 6: expected ',' or '\]'"),
])
def test_code_tags_and_syntax_errors_are_named(text, msg):
    with pytest.raises(YAMLRefused, match=msg):
        load_yaml(text, source="r.yaml")
