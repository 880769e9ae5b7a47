"""The report's plots, one per table (:mod:`mrl.report.tables`): a line per method, error bars where several
seeds were run, the paper's curves dashed beside ours for an ImageNet study."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrl.report.run_tables import new_figure, new_panels, save_figure
from mrl.report.tables import PAPER_LABEL, Table


def _legend(ax, **kwargs) -> None:
    """``ax.legend`` with its entries in drawing order (matplotlib lists lines with error bars after the others)."""
    from matplotlib.container import ErrorbarContainer

    children = ax.get_children()
    entries = sorted(zip(*ax.get_legend_handles_labels()),
                     key=lambda e: children.index(e[0][0] if isinstance(e[0], ErrorbarContainer) else e[0]))
    ax.legend([h for h, _ in entries], [label for _, label in entries], **kwargs)


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(ax, fontsize=7)
    return save_figure(fig, path)


def _finite(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    pts = [(x, y) for x, y in zip(xs, ys) if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _points(table: Table, rows: Sequence[Mapping[str, Any]], x: str, y: str
            ) -> tuple[list[float], list[float], list[float | None]]:
    """``(xs, ys, stds)`` of the rows with a number in both ``x`` and ``y``; ``stds[i]``: ``y``'s std over seeds
    (``None`` for a single seed)."""
    std = table.std_column(y)
    pts = [(r[x], r[y], r.get(std) if std else None) for r in rows
           if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _error_bars(ax, xs: Sequence[float], ys: Sequence[float], stds: Sequence[float | None], fmt: str = "none",
                **kwargs) -> bool:
    """``ax.errorbar`` with ±1 std bars when some point is a mean over several seeds (a single-seed point gets no
    bar); whether it drew."""
    if all(s is None for s in stds):
        return False
    ax.errorbar(xs, ys, yerr=[s or 0.0 for s in stds], fmt=fmt, capsize=2.5, elinewidth=0.8, **kwargs)
    return True


def _line(ax, xs: Sequence[float], ys: Sequence[float], stds: Sequence[float | None], fmt: str, **kwargs) -> None:
    """A line through ``(xs, ys)`` with :func:`_error_bars`; without spreads, the plain line it always was."""
    if not _error_bars(ax, xs, ys, stds, fmt, **kwargs):
        ax.plot(xs, ys, fmt, **kwargs)


def plot_by_size(table: Table, path: Path, ylabel: str, title: str,
                 paper_rows: Sequence[Mapping[str, Any]] | None = None,
                 paper_columns: Mapping[str, str] | None = None) -> Path | None:
    """One line per method column (log2 size axis); with ``paper_rows``, the paper's column
    ``paper_columns[ours]`` (default: the same name) dashed in the same colour."""
    methods = [c for c in table.columns if c != "dim"]
    fig, ax = new_figure((7, 4.5))
    drawn = False
    for i, c in enumerate(methods):
        color = f"C{i}"
        xs, ys, stds = _points(table, table.rows, "dim", c)
        if xs:
            _line(ax, xs, ys, stds, "o-", color=color, markersize=4, label=c)
            drawn = True
        pc = (paper_columns or {}).get(c, c)
        if paper_rows and any(r.get(pc) is not None for r in paper_rows):
            pxs, pys = _finite([r["dim"] for r in paper_rows], [r.get(pc) for r in paper_rows])
            ax.plot(pxs, pys, "--", color=color, alpha=0.8, label=f"{c}, {PAPER_LABEL}")
            drawn = True
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    dims = sorted(set(_finite(table.column("dim"), table.column("dim"))[0]) |
                  ({r["dim"] for r in paper_rows} if paper_rows else set()))
    ax.set_xticks(dims, [str(d) for d in dims])
    return _finish(fig, ax, path, title, "representation size (dims)", ylabel)


def plot_comparison(table: Table, path: Path, title: str) -> Path | None:
    """A panel per metric of :func:`comparison_table` (top-1, mAP@k), a line per method, error bars where
    several seeds were run."""
    metrics = list(dict.fromkeys(c.split(" ")[0] for c in table.columns if c != "dim"))
    if not metrics:
        return None
    fig, axes = new_panels(1, len(metrics), (6.5 * len(metrics), 4.5))
    dims = sorted(table.column("dim"))
    for ax, metric in zip(axes, metrics):
        for i, column in enumerate(c for c in table.columns if c.startswith(metric + " ")):
            xs, ys, stds = _points(table, table.rows, "dim", column)
            if xs:
                _line(ax, xs, ys, stds, "o-", color=f"C{i}", markersize=4, label=column.split(" ", 1)[1])
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
        ax.set_xlabel("representation size (dims)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_adaptive_classification(table: Table, path: Path, title: str,
                                 paper: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Path | None:
    fig, ax = new_figure((7, 4.5))
    drawn = False
    for i, method in enumerate(dict.fromkeys(table.column("method"))):
        rows = [r for r in table.rows if r["method"] == method]
        color = f"C{i}"
        _line(ax, *_points(table, rows, "expected_dim", "accuracy"), "o-", color=color,
              label=f"{method} adaptive (expected size)")
        _line(ax, *_points(table, rows, "cap", "fixed_accuracy"), "s-", color=color, alpha=0.45, markersize=4,
              label=f"{method} fixed size")
        _line(ax, *_points(table, rows, "oracle_expected_dim", "oracle_accuracy"), "^:", color=color, markersize=4,
              label=f"{method} oracle")
        drawn = True
    if paper and paper.get("adaptive_classification"):
        pa = paper["adaptive_classification"]
        ax.plot(*_finite([r["expected_dim"] for r in pa], [r["accuracy"] for r in pa]), "--", color="k",
                label=f"MRL adaptive, {PAPER_LABEL}")
        pf = paper.get("fixed_classification") or []
        ax.plot(*_finite([r["dim"] for r in pf], [r["accuracy"] for r in pf]), "--", color="gray",
                label=f"MRL fixed size, {PAPER_LABEL}")
        drawn = True
    if not drawn:
        return None
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    return _finish(fig, ax, path, title, "(expected) representation size", "top-1 accuracy (%)")


def plot_adaptive_retrieval(table: Table, path: Path, title: str,
                            paper: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Path | None:
    """mAP against MFLOPs per query, each of our points labelled by its setting (``Ds=16 K=200 Dr=512``, a
    funnel's stages as lists); with ``paper``, the paper's adaptive points and exact-search curve."""
    from matplotlib.ticker import NullFormatter

    from mrl.evaluation.adaptive_retrieval import setting_label

    metric = next((c for c in table.columns if c.startswith("map@")), "map@10")
    fig, ax = new_figure((9, 6))
    drawn = False
    for i, method in enumerate(dict.fromkeys(table.column("method"))):
        rows = [r for r in table.rows if r["method"] == method]
        color = f"C{i}"
        for kind, marker in (("adaptive", "o"), ("funnel", "D"), ("exact", "*")):
            sel = [r for r in rows if str(r.get("kind", "")).startswith(kind)
                   and _finite([r["mflops"]], [r[metric]])[0]]
            if not sel:
                continue
            xs, ys, stds = _points(table, sel, "mflops", metric)
            ax.scatter(xs, ys, marker=marker, s=80 if kind == "exact" else 18, color=color, label=f"{method} {kind}")
            _error_bars(ax, xs, ys, stds, ecolor=color)
            for r in sel:
                ax.annotate(setting_label(r), (r["mflops"], r[metric]), textcoords="offset points", xytext=(4, 3),
                            fontsize=6, color=color)
            drawn = True
    if paper and paper.get("adaptive_retrieval"):
        pa = paper["adaptive_retrieval"]
        ax.scatter(*_finite([r["mflops"] for r in pa], [r["map@10"] for r in pa]), marker="x", s=14, color="k",
                   label=f"MRL adaptive, {PAPER_LABEL}")
        pe = paper.get("exact_retrieval_cost") or []
        ax.plot(*_finite([r["mflops"] for r in pe], [r["map@10"] for r in pe]), "--", color="gray",
                label=f"exact search, {PAPER_LABEL}")
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    return _finish(fig, ax, path, title, "MFLOPs per query", f"{metric.replace('map', 'mAP')} (%)")


def plot_retrieval_by_size(table: Table, path: Path, title: str) -> Path | None:
    """One panel per metric of the retrieval table (mAP@k, precision@k, recall@k, hit@k, top-1) against size, a
    line per method; the FF-k rows (each at its own size) make one FF line."""
    metrics = [c for c in table.columns if c not in ("method", "dim")]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = new_panels(nrows, ncols, (4.2 * ncols, 3.4 * nrows))
    methods = list(dict.fromkeys("FF" if str(r["method"]).startswith("FF-") else r["method"] for r in table.rows))
    dims = sorted({r["dim"] for r in table.rows})
    drawn = False
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            rows = sorted((r for r in table.rows if r["method"] == method
                           or (method == "FF" and str(r["method"]).startswith("FF-"))), key=lambda r: r["dim"])
            xs, ys, stds = _points(table, rows, "dim", metric)
            if xs:
                _line(ax, xs, ys, stds, "o-", color=f"C{i}", markersize=3, label=method)
                drawn = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
        ax.set_title(f"{metric.replace('map', 'mAP')} (%)", fontsize=9)
        ax.set_xlabel("representation size (dims)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    if not drawn:
        return None
    _legend(axes[0], fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_validation_curve(table: Table, path: Path, title: str) -> Path | None:
    """Validation top-1 against epoch: one panel with every model at its full width (MRL, MRL-E; FF-k in greens,
    darker for larger k), and one with MRL at a few sizes (the ``MRL@<d>`` columns, blues, darker for larger d);
    ±1 std bars where a model has several seeds."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    panels = [(f"{name}: validation top-1 (%)", columns) for name, columns in (
        ("Each model at its full width", [c for c in table.columns[1:] if not c.startswith("MRL@")]),
        ("MRL by size", [c for c in table.columns if c.startswith("MRL@")])) if columns]
    if not table.rows or not panels:
        return None
    fig, axes = new_panels(1, len(panels), (6.5 * len(panels), 4.6))
    for ax, (panel, columns) in zip(axes, panels):
        shaded = [c for c in columns if c.startswith(("FF-", "MRL@"))]
        for c in columns:
            if c in shaded:
                shade = 0.45 + 0.5 * shaded.index(c) / max(1, len(shaded) - 1)
                color = colormaps["Greens" if c.startswith("FF-") else "Blues"](shade)
            else:
                color = {"MRL": "C0", "MRL-E": "C1"}.get(c, "C7")
            _line(ax, *_points(table, table.rows, "epoch", c), "o-", color=color, markersize=3,
                  linewidth=1 if c.startswith("FF-") else 1.8, label=c)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("epoch (0: the first)", fontsize=8)
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize=6, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)
