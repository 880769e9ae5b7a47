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
* ``sts``: Spearman correlation (x100) of the cosine of sentence pairs with their gold scores at each size, on the
  split ``sts.split`` (``scripts/embed.py data=stsb``), and per (layer, size) for a 2D Matryoshka model
  (``sts_layers``).
* ``text_retrieval``: nDCG@k, recall@k and MRR@k (%) of the queries split ``text_retrieval.queries`` over its corpus
  split (``scripts/embed.py data=cranfield|beir``) at each size, and adaptive retrieval (shortlist on ``D_s``,
  rerank on ``D_r``) with the cost model and wall-clock next to exact full-width search
  (``text_retrieval_adaptive``).

* ``zero_shot``: an image-text model's zero-shot top-1/top-5 (%) at each size on ``zero_shot.split``: images against
  the class prompts stored with them (per size: prefixes normalised, averaged over templates, renormalised).
* ``cross_modal_retrieval``: image->text and text->image recall@k (%) at each size over the distinct images and
  captions of ``cross_modal_retrieval.split``, and adaptive text->image retrieval (shortlist on ``D_s``, rerank on
  ``D_r``) with the cost model and wall-clock (``cross_modal_retrieval_adaptive``).

``sts``, ``text_retrieval``, ``zero_shot`` and ``cross_modal_retrieval`` read their own splits (no labelled ``test/``
needed); their tables give, for each size, ``kept`` (the score over the full-width score) and ``size_fraction`` (the
size over the full width).

Every setting of every selected evaluator is checked before anything is written, so a bad one stops the run
with a one-line :class:`~mrl.errors.ConfigError` and an untouched ``output_dir``. Each evaluator then writes
``<output_dir>/<evaluator>.{csv,md,json,png}`` atomically, next to ``eval_config.yaml`` (the full
configuration) and ``command.txt``, and logs its progress (each evaluator, each size) at INFO level to the
``mrl.evaluation.run`` logger (Hydra shows it on the console and in ``eval.log``). All accuracies and
retrieval metrics in the tables are percentages.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import _check_int, _check_ks, check_search_settings
from mrl.nesting import MIN_AUTO_DIM
from mrl.report.run_tables import atomic_write_text, new_figure, save_figure, write_table

log = logging.getLogger(__name__)

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
    "sts": {"split": "test"},
    "text_retrieval": {"queries": "queries", "corpus": None, "ndcg_ks": [10], "recall_ks": [100], "mrr_ks": [10],
                       "adaptive": True, "shortlist_dims": None, "rerank_dims": None, "shortlist_ks": [200, 400],
                       "method": "exact", "hnsw_m": 32, "ef_search": 128, "ef_construction": 200, "repeats": 1},
    "zero_shot": {"split": "test", "ks": [1, 5]},
    "cross_modal_retrieval": {"split": "test", "ks": [1, 5, 10], "match": "auto", "adaptive": True,
                              "shortlist_dims": None, "rerank_dims": None, "shortlist_ks": [50, 100, 200],
                              "method": "exact", "hnsw_m": 32, "ef_search": 128, "ef_construction": 200, "repeats": 1},
    "wandb": "auto",            # the tables also go to the training run's W&B run: auto | online | offline | disabled
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
    from mrl.loggers import WANDB_MODES

    if out["wandb"] not in WANDB_MODES:
        raise ConfigError("wandb", f"is {out['wandb']!r}", f"choose one of {list(WANDB_MODES)}")
    evaluators = out["evaluators"]
    if isinstance(evaluators, str):
        evaluators = [e.strip() for e in evaluators.split(",") if e.strip()]
    if not isinstance(evaluators, Sequence) or not evaluators:
        raise ConfigError("evaluators", f"expected a non-empty list, got {out['evaluators']!r}",
                          f"choose from {list(REGISTRY)}")
    unknown = [e for e in evaluators if e not in REGISTRY]
    if unknown:
        raise ConfigError("evaluators", f"unknown evaluator(s) {unknown}", f"choose from {list(REGISTRY)}")
    out["evaluators"] = list(dict.fromkeys(evaluators))
    if out["robustness"] is None:
        out["robustness"] = {}
    if not isinstance(out["robustness"], Mapping):
        raise ConfigError("robustness", f"expected {{name: embeddings folder}}, got {out['robustness']!r}")
    return out


class _Section:
    """Re-raise a library ConfigError about one of ``fields`` as ``<prefix>.<setting>``, the setting's name in
    the eval config (``renamed`` maps a library argument to a setting of another name)."""

    def __init__(self, prefix: str, fields: Collection[str], renamed: Mapping[str, str] | None = None):
        self.prefix, self.names = prefix, {**{f: f for f in fields}, **(renamed or {})}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, ConfigError) and exc.field in self.names:
            rest = str(exc)[len(exc.field) + 2:]
            raise ConfigError(f"{self.prefix}.{self.names[exc.field]}", rest) from None
        return False


# --------------------------------------------------------------------------------------------------
# settings: every evaluator's, checked before any evaluator writes
# --------------------------------------------------------------------------------------------------

def _check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")
    return value


