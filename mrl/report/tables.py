"""The report's tables (:class:`Table`), built from a collected :class:`~mrl.report.study.Study`: by size (linear
and 1-NN top-1, mAP@k, the retrieval metrics), adaptive classification and retrieval, the validation curve, the
image-text tables, the runs compared; every cell the mean over seeds with its spread and count. Also the paper's
published ImageNet-1K ResNet-50 numbers (``results/paper_reference``), read into the same shapes."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.report.inputs import read_csv
from mrl.report.study import PROJECT_ROOT, Model, Study


DEFAULT_PAPER_DIR = PROJECT_ROOT / "results" / "paper_reference"
PAPER_LABEL = "paper (ResNet-50, ImageNet-1K)"


TEXT_COLUMNS = ("method", "kind")
# columns that are not percentages: 4 significant digits in Markdown (CSV/JSON keep every digit)
COST_COLUMNS = ("expected_dim", "expected_dim_std", "oracle_expected_dim", "mflops", "mflops_speedup",
                "us_per_query", "speedup")


@dataclass
class Table:
    name: str                      # file stem
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    raw_markdown: bool = False     # Markdown shows the values as read (reference tables), not rounded
    spread: list[str] = field(default_factory=list)  # columns holding means over seeds (:func:`_put`)
    std: str = "_std"              # suffix of a spread column's std column (its count: <column>_n)

    @property
    def file_columns(self) -> list[str]:
        """The CSV/JSON columns: :attr:`columns`, each spread column followed by its std and count."""
        return [x for c in self.columns for x in ((c, c + self.std, c + "_n") if c in self.spread else (c,))]

    def std_column(self, column: str) -> str | None:
        return column + self.std if column in self.spread else None

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]

    def value(self, key_column: str, key: Any, column: str) -> Any:
        return next((r.get(column) for r in self.rows if r.get(key_column) == key), None)

    def seed_count(self, row: Mapping[str, Any], column: str) -> int:
        """How many seeds ``row[column]`` is the mean of (0: no value, or not a mean over seeds)."""
        n = row.get(column + "_n") if column in self.spread else None
        return n if isinstance(n, int) else 0

    def cell(self, row: Mapping[str, Any], column: str) -> str:
        """``row[column]`` as Markdown shows it: ``mean ± std (n)`` for a mean over several seeds, else the
        value alone."""
        text = _fmt(row.get(column), column, self.raw_markdown)
        n = self.seed_count(row, column)
        if n < 2:
            return text
        std = row.get(column + self.std)
        # a cost's std to 2 significant digits (its mean has 4), a percentage's to 2 decimals like its mean
        return text + f" ± {f'{std:.2g}' if column in COST_COLUMNS else _fmt(std, column)} ({n})"

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.file_columns, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in self.file_columns})
        return buf.getvalue()

    def markdown(self, heading: str = "###") -> str:
        lines = [f"{heading} {self.title}", ""]
        if not self.rows:
            lines.append("(no data yet)")
        else:
            lines += ["| " + " | ".join(self.columns) + " |",
                      "|" + "|".join(":---" if c in TEXT_COLUMNS else "---:" for c in self.columns) + "|"]
            for r in self.rows:
                lines.append("| " + " | ".join(self.cell(r, c) for c in self.columns) + " |")
        notes = list(self.notes)
        if any(self.seed_count(r, c) > 1 for r in self.rows for c in self.spread):
            notes.append(f"mean ± std (n): the mean over the n seeds of a model, and their sample standard deviation "
                         f"(the CSV and JSON: <column>, <column>{self.std}, <column>_n).")
        if notes:
            lines += [""] + [f"* {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def json_text(self) -> str:
        rows = [{c: r.get(c) for c in self.file_columns} for r in self.rows]
        return json.dumps({"title": self.title, "columns": self.file_columns, "rows": rows, "notes": self.notes,
                           "sources": self.sources}, indent=2, default=_json_default)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _fmt(v: Any, column: str = "", raw: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not raw:
        return f"{v:.4g}" if column in COST_COLUMNS else f"{v:.2f}"
    return str(v)


def _put(row: dict[str, Any], column: str, values: Sequence[Any], std: str | None = "_std") -> None:
    """One cell from the values of a model's seeds (``None``, a seed without that number, left out):
    ``row[column]`` their mean (a float; the value itself for one seed), ``row[column + std]`` their sample
    standard deviation (ddof 1; ``None`` for one seed) and ``row[column + "_n"]`` their count; all ``None`` when
    no seed has a number. ``std=None``: the mean alone (a number that does not vary by seed, or a within-run
    spread)."""
    xs = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    row[column] = None if not xs else xs[0] if len(xs) == 1 else float(statistics.mean(xs))
    if std is not None:
        row[column + std] = statistics.stdev(xs) if len(xs) > 1 else None
        row[column + "_n"] = len(xs) or None


def _aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], spread: Sequence[str],
               std: str = "_std") -> list[dict[str, Any]]:
    """Rows read from each seed of each model -> one row per distinct ``keys`` (first-seen order): every other
    column through :func:`_put`, with std and count for the ``spread`` columns, the mean alone for the rest."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key))
        for c in dict.fromkeys(c for r in group for c in r if c not in keys):
            _put(row, c, [r.get(c) for r in group], std if c in spread else None)
        out.append(row)
    return out


