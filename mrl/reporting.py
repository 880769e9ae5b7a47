"""Per-size result tables: CSV, JSON, Markdown and an accuracy-vs-size plot."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

METRIC_COLUMNS = ("top1", "top5")


def rows_by_dim(metrics: Mapping[str, float], nesting_dims: Sequence[int],
                columns: Sequence[str] = METRIC_COLUMNS) -> list[dict[str, float]]:
    """``{"top1@8": .., "top5@8": ..}`` -> ``[{"dim": 8, "top1": .., "top5": ..}, ...]``."""
    return [{"dim": m, **{c: metrics[f"{c}@{m}"] for c in columns}} for m in nesting_dims]


def markdown_table(rows: Sequence[Mapping[str, float]], title: str | None = None) -> str:
    columns = list(rows[0])
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_accuracy_by_dim(rows: Sequence[Mapping[str, float]], path: Path, title: str,
                         columns: Sequence[str] = METRIC_COLUMNS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [r["dim"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in columns:
        ax.plot(dims, [r[c] for r in rows], marker="o", label=c)
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("representation size (dims)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_metrics_by_dim(rows: Sequence[Mapping[str, float]], out_dir: str | Path, title: str,
                         extra: Mapping[str, object] | None = None) -> dict[str, Path]:
    """Write ``metrics_by_dim.{csv,json,md,png}`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"metrics_by_dim.{ext}" for ext in ("csv", "json", "md", "png")}
    columns = list(rows[0])
    tmp = paths["csv"].with_name(f".metrics_by_dim.csv.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, paths["csv"])
    _atomic_write(paths["json"], json.dumps({"title": title, **(extra or {}), "rows": list(rows)}, indent=2))
    _atomic_write(paths["md"], markdown_table(rows, title))
    plot_accuracy_by_dim(rows, paths["png"], title, [c for c in columns if c != "dim"])
    return paths