def _int_list(value: Any, field: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError(field, f"expected a non-empty list of ints, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(field, f"expected positive ints, got {v!r} in {list(value)}")
    return [int(v) for v in value]


def _sizes(value: Any, field: str, width: int) -> list[int]:
    sizes = _int_list(value, field)
    if max(sizes) > width:
        raise ConfigError(field, f"size {max(sizes)} is larger than the embedding width {width}",
                          f"use sizes <= {width}")
    return sizes


def _plan_classification(ctx: dict, cfg: dict) -> dict[str, Any]:
    s, classes = cfg["classification"], ctx["num_classes"]
    return {"knn": _check_bool(s["knn"], "classification.knn"),
            "ks": _check_ks(s["ks"], classes, "classification.ks", f"the {classes} classes")}


def _plan_adaptive_classification(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.evaluation.adaptive_classification import check_splits

    sec = "adaptive_classification"
    s, sizes = cfg[sec], ctx["nesting_dims"]
    with _Section(sec, s):
        check_splits(len(ctx["test"].labels), s["holdout_fraction"], s["n_splits"])
    caps = None if s["caps"] is None else _int_list(s["caps"], f"{sec}.caps")
    bad = [c for c in caps or [] if c not in sizes]
    if bad:
        raise ConfigError(f"{sec}.caps", f"{bad} are not trained sizes {sizes}", "use trained sizes, or null for all")
    return {"caps": caps, "holdout_fraction": s["holdout_fraction"], "n_splits": s["n_splits"],
            "seed": _check_int(s["seed"], f"{sec}.seed", 0),
            "grid_points": _check_int(s["grid_points"], f"{sec}.grid_points", 2)}


def _plan_retrieval(ctx: dict, cfg: dict) -> dict[str, Any]:
    s, n = cfg["retrieval"], len(ctx["train"].labels)
    with _Section("retrieval", s):
        search = check_search_settings(s["method"], s["hnsw_m"], s["ef_search"], s["ef_construction"], s["device"])
    return {"ks": _check_ks(s["ks"], n, "retrieval.ks", f"the database size {n}"), **search}


def _auto_funnel(nesting_dims: Sequence[int], width: int, n: int, k: int) -> dict[str, list[int]] | None:
    # From 8 dims up, as the paper's lists: a 1-4 dim normalised prefix is little more than a sign pattern.
    small = [d for d in nesting_dims if MIN_AUTO_DIM <= d < width][:len(AUTO_FUNNEL_SHORTLISTS)]
    dims = small + [width]
    if len(dims) < 2:
        return None
    sizes = [min(max(s, k), n) for s in AUTO_FUNNEL_SHORTLISTS[:len(dims) - 1]]
    return {"dims": dims, "shortlist_sizes": sizes}


def _plan_adaptive_retrieval(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.evaluation.adaptive_retrieval import check_funnel

    sec = "adaptive_retrieval"
    s, train, nesting = cfg[sec], ctx["train"], ctx["nesting_dims"]
    n, width = len(train.labels), train.width
    k = _check_int(s["k"], f"{sec}.k", 1, n, f"the database size {n}")
    sweep = _adaptive_settings(s, sec, nesting, width, k, n, f"the database size {n}")
    funnels = s["funnels"]
    if funnels == "auto":
        auto = _auto_funnel(nesting, width, n, k)
        funnels = [auto] if auto else []
    elif funnels is None:
        funnels = []
    if not isinstance(funnels, Sequence) or isinstance(funnels, (str, bytes)):
        raise ConfigError(f"{sec}.funnels", f"expected auto, null or a list of {{dims, shortlist_sizes}}, "
                          f"got {funnels!r}")
    checked = []
    for i, f in enumerate(funnels):
        if not isinstance(f, Mapping) or set(f) != {"dims", "shortlist_sizes"}:
            raise ConfigError(f"{sec}.funnels", f"each funnel needs exactly dims and shortlist_sizes, got {f!r}",
                              "e.g. {dims: [8, 16, 32, 2048], shortlist_sizes: [200, 50, 10]}")
        with _Section(f"{sec}.funnels[{i}]", ("dims", "shortlist_sizes", "k")):
            dims, sizes, _ = check_funnel(f["dims"], f["shortlist_sizes"], k, width, n)
        checked.append({"dims": dims, "shortlist_sizes": sizes})
    return {"k": k, "funnels": checked, **sweep}


def _adaptive_settings(s: Mapping[str, Any], sec: str, nesting: Sequence[int], width: int, depth: int, n: int,
                       limit: str) -> dict[str, Any]:
    """The checked settings of an adaptive-retrieval sweep (``_adaptive_sweep``) from section ``sec``'s ``s``:
    shortlist and rerank sizes (by default every trained size below ``width``, and ``width``), shortlist lengths K
    between the evaluated ``depth`` and the ``n`` searchable items (``limit`` says what n counts), the search method
    and its settings, and the timing repeats."""
    shortlist_dims = (_sizes(s["shortlist_dims"], f"{sec}.shortlist_dims", width) if s["shortlist_dims"] is not None
                      else [d for d in nesting if d < width] or [nesting[0]])
    rerank_dims = _sizes(s["rerank_dims"], f"{sec}.rerank_dims", width) if s["rerank_dims"] is not None else [width]
    shortlist_ks = _int_list(s["shortlist_ks"], f"{sec}.shortlist_ks")
    for kk in shortlist_ks:
        if not depth <= kk <= n:
            raise ConfigError(f"{sec}.shortlist_ks", f"K={kk} must lie between the deepest cut-off {depth} and "
                              f"{limit}", f"use shortlist lengths in {depth}..{n}")
    with _Section(sec, s):
        search = check_search_settings(s["method"], s["hnsw_m"], s["ef_search"], s["ef_construction"])
    return {"shortlist_dims": shortlist_dims, "rerank_dims": rerank_dims, "shortlist_ks": shortlist_ks,
            "repeats": _check_int(s["repeats"], f"{sec}.repeats", 1), **search}


def _check_baselines(ctx: dict) -> None:
    width, head_type, nesting = ctx["test"].width, ctx["head_type"], ctx["nesting_dims"]
    if head_type != "ff" or nesting != [width]:
        what = f"FF-{nesting[0]}" if head_type == "ff" else f"an '{head_type}' model"
        raise ConfigError("evaluators", f"baselines need an FF model at full width (FF-{width}), this checkpoint is "
                          f"{what}", f"drop baselines from evaluators, or evaluate an FF-{width} checkpoint "
                          f"(model.head=ff model.nesting_dims=[{width}])")


def _plan_baselines(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.evaluation.baselines import check_probe_settings
    from mrl.nesting import auto_nesting_dims

    _check_baselines(ctx)
    sec = "baselines"
    s, width, n = cfg[sec], ctx["test"].width, len(ctx["train"].labels)
    dims = auto_nesting_dims(width) if s["dims"] == "auto" else _sizes(s["dims"], f"{sec}.dims", width)
    methods = [s["methods"]] if isinstance(s["methods"], str) else list(s["methods"] or [])
    unknown = [m for m in methods if m not in BASELINE_METHODS]
    if unknown or not methods:
        raise ConfigError(f"{sec}.methods", f"unknown method(s) {unknown}", f"choose from {list(BASELINE_METHODS)}")
    with _Section(sec, (), {"optimizer": "probe_optimizer", "steps": "probe_steps", "weight_decay": "weight_decay"}):
        probe = check_probe_settings(s["probe_optimizer"], s["probe_steps"], s["weight_decay"])
    return {"dims": dims, "methods": methods, "center": _check_bool(s["center"], f"{sec}.center"),
            "seed": _check_int(s["seed"], f"{sec}.seed", 0), "probe": probe,
            "ks": _check_ks(s["ks"], n, f"{sec}.ks", f"the database size {n}")}


def _plan_robustness(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.evaluation.robustness import normalize_name, robustness_class_mask, shipped_wnids
    from mrl.embeddings import load_split

    sets = cfg["robustness"]
    if not sets:
        raise ConfigError("robustness", "names no embedded robustness set",
                          "give robustness={imagenet-a: /path/to/embeddings/imagenet-a, ...} "
                          "(made by mrl.evaluation.robustness.embed_robustness_set)")
    test = ctx["test"]
    splits, ks = {}, {}
    for name, folder in sets.items():
        with _Section("robustness", ("dataset",)):
            canonical = normalize_name(name)
        split = load_split(folder)
        if split.meta.get("checkpoint") and test.meta.get("checkpoint") and \
                split.meta["checkpoint"] != test.meta["checkpoint"]:
            raise ConfigError(f"robustness.{name}", f"{folder} was embedded with {split.meta['checkpoint']}, not "
                              f"{test.meta['checkpoint']}", "embed it with the evaluated checkpoint")
        if split.width != test.width or split.meta["num_classes"] != ctx["num_classes"]:
            raise ConfigError(f"robustness.{name}", f"{folder} has width {split.width} and {split.meta['num_classes']} "
                              f"classes, the evaluated embeddings {test.width} and {ctx['num_classes']}",
                              "embed it with the evaluated checkpoint")
        subset = shipped_wnids(canonical)
        if subset is not None:  # the class mask needs the checkpoint's class names
            robustness_class_mask(canonical, split.meta.get("class_names"), subset)
        classes = ctx["num_classes"] if subset is None else len(subset)
        ks[canonical] = _check_ks(cfg["classification"]["ks"], classes, "classification.ks",
                                  f"the {classes} classes of {canonical}")
        splits[canonical] = split
    return {"splits": splits, "ks": ks}


def _split_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ConfigError(field, f"expected the name of a split folder under embeddings_dir, got {value!r}")
    return value


def _same_model(split, reference, field: str) -> None:
    if split.meta.get("checkpoint") != reference.meta.get("checkpoint") or split.width != reference.width:
        raise ConfigError(field, f"{split.path} and {reference.path} come from different checkpoints",
                          "embed every split with the same checkpoint")


def _plan_sts(ctx: dict, cfg: dict) -> dict[str, Any]:
    split = ctx["splits"][cfg["sts"]["split"]]
    if "pairs" not in split.relations:
        raise ConfigError("sts.split", f"{split.path} holds no sentence pairs (pairs.npy, scores.npy)",
                          "embed an STS set: scripts/embed.py data=stsb splits=[test]")
    if len(split.relations["pairs"]) < 2:
        raise ConfigError("sts.split", f"{split.path} holds {len(split.relations['pairs'])} pair(s); a correlation "
                          "needs at least 2")
    return {"split": split}


def _plan_text_retrieval(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.embeddings import load_split
    from mrl.evaluation.text_retrieval import check_qrels

    sec = "text_retrieval"
    s, nesting = cfg[sec], ctx["nesting_dims"]
    queries = ctx["splits"][s["queries"]]
    if "qrels" not in queries.relations:
        raise ConfigError(f"{sec}.queries", f"{queries.path} holds no relevance judgements (qrels.npy)",
                          "embed a retrieval set: scripts/embed.py data=cranfield splits=[corpus,queries]")
    corpus_name = s["corpus"] or queries.meta.get("corpus_split")
    if not corpus_name:
        raise ConfigError(f"{sec}.corpus", f"is not set and {queries.path}/meta.json names no corpus_split",
                          "give text_retrieval.corpus=<the corpus split>")
    corpus = load_split(ctx["emb_dir"] / _split_name(corpus_name, f"{sec}.corpus"))
    _same_model(corpus, queries, f"{sec}.corpus")
    n, width = len(corpus.embeddings), corpus.width
    with _Section(sec, (), {"qrels": "queries"}):
        qrels = check_qrels(queries.relations["qrels"], len(queries.embeddings), n)
    if not (qrels[:, 2] > 0).any():
        raise ConfigError(f"{sec}.queries", f"{queries.path}/qrels.npy has no relevant judgement (gain > 0)")
    ks = {key: _check_ks(s[key], n, f"{sec}.{key}", f"the corpus size {n}") for key in ("ndcg_ks", "recall_ks",
                                                                                         "mrr_ks")}
    depth = max(max(v) for v in ks.values())
    plan = {"queries": queries, "corpus": corpus, "qrels": qrels, **ks, "depth": depth,
            "adaptive": _check_bool(s["adaptive"], f"{sec}.adaptive")}
    if not plan["adaptive"]:
        return plan
    return {**plan, **_adaptive_settings(s, sec, nesting, width, depth, n, f"the corpus size {n}")}


def _image_text_split(ctx: dict, sec: str, what: str):
    split = ctx["splits"][ctx["cfg_splits"][sec]]
    if split.text_embeddings is None:
        raise ConfigError(f"{sec}.split", f"{split.path} holds no caption embeddings (text_embeddings.npy): {what} "
                          "needs an image-text model", "embed image-text data with a dual_encoder checkpoint")
    return split


def _plan_zero_shot(ctx: dict, cfg: dict) -> dict[str, Any]:
    sec = "zero_shot"
    split = _image_text_split(ctx, sec, "zero-shot classification")
    prompts = split.relations.get("class_prompt_embeddings")
    if split.labels is None or prompts is None:
        raise ConfigError(f"{sec}.split", f"{split.path} has no labels or no class prompts (a caption-file split)",
                          "zero-shot needs class-captioned data (data.format=imagefolder)")
    if prompts.shape[2] != split.width:
        raise ConfigError(f"{sec}.split", f"{split.path}/class_prompt_embeddings.npy is {prompts.shape[2]} wide, the "
                          f"embeddings {split.width}", REEMBED_HINT)
    names = split.meta.get("class_names")
    if names is not None and len(names) != prompts.shape[1]:
        raise ConfigError(f"{sec}.split", f"{split.path} prompts {prompts.shape[1]} classes but meta.json names "
                          f"{len(names)}", REEMBED_HINT)
    if len(split.labels) and int(split.labels.max()) >= prompts.shape[1]:
        raise ConfigError(f"{sec}.split", f"{split.path} has label {int(split.labels.max())} but prompts for "
                          f"{prompts.shape[1]} classes", REEMBED_HINT)
    return {"split": split, "ks": _check_ks(cfg[sec]["ks"], prompts.shape[1], f"{sec}.ks",
                                            f"the {prompts.shape[1]} classes")}


def _plan_cross_modal_retrieval(ctx: dict, cfg: dict) -> dict[str, Any]:
    from mrl.evaluation.image_text import MATCHES, cross_modal_items

    sec = "cross_modal_retrieval"
    s, nesting = cfg[sec], ctx["nesting_dims"]
    split = _image_text_split(ctx, sec, "cross-modal retrieval")
    if "image_ids" not in split.relations or "caption_ids" not in split.relations:
        raise ConfigError(f"{sec}.split", f"{split.path} has no image_ids.npy / caption_ids.npy", REEMBED_HINT)
    match = s["match"]
    if match == "auto":
        match = "label" if split.labels is not None and split.meta.get("captions") == "class templates" else "pair"
    if match not in MATCHES:
        raise ConfigError(f"{sec}.match", f"is {match!r}", f"choose auto, {' or '.join(MATCHES)}")
    if match == "label" and split.labels is None:
        raise ConfigError(f"{sec}.match", f"is label but {split.path} has no labels", "use match=pair (or auto)")
    image_rows, caption_rows, matches = cross_modal_items(split.relations["image_ids"], split.relations["caption_ids"],
                                                          split.labels, match)
    smallest = min(len(image_rows), len(caption_rows))
    ks = _check_ks(s["ks"], smallest, f"{sec}.ks", f"the {smallest} distinct images/captions")
    plan = {"split": split, "ks": ks, "match": match, "items": (image_rows, caption_rows, matches),
            "adaptive": _check_bool(s["adaptive"], f"{sec}.adaptive")}
    if not plan["adaptive"]:
        return plan
    n = len(image_rows)
    return {**plan, **_adaptive_settings(s, sec, nesting, split.width, max(ks), n, f"the {n} distinct images")}


REEMBED_HINT = "re-run scripts/embed.py for this split with the dual_encoder checkpoint"


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


def _progress(name: str, total: int) -> Callable[[int | str], None]:
    """A callback logging each finished step of evaluator ``name`` with its time, e.g. ``retrieval: size 64 done
    (3/10, 1.2 s)``; an int step is a representation size."""
    count, last = 0, time.perf_counter()

    def report(step: int | str) -> None:
        nonlocal count, last
        count += 1
        now = time.perf_counter()
        what = f"size {step}" if isinstance(step, (int, np.integer)) else step
        log.info("%s: %s done (%d/%d, %.1f s)", name, what, count, total, now - last)
        last = now

    return report


# --------------------------------------------------------------------------------------------------
# evaluators: run(ctx, plan, out) with the plan of settings checked above
# --------------------------------------------------------------------------------------------------

def _run_classification(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.classification import classification_sweep

    rows = classification_sweep(ctx["train"] if plan["knn"] else None, ctx["test"], ctx["head"], ctx["dims"],
                                knn=plan["knn"], ks=plan["ks"], progress=_progress("classification", len(ctx["dims"])))
    # the stored per-size logits, at trained sizes: a check of the embeddings against the checkpoint
    test, dims = ctx["test"], ctx["nesting_dims"]
    for row in rows if test.logits is not None else ():
        if row["dim"] in dims:
            logits = np.asarray(test.logits[dims.index(row["dim"])], dtype=np.float32)
            row["logits_top1"] = 100.0 * float(np.mean(logits.argmax(1) == test.labels))
    write_table(rows, out, "classification", f"Classification accuracy (%) by size, {ctx['label']}",
                ["top1/top5: the trained linear classifier on the size-d prefix (MRL between trained sizes: "
                 "the next larger size's classifier, sliced); knn_top1: 1-NN (cosine) with train as database; "
                 "logits_top1: argmax of the stored per-size logits (trained sizes only)."])
    dims_x = [r["dim"] for r in rows]
    series = {"linear top-1": (dims_x, [r["top1"] for r in rows])}
    if plan["knn"]:
        series["1-NN top-1"] = (dims_x, [r["knn_top1"] for r in rows])
    _plot(out / "classification.png", series, f"Classification, {ctx['label']}", "representation size",
          "top-1 accuracy (%)", markers=len(rows) <= 32)
    return rows


def _run_adaptive_classification(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.adaptive_classification import (adaptive_classification, fixed_size_accuracy,
                                                        plot_adaptive_classification)

    test, sizes = ctx["test"], ctx["nesting_dims"]
    rows = adaptive_classification(test.logits, test.labels, sizes, holdout_fraction=plan["holdout_fraction"],
                                   n_splits=plan["n_splits"], grid=np.linspace(0.0, 1.0, plan["grid_points"]),
                                   seed=plan["seed"])
    fixed = fixed_size_accuracy(test.logits, test.labels, sizes)
    if plan["caps"] is not None:
        rows = [r for r in rows if r["cap"] in plan["caps"]]
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
                [f"mean over {plan['n_splits']} random splits, {plan['holdout_fraction']:g} of the test set held out "
                 "to pick thresholds; cap: the largest size the cascade may use; fixed_accuracy: that size alone; "
                 "thresholds/size_fractions: per size up to the cap."])
    plot_adaptive_classification(rows, fixed, out / "adaptive_classification.png",
                                 title=f"Adaptive classification, {ctx['label']}", oracle=True)
    return table


def _run_retrieval(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.retrieval import evaluate_retrieval

    train, test = ctx["train"], ctx["test"]
    rows = evaluate_retrieval(train.embeddings, train.labels, test.embeddings, test.labels, ctx["dims"],
                              ks=plan["ks"], method=plan["method"], hnsw_m=plan["hnsw_m"], ef_search=plan["ef_search"],
                              ef_construction=plan["ef_construction"], device=plan["device"],
                              progress=_progress("retrieval", len(ctx["dims"])))
    table = []
    for r in rows:
        metrics = [k for k in r if k not in ("dim", "index_seconds", "search_seconds")]
        table.append({"dim": r["dim"], **_pct(r, metrics), "index_seconds": r["index_seconds"],
                      "search_seconds": r["search_seconds"]})
    k0 = min(plan["ks"])
    write_table(table, out, "retrieval", f"Retrieval (%), {ctx['label']}",
                [f"database: train ({len(train.labels)} items), queries: test ({len(test.labels)}); "
                 f"{plan['method']} cosine search on the L2-normalised size-d prefix (equal scores in database order); "
                 "map@k as in the paper (divided by k); recall@k over the database items of the query's class; "
                 "top1: 1-NN accuracy."])
    dims_x = [r["dim"] for r in table]
    _plot(out / "retrieval.png", {f"mAP@{k0}": (dims_x, [r[f"map@{k0}"] for r in table]),
                                  "top-1": (dims_x, [r["top1"] for r in table])},
          f"Retrieval, {ctx['label']}", "representation size", "%", markers=len(table) <= 32)
    return table


def _timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def _plot_adaptive_retrieval(rows: Sequence[Mapping[str, Any]], metric: str, path: Path, title: str) -> Path:
    """mAP against MFLOPs per query: one point per row of the adaptive-retrieval table, each labelled by its
    setting (:func:`~mrl.evaluation.adaptive_retrieval.setting_label`), exact search as a star."""
    from matplotlib.ticker import NullFormatter

    from mrl.evaluation.adaptive_retrieval import setting_label

    fig, ax = new_figure((8, 5.5))
    for kind, marker, size in (("adaptive", "o", 14), ("funnel", "D", 18), ("exact", "*", 90)):
        sel = [r for r in rows if str(r["kind"]).startswith(kind)]
        if not sel:
            continue
        ax.scatter([r["mflops"] for r in sel], [r[metric] for r in sel], marker=marker, s=size, label=kind)
        for r in sel:
            ax.annotate(setting_label(r), (r["mflops"], r[metric]), textcoords="offset points", xytext=(4, 3),
                        fontsize=6)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel("MFLOPs per query")
    ax.set_ylabel(f"{metric.replace('map', 'mAP')} (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _run_adaptive_retrieval(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.adaptive_retrieval import funnel_mflops, funnel_retrieval
    from mrl.evaluation.retrieval import class_counts, labels_of, retrieval_metrics

    train, test = ctx["train"], ctx["test"]
    n, q, width = len(train.labels), len(test.labels), train.width
    k, repeats, method = plan["k"], plan["repeats"], plan["method"]
    counts = class_counts(train.labels)
    db = np.ascontiguousarray(train.embeddings)  # in memory (its stored dtype), as the exact index is

    def score(idx: np.ndarray) -> dict[str, float]:
        m = retrieval_metrics(labels_of(idx, train.labels), test.labels, counts, [k])
        return {f"map@{k}": 100.0 * m[f"map@{k}"], "top1": 100.0 * m["top1"]}

    headline = f"map@{k}"
    progress = _progress("adaptive_retrieval", 1 + len(plan["shortlist_dims"]) + len(plan["funnels"]))
    rows = _adaptive_sweep(db, test.embeddings, plan, k, score, headline, progress)
    exact_us, exact_mflops = rows[0]["us_per_query"], rows[0]["mflops"]
    for f in plan["funnels"]:
        dims, sizes = f["dims"], f["shortlist_sizes"]
        idx, sec_s = _timed(lambda: funnel_retrieval(db, test.embeddings, dims, sizes, k, method=method,
                                                     hnsw_m=plan["hnsw_m"], ef_search=plan["ef_search"],
                                                     ef_construction=plan["ef_construction"]), repeats)
        row, us, mflops = score(idx), 1e6 * sec_s / q, funnel_mflops(n, dims, sizes)
        rows.append({"kind": f"funnel ({method})", "D_s": dims[0], "D_r": ",".join(map(str, dims[1:])),
                     "K": ",".join(map(str, sizes)), **row,
                     "kept": row[headline] / rows[0][headline] if rows[0][headline] > 0 else float("nan"),
                     "size_fraction": dims[0] / width, "mflops": mflops, "cost_fraction": mflops / exact_mflops,
                     "us_per_query": us, "speedup": exact_us / us if us > 0 else float("inf")})
        progress(f"funnel {dims}")
    write_table(rows, out, "adaptive_retrieval", f"Adaptive retrieval, {ctx['label']}",
                [f"database: train ({n} items), queries: test ({q}); shortlist K items by {method} search on "
                 f"the first D_s coordinates, rerank them on D_r, keep the top {k}; map@{k}/top1 in %.",
                 "mflops: the paper's cost model per query, (N*D_s + sum K_i*D_r_i)/1e6 with this database's N; "
                 f"exact: N*d/1e6; cost_fraction: mflops / exact's; kept: {headline} / exact search's at the full "
                 f"width {width}; size_fraction: D_s / {width}.",
                 f"us_per_query: measured wall-clock per query on this machine (best of {repeats}; queries "
                 "normalised, shortlist search and rerank; the shortlist index is built beforehand, a funnel's "
                 "inside its time); speedup: exact us_per_query / this one."])
    _plot_adaptive_retrieval(rows, headline, out / "adaptive_retrieval.png", f"Adaptive retrieval, {ctx['label']}")
    return rows


def _run_baselines(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.baselines import rand_fs_retrieval, rand_lp, svd_classifier, svd_probe
    from mrl.evaluation.classification import classifier_at

    train, test = ctx["train"], ctx["test"]
    width, methods, seed, probe = train.width, plan["methods"], plan["seed"], plan["probe"]
    weight, bias = classifier_at(ctx["head"], width)
    train_x, test_x = train.embeddings, test.embeddings  # memory-mapped; the baselines read what they need
    progress = _progress("baselines", len(plan["dims"]))
    rows = []
    for m in plan["dims"]:
        row: dict[str, Any] = {"dim": m}
        if "svd" in methods:
            row["svd_top1"] = 100.0 * svd_probe(train_x, train.labels, test_x, test.labels, m, center=plan["center"],
                                                seed=seed, **probe)["top1"]
        if "svd_classifier" in methods:
            rank = min(m, *weight.shape)  # a rank >= min(C, d) is the full classifier
            row["svd_classifier_top1"] = 100.0 * svd_classifier(weight, test_x, test.labels, rank, bias)
        if "rand_lp" in methods:
            row["rand_lp_top1"] = 100.0 * rand_lp(train_x, train.labels, test_x, test.labels, m, seed=seed,
                                                  **probe)["top1"]
        if "rand_fs" in methods:
            r = rand_fs_retrieval(train_x, train.labels, test_x, test.labels, [m], seed=seed, ks=plan["ks"])[0]
            row["rand_fs_top1"] = 100.0 * r["top1"]
            row.update({f"rand_fs_map@{k}": 100.0 * r[f"map@{k}"] for k in plan["ks"]})
        rows.append(row)
        progress(m)
    write_table(rows, out, "baselines", f"Baselines from FF-{width} (%), {ctx['label']}",
                ["svd: linear probe on the top-d right singular vectors of the train embeddings"
                 f"{' (centred)' if plan['center'] else ''}; svd_classifier: the FF classifier replaced by its rank-d "
                 "approximation (rank capped at min(C, width): the full classifier beyond it); rand_lp: linear probe "
                 "on d random coordinates; rand_fs: retrieval (train database) on d random coordinates.",
                 f"probes: {probe['optimizer']}, {probe['steps']} steps, weight decay {probe['weight_decay']:g}, "
                 f"seed {seed}."])
    series = {c.replace("_top1", ""): ([r["dim"] for r in rows], [r[c] for r in rows])
              for c in rows[0] if c.endswith("_top1")}
    _plot(out / "baselines.png", series, f"Baselines from FF-{width}, {ctx['label']}", "representation size",
          "top-1 (%)")
    return rows


def _run_robustness(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.robustness import robustness_sweep

    rows = []
    for name, split in plan["splits"].items():
        rows += robustness_sweep(split, ctx["head"], ctx["dims"], dataset_name=name, ks=plan["ks"][name])
        log.info("robustness: %s done", name)
    write_table(rows, out, "robustness", f"Robustness sets, linear accuracy (%), {ctx['label']}",
                ["ImageNet-A/-R: logits restricted to their 200 classes (Hendrycks et al.'s lists); V2/Sketch: all "
                 "classes."])
    series = {}
    for name in plan["splits"]:
        own = [r for r in rows if r["dataset"] == name]
        series[name] = ([r["dim"] for r in own], [r["top1"] for r in own])
    _plot(out / "robustness.png", series, f"Robustness sets, {ctx['label']}", "representation size",
          "top-1 accuracy (%)", markers=len(ctx["dims"]) <= 32)
    return rows


def _with_full_width(dims: Sequence[int], width: int) -> list[int]:
    """``dims`` and the full width (the reference of ``kept``), sorted."""
    return sorted(set(dims) | {width})


def _run_sts(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.sts import spearman_by_layer_and_size, spearman_by_size

    split = plan["split"]
    pairs, scores = np.asarray(split.relations["pairs"]), np.asarray(split.relations["scores"])
    width, dims = split.width, ctx["dims"]
    sizes = _with_full_width(dims, width)
    emb = np.asarray(split.embeddings, dtype=np.float32)
    rho = dict(zip(sizes, spearman_by_size(emb[pairs[:, 0]], emb[pairs[:, 1]], scores, sizes)))
    full = rho[width]
    rows = [{"dim": m, "spearman": 100.0 * rho[m], "kept": rho[m] / full, "size_fraction": m / width} for m in dims]
    notes = [f"{len(pairs)} pairs of {len(emb)} sentences ({split.path.name}); spearman: Spearman's rho x 100 between "
             "the gold scores and the cosine of the L2-normalised size-d prefixes (truncated, then normalised).",
             f"kept: rho at d / rho at the full width {width} ({100 * full:.2f}); size_fraction: d / {width}."]
    write_table(rows, out, "sts", f"STS Spearman by size, {ctx['label']}", notes)
    series = {"last layer" if split.layers else "spearman": ([r["dim"] for r in rows], [r["spearman"] for r in rows])}
    if split.layers:
        layer_emb = np.asarray(split.layer_embeddings, dtype=np.float32)
        by_layer = spearman_by_layer_and_size(layer_emb[:, pairs[:, 0]], layer_emb[:, pairs[:, 1]], scores, dims)
        layers = split.layers
        layer_rows = [{"layer": layer, "dim": m, "spearman": 100.0 * r, "kept": r / full, "size_fraction": m / width,
                       "layer_fraction": layer / max(layers)}
                      for layer, values in zip(layers, by_layer) for m, r in zip(dims, values)]
        write_table(layer_rows, out, "sts_layers", f"STS Spearman by layer and size, {ctx['label']}",
                    notes + ["2D Matryoshka: each layer's pooled output; kept is against the last layer at full width; "
                             f"layer_fraction: layer / {max(layers)}."])
        series = {f"layer {layer}": (list(dims), [100.0 * r for r in values])
                  for layer, values in zip(layers, by_layer)}
    _plot(out / "sts.png", series, f"STS-B Spearman, {ctx['label']}", "representation size", "Spearman x 100",
          markers=len(dims) <= 32)
    return rows


def _run_text_retrieval(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.text_retrieval import evaluate_text_retrieval

    queries, corpus, qrels = plan["queries"], plan["corpus"], plan["qrels"]
    width, dims, n = corpus.width, ctx["dims"], len(corpus.embeddings)
    ks = {key: plan[key] for key in ("ndcg_ks", "recall_ks", "mrr_ks")}
    sizes = _with_full_width(dims, width)
    found = evaluate_text_retrieval(corpus.embeddings, queries.embeddings, qrels, sizes, **ks,
                                    progress=_progress("text_retrieval", len(sizes)))
    by_dim = {r["dim"]: r for r in found}
    headline = f"ndcg@{plan['ndcg_ks'][0]}"
    metrics = [k for k in found[0] if "@" in k]
    full = by_dim[width][headline]
    rows = [{"dim": m, **_pct(by_dim[m], metrics), "kept": by_dim[m][headline] / full if full > 0 else float("nan"),
             "size_fraction": m / width, "num_queries": by_dim[m]["num_queries"],
             "search_seconds": by_dim[m]["search_seconds"]} for m in dims]
    split_names = f"queries: {queries.path.name} ({len(queries.embeddings)}), corpus: {corpus.path.name} ({n})"
    write_table(rows, out, "text_retrieval", f"Text retrieval (%) by size, {ctx['label']}",
                [f"{split_names}; exact cosine search on the L2-normalised size-d prefixes; graded gains, means over "
                 f"the {rows[0]['num_queries']} queries with a relevant document (trec_eval's definitions).",
                 f"kept: {headline} at d / at the full width {width} ({100 * full:.2f}); size_fraction: d / {width}."])
    series = {m: ([r["dim"] for r in rows], [r[m] for r in rows]) for m in metrics}
    _plot(out / "text_retrieval.png", series, f"Text retrieval, {ctx['label']}", "representation size", "%",
          markers=len(rows) <= 32)
    if plan["adaptive"]:
        _text_adaptive(ctx, plan, out, headline, split_names)
    return rows


def _text_adaptive(ctx: dict, plan: dict, out: Path, headline: str, split_names: str) -> list[dict]:
    """Shortlist K documents on the D_s prefix, rerank on D_r: the graded measures of the reranked lists, the
    paper's cost model and the wall-clock, next to exact full-width search (``text_retrieval_adaptive``)."""
    from mrl.evaluation.text_retrieval import text_retrieval_metrics

    queries, corpus = plan["queries"], plan["corpus"]
    n, width, method = len(corpus.embeddings), corpus.width, plan["method"]
    ks = {key: plan[key] for key in ("ndcg_ks", "recall_ks", "mrr_ks")}

    def scored(ranked: np.ndarray) -> dict[str, float]:
        found = text_retrieval_metrics(ranked, plan["qrels"], n, **ks)
        return _pct(found, [k for k in found if "@" in k])

    rows = _adaptive_sweep(corpus.embeddings, queries.embeddings, plan, plan["depth"], scored, headline,
                           _progress("text_retrieval (adaptive)", 1 + len(plan["shortlist_dims"])))
    write_table(rows, out, "text_retrieval_adaptive", f"Adaptive text retrieval (%), {ctx['label']}",
                [f"{split_names}; shortlist K documents by {method} search on the first D_s coordinates, rerank them "
                 f"on D_r, keep the top {plan['depth']}.", *_adaptive_notes(headline, width, plan["repeats"])])
    _plot_adaptive_retrieval(rows, headline, out / "text_retrieval_adaptive.png",
                             f"Adaptive text retrieval, {ctx['label']}")
    return rows


def _adaptive_notes(headline: str, width: int, repeats: int) -> list[str]:
    """The column notes of an adaptive-retrieval table written from ``_adaptive_sweep``'s rows."""
    return [f"kept: {headline} / exact search's at the full width {width}; size_fraction: D_s / {width}; mflops: "
            "the paper's cost model per query, (N*D_s + K*D_r)/1e6 (exact: N*d/1e6); cost_fraction: mflops / "
            "exact's.",
            f"us_per_query: measured wall-clock per query on this machine (best of {repeats}; query "
            "normalisation, shortlist search and rerank; the shortlist index is built beforehand); speedup: "
            "exact / this."]


def _adaptive_sweep(db: Any, q_emb: Any, plan: dict, depth: int, scored: Callable[[np.ndarray], dict[str, float]],
                    headline: str, progress: Callable[[int | str], None]) -> list[dict]:
    """Exact full-width search, then every (D_s, D_r, K) of ``plan`` (``shortlist_dims``, ``rerank_dims``,
    ``shortlist_ks``, ``method``, ``hnsw_m``, ``ef_construction``, ``ef_search``, ``repeats``): ``db [N, d]`` and
    ``q_emb [Q, d]`` searched to ``depth``, each ranking ``[Q, depth]`` scored by ``scored``, with the paper's cost
    model and the best-of-``repeats`` wall-clock per query. One row per setting, the exact one first; ``progress``
    is told of the exact search and of each shortlist size (``1 + len(shortlist_dims)`` steps)."""
    from mrl.evaluation.adaptive_retrieval import adaptive_retrieval, exact_retrieval_mflops, retrieval_mflops
    from mrl.evaluation.retrieval import build_index, l2_normalize_prefix, search_index

    db, q_emb = np.ascontiguousarray(db), np.asarray(q_emb)
    n, q, width = len(db), len(q_emb), db.shape[1]
    repeats, method = plan["repeats"], plan["method"]
    exact_mflops = exact_retrieval_mflops(n, width)
    full_index = build_index(l2_normalize_prefix(db, width, field="db_emb"), "exact")
    (_, idx), exact_s = _timed(lambda: search_index(full_index, l2_normalize_prefix(q_emb, width, field="q_emb"),
                                                    depth), repeats)
    full_index.reset()  # its memory back before the shortlist indexes
    exact_us = 1e6 * exact_s / q
    rows = [{"kind": "exact", "D_s": width, "D_r": width, "K": "", **scored(idx), "kept": 1.0, "size_fraction": 1.0,
             "mflops": exact_mflops, "cost_fraction": 1.0, "us_per_query": exact_us, "speedup": 1.0}]
    progress(f"exact search at {width}")
    for ds in plan["shortlist_dims"]:
        index = build_index(l2_normalize_prefix(db, ds, field="db_emb"), method, plan["hnsw_m"],
                            plan["ef_construction"])
        for dr in [d for d in plan["rerank_dims"] if d >= ds]:
            for kk in plan["shortlist_ks"]:
                idx, sec_s = _timed(lambda: adaptive_retrieval(db, q_emb, ds, dr, kk, depth, method=method,
                                                               ef_search=plan["ef_search"], index=index), repeats)
                row = scored(idx)
                us, mflops = 1e6 * sec_s / q, retrieval_mflops(n, ds, [(kk, dr)])
                rows.append({"kind": f"adaptive ({method})", "D_s": ds, "D_r": dr, "K": kk, **row,
                             "kept": row[headline] / rows[0][headline] if rows[0][headline] > 0 else float("nan"),
                             "size_fraction": ds / width, "mflops": mflops, "cost_fraction": mflops / exact_mflops,
                             "us_per_query": us, "speedup": exact_us / us if us > 0 else float("inf")})
        progress(f"shortlist size D_s={ds}")
    return rows


def _run_zero_shot(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.image_text import zero_shot

    split, ks = plan["split"], plan["ks"]
    width, dims = split.width, ctx["dims"]
    sizes = _with_full_width(dims, width)
    prompts = split.relations["class_prompt_embeddings"]
    found = {r["dim"]: r for r in zero_shot(split.embeddings, split.labels, prompts, sizes, ks,
                                            progress=_progress("zero_shot", len(sizes)))}
    full = found[width]["top1"]
    rows = [{"dim": m, **_pct(found[m], [f"top{k}" for k in ks]),
             "kept": found[m]["top1"] / full if full > 0 else float("nan"), "size_fraction": m / width,
             "num_images": found[m]["num_images"]} for m in dims]
    templates = split.meta.get("templates") or []
    write_table(rows, out, "zero_shot", f"Zero-shot classification (%) by size, {ctx['label']}",
                [f"{len(split.labels)} images of {split.path.name}, {prompts.shape[1]} classes, {prompts.shape[0]} "
                 f"prompt templates (e.g. {templates[0]!r})." if templates else f"{len(split.labels)} images.",
                 "Per size d: each prompt's d-prefix L2-normalised, averaged over the templates, renormalised; each "
                 "image's normalised d-prefix takes the class of highest cosine.",
                 f"kept: top-1 at d / at the full width {width} ({100 * full:.2f}); size_fraction: d / {width}."])
    series = {f"top{k}": ([r["dim"] for r in rows], [r[f"top{k}"] for r in rows]) for k in ks}
    _plot(out / "zero_shot.png", series, f"Zero-shot, {ctx['label']}", "representation size", "accuracy (%)",
          markers=len(rows) <= 32)
    return rows


def _run_cross_modal_retrieval(ctx: dict, plan: dict, out: Path) -> list[dict]:
    from mrl.evaluation.image_text import cross_modal_retrieval

    split, ks, match = plan["split"], plan["ks"], plan["match"]
    width, dims = split.width, ctx["dims"]
    sizes = _with_full_width(dims, width)
    found = {r["dim"]: r for r in cross_modal_retrieval(
        split.embeddings, split.text_embeddings, split.relations["image_ids"], split.relations["caption_ids"], sizes,
        ks, split.labels, match, progress=_progress("cross_modal_retrieval", len(sizes)))}
    metrics = [f"{d}_r@{k}" for d in ("i2t", "t2i") for k in ks]
    full = found[width]["rsum"]
    rows = [{"dim": m, **_pct(found[m], metrics), "rsum": found[m]["rsum"],
             "kept": found[m]["rsum"] / full if full > 0 else float("nan"), "size_fraction": m / width,
             "num_images": found[m]["num_images"], "num_captions": found[m]["num_captions"],
             "search_seconds": found[m]["search_seconds"]} for m in dims]
    image_rows, caption_rows, _ = plan["items"]
    what = ("an image and a caption match when they share a class (class-template captions)" if match == "label"
            else "an image and a caption match when a row pairs them (identical caption texts are one caption)")
    split_names = f"{split.path.name}: {len(image_rows)} distinct images, {len(caption_rows)} distinct captions"
    write_table(rows, out, "cross_modal_retrieval", f"Cross-modal retrieval (%) by size, {ctx['label']}",
                [f"{split_names}; exact cosine search on the L2-normalised size-d prefixes; {what}.",
                 "i2t_r@k: images with a matching caption among their top k captions; t2i_r@k: captions with a "
                 "matching image among their top k images; rsum: the sum of these recalls.",
                 f"kept: rsum at d / at the full width {width} ({full:.2f}); size_fraction: d / {width}."])
    series = {m: ([r["dim"] for r in rows], [r[m] for r in rows]) for m in metrics}
    _plot(out / "cross_modal_retrieval.png", series, f"Cross-modal retrieval, {ctx['label']}", "representation size",
          "recall (%)", markers=len(rows) <= 32)
    if plan["adaptive"]:
        _cross_modal_adaptive(ctx, plan, out, split_names)
    return rows


def _cross_modal_adaptive(ctx: dict, plan: dict, out: Path, split_names: str) -> list[dict]:
    """Text queries over the image database: shortlist K images on the D_s prefix, rerank on D_r; recall@k of the
    reranked lists, the paper's cost model and the wall-clock, next to exact full-width search."""
    from mrl.evaluation.image_text import hits_at, qrels_of

    split, ks = plan["split"], plan["ks"]
    image_rows, caption_rows, matches = plan["items"]
    db = np.asarray(split.embeddings)[image_rows]
    q_emb = np.asarray(split.text_embeddings)[caption_rows]
    qrels = qrels_of(matches, flip=True)
    headline, depth = f"t2i_r@{ks[0]}", max(ks)

    def scored(ranked: np.ndarray) -> dict[str, float]:
        return {f"t2i_r@{k}": 100.0 * v for k, v in hits_at(ranked, qrels, len(db), ks).items()}

    rows = _adaptive_sweep(db, q_emb, plan, depth, scored, headline,
                           _progress("cross_modal_retrieval (adaptive)", 1 + len(plan["shortlist_dims"])))
    write_table(rows, out, "cross_modal_retrieval_adaptive", f"Adaptive text->image retrieval (%), {ctx['label']}",
                [f"{split_names}; caption queries over the image database: shortlist K images by {plan['method']} "
                 f"search on the first D_s coordinates, rerank them on D_r, keep the top {depth}.",
                 *_adaptive_notes(headline, split.width, plan["repeats"])])
    _plot_adaptive_retrieval(rows, headline, out / "cross_modal_retrieval_adaptive.png",
                             f"Adaptive text->image retrieval, {ctx['label']}")
    return rows


class Evaluator(NamedTuple):
    """One evaluator: ``plan(ctx, cfg)`` checks its settings before anything is written, ``run(ctx, plan, out)``
    writes its tables. ``needs``: what it reads beyond the test split's embeddings and labels: ``train`` (the
    train split, the retrieval database), ``head`` (the checkpoint's classifiers), ``logits`` (the per-size
    logits stored with the embeddings, which a model without a classifier does not write). ``splits(cfg)``: the
    split folders an evaluator reads instead of ``test/`` (unlabelled evaluation sets), loaded into
    ``ctx["splits"]``; None: it reads ``test/``, which must then be labelled."""

    plan: Callable[[dict, dict], dict[str, Any]]
    run: Callable[[dict, dict, Path], list[dict]]
    needs: frozenset[str]
    splits: Callable[[dict], list[str]] | None = None


REGISTRY: dict[str, Evaluator] = {
    "classification": Evaluator(_plan_classification, _run_classification, frozenset({"train", "head"})),
    "adaptive_classification": Evaluator(_plan_adaptive_classification, _run_adaptive_classification,
                                         frozenset({"logits"})),
    "retrieval": Evaluator(_plan_retrieval, _run_retrieval, frozenset({"train"})),
    "adaptive_retrieval": Evaluator(_plan_adaptive_retrieval, _run_adaptive_retrieval, frozenset({"train"})),
    "baselines": Evaluator(_plan_baselines, _run_baselines, frozenset({"train", "head"})),
    "robustness": Evaluator(_plan_robustness, _run_robustness, frozenset({"head"})),
    "sts": Evaluator(_plan_sts, _run_sts, frozenset(), lambda cfg: [_split_name(cfg["sts"]["split"], "sts.split")]),
    "text_retrieval": Evaluator(_plan_text_retrieval, _run_text_retrieval, frozenset(),
                                lambda cfg: [_split_name(cfg["text_retrieval"]["queries"], "text_retrieval.queries")]),
    "zero_shot": Evaluator(_plan_zero_shot, _run_zero_shot, frozenset(),
                           lambda cfg: [_split_name(cfg["zero_shot"]["split"], "zero_shot.split")]),
    "cross_modal_retrieval": Evaluator(_plan_cross_modal_retrieval, _run_cross_modal_retrieval, frozenset(),
                                       lambda cfg: [_split_name(cfg["cross_modal_retrieval"]["split"],
                                                                "cross_modal_retrieval.split")]),
}


def _num_classes(test, train) -> int:
    """The classes of the labels: a classifier's own count, else (a model trained without one, e.g.
    contrastively) one more than the largest label of either split."""
    if test.meta["num_classes"] is not None:
        return int(test.meta["num_classes"])
    return int(max(int(split.labels.max()) for split in (test, train) if split is not None)) + 1


def _needing(what: str, evaluators: Collection[str]) -> list[str]:
    return [name for name in evaluators if what in REGISTRY[name].needs]


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------

def _run_name(ckpt_path: Any, emb_dir: Path) -> str:
    """What the plot titles call the evaluated model: the training run's folder for a checkpoint in
    ``<run>/checkpoints/``, else the checkpoint's file name, else the embeddings folder's name."""
    if not ckpt_path:
        return emb_dir.resolve().name
    ckpt = Path(str(ckpt_path))
    return ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name


def evaluate(cfg: Mapping[str, Any] | None = None, command: str | None = None,
             **overrides: Any) -> dict[str, list[dict[str, Any]]]:
    """Run the configured evaluators and write their tables; returns ``{evaluator: rows}``.

    ``cfg``: a dict or DictConfig with the keys of :data:`DEFAULTS` (missing keys take the defaults);
    ``overrides``: the same keys as keyword arguments. ``command``: the command line recorded in
    ``command.txt``. Every setting of every selected evaluator is checked first: a bad one raises
    :class:`ConfigError` before anything is written.
    """
    from omegaconf import OmegaConf

    from mrl.embeddings import load_split
    from mrl.evaluation.classification import check_head_type, classifier_at, load_head, resolve_dims
    from mrl.heads import model_label

    cfg = resolve_config(cfg, **overrides)
    if not cfg["embeddings_dir"]:
        raise ConfigError("embeddings_dir", "is not set", "give the folder scripts/embed.py wrote (train/ and test/)")
    if not cfg["output_dir"]:
        raise ConfigError("output_dir", "is not set", "give a folder for the tables")
    emb_dir = Path(str(cfg["embeddings_dir"])).expanduser()
    if not emb_dir.is_dir():
        raise ConfigError("embeddings_dir", f"{emb_dir} does not exist", "run scripts/embed.py first")
    out = Path(str(cfg["output_dir"])).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", f"{out} is a file", "give a folder for the tables")
    evaluators = cfg["evaluators"]
    own = {name: REGISTRY[name].splits(cfg) for name in evaluators if REGISTRY[name].splits is not None}
    splits = {name: load_split(emb_dir / name) for names in own.values() for name in names}
    on_test = [name for name in evaluators if name not in own]
    test = (splits.get("test") or load_split(emb_dir / "test")) if on_test else None
    if test is not None and test.labels is None:
        raise ConfigError("evaluators", f"{on_test} read labels, but {emb_dir}/test has none (an unlabelled "
                          "evaluation set)", "evaluate it with sts or text_retrieval, or embed a labelled test split")
    reference = test if test is not None else next(iter(splits.values()))
    for split in splits.values():
        _same_model(split, reference, "embeddings_dir")
    train = load_split(emb_dir / "train") if _needing("train", evaluators) else None
    if train is not None and (train.meta.get("checkpoint") != test.meta.get("checkpoint")
                              or train.width != test.width):
        raise ConfigError("embeddings_dir", f"train/ and test/ under {emb_dir} come from different checkpoints",
                          "embed both splits with one scripts/embed.py run")
    head = None
    head_type, nesting_dims = reference.meta["head"], list(reference.meta["nesting_dims"])
    ckpt_path = cfg["ckpt_path"] or reference.meta.get("checkpoint")
    if _needing("logits", evaluators) and test.logits is None:
        raise ConfigError("evaluators", f"{_needing('logits', evaluators)} read the per-size logits, but "
                          f"{emb_dir}/test has none (a model without a classifier)", "drop them from evaluators")
    if _needing("head", evaluators) or cfg["ckpt_path"]:
        if not ckpt_path:
            raise ConfigError("ckpt_path", "is not set and the embeddings do not record their checkpoint",
                              "give ckpt_path=/path/to/checkpoint.ckpt")
        head = load_head(ckpt_path, cfg["head"])
        if head.head_type != head_type or head.nesting_dims != nesting_dims \
                or head.meta.get("num_classes") != reference.meta["num_classes"]:
            raise ConfigError("ckpt_path", f"{ckpt_path} (head {head.head_type}, sizes {head.nesting_dims}, "
                              f"{head.meta.get('num_classes')} classes) is not the checkpoint the embeddings were made "
                              f"with (head {head_type}, sizes {nesting_dims}, {reference.meta['num_classes']} classes)",
                              "give the checkpoint passed to scripts/embed.py, or re-embed")
    else:
        check_head_type(cfg["head"], head_type, f"{reference.path} (embeddings)")
    dims = resolve_dims(cfg["dims"], head_type, nesting_dims, reference.width)
    if head is not None and {"classification", "robustness"} & set(evaluators):
        for d in dims:
            classifier_at(head, d)
    model = model_label(head_type, nesting_dims)
    ctx = {"train": train, "test": test, "splits": splits, "emb_dir": emb_dir, "head": head, "head_type": head_type,
           "nesting_dims": nesting_dims, "dims": dims,
           "num_classes": _num_classes(test, train) if test is not None else reference.meta["num_classes"],
           "label": f"{model}, {_run_name(ckpt_path, emb_dir)}",
           "cfg_splits": {name: cfg[name]["split"] for name in ("zero_shot", "cross_modal_retrieval")}}
    plans = {name: REGISTRY[name].plan(ctx, cfg) for name in evaluators}

    out.mkdir(parents=True, exist_ok=True)
    resolved = {"resolved": {"ckpt_path": str(ckpt_path) if ckpt_path else None, "head": head_type,
                             "nesting_dims": nesting_dims, "width": reference.width, "dims": dims}}
    atomic_write_text(out / "eval_config.yaml", OmegaConf.to_yaml(OmegaConf.create({**cfg, **resolved})))
    atomic_write_text(out / "command.txt", (command or "mrl.evaluation.run.evaluate() (called from Python)") + "\n")
    tables = {}
    for i, name in enumerate(evaluators, 1):
        log.info("%s (%d/%d): %s", name, i, len(evaluators), ctx["label"])
        t0 = time.perf_counter()
        tables[name] = REGISTRY[name].run(ctx, plans[name], out)
        log.info("%s: done in %.1f s -> %s", name, time.perf_counter() - t0, out / f"{name}.md")
    if ckpt_path:
        _log_to_training_run(tables, Path(str(ckpt_path)), cfg["wandb"])
    return tables


# what goes to W&B per evaluator: (the rows' size column, the metric columns), each a table, line plots and
# summary fields eval/<evaluator>/<metric>@<size> of the training run
WANDB_TABLES = {"classification": ("dim", ("top1", "top5", "knn_top1")),
                "retrieval": ("dim", ("map@10", "precision@10", "recall@10", "top1")),
                "adaptive_classification": ("cap", ("accuracy", "expected_dim", "fixed_accuracy")),
                "sts": ("dim", ("spearman", "kept")),
                "text_retrieval": ("dim", ("ndcg@10", "recall@100", "mrr@10", "kept")),
                "zero_shot": ("dim", ("top1", "top5", "kept")),
                "cross_modal_retrieval": ("dim", ("i2t_r@1", "t2i_r@1", "i2t_r@10", "t2i_r@10", "rsum"))}


def _log_to_training_run(tables: Mapping[str, list[dict]], ckpt_path: Path, mode: str) -> None:
    """Add the evaluator tables to the W&B run of the training that wrote ``ckpt_path`` (its id, project and
    entity are in the checkpoint), so a W&B runs table shows mAP@10 and the rest beside the training's metrics.
    Offline (no credentials or network) the run is continued in ``<run dir>/wandb``; a checkpoint without a
    W&B run is left alone."""
    from mrl.callbacks import RunIdentity, log_size_table
    from mrl.checkpoint import read_checkpoint
    from mrl.loggers import resolve_wandb_mode

    mode = resolve_wandb_mode(mode)
    identity = RunIdentity.stored(read_checkpoint(ckpt_path, metadata_only=True)[0]) if mode != "disabled" else {}
    if not identity.get("wandb_run_id"):
        return
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run_dir = ckpt_path.resolve().parent.parent  # <run>/checkpoints/<name>.ckpt
    run = wandb.init(id=identity["wandb_run_id"], project=identity.get("wandb_project") or "mrl",
                     entity=identity.get("wandb_entity"), resume="allow", mode=mode, dir=str(run_dir))
    for name, rows in tables.items():
        if name in WANDB_TABLES and rows:
            x, metrics = WANDB_TABLES[name]
            log_size_table(run, f"eval/{name}", rows, x, [m for m in metrics if m in rows[0]])
    log.info("evaluator tables logged to W&B run %s (%s)", identity["wandb_run_id"], mode)
    run.finish()