def _rel(path: Path, study: Study) -> str:
    """A file of the study as the user named the study folder (relative paths stay relative)."""
    return str(path)


def _row_at(rows: Sequence[Mapping[str, Any]] | None, dim: int) -> Mapping[str, Any] | None:
    if not rows:
        return None
    return next((r for r in rows if r.get("dim") is not None and int(r["dim"]) == dim), None)


def _top1_source(model: Model) -> tuple[list[dict[str, Any]] | None, str]:
    if model.metrics is not None:
        return model.metrics, "metrics_by_dim.csv"
    if "classification" in model.eval:
        return model.eval["classification"], "eval/classification.csv"
    return None, ""


def _by_size(study: Study, name: str, title: str, columns: Sequence[tuple[str, str]], per_model, baseline_cols,
             notes: Sequence[str]) -> Table:
    """Rows = study sizes; MRL / MRL-E columns read at every size, FF at its own k, baselines from
    the FF-<width> model; each cell the mean over the model's seeds (:func:`_put`).
    ``per_model(model) -> (rows, source, column)``."""
    cells: dict[tuple[int, str], list[Any]] = {}
    sources: list[str] = []

    def read(label: str, m: Model, src_rows, src: str, col: str, at_k: bool) -> None:
        found = False
        for d in [m.k] if at_k else study.sizes:
            r = _row_at(src_rows, d)
            if r is not None and r.get(col) is not None:
                cells.setdefault((d, label), []).append(r[col])
                found = True
        if found:
            sources.append(f"{label}{f' @ {m.k}' if at_k else ''}, seed {m.seed}: `{_rel(m.path / src, study)}` "
                           f"({col})")

    for label, base in columns:
        for m in [m for g in study.ff_groups() for m in g] if base == "ff" else study.replicas(base):
            src_rows, src, col = per_model(m)
            if src_rows is not None:
                read(label, m, src_rows, src, col, base == "ff")
    for b in study.baselines_models():
        for label, col in baseline_cols:
            if any(col in r for r in b.eval["baselines"]):
                read(label, b, b.eval["baselines"], "eval/baselines.csv", col, False)
    labels = [label for label, _ in columns] + [label for label, _ in baseline_cols]
    rows = []
    for d in study.sizes:
        row: dict[str, Any] = {"dim": d}
        for label in labels:
            if (d, label) in cells:
                _put(row, label, cells[d, label])
        if len(row) > 1:
            rows.append(row)
    return Table(name, title, ["dim", *labels], rows, list(notes), sources, spread=labels)
MODEL_COLUMNS = (("MRL", "mrl"), ("MRL-E", "mrle"), ("FF", "ff"))


def top1_table(study: Study) -> Table:
    def per_model(m):
        rows, src = _top1_source(m)
        return rows, src, "top1"

    return _by_size(study, "top1_by_size", "Linear-classifier top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (("SVD", "svd_top1"), ("SVD-classifier", "svd_classifier_top1"),
                                ("Rand-LP", "rand_lp_top1")),
                    ["MRL, MRL-E: the model's classifier at each size; FF: FF-k's classifier, at its own size k; "
                     "the test top-1 of the training run (metrics_by_dim.csv), else eval/classification.csv.",
                     "SVD, SVD-classifier, Rand-LP: baselines from the full-width FF model (eval/baselines.csv of "
                     "each of its seeds that has one): a probe on the top-d SVD directions, the FF classifier at "
                     "rank d, a probe on d random coordinates."])


