"""The run report: ``report.md`` and a self-contained ``report.html`` (plots embedded as base64 PNG).

Built only from the ``stage.json`` files of a run folder, so ``slimtorch report runs/x`` rebuilds it
at any time. Contents: the stage table (accuracy, params, nonzeros, bytes on disk, MACs, latency and
the runtime it was measured on), ratios against the first measured stage (the starting model), plots
of accuracy against size and against latency with one point per stage, and per-layer sparsity and
weight bit widths.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.atomic import atomic_write_bytes, atomic_write_text
from slimtorch.pipeline.run_folder import RECIPE_FILE, stage_records

STAGE_COLUMNS = (
    "stage",
    "accuracy",
    "size_bytes",
    "params",
    "nonzero_params",
    "macs",
    "latency_ms",
    "runtime",
)
RATIO_COLUMNS = ("stage", "accuracy_change_pt", "size_x", "nonzero_x", "macs_x", "speedup")
LAYER_COLUMNS = ("name", "params", "sparsity", "bits")
PLOTS_DIR = "plots"
LAYER_PLOT_FILE = "layers.png"


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage against the first row: accuracy change in points and ``x`` factors (> 1 = better)."""
    if not rows:
        return []
    base = rows[0]
    out = []
    for r in rows:
        acc = r.get("accuracy")
        out.append(
            {
                "stage": r["stage"],
                "accuracy_change_pt": None if acc is None else 100.0 * (acc - base["accuracy"]),
                "size_x": _ratio(base.get("size_bytes"), r.get("size_bytes")),
                "nonzero_x": _ratio(base.get("nonzero_params"), r.get("nonzero_params")),
                "macs_x": _ratio(base.get("macs"), r.get("macs")),
                "speedup": _ratio(base.get("latency_ms"), r.get("latency_ms")),
            }
        )
    return out


def _fmt(col: str, v: Any) -> str:
    from slimtorch.metrics import format_value

    if col == "accuracy_change_pt" and isinstance(v, (int, float)):
        return f"{v:+.2f} pt"
    if (col.endswith("_x") or col == "speedup") and isinstance(v, (int, float)):
        return f"{v:.2f}x"
    if col == "bits" and isinstance(v, int):
        return str(v)
    return format_value(col, v)


