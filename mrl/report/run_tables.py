"""Writing result tables and plots: one atomic writer for text, figures and csv/md/json tables.

Every file goes to a temporary sibling and is renamed into place, so an interrupted run never leaves a
half-written table that a report would read as complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRIC_COLUMNS = ("top1", "top5")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_panels(nrows: int, ncols: int, figsize: tuple[float, float]):
    """``(fig, [axes, row by row])`` on the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).ravel())


def new_figure(figsize: tuple[float, float] = (6, 4)):
    """``(fig, ax)``: a figure of one panel (:func:`new_panels`)."""
    fig, (ax,) = new_panels(1, 1, figsize)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple, np.ndarray)):
        return ";".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return "" if value is None else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def markdown_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """A Markdown table (floats to 2 decimals, lists joined by ``;``) under an optional ``### title``."""
    columns = _columns(rows)
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for row in rows:
        cells = [_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str, title: str,
                notes: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``<name>.csv`` / ``.md`` / ``.json`` in ``out_dir``; ``extra`` goes into the JSON beside the rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _columns(rows)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "json")}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _cell(r.get(c)) for c in columns} for r in rows)
    atomic_write_text(paths["csv"], buf.getvalue())
    md = markdown_table(rows, title) if rows else f"### {title}\n\n(no rows)\n"
    if notes:
        md += "\n" + "\n".join(f"* {n}" for n in notes) + "\n"
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["json"], json.dumps({"title": title, **(extra or {}), "notes": list(notes),
                                                 "rows": list(rows)}, indent=2, default=_json_default))
    return paths


def rows_by_dim(metrics: Mapping[str, float], nesting_dims: Sequence[int],
                columns: Sequence[str] | None = None) -> list[dict[str, float]]:
    """``{"top1@8": .., "top5@8": ..}`` -> ``[{"dim": 8, "top1": .., "top5": ..}, ...]``. ``columns``: the metrics
    to keep; ``None``: every ``<name>@<size>`` the task logged at all sizes (classification: top1, top5;
    contrastive: spearman and/or accuracy), in the order logged."""
    if columns is None:
        names = dict.fromkeys(key.split("@")[0] for key in metrics if "@" in key)
        columns = [c for c in names if all(f"{c}@{m}" in metrics for m in nesting_dims)]
    return [{"dim": m, **{c: metrics[f"{c}@{m}"] for c in columns}} for m in nesting_dims]


def plot_accuracy_by_dim(rows: Sequence[Mapping[str, float]], path: Path, title: str,
                         columns: Sequence[str] = METRIC_COLUMNS) -> Path:
    dims = [r["dim"] for r in rows]
    fig, ax = new_figure()
    for c in columns:
        ax.plot(dims, [r[c] for r in rows], marker="o", label=c)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("representation size (dims)")
    ax.set_ylabel(", ".join(columns) + " (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def write_metrics_by_dim(rows: Sequence[Mapping[str, float]], out_dir: str | Path, title: str,
                         extra: Mapping[str, object] | None = None) -> dict[str, Path]:
    """Write ``metrics_by_dim.{csv,json,md,png}`` into ``out_dir``; returns their paths."""
    paths = write_table(rows, Path(out_dir), "metrics_by_dim", title, extra=extra)
    paths["png"] = plot_accuracy_by_dim(rows, Path(out_dir) / "metrics_by_dim.png", title,
                                        [c for c in rows[0] if c != "dim"])
    return paths