def knn_table(study: Study) -> Table:
    def per_model(m):
        return m.eval.get("classification"), "eval/classification.csv", "knn_top1"

    return _by_size(study, "knn_top1_by_size", "1-NN top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (("Rand-FS", "rand_fs_top1"),),
                    ["1-NN with cosine similarity on the size-d prefix, train split as the database "
                     "(eval/classification.csv, knn_top1); FF at its own size k.",
                     "Rand-FS: 1-NN on d random coordinates of the full-width FF model (eval/baselines.csv)."])


def map_table(study: Study, k: int = 10) -> Table:
    def per_model(m):
        return m.eval.get("retrieval"), "eval/retrieval.csv", f"map@{k}"

    return _by_size(study, f"map{k}_by_size", f"Retrieval mAP@{k} (%) by representation size", MODEL_COLUMNS,
                    per_model, (("Rand-FS", f"rand_fs_map@{k}"),),
                    [f"mAP@{k} as the paper computes it (eval/retrieval.csv); database: train split, queries: "
                     "test split; FF at its own size k; Rand-FS: d random coordinates of the full-width FF model."])


def retrieval_table(study: Study, k: int = 10) -> Table:
    metrics = [f"map@{k}", f"precision@{k}", f"recall@{k}", f"hit@{k}", "top1"]
    rows, sources = [], []
    for m in (m for g in study.groups() for m in g):
        if "retrieval" not in m.eval:
            continue
        for r in m.eval["retrieval"]:
            d = int(r["dim"])
            if (m.kind == "ff" and d != m.k) or (m.kind != "ff" and d not in study.sizes):
                continue
            rows.append({"method": m.label, "dim": d, **{c: r.get(c) for c in metrics}})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'retrieval.csv', study)}`")
    for b in study.baselines_models():
        if any(f"rand_fs_map@{k}" in r for r in b.eval["baselines"]):
            for r in b.eval["baselines"]:
                rows.append({"method": "Rand-FS", "dim": int(r["dim"]), f"map@{k}": r.get(f"rand_fs_map@{k}"),
                             "top1": r.get("rand_fs_top1")})
            sources.append(f"Rand-FS, seed {b.seed}: `{_rel(b.eval_dir / 'baselines.csv', study)}`")
    return Table("retrieval_by_size", f"Retrieval (%) at k = {k}, by method and size", ["method", "dim", *metrics],
                 _aggregate(rows, ("method", "dim"), metrics),
                 [f"precision@{k}: hits in the top {k} / {k}; recall@{k}: hits / the query's class size in the "
                  f"database; hit@{k}: any hit in the top {k}; top1: 1-NN accuracy. Rand-FS: only mAP and top1 "
                  "are evaluated."], sources, spread=metrics)


AC_COLUMNS = ("cap", "expected_dim", "expected_dim_std", "accuracy", "accuracy_std", "fixed_accuracy",
              "oracle_expected_dim", "oracle_accuracy")
# the adaptive-classification columns that vary by seed; accuracy_std and expected_dim_std are the spread over one
# run's threshold-selection splits, so their across-seed std is named <column>_seed_std
AC_SPREAD = ("expected_dim", "accuracy", "fixed_accuracy", "oracle_expected_dim", "oracle_accuracy")


def adaptive_classification_table(study: Study) -> Table:
    rows, sources = [], []
    for m in study.replicas("mrl") + study.replicas("mrle"):
        if "adaptive_classification" not in m.eval:
            continue
        for r in m.eval["adaptive_classification"]:
            rows.append({"method": m.label, **{c: r.get(c) for c in AC_COLUMNS}})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'adaptive_classification.csv', study)}`")
    return Table("adaptive_classification", "Adaptive classification (%): confidence cascade up to each cap",
                 ["method", *AC_COLUMNS], _aggregate(rows, ("method", "cap"), AC_SPREAD, "_seed_std"),
                 ["accuracy at expected_dim: the cascade over the trained sizes up to cap (mean over the random "
                  "threshold-selection splits, std beside it); fixed_accuracy: the cap size alone; oracle: the "
                  "smallest correct size per sample (an upper bound).",
                  ("Several seeds: every column is the mean over them; accuracy_std and expected_dim_std stay the "
                   "spread over one run's splits (their mean over seeds), and the spread over seeds is "
                   "<column>_seed_std (with <column>_n seeds) for accuracy, expected_dim, fixed_accuracy and the "
                   "oracle columns.")], sources, spread=list(AC_SPREAD), std="_seed_std")


