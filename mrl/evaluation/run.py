"""Run the evaluators over one checkpoint's embedding files and write their tables: the library behind
``scripts/eval.py`` (callable without Hydra: ``evaluate({"embeddings_dir": ..., "output_dir": ...})``).

Inputs: ``embeddings_dir`` with ``train/`` (the retrieval database / k-NN and probe training set) and
``test/`` (queries / test set) from ``scripts/embed.py``, and the checkpoint (``ckpt_path``; default:
the one recorded in the embeddings' ``meta.json``) for the head weights.

Evaluators (``evaluators``):

* ``classification``: linear top-1/top-5 with the trained classifiers at each size of ``dims``
  (MRL: next larger head's slice between trained sizes) and 1-NN top-1.
* ``adaptive_classification``: the confidence cascade over the trained sizes, on the test logits.
* ``retrieval``: mAP@k, precision@k, recall@k, top-1 at each size of ``dims`` (database = train).
* ``adaptive_retrieval``: shortlist on ``D_s``, rerank ``K`` on ``D_r`` (a grid), and funnels: mAP@k,
  top-1, MFLOPs per query (the paper's cost model with this database's size) and the measured
  wall-clock per query next to exact full-width search on the same machine.
* ``baselines``: for an FF model at full width: SVD, SVD of the classifier, Rand-LP, Rand-FS.
* ``robustness``: linear top-1/top-5 of embedded robustness sets (``robustness: {name: folder}``, made
  by :func:`mrl.evaluation.robustness.embed_robustness_set`), ImageNet-A/-R masked to their 200 classes.

Each writes ``<output_dir>/<evaluator>.{csv,md,json}`` (and ``.png`` for curves) atomically, next to
``eval_config.yaml`` (the full configuration) and ``command.txt``. All accuracies and retrieval metrics
in the tables are percentages.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrl.errors import ConfigError
from mrl.nesting import MIN_AUTO_DIM
from mrl.reporting import atomic_write_text, new_figure, save_figure, write_table

EVALUATORS = ("classification", "adaptive_classification", "retrieval", "adaptive_retrieval", "baselines",
              "robustness")

DEFAULTS: dict[str, Any] = {
    "embeddings_dir": None,
    "ckpt_path": None,          # null: the checkpoint recorded in <embeddings_dir>/test/meta.json
    "head": None,               # expected head type (mrl | mrle | ff); null: accept the checkpoint's
    "dims": "nesting",          # nesting | all | [list of sizes]
    "evaluators": ["classification", "adaptive_classification", "retrieval", "adaptive_retrieval"],
    "output_dir": None,
    "classification": {"knn": True, "ks": [1, 5]},
    "adaptive_classification": {"caps": None, "n_splits": 30, "holdout_fraction": 0.2, "seed": 0,
                                "grid_points": 101},
    "retrieval": {"ks": [10, 25, 50, 100], "method": "exact", "hnsw_m": 32, "ef_search": 128,
                  "ef_construction": 200, "device": "cpu"},
    "adaptive_retrieval": {"shortlist_dims": None, "rerank_dims": None, "shortlist_ks": [50, 100, 200], "k": 10,
                           "funnels": "auto", "method": "exact", "hnsw_m": 32, "ef_search": 128,
                           "ef_construction": 200, "repeats": 1},
    "baselines": {"dims": "auto", "methods": ["svd", "svd_classifier", "rand_lp", "rand_fs"], "center": False,
                  "probe_optimizer": "lbfgs", "probe_steps": 300, "weight_decay": 1e-4, "seed": 0,
                  "ks": [10]},
    "robustness": {},
}
# top-level keys of the Hydra config (and "resolved", written to eval_config.yaml) that evaluate() does not use
IGNORED_KEYS = ("task_name", "experiment_name", "paths", "seed", "hydra", "resolved")
BASELINE_METHODS = ("svd", "svd_classifier", "rand_lp", "rand_fs")
AUTO_FUNNEL_SHORTLISTS = (200, 100, 50, 25, 10)  # the paper's funnel (Sec. 5.1)


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return copy.deepcopy(cfg)


def resolve_config(cfg: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """:data:`DEFAULTS` updated by ``cfg`` then ``overrides`` (evaluator sections merged key by key);
    unknown keys are a :class:`ConfigError`."""
    out = copy.deepcopy(DEFAULTS)
    for source in (_plain(cfg) or {}, overrides):
        for key, value in dict(source).items():
            if key in IGNORED_KEYS:
                continue
            if key not in out:
                raise ConfigError(key, "is not an eval setting", f"known settings: {sorted(DEFAULTS)}")
            if isinstance(out[key], dict) and key != "robustness":
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(key, f"expected a mapping of settings, got {value!r}")
                for sub, v in dict(value).items():
                    if sub not in out[key]:
                        raise ConfigError(f"{key}.{sub}", "is not a setting of this evaluator",
                                          f"known: {sorted(out[key])}")
                    out[key][sub] = _plain(v)
            else:
                out[key] = _plain(value)
    evaluators = out["evaluators"]
    if isinstance(evaluators, str):
        evaluators = [e.strip() for e in evaluators.split(",") if e.strip()]
    if not isinstance(evaluators, Sequence) or not evaluators:
        raise ConfigError("evaluators", f"expected a non-empty list, got {out['evaluators']!r}",
                          f"choose from {list(EVALUATORS)}")
    unknown = [e for e in evaluators if e not in EVALUATORS]
    if unknown:
        raise ConfigError("evaluators", f"unknown evaluator(s) {unknown}", f"choose from {list(EVALUATORS)}")
    out["evaluators"] = list(dict.fromkeys(evaluators))
    if out["robustness"] is None:
        out["robustness"] = {}
    if not isinstance(out["robustness"], Mapping):
        raise ConfigError("robustness", f"expected {{name: embeddings folder}}, got {out['robustness']!r}")
    return out


class _Section:
    """Re-raise a library ConfigError about one of this evaluator's settings under ``<evaluator>.<field>``."""

    def __init__(self, name: str, settings: Mapping[str, Any]):
        self.name, self.settings = name, settings

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, ConfigError) and exc.field in self.settings:
            rest = str(exc)[len(exc.field) + 2:]
            raise ConfigError(f"{self.name}.{exc.field}", rest) from None
        return False


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def _plot(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
          ylabel: str, log2_x: bool = True, markers: bool = True) -> Path:
    fig, ax = new_figure()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if markers else None, markersize=3, label=label)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def _pct(row: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: 100.0 * float(row[k]) for k in keys}