def markdown_table(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table with human units."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" if c in ("stage", "name", "runtime") else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def html_table(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    """The same table as HTML."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c, r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- plots ---------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    # A bare Figure on the Agg canvas: no pyplot state, no layout engine (both cost seconds per report on a
    # loaded CPU, and the report is redrawn after every stage).
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90)


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def point_labels(pts: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """One label per distinct point: stages that land on the same spot (e.g. ``int8`` and the ``final``
    evaluation of it) share one label, ``"int8 = final"``, instead of printing over each other."""
    groups: dict[tuple[float, float], list[str]] = {}
    for x, y, name in pts:
        groups.setdefault((x, y), []).append(name)
    return [(x, y, " = ".join(names)) for (x, y), names in groups.items()]


def plot_tradeoff(rows: list[dict[str, Any]], x_key: str, x_label: str) -> bytes:
    """Accuracy (%) against ``x_key`` (log scale), one labelled point per stage, joined in stage order.

    Squares: measured on ONNX Runtime; circles: on torch.
    """
    pts = [
        (r[x_key], 100 * r["accuracy"], r["stage"], r.get("runtime", ""))
        for r in rows
        if isinstance(r.get(x_key), (int, float)) and r[x_key] > 0 and isinstance(r.get("accuracy"), (int, float))
    ]
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.12, right=0.95, bottom=0.13, top=0.95)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.75", zorder=1)
        markers = {"onnxruntime": "s", "torch": "o"}
        for i, (x, y, _, runtime) in enumerate(pts):
            ax.scatter([x], [y], marker=markers.get(runtime, "o"), s=60, zorder=2, color=f"C{i % 10}")
        for x, y, label in point_labels([(x, y, name) for x, y, name, _ in pts]):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis overlap
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    return _figure_png(fig)


def plot_layers(stage: str, layers: list[dict[str, Any]]) -> bytes:
    """Per-layer sparsity (bars) and weight bit width (second panel) of one stage."""
    names = [layer["name"] for layer in layers]
    height = 0.3 * max(4, len(names)) + 1.0
    fig = _figure(9.6, height)
    a1, a2 = fig.subplots(1, 2, sharey=True)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.6 / height + 0.05, top=1 - 0.4 / height, wspace=0.08)
    y = list(range(len(names)))
    a1.barh(y, [100 * layer["sparsity"] for layer in layers], color="tab:blue")
    a1.set_xlabel("sparsity (% zeros)")
    a1.set_xlim(0, 100)
    a1.set_yticks(y, names, fontsize=7)
    a1.invert_yaxis()
    a2.barh(y, [layer["bits"] for layer in layers], color="tab:orange")
    a2.set_xlabel("weight bits")
    fig.suptitle(f"per-layer sparsity and bit widths: {stage}", fontsize=10)
    for a in (a1, a2):
        a.grid(True, axis="x", alpha=0.3)
    return _figure_png(fig)


def _cached_layer_plot(stage_dir: Path, row: dict[str, Any]) -> bytes:
    """A complete stage never changes, so its per-layer plot is drawn once and kept in its folder."""
    path = stage_dir / LAYER_PLOT_FILE
    if path.is_file() and path.stat().st_mtime >= (stage_dir / "stage.json").stat().st_mtime:
        return path.read_bytes()
    png = plot_layers(row["stage"], row["layers"])
    atomic_write_bytes(path, png, what="plot")
    return png


# ---- the report ----------------------------------------------------------------------------------
def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report shows, as data: rows, ratios, layer tables and PNG plots."""
    run_dir = Path(run_dir)
    records = stage_records(run_dir)
    if not records:
        raise SlimtorchError(
            f"{run_dir} holds no completed stage (no NN-<stage>/stage.json); run a recipe into it "
            "with slimtorch run RECIPE --out DIR"
        )
    rows = [r["row"] for r in records]
    plots = {
        "accuracy_vs_size": plot_tradeoff(rows, "size_bytes", "bytes on disk of the deployed file (log)"),
        "accuracy_vs_latency": plot_tradeoff(rows, "latency_ms", "latency, ms per batch (log)"),
    }
    for rec in records:
        r = rec["row"]
        if r.get("layers"):
            plots[f"layers_{r['stage']}"] = _cached_layer_plot(Path(rec["dir"]), r)
    name = ""
    recipe_file = run_dir / RECIPE_FILE
    if recipe_file.is_file():
        import yaml

        try:
            name = (yaml.safe_load(recipe_file.read_text()) or {}).get("name", "")
        except yaml.YAMLError:
            name = ""
    return {
        "name": name or run_dir.name,
        "rows": rows,
        "ratios": ratio_rows(rows),
        "plots": plots,
        "records": records,
    }


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = [
        "accuracy: top-1 on the test split, measured on the runtime of the deployed form (an ONNX file "
        "on ONNX Runtime, else torch)",
        "size: bytes on disk of each stage's deployable file (safetensors fp32, CSR sparse safetensors, "
        "int8 ONNX, or .slim)",
        "latency: median per batch of the stage's own measurement at a fixed thread count; stages timed "
        "on different runtimes are not directly comparable (see the runtime column)",
    ]
    cpus = sorted({f"{c.get('model') or c.get('arch')} ({c.get('kind')})" for r in rows if (c := r.get("cpu"))})
    if cpus:
        notes.append(f"measured on: {'; '.join(cpus)}")
    targets = sorted({f"{r['stage']}: {r['target']}" for r in rows if r.get("target")})
    if targets:
        notes.append("int8 deployment target (slimtorch.quant.export.targets): " + ", ".join(targets))
    runtimes = {r.get("runtime") for r in rows}
    if len(runtimes) > 1:
        notes.append(f"runtimes in this table: {', '.join(sorted(str(x) for x in runtimes))}")
    return notes


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (plots as PNG files under ``plots/``) and self-contained ``report.html``.

    Returns:
        ``(markdown path, html path)``.
    """
    run_dir = Path(run_dir)
    rep = build_report(run_dir)
    plots_dir = run_dir / PLOTS_DIR
    for key, png in rep["plots"].items():
        atomic_write_bytes(plots_dir / f"{_safe(key)}.png", png, what="plot")
    rows, ratios = rep["rows"], rep["ratios"]
    base = rows[0]["stage"]
    md = [
        f"# slimtorch run: {rep['name']}",
        "",
        "## Stages",
        "",
        markdown_table(STAGE_COLUMNS, rows),
        "",
        f"## Against the starting model ({base})",
        "",
        markdown_table(RATIO_COLUMNS, ratios),
        "",
        *[f"- {n}" for n in _notes(rows)],
        "",
        "## Plots",
        "",
        f"![accuracy vs size]({PLOTS_DIR}/accuracy_vs_size.png)",
        "",
        f"![accuracy vs latency]({PLOTS_DIR}/accuracy_vs_latency.png)",
        "",
        "## Per-layer sparsity and bit widths",
        "",
    ]
    for r in rows:
        if r.get("layers"):
            md += [
                f"### {r['stage']}",
                "",
                markdown_table(LAYER_COLUMNS, r["layers"]),
                "",
                f"![layers of {r['stage']}]({PLOTS_DIR}/{_safe('layers_' + r['stage'])}.png)",
                "",
            ]
    md_path = run_dir / "report.md"
    _atomic_text(md_path, "\n".join(md))
    html_path = run_dir / "report.html"
    _atomic_text(html_path, _html(rep))
    return md_path, html_path


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _html(rep: dict[str, Any]) -> str:
    rows, plots = rep["rows"], rep["plots"]
    parts = [
        f"<h1>slimtorch run: {html.escape(str(rep['name']))}</h1>",
        "<h2>Stages</h2>",
        html_table(STAGE_COLUMNS, rows),
        f"<h2>Against the starting model ({html.escape(rows[0]['stage'])})</h2>",
        html_table(RATIO_COLUMNS, rep["ratios"]),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in _notes(rows)) + "</ul>",
        "<h2>Plots</h2>",
        _img(plots["accuracy_vs_size"], "accuracy vs size"),
        _img(plots["accuracy_vs_latency"], "accuracy vs latency"),
        "<h2>Per-layer sparsity and bit widths</h2>",
    ]
    for r in rows:
        if r.get("layers"):
            parts += [
                f"<h3>{html.escape(r['stage'])}</h3>",
                html_table(LAYER_COLUMNS, r["layers"]),
                _img(plots[f"layers_{r['stage']}"], f"layers of {r['stage']}"),
            ]
    parts.append(
        "<h2>Stage table (JSON)</h2><pre>"
        + html.escape(json.dumps([{k: r.get(k) for k in STAGE_COLUMNS} for r in rows], indent=1, default=str))
        + "</pre>"
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;"
        "margin:1em 0}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>slimtorch report</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text, what="report")
