"""Render rows of measurements as an aligned text table or a Markdown table, with human units.

Units are chosen from the column name (a convention shared by profiles, benchmarks and reports):

=====================================  ==========================  ===============
column name                            meaning                     shown as
=====================================  ==========================  ===============
``*bytes*``, ``size``                  bytes (decimal units)       ``1.72 MB``
``*macs*``                             multiply-accumulates        ``41.0 M MACs``
``*params*``, ``nonzero*``             element counts              ``431.1 K``
``*acc*``, ``top1``/``top5``,          fraction in [0, 1]          ``98.80%``
``*sparsity*``
``*_ms``, ``*_ms_*``                   milliseconds                ``0.412 ms``
``*speedup*``, ``*_x``                 ratio                       ``2.10x``
=====================================  ==========================  ===============

Other integers get thousands separators, other floats four significant digits, ``None`` shows ``-``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from slimtorch.core.config import check_choice

FORMATS = ("text", "markdown")


def _scaled(value: float, units: Sequence[tuple[float, str]]) -> str:
    """Largest unit not above ``value``; 2 decimals below 10 units, else 1 (``2.29 M``, ``40.8 M``)."""
    for scale, suffix in units:
        if abs(value) >= scale:
            v = value / scale
            return f"{v:.{2 if abs(v) < 10 else 1}f} {suffix}"
    return f"{value:g}"


def human_bytes(n: float) -> str:
    """``1234567 -> '1.23 MB'``, ``17240000 -> '17.2 MB'`` (decimal: kB = 1000 bytes)."""
    if abs(n) < 1000:
        return f"{int(n)} B"
    return _scaled(n, [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")])


def human_count(n: float) -> str:
    """``431080 -> '431.1 K'``, ``2293000 -> '2.29 M'``; below 1000 the plain number."""
    if abs(n) < 1000:
        return f"{n:g}"
    return _scaled(n, [(1e9, "G"), (1e6, "M"), (1e3, "K")])


def human_macs(n: float) -> str:
    """``40813184 -> '40.8 M MACs'``."""
    return f"{human_count(n)} MACs"


def _percent(v: float) -> str:
    return f"{100 * v:.2f}%"


def _ms(v: float) -> str:
    return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"


def _ratio(v: float) -> str:
    return f"{v:.2f}x"


#: (predicate on the lower-cased column name, formatter), first match wins.
UNIT_RULES: list[tuple[Callable[[str], bool], Callable[[float], str]]] = [
    (lambda k: "bytes" in k or k == "size", human_bytes),
    (lambda k: "macs" in k, human_macs),
    (lambda k: "speedup" in k or k.endswith("_x"), _ratio),
    (lambda k: k.endswith("_ms") or "_ms_" in k, _ms),
    (lambda k: "acc" in k or k in ("top1", "top5") or "sparsity" in k, _percent),
    (lambda k: "params" in k or k.startswith("nonzero"), human_count),
]


def format_value(column: str, value: Any) -> str:
    """Human form of one cell, chosen from its column name (see the module docstring)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    key = column.lower()
    for applies, fmt in UNIT_RULES:
        if applies(key):
            return fmt(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, fmt: str = "text",
                 human: bool = True) -> str:
    """Render ``rows`` as a table.

    Args:
        rows: one dict per row; missing cells show ``-``.
        columns: column order; default: every key in order of first appearance.
        fmt: ``"text"`` (aligned, for terminals) or ``"markdown"`` (GitHub tables, numbers right-aligned).
        human: format numbers with units (see the module docstring); ``False`` prints them raw.

    Returns:
        The table as one string (no trailing newline).
    """
    check_choice("fmt", fmt, FORMATS)
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    if not cols:
        raise ValueError("render_table needs at least one column (rows are empty and no columns were given)")
    cells = [[format_value(c, r.get(c)) if human else ("-" if r.get(c) is None else str(r.get(c)))
              for c in cols] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) and bool(rows)
               for c in cols]
    if fmt == "markdown":
        head = "| " + " | ".join(cols) + " |"
        rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
        body = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([head, rule, *body])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(s.rjust(w) if n else s.ljust(w) for s, w, n in zip(items, widths, numeric)).rstrip()

    return "\n".join([line(cols), "  ".join("-" * w for w in widths), *(line(row) for row in cells)])
