"""XBind Table I in miniature: methods × metrics, as Markdown and LaTeX (booktabs).

Input: one dict per evaluated asset (a prompt × method × seed), as the suite flow collects them::

    {"method": "xbind", "modality": "text", "suite": "asymmetric", "seed": 0, "object": "house-red",
     "metrics": {...the evaluate step's metrics.json...}}

(the metric keys may also sit at the top level of the dict). Each column reads its metric from the
results of one prompt modality, as XBind's Table I does — CLIP-R from the text suite, CLIP-I from
the image suite, ARCC from the audio suite — while view consistency, geometry IoU and Chamfer pool
every modality's results. A result without ``modality`` counts for every column. A cell is the
mean ± sample standard deviation over those results (seeds and objects) with their count n; a
metric that is absent from a result (it did not apply) is not counted as 0. The best mean per
column is bold (higher is better except for Chamfer).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from anyto3d.errors import InputError


@dataclass(frozen=True)
class Column:
    key: str  # metric key in metrics.json
    title: str
    latex: str
    modality: str | None  # the suite whose results feed it; None: all
    higher_is_better: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("clip_r", "CLIP-R", "CLIP-R", "text"),
    Column("clip_i", "CLIP-I", "CLIP-I", "image"),
    Column("arcc", "ARCC", "ARCC", "audio"),
    Column("view_consistency", "View cons.", "View cons.", None),
    Column("geometry_iou", "Geom. IoU", "Geom.\\ IoU", None),
    Column("chamfer", "Chamfer", "Chamfer", None, higher_is_better=False),
)

#: Table I's methods in the paper's order, then the other recipes, with their display names.
METHOD_NAMES: dict[str, str] = {
    "zero_stable_cds_3d": "ZeroStableCDS-3D",
    "stable_sds_3d": "StableSDS-3D",
    "zero_sds_3d": "ZeroSDS-3D",
    "xbind": "XBind",
    "dreamfusion": "DreamFusion",
    "magic3d": "Magic3D",
    "fantasia3d": "Fantasia3D",
    "prolificdreamer": "ProlificDreamer",
}
TABLE_I_METHODS = ("zero_stable_cds_3d", "stable_sds_3d", "zero_sds_3d", "xbind")


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # sample standard deviation (0 for n = 1)
    n: int


@dataclass
class TableRow:
    method: str  # the config name, e.g. "xbind"
    name: str  # the display name, e.g. "XBind"
    cells: dict[str, Cell] = field(default_factory=dict)  # column key -> cell (absent: no data)


def display_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _metrics_of(result: Mapping) -> Mapping:
    inner = result.get("metrics")
    return inner if isinstance(inner, Mapping) else result


def _summary(values: list[float]) -> Cell:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Cell(mean, std, n)


def table_rows(results: Iterable[Mapping], columns: tuple[Column, ...] = COLUMNS) -> list[TableRow]:
    """One row per method (Table I's four first, in the paper's order, then the others in order of
    first appearance), cells aggregated as the module docstring says."""
    results = list(results)
    order: list[str] = []
    for r in results:
        if "method" not in r:
            raise InputError(f"a table result needs a 'method' key, got keys {sorted(r)}")
        if r["method"] not in order:
            order.append(str(r["method"]))
    order = [m for m in TABLE_I_METHODS if m in order] + [m for m in order if m not in TABLE_I_METHODS]
    rows = []
    for method in order:
        row = TableRow(method, display_name(method))
        for col in columns:
            values = []
            for r in results:
                if r["method"] != method or (col.modality and r.get("modality", col.modality) != col.modality):
                    continue
                value = _metrics_of(r).get(col.key)
                if value is not None and math.isfinite(float(value)):
                    values.append(float(value))
            if values:
                row.cells[col.key] = _summary(values)
        rows.append(row)
    return rows


def best_methods(rows: list[TableRow], columns: tuple[Column, ...] = COLUMNS) -> dict[str, set[str]]:
    """Column key -> the methods with the best mean (ties share the bold)."""
    best: dict[str, set[str]] = {}
    for col in columns:
        means = {r.method: r.cells[col.key].mean for r in rows if col.key in r.cells}
        if means:
            target = max(means.values()) if col.higher_is_better else min(means.values())
            best[col.key] = {m for m, v in means.items() if math.isclose(v, target, rel_tol=0, abs_tol=1e-12)}
    return best


def table_note(results: Iterable[Mapping]) -> str:
    """"Encoder: …; suite: …" from the results' ``encoder`` metrics and ``suite`` keys."""
    encoders, suites = [], []
    for r in results:
        enc, suite = _metrics_of(r).get("encoder") or r.get("encoder"), r.get("suite")
        if enc and enc not in encoders:
            encoders.append(str(enc))
        if suite and suite not in suites:
            suites.append(str(suite))
    return f"Encoder: {', '.join(encoders) or 'unknown'}; suite: {', '.join(suites) or 'unknown'}."