def adaptive_retrieval_table(study: Study) -> Table:
    rows, sources, metric = [], [], None
    for m in study.replicas("mrl") + study.replicas("mrle"):
        if "adaptive_retrieval" not in m.eval:
            continue
        table = m.eval["adaptive_retrieval"]
        if metric is None:
            metric = next((c for r in table[:1] for c in r if c.startswith("map@")), "map@10")
        exact = next((r for r in table if r.get("kind") == "exact"), None)
        for r in table:
            mf = r.get("mflops")
            ex = exact.get("mflops") if exact else None
            rows.append({"method": m.label, "kind": r.get("kind"), "D_s": r.get("D_s"), "D_r": r.get("D_r"),
                         "K": r.get("K"), metric: r.get(metric), "top1": r.get("top1"), "mflops": mf,
                         "mflops_speedup": ex / mf if isinstance(ex, (int, float)) and isinstance(mf, (int, float))
                         and mf > 0 else None,
                         "us_per_query": r.get("us_per_query"), "speedup": r.get("speedup")})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'adaptive_retrieval.csv', study)}`")
    metric = metric or "map@10"
    # mflops and mflops_speedup follow from the setting alone (the cost model): the same on every seed
    spread = [metric, "top1", "us_per_query", "speedup"]
    return Table("adaptive_retrieval", f"Adaptive retrieval: {metric.replace('map', 'mAP')} (%) against cost",
                 ["method", "kind", "D_s", "D_r", "K", metric, "top1", "mflops", "mflops_speedup", "us_per_query",
                  "speedup"], _aggregate(rows, ("method", "kind", "D_s", "D_r", "K"), spread),
                 ["shortlist K by the first D_s coordinates, rerank on D_r (a funnel: several stages, D_r and K "
                  "listed); exact: brute-force search at the full width.",
                  "mflops: the paper's cost model per query; mflops_speedup: exact mflops / this one; us_per_query: "
                  "measured wall-clock per query; speedup: exact us_per_query / this one (both from "
                  "eval/adaptive_retrieval.csv)."], sources, spread=spread)


def _ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"`` (sorted input)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def validation_curve_table(study: Study) -> Table:
    """Validation top-1 (%) per epoch (rows): each model at its full width (its largest validated size; FF-k: k)
    in a column named by the model, and MRL at its smallest, a middle and its largest size (``MRL@<d>``); each
    cell the mean over the model's seeds. Models without a curve are named in the notes."""
    cells: dict[tuple[int, str], list[float]] = {}
    sources, absent, gaps = [], [], []
    full: list[str] = []     # the model columns (MRL, MRL-E, FF-k)
    by_size: list[str] = []  # MRL@<d>, after them
    for m in (m for g in study.groups() for m in g):
        if not m.val_curve:
            absent.append(f"{m.name} ({'no csv/metrics.csv' if m.val_curve is None else 'no val/top1@<d> values'})")
            continue
        dims = sorted(m.val_curve)
        epochs = m.val_curve[dims[-1]]
        if missing := sorted(set(range(max(epochs) + 1)) - set(epochs)):
            gaps.append(f"{m.name} ({_ranges(missing)})")
        columns = [(m.label, dims[-1])]
        if m.kind == "mrl":
            columns += [(f"MRL@{d}", d) for d in dict.fromkeys((dims[0], dims[len(dims) // 2], dims[-1]))]
        for label, d in columns:
            (by_size if label.startswith("MRL@") else full).append(label)
            for epoch, v in m.val_curve[d].items():
                cells.setdefault((epoch, label), []).append(v)
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.path / 'csv' / 'metrics.csv', study)}` "
                       f"({', '.join(f'val/top1@{d}' for d in dict.fromkeys(d for _, d in columns))})")
    labels = list(dict.fromkeys(full + by_size))
    rows = []
    for epoch in sorted({e for e, _ in cells}):
        row: dict[str, Any] = {"epoch": epoch}
        for label in labels:
            if (epoch, label) in cells:
                _put(row, label, cells[epoch, label])
        rows.append(row)
    notes = [("Validation top-1 (%) at the end of each epoch (epoch 0: the first) on the validation split "
              "(data.validation; by default a held-out part of the training data), from csv/metrics.csv "
              "(val/top1@<d>). MRL, MRL-E, FF-k: the model at its full width (the largest size it trained; FF-k: "
              "k); MRL@<d>: MRL at size d (the largest repeats the MRL column).")]
    if absent:
        notes.append(f"No validation curve: {', '.join(absent)}.")
    if gaps:
        notes.append(f"Epochs without a validation value in a model's curve (a cell there is the mean of the other "
                     f"seeds): {', '.join(gaps)}.")
    return Table("validation_curve", "Validation top-1 (%) per epoch", ["epoch", *labels], rows, notes, sources,
                 spread=labels)