# --------------------------------------------------------------------------------------------------
# evaluators
# --------------------------------------------------------------------------------------------------

def _run_classification(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.evaluation.classification import classification_sweep

    s = cfg["classification"]
    with _Section("classification", s):
        rows = classification_sweep(ctx["train"] if s["knn"] else None, ctx["test"], ctx["head"], ctx["dims"],
                                    knn=bool(s["knn"]), ks=list(s["ks"]))
    # the stored per-size logits, at trained sizes: a check of the embeddings against the checkpoint
    test, dims = ctx["test"], ctx["nesting_dims"]
    for row in rows:
        if row["dim"] in dims:
            logits = np.asarray(test.logits[dims.index(row["dim"])], dtype=np.float32)
            row["logits_top1"] = 100.0 * float(np.mean(logits.argmax(1) == test.labels))
    write_table(rows, out, "classification", f"Classification accuracy (%) by size, {ctx['label']}",
                ["top1/top5: the trained linear classifier on the size-d prefix (MRL between trained sizes: "
                 "the next larger size's classifier, sliced); knn_top1: 1-NN (cosine) with train as database; "
                 "logits_top1: argmax of the stored per-size logits (trained sizes only)."])
    dims_x = [r["dim"] for r in rows]
    series = {"linear top-1": (dims_x, [r["top1"] for r in rows])}
    if s["knn"]:
        series["1-NN top-1"] = (dims_x, [r["knn_top1"] for r in rows])
    _plot(out / "classification.png", series, f"Classification, {ctx['label']}", "representation size",
          "top-1 accuracy (%)", markers=len(rows) <= 32)
    return rows


def _run_adaptive_classification(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.evaluation.adaptive_classification import (adaptive_classification, fixed_size_accuracy,
                                                        plot_adaptive_classification)

    s = cfg["adaptive_classification"]
    test, sizes = ctx["test"], ctx["nesting_dims"]
    with _Section("adaptive_classification", s):
        points = s["grid_points"]
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ConfigError("grid_points", f"must be an int >= 2, got {points!r}")
        rows = adaptive_classification(test.logits, test.labels, sizes, holdout_fraction=s["holdout_fraction"],
                                       n_splits=s["n_splits"], grid=np.linspace(0.0, 1.0, points), seed=s["seed"])
        fixed = fixed_size_accuracy(test.logits, test.labels, sizes)
    caps = s["caps"]
    if caps is not None:
        caps = [caps] if isinstance(caps, int) else list(caps)
        bad = [c for c in caps if c not in sizes]
        if bad:
            raise ConfigError("adaptive_classification.caps", f"{bad} are not trained sizes {sizes}",
                              "use trained sizes, or null for all")
        rows = [r for r in rows if r["cap"] in caps]
    fixed_by_dim = {r["dim"]: r["accuracy"] for r in fixed}
    table = []
    for r in rows:
        table.append({"cap": r["cap"], **_pct(r, ["accuracy", "accuracy_std"]),
                      "expected_dim": r["expected_dim"], "expected_dim_std": r["expected_dim_std"],
                      "fixed_accuracy": 100.0 * fixed_by_dim[r["cap"]],
                      "oracle_accuracy": 100.0 * r["oracle_accuracy"], "oracle_expected_dim": r["oracle_expected_dim"],
                      "thresholds": r["thresholds"], "size_fractions": r["size_fractions"]})
    write_table(table, out, "adaptive_classification",
                f"Adaptive classification (%), {ctx['label']}",
                [f"mean over {s['n_splits']} random splits, {s['holdout_fraction']:g} of the test set held out "
                 "to pick thresholds; cap: the largest size the cascade may use; fixed_accuracy: that size alone; "
                 "thresholds/size_fractions: per size up to the cap."])
    plot_adaptive_classification(rows, fixed, out / "adaptive_classification.png",
                                 title=f"Adaptive classification, {ctx['label']}", oracle=True)
    return table


def _run_retrieval(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.evaluation.retrieval import evaluate_retrieval

    s = cfg["retrieval"]
    train, test = ctx["train"], ctx["test"]
    with _Section("retrieval", s):
        rows = evaluate_retrieval(train.embeddings, train.labels, test.embeddings, test.labels, ctx["dims"],
                                  ks=list(s["ks"]), method=s["method"], hnsw_m=s["hnsw_m"], ef_search=s["ef_search"],
                                  ef_construction=s["ef_construction"], device=s["device"])
    table = []
    for r in rows:
        metrics = [k for k in r if k not in ("dim", "index_seconds", "search_seconds")]
        table.append({"dim": r["dim"], **_pct(r, metrics), "index_seconds": r["index_seconds"],
                      "search_seconds": r["search_seconds"]})
    k0 = min(s["ks"])
    write_table(table, out, "retrieval", f"Retrieval (%), {ctx['label']}",
                [f"database: train ({len(train.labels)} items), queries: test ({len(test.labels)}); "
                 f"{s['method']} cosine search on the L2-normalised size-d prefix; map@k as in the paper "
                 "(divided by k); recall@k over the database items of the query's class; top1: 1-NN accuracy."])
    dims_x = [r["dim"] for r in table]
    _plot(out / "retrieval.png", {f"mAP@{k0}": (dims_x, [r[f"map@{k0}"] for r in table]),
                                  "top-1": (dims_x, [r["top1"] for r in table])},
          f"Retrieval, {ctx['label']}", "representation size", "%", markers=len(table) <= 32)
    return table


def _int_list(value: Any, field: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(field, f"expected a non-empty list of ints, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(field, f"expected positive ints, got {v!r} in {list(value)}")
    return [int(v) for v in value]


def _auto_funnel(nesting_dims: Sequence[int], width: int, n: int, k: int) -> dict[str, list[int]] | None:
    # From 8 dims up, as the paper's lists: a 1-4 dim normalised prefix is little more than a sign pattern.
    small = [d for d in nesting_dims if MIN_AUTO_DIM <= d < width][:len(AUTO_FUNNEL_SHORTLISTS)]
    dims = small + [width]
    if len(dims) < 2:
        return None
    sizes = [min(max(s, k), n) for s in AUTO_FUNNEL_SHORTLISTS[:len(dims) - 1]]
    return {"dims": dims, "shortlist_sizes": sizes}


def _timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def _run_adaptive_retrieval(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.evaluation.adaptive_retrieval import (adaptive_retrieval, exact_retrieval_mflops, funnel_mflops,
                                                   funnel_retrieval, retrieval_mflops)
    from mrl.evaluation.retrieval import (build_index, class_counts, l2_normalize_prefix, labels_of,
                                          retrieval_metrics, search_index)

    s = cfg["adaptive_retrieval"]
    train, test = ctx["train"], ctx["test"]
    n, q, width = len(train.labels), len(test.labels), train.width
    sec = "adaptive_retrieval"
    k = _int_list(s["k"], f"{sec}.k")[0]
    if k > n:
        raise ConfigError(f"{sec}.k", f"is {k}, larger than the database ({n} items)", f"use k <= {n}")
    repeats = _int_list(s["repeats"], f"{sec}.repeats")[0]
    nesting = ctx["nesting_dims"]
    shortlist_dims = (_int_list(s["shortlist_dims"], f"{sec}.shortlist_dims") if s["shortlist_dims"] is not None
                      else [d for d in nesting if d < width] or [nesting[0]])
    rerank_dims = (_int_list(s["rerank_dims"], f"{sec}.rerank_dims") if s["rerank_dims"] is not None else [width])
    shortlist_ks = _int_list(s["shortlist_ks"], f"{sec}.shortlist_ks")
    for field, values in (("shortlist_dims", shortlist_dims), ("rerank_dims", rerank_dims)):
        if max(values) > width:
            raise ConfigError(f"{sec}.{field}", f"size {max(values)} is larger than the embedding width {width}",
                              f"use sizes <= {width}")
    for kk in shortlist_ks:
        if not k <= kk <= n:
            raise ConfigError(f"{sec}.shortlist_ks", f"K={kk} must lie between k={k} and the database size {n}")
    counts = class_counts(train.labels)
    db = np.ascontiguousarray(train.embeddings)  # in memory (its stored dtype), as the exact index is

    def score(idx: np.ndarray) -> dict[str, float]:
        m = retrieval_metrics(labels_of(idx, train.labels), test.labels, counts, [k])
        return {f"map@{k}": 100.0 * m[f"map@{k}"], "top1": 100.0 * m["top1"]}

    rows: list[dict[str, Any]] = []
    # reference: exact search on the full width (normalising the queries counts, as it does for the others)
    full_index = build_index(l2_normalize_prefix(db, width, field="db_emb"), "exact")
    (_, idx), exact_s = _timed(lambda: search_index(full_index, l2_normalize_prefix(test.embeddings, width,
                                                                                    field="q_emb"), k), repeats)
    exact_us = 1e6 * exact_s / q
    rows.append({"kind": "exact", "D_s": width, "D_r": width, "K": "", **score(idx),
                 "mflops": exact_retrieval_mflops(n, width), "us_per_query": exact_us, "speedup": 1.0})
    del full_index
    with _Section(sec, s):
        for ds in shortlist_dims:
            index = build_index(l2_normalize_prefix(db, ds, field="db_emb"), s["method"], s["hnsw_m"],
                                s["ef_construction"])
            for dr in rerank_dims:
                if dr < ds:
                    continue
                for kk in shortlist_ks:
                    idx, sec_s = _timed(lambda: adaptive_retrieval(db, test.embeddings, ds, dr, kk, k,
                                                                   method=s["method"], ef_search=s["ef_search"],
                                                                   index=index), repeats)
                    us = 1e6 * sec_s / q
                    rows.append({"kind": f"adaptive ({s['method']})", "D_s": ds, "D_r": dr, "K": kk, **score(idx),
                                 "mflops": retrieval_mflops(n, ds, [(kk, dr)]), "us_per_query": us,
                                 "speedup": exact_us / us if us > 0 else float("inf")})
        funnels = s["funnels"]
        if funnels == "auto":
            auto = _auto_funnel(nesting, width, n, k)
            funnels = [auto] if auto else []
        elif funnels is None:
            funnels = []
        if not isinstance(funnels, Sequence) or isinstance(funnels, (str, bytes)):
            raise ConfigError(f"{sec}.funnels", f"expected auto, null or a list of {{dims, shortlist_sizes}}, "
                              f"got {funnels!r}")
        for f in funnels:
            if not isinstance(f, Mapping) or set(f) != {"dims", "shortlist_sizes"}:
                raise ConfigError(f"{sec}.funnels", f"each funnel needs exactly dims and shortlist_sizes, got {f!r}",
                                  "e.g. {dims: [8, 16, 32, 2048], shortlist_sizes: [200, 50, 10]}")
            dims, sizes = list(f["dims"]), list(f["shortlist_sizes"])
            idx, sec_s = _timed(lambda: funnel_retrieval(db, test.embeddings, dims, sizes, k,
                                                         method=s["method"], hnsw_m=s["hnsw_m"],
                                                         ef_search=s["ef_search"],
                                                         ef_construction=s["ef_construction"]), repeats)
            us = 1e6 * sec_s / q
            rows.append({"kind": f"funnel ({s['method']})", "D_s": dims[0], "D_r": ",".join(map(str, dims[1:])),
                         "K": ",".join(map(str, sizes)), **score(idx), "mflops": funnel_mflops(n, dims, sizes),
                         "us_per_query": us, "speedup": exact_us / us if us > 0 else float("inf")})
    write_table(rows, out, "adaptive_retrieval", f"Adaptive retrieval, {ctx['label']}",
                [f"database: train ({n} items), queries: test ({q}); shortlist K items by {s['method']} search on "
                 f"the first D_s coordinates, rerank them on D_r, keep the top {k}; map@{k}/top1 in %.",
                 "mflops: the paper's cost model per query, (N*D_s + sum K_i*D_r_i)/1e6 with this database's N; "
                 "exact: N*d/1e6.",
                 f"us_per_query: measured wall-clock per query on this machine (best of {repeats}; queries "
                 "normalised, shortlist search and rerank; the shortlist index is built beforehand, a funnel's "
                 "inside its time); speedup: exact us_per_query / this one."])
    adaptive = [r for r in rows if r["kind"] != "exact"]
    if adaptive:
        from matplotlib.ticker import NullFormatter

        fig, ax = new_figure()
        ax.scatter([r["mflops"] for r in adaptive], [r[f"map@{k}"] for r in adaptive], s=12, label="adaptive / funnel")
        ax.scatter([rows[0]["mflops"]], [rows[0][f"map@{k}"]], marker="*", s=80, label=f"exact {width}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MFLOPs per query")
        ax.set_ylabel(f"mAP@{k} (%)")
        ax.set_title(f"Adaptive retrieval, {ctx['label']}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save_figure(fig, out / "adaptive_retrieval.png")
    return rows


def _check_baselines(ctx: dict) -> None:
    width, head_type, nesting = ctx["test"].width, ctx["head_type"], ctx["nesting_dims"]
    if head_type != "ff" or nesting != [width]:
        what = f"FF-{nesting[0]}" if head_type == "ff" else f"an '{head_type}' model"
        raise ConfigError("evaluators", f"baselines need an FF model at full width (FF-{width}), this checkpoint is "
                          f"{what}", f"drop baselines from evaluators, or evaluate an FF-{width} checkpoint "
                          f"(model.head=ff model.nesting_dims=[{width}])")


def _run_baselines(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.evaluation.baselines import rand_fs_retrieval, rand_lp, svd_classifier, svd_probe
    from mrl.evaluation.classification import classifier_at
    from mrl.nesting import auto_nesting_dims

    s = cfg["baselines"]
    train, test = ctx["train"], ctx["test"]
    width, nesting = train.width, ctx["nesting_dims"]
    _check_baselines(ctx)
    dims = auto_nesting_dims(width) if s["dims"] == "auto" else _int_list(s["dims"], "baselines.dims")
    if max(dims) > width:
        raise ConfigError("baselines.dims", f"size {max(dims)} is larger than the embedding width {width}")
    methods = [s["methods"]] if isinstance(s["methods"], str) else list(s["methods"])
    unknown = [m for m in methods if m not in BASELINE_METHODS]
    if unknown or not methods:
        raise ConfigError("baselines.methods", f"unknown method(s) {unknown}", f"choose from {list(BASELINE_METHODS)}")
    weight, bias = classifier_at("ff", ctx["head"].state, nesting, width)
    ks = _int_list(s["ks"], "baselines.ks")
    probe = {"optimizer": s["probe_optimizer"], "steps": s["probe_steps"], "weight_decay": s["weight_decay"]}
    train_x, test_x = train.embeddings, test.embeddings  # memory-mapped; the baselines read what they need
    rows = []
    with _Section("baselines", s):
        for m in dims:
            row: dict[str, Any] = {"dim": m}
            if "svd" in methods:
                row["svd_top1"] = 100.0 * svd_probe(train_x, train.labels, test_x, test.labels, m, center=s["center"],
                                                    seed=s["seed"], **probe)["top1"]
            if "svd_classifier" in methods:
                rank = min(m, *weight.shape)  # a rank >= min(C, d) is the full classifier
                row["svd_classifier_top1"] = 100.0 * svd_classifier(weight, test_x, test.labels, rank, bias)
            if "rand_lp" in methods:
                row["rand_lp_top1"] = 100.0 * rand_lp(train_x, train.labels, test_x, test.labels, m, seed=s["seed"],
                                                      **probe)["top1"]
            if "rand_fs" in methods:
                r = rand_fs_retrieval(train_x, train.labels, test_x, test.labels, [m], seed=s["seed"], ks=ks)[0]
                row["rand_fs_top1"] = 100.0 * r["top1"]
                row.update({f"rand_fs_map@{k}": 100.0 * r[f"map@{k}"] for k in ks})
            rows.append(row)
    write_table(rows, out, "baselines", f"Baselines from FF-{width} (%), {ctx['label']}",
                ["svd: linear probe on the top-d right singular vectors of the train embeddings"
                 f"{' (centred)' if s['center'] else ''}; svd_classifier: the FF classifier replaced by its rank-d "
                 "approximation (rank capped at min(C, width): the full classifier beyond it); rand_lp: linear probe "
                 "on d random coordinates; rand_fs: retrieval (train database) on d random coordinates.",
                 f"probes: {s['probe_optimizer']}, {s['probe_steps']} steps, weight decay {s['weight_decay']:g}, "
                 f"seed {s['seed']}."])
    series = {c.replace("_top1", ""): ([r["dim"] for r in rows], [r[c] for r in rows])
              for c in rows[0] if c.endswith("_top1")}
    _plot(out / "baselines.png", series, f"Baselines from FF-{width}", "representation size", "top-1 (%)")
    return rows


def _run_robustness(ctx: dict, cfg: dict, out: Path) -> list[dict]:
    from mrl.embeddings import load_split
    from mrl.evaluation.robustness import robustness_sweep

    sets = cfg["robustness"]
    if not sets:
        raise ConfigError("robustness", "names no embedded robustness set",
                          "give robustness={imagenet-a: /path/to/embeddings/imagenet-a, ...} "
                          "(made by mrl.evaluation.robustness.embed_robustness_set)")
    rows = []
    for name, folder in sets.items():
        split = load_split(folder)
        if split.meta.get("checkpoint") and ctx["test"].meta.get("checkpoint") and \
                split.meta["checkpoint"] != ctx["test"].meta["checkpoint"]:
            raise ConfigError(f"robustness.{name}", f"{folder} was embedded with {split.meta['checkpoint']}, not "
                              f"{ctx['test'].meta['checkpoint']}", "embed it with the evaluated checkpoint")
        rows += robustness_sweep(split, ctx["head"], ctx["dims"], dataset_name=name,
                                 ks=cfg["classification"]["ks"])
    write_table(rows, out, "robustness", f"Robustness sets, linear accuracy (%), {ctx['label']}",
                ["ImageNet-A/-R: logits restricted to their 200 classes (Hendrycks et al.'s lists); V2/Sketch: all "
                 "classes."])
    return rows


RUNNERS = {"classification": _run_classification, "adaptive_classification": _run_adaptive_classification,
           "retrieval": _run_retrieval, "adaptive_retrieval": _run_adaptive_retrieval, "baselines": _run_baselines,
           "robustness": _run_robustness}
NEEDS_TRAIN = {"classification", "retrieval", "adaptive_retrieval", "baselines"}
NEEDS_HEAD = {"classification", "baselines", "robustness"}


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------

def evaluate(cfg: Mapping[str, Any] | None = None, command: str | None = None, verbose: bool = False,
             **overrides: Any) -> dict[str, list[dict[str, Any]]]:
    """Run the configured evaluators and write their tables; returns ``{evaluator: rows}``.

    ``cfg``: a dict or DictConfig with the keys of :data:`DEFAULTS` (missing keys take the defaults);
    ``overrides``: the same keys as keyword arguments. ``command``: the command line recorded in
    ``command.txt``. Raises :class:`ConfigError` for bad settings or inputs, before any evaluator runs
    where it can.
    """
    from omegaconf import OmegaConf

    from mrl.embeddings import load_split
    from mrl.evaluation.classification import check_head_type, load_head, resolve_dims

    cfg = resolve_config(cfg, **overrides)
    if not cfg["embeddings_dir"]:
        raise ConfigError("embeddings_dir", "is not set", "give the folder scripts/embed.py wrote (train/ and test/)")
    if not cfg["output_dir"]:
        raise ConfigError("output_dir", "is not set", "give a folder for the tables")
    emb_dir = Path(str(cfg["embeddings_dir"])).expanduser()
    if not emb_dir.is_dir():
        raise ConfigError("embeddings_dir", f"{emb_dir} does not exist", "run scripts/embed.py first")
    evaluators = cfg["evaluators"]
    test = load_split(emb_dir / "test")
    train = load_split(emb_dir / "train") if NEEDS_TRAIN & set(evaluators) else None
    if train is not None and (train.meta.get("checkpoint") != test.meta.get("checkpoint")
                              or train.width != test.width):
        raise ConfigError("embeddings_dir", f"train/ and test/ under {emb_dir} come from different checkpoints",
                          "embed both splits with one scripts/embed.py run")
    head = None
    head_type, nesting_dims = test.meta["head"], [int(d) for d in test.meta["nesting_dims"]]
    ckpt_path = cfg["ckpt_path"] or test.meta.get("checkpoint")
    if NEEDS_HEAD & set(evaluators) or cfg["ckpt_path"]:
        if not ckpt_path:
            raise ConfigError("ckpt_path", "is not set and the embeddings do not record their checkpoint",
                              "give ckpt_path=/path/to/checkpoint.ckpt")
        head = load_head(ckpt_path, cfg["head"])
        if head.head_type != head_type or head.nesting_dims != nesting_dims \
                or head.meta.get("num_classes") != test.meta.get("num_classes"):
            raise ConfigError("ckpt_path", f"{ckpt_path} (head {head.head_type}, sizes {head.nesting_dims}, "
                              f"{head.meta.get('num_classes')} classes) is not the checkpoint the embeddings were made "
                              f"with (head {head_type}, sizes {nesting_dims}, {test.meta.get('num_classes')} classes)",
                              "give the checkpoint passed to scripts/embed.py, or re-embed")
    else:
        check_head_type(cfg["head"], head_type, f"{emb_dir}/test (embeddings)")
    dims = resolve_dims(cfg["dims"], head_type, nesting_dims, test.width)
    if "classification" in evaluators or "robustness" in evaluators:  # fail now, not after the slow evaluators
        from mrl.evaluation.classification import classifier_at

        for d in dims:
            classifier_at(head_type, head.state, nesting_dims, d)

    if "baselines" in evaluators:  # the one-line error before any slow evaluator
        _check_baselines({"test": test, "head_type": head_type, "nesting_dims": nesting_dims})

    out = Path(str(cfg["output_dir"])).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"resolved": {"ckpt_path": str(ckpt_path) if ckpt_path else None, "head": head_type,
                             "nesting_dims": nesting_dims, "width": test.width, "dims": dims}}
    atomic_write_text(out / "eval_config.yaml", OmegaConf.to_yaml(OmegaConf.create({**cfg, **resolved})))
    atomic_write_text(out / "command.txt", (command or "mrl.evaluation.run.evaluate() (called from Python)") + "\n")
    model = {"mrl": "MRL", "mrle": "MRL-E", "ff": f"FF-{nesting_dims[0]}"}.get(head_type, head_type)
    label = f"{model} ({Path(str(ckpt_path)).name if ckpt_path else emb_dir.name})"
    ctx = {"train": train, "test": test, "head": head, "head_type": head_type, "nesting_dims": nesting_dims,
           "dims": dims, "label": label}
    tables = {}
    for name in evaluators:
        t0 = time.perf_counter()
        tables[name] = RUNNERS[name](ctx, cfg, out)
        if verbose:
            print(f"{name}: {time.perf_counter() - t0:.1f} s -> {out / (name + '.md')}")
    return tables