def _fmt(cell: Cell, digits: int) -> tuple[str, str]:
    return f"{cell.mean:.{digits}f}", f"{cell.std:.{digits}f}"


def render_markdown(rows: list[TableRow], note: str | None = None, digits: int = 3, columns: tuple[Column, ...] = COLUMNS) -> str:
    """A GitHub Markdown table: cells "mean ± std (n=k)", the best per column in bold, then the
    note line (encoder and suite) and the direction of each column."""
    best = best_methods(rows, columns)
    arrows = ["↑" if c.higher_is_better else "↓" for c in columns]
    lines = [
        "| Method | " + " | ".join(f"{c.title} {a}" for c, a in zip(columns, arrows)) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for col in columns:
            cell = row.cells.get(col.key)
            if cell is None:
                cells.append("–")
                continue
            mean, std = _fmt(cell, digits)
            mean = f"**{mean}**" if row.method in best.get(col.key, ()) else mean
            cells.append(f"{mean} ± {std} (n={cell.n})")
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if note:
        text += f"\n{note}\n"
    return text


def latex_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in "&%$#_{}":
            out.append("\\" + ch)
        elif ch == "~":
            out.append("\\textasciitilde{}")
        elif ch == "^":
            out.append("\\textasciicircum{}")
        elif ch == "\\":
            out.append("\\textbackslash{}")
        else:
            out.append(ch)
    return "".join(out)


def render_latex(
    rows: list[TableRow],
    note: str | None = None,
    digits: int = 3,
    caption: str = "Quantitative comparison (XBind Table I in the tiny world).",
    label: str = "tab:table1",
    columns: tuple[Column, ...] = COLUMNS,
) -> str:
    """A ``table`` with a booktabs ``tabular`` (\\toprule / \\midrule / \\bottomrule); cells
    "mean $\\pm$ std" with n as a subscript, the best per column in \\textbf; the note below."""
    best = best_methods(rows, columns)
    up, down = "$\\uparrow$", "$\\downarrow$"
    head = " & ".join(f"{c.latex} {up if c.higher_is_better else down}" for c in columns)
    body = []
    for row in rows:
        cells = []
        for col in columns:
            cell = row.cells.get(col.key)
            if cell is None:
                cells.append("--")
                continue
            mean, std = _fmt(cell, digits)
            mean = f"\\textbf{{{mean}}}" if row.method in best.get(col.key, ()) else mean
            cells.append(f"{mean} $\\pm$ {std}$_{{n={cell.n}}}$")
        body.append(f"{latex_escape(row.name)} & " + " & ".join(cells) + " \\\\")
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(caption)}}}",
        f"\\label{{{label}}}",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
        f"Method & {head} \\\\",
        "\\midrule",
        *body,
        "\\bottomrule",
        "\\end{tabular}",
    ]
    if note:
        lines += ["\\par\\smallskip", f"{{\\footnotesize {latex_escape(note)}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def rows_to_json(rows: list[TableRow]) -> list[dict]:
    return [
        {"method": r.method, "name": r.name, "cells": {k: {"mean": c.mean, "std": c.std, "n": c.n} for k, c in r.cells.items()}}
        for r in rows
    ]


def write_tables(results: Iterable[Mapping], out_dir: str | os.PathLike, stem: str = "table1") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.json`` (rows + note) under ``out_dir``,
    each atomically (temporary file, then rename). Returns the paths by suffix."""
    results = list(results)
    rows, note = table_rows(results), table_note(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {
        "md": render_markdown(rows, note),
        "tex": render_latex(rows, note),
        "json": json.dumps({"rows": rows_to_json(rows), "note": note}, indent=1, sort_keys=True) + "\n",
    }
    paths = {}
    for suffix, text in texts.items():
        path = out_dir / f"{stem}.{suffix}"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        paths[suffix] = path
    return paths


__all__ = [
    "COLUMNS",
    "METHOD_NAMES",
    "TABLE_I_METHODS",
    "Cell",
    "Column",
    "TableRow",
    "best_methods",
    "display_name",
    "latex_escape",
    "render_latex",
    "render_markdown",
    "rows_to_json",
    "table_note",
    "table_rows",
    "write_tables",
]