def zero_shot_table(study: Study) -> Table:
    def per_model(m):
        if "zero_shot" in m.eval:
            return m.eval["zero_shot"], "eval/zero_shot.csv", "top1"
        return m.metrics, "metrics_by_dim.csv", "zero_shot_top1"

    return _by_size(study, "zero_shot_by_size", "Zero-shot top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (), ["Image-text models: each test image against the class prompts encoded by the text "
                                    "tower, at the size-d prefix of both (eval/zero_shot.csv, else the training run's "
                                    "metrics_by_dim.csv); FF at its own size k."])


def cross_modal_table(study: Study) -> Table:
    def per_model(m):
        return m.eval.get("cross_modal_retrieval"), "eval/cross_modal_retrieval.csv", "rsum"

    return _by_size(study, "cross_modal_rsum_by_size", "Cross-modal retrieval: the sum of recalls by size",
                    MODEL_COLUMNS, per_model, (),
                    ["rsum: image->text plus text->image recall@1, 5 and 10 at the size-d prefix (each in %, so at "
                     "most 600), over the distinct images and captions of the test split "
                     "(eval/cross_modal_retrieval.csv, where each recall is also given); FF at its own size k."])


#: the by-size tables of image-text studies: (plot's y label, title)
IMAGE_TEXT_TABLES = {"zero_shot_by_size": ("zero-shot top-1 (%)", "Zero-shot top-1 by size"),
                     "cross_modal_rsum_by_size": ("rsum (sum of six recalls, %)", "Cross-modal retrieval by size")}


def build_tables(study: Study, k: int = 10) -> dict[str, Table]:
    """Every table of the study's kind: classification (linear and 1-NN top-1, mAP@k, retrieval, adaptive
    classification and retrieval) or image-text (zero-shot top-1, cross-modal rsum); the validation curve."""
    if study.is_image_text:
        tables = [zero_shot_table(study), cross_modal_table(study)]
    else:
        tables = [top1_table(study), knn_table(study), map_table(study, k), retrieval_table(study, k),
                  adaptive_classification_table(study), adaptive_retrieval_table(study)]
    return {t.name: t for t in [*tables, validation_curve_table(study)]}


def comparison_table(study: Study, k: int = 10) -> Table:
    """One table of the runs compared: per size, every method's linear top-1 (``top-1 MRL``, ``top-1 FF``, ...)
    and, where the runs were evaluated, its mAP@k (``mAP@k MRL``, ...), means over seeds with their spreads."""
    parts = [("top-1", top1_table(study)), (f"mAP@{k}", map_table(study, k))]
    picks = [(table, c, f"{prefix} {c}") for prefix, table in parts
             for c in table.columns if c != "dim" and any(r.get(c) is not None for r in table.rows)]
    table = _join_by_dim("comparison", f"Runs compared by size: linear top-1 and mAP@{k} (%)", picks)
    table.notes, table.sources = [n for _, t in parts for n in t.notes], [s for _, t in parts for s in t.sources]
    return table


def _join_by_dim(name: str, title: str, picks: Sequence[tuple[Table, str, str]]) -> Table:
    """Columns of several tables side by side, one row per size: ``picks`` = ``(table, column, new name)`` in
    column order; a spread column brings its std and seed count along."""
    rows: dict[int, dict[str, Any]] = {}
    joined = Table(name, title, ["dim"], [])
    for table, column, new in picks:
        joined.columns.append(new)
        if column in table.spread:
            joined.spread.append(new)
        for r in table.rows:
            row = rows.setdefault(r["dim"], {"dim": r["dim"]})
            row[new] = r.get(column)
            if column in table.spread:
                row[new + joined.std], row[new + "_n"] = r.get(column + table.std), r.get(column + "_n")
    joined.rows = [rows[d] for d in sorted(rows)]
    return joined


