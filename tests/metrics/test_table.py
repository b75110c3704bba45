"""Human formatting and table rendering."""

from __future__ import annotations

import pytest

from slimtorch.metrics import format_value, human_bytes, render_table


def test_units_from_column_names():
    assert human_bytes(1_725_144) == "1.73 MB"
    assert human_bytes(17_240_000) == "17.2 MB"
    assert human_bytes(512) == "512 B"
    assert format_value("macs", 40_813_184) == "40.8 M MACs"
    assert format_value("macs", 2_293_000) == "2.29 M MACs"
    assert format_value("params", 431_080) == "431.1 K"
    assert format_value("accuracy", 0.0098) == "0.98%"
    assert format_value("latency_ms_torch", 0.41234) == "0.412 ms"
    assert format_value("speedup", 2.1) == "2.10x"
    assert format_value("size_x", 12.04) == "12.04x"
    assert format_value("errors", 1234) == "1,234"
    assert format_value("loss", 0.123456) == "0.1235"
    assert format_value("anything", None) == "-"
    assert format_value("model", "lenet5") == "lenet5"


def test_text_and_markdown():
    rows = [{"model": "dense", "size_bytes": 1_725_144, "accuracy": 0.99},
            {"model": "pruned", "size_bytes": 150_000}]
    text = render_table(rows).splitlines()
    assert text[0].split() == ["model", "size_bytes", "accuracy"]
    assert text[2].split() == ["dense", "1.73", "MB", "99.00%"]
    assert text[3].split() == ["pruned", "150.0", "kB", "-"]
    assert len({len(line) for line in text[:3]}) == 1  # aligned
    md = render_table(rows, columns=["model", "accuracy"], fmt="markdown").splitlines()
    assert md == ["| model | accuracy |", "|---|---:|", "| dense | 99.00% |", "| pruned | - |"]
    assert render_table(rows, columns=["size_bytes"], human=False).splitlines()[2].strip() == "1725144"


def test_bad_format():
    with pytest.raises(ValueError, match="fmt: 'html' is not one of \\['text', 'markdown'\\]"):
        render_table([{"a": 1}], fmt="html")
    with pytest.raises(ValueError, match="at least one column"):
        render_table([])