_SIZE_TABLES = {  # name: (file, {file column: our column})
    "top1_linear": ("imagenet1k_rn50_top1_linear.csv",
                    {"R50-Rand-LP": "Rand-LP", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL",
                     "R50-NRL-E": "MRL-E", "SLIM": "slimmable"}),
    "knn_top1": ("imagenet1k_rn50_1nn_top1.csv",
                 {"R50-Rand": "Rand", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL", "R50-NRL-E": "MRL-E",
                  "SLIM": "slimmable"}),
    "map10": ("imagenet1k_rn50_map10.csv",
              {"R50-Rand": "Rand-FS", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL", "R50-NRL-E": "MRL-E",
               "SLIM": "slimmable"}),
    "interpolated_1nn": ("imagenet1k_rn50_interpolated_1nn.csv", {"HD": "dim", "R50_NRL_I": "MRL"}),
}
_COST_TABLES = {
    "adaptive_retrieval": ("imagenet1k_rn50_adaptive_retrieval.csv",
                           {"Shortlist dim": "D_s", "Reranking dim": "D_r", "MFLOPS": "mflops", "MAP@10": "map@10"}),
    "imagenet4k_adaptive_retrieval": ("imagenet4k_rn50_adaptive_retrieval.csv",
                                      {"Ds": "D_s", "Dr": "D_r", "MFLOPS": "mflops", "MAP@10": "map@10"}),
    "exact_retrieval_cost": ("imagenet1k_rn50_exact_retrieval_cost.csv", {"FLOPS": "mflops", "MAP@10": "map@10"}),
}


def load_paper_reference(directory: str | Path = DEFAULT_PAPER_DIR) -> dict[str, list[dict[str, Any]]]:
    """The paper's published ImageNet-1K ResNet-50 numbers (``results/paper_reference``), renamed:

    * ``top1_linear``, ``knn_top1``, ``map10``: ``{"dim", "MRL", "MRL-E", "FF", "SVD", ...}`` per size
      (``Rand-LP`` in top-1, ``Rand`` in 1-NN, ``Rand-FS`` in mAP@10; ``None`` where the file is empty);
    * ``adaptive_classification``: ``{"expected_dim", "accuracy"}`` (the cascade);
      ``fixed_classification``: ``{"dim", "accuracy"}`` (the fixed sizes of the same file);
    * ``adaptive_retrieval``: ``{"D_s", "D_r", "mflops", "map@10"}`` (shortlist 200);
      ``exact_retrieval_cost``: ``{"mflops", "map@10"}``; ``imagenet4k_adaptive_retrieval``; ``interpolated_1nn``.

    Values are the files' (percent). A missing file leaves its table out.
    """
    d = Path(directory)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, (fname, rename) in _SIZE_TABLES.items():
        if (d / fname).is_file():
            rows = []
            for r in read_csv(d / fname):
                new = {("dim" if k == "Representation Size" else rename.get(k, k)): v for k, v in r.items()}
                new["dim"] = int(new["dim"])
                rows.append(new)
            out[name] = rows
    for name, (fname, rename) in _COST_TABLES.items():
        if (d / fname).is_file():
            out[name] = [{rename.get(k, k): v for k, v in r.items()} for r in read_csv(d / fname)]
    fname = "imagenet1k_rn50_adaptive_classification.csv"
    if (d / fname).is_file():
        rows = read_csv(d / fname)
        out["adaptive_classification"] = [{"expected_dim": r["ED"], "accuracy": r["MH_CASC"]} for r in rows
                                          if r.get("ED") is not None]
        out["fixed_classification"] = [{"dim": int(r["D"]), "accuracy": r["MH"]} for r in rows
                                       if r.get("D") is not None]
    return out


def paper_table(paper: Mapping[str, list[dict[str, Any]]], name: str, title: str) -> Table | None:
    rows = paper.get(name)
    if not rows:
        return None
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return Table(f"paper_{name}", title, columns, rows, raw_markdown=True)
