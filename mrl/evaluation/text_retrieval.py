"""Text retrieval with graded relevance per Matryoshka size: nDCG@k, recall@k and MRR@k of the documents ranked by
cosine similarity of L2-normalised prefixes (Cranfield, BEIR folders).

Judgements are arrays ``qrels [R, 3]`` int64: query index, document index, gain (row indices into the queries and
corpus embeddings). A document is relevant when its gain is > 0; unjudged documents have gain 0. The measures
are those of trec_eval (through ``pytrec_eval``, as BEIR reports them):

* ``ndcg@k``: ``DCG@k / IDCG@k`` with linear gains, ``DCG@k = sum_{i<=k} gain_i / log2(i + 1)``, the ideal
  ranking being the query's judged gains sorted in decreasing order;
* ``recall@k``: relevant documents in the top ``k`` / the query's relevant documents;
* ``mrr@k``: ``1 / rank`` of the first relevant document in the top ``k`` (0 if none).

A query without any relevant document is left out of the means (trec_eval evaluates only queries that have
relevant judgements); ``num_queries`` says how many counted. Metrics are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import (_as_2d, _check_dims, _check_ks, build_index, l2_normalize_prefix,
                                      search_index)

DEFAULT_KS = {"ndcg": (10,), "recall": (100,), "mrr": (10,)}


def check_qrels(qrels: Any, num_queries: int, num_docs: int, field: str = "qrels") -> np.ndarray:
    """``qrels [R, 3]`` as int64, checked: query indices in ``0..num_queries-1``, document indices in
    ``0..num_docs-1``, each (query, document) judged once."""
    qrels = np.asarray(qrels)
    if qrels.ndim != 2 or qrels.shape[1] != 3:
        raise ConfigError(field, f"expected [judgements, 3] (query index, document index, gain), got shape "
                          f"{qrels.shape}")
    if not np.issubdtype(qrels.dtype, np.integer):
        raise ConfigError(field, f"must be integers, got dtype {qrels.dtype}")
    qrels = qrels.astype(np.int64, copy=False)
    for column, size, what in ((0, num_queries, "query"), (1, num_docs, "document")):
        values = qrels[:, column]
        if len(values) and (values.min() < 0 or values.max() >= size):
            bad = int(values[(values < 0) | (values >= size)][0])
            raise ConfigError(field, f"{what} index {bad} is outside 0..{size - 1}",
                              "embed the queries and corpus the judgements were read with")
    keys = qrels[:, 0] * num_docs + qrels[:, 1]
    if len(np.unique(keys)) != len(keys):
        raise ConfigError(field, "judges some (query, document) pair twice", "keep one judgement per pair")
    return qrels


def ranked_gains(ranked: Any, qrels: np.ndarray, num_docs: int) -> np.ndarray:
    """Gain of each ranked document: ``[Q, K]`` float64 for ``ranked [Q, K]`` document indices (``-1``: padding,
    gain 0), looked up in ``qrels`` (unjudged: 0)."""
    ranked = np.asarray(ranked, dtype=np.int64)
    judged = qrels[:, 0] * num_docs + qrels[:, 1]
    order = np.argsort(judged)
    judged, gains = judged[order], qrels[order, 2].astype(np.float64)
    queries = np.arange(len(ranked), dtype=np.int64)[:, None]
    keys = queries * num_docs + np.clip(ranked, 0, None)
    at = np.clip(np.searchsorted(judged, keys), 0, max(len(judged) - 1, 0))
    found = (len(judged) > 0) & (ranked >= 0)
    if len(judged):
        found &= judged[at] == keys
    return np.where(found, gains[at] if len(judged) else 0.0, 0.0)


def _ideal_gains(qrels: np.ndarray, num_queries: int, depth: int) -> np.ndarray:
    """``[Q, depth]``: each query's positive gains in decreasing order, zero-padded."""
    positive = qrels[qrels[:, 2] > 0]
    order = np.lexsort((-positive[:, 2], positive[:, 0]))
    positive = positive[order]
    starts = np.searchsorted(positive[:, 0], np.arange(num_queries))
    place = np.arange(len(positive)) - starts[positive[:, 0]]
    ideal = np.zeros((num_queries, depth))
    keep = place < depth
    ideal[positive[keep, 0], place[keep]] = positive[keep, 2]
    return ideal


def text_retrieval_metrics(ranked: Any, qrels: Any, num_docs: int, ndcg_ks: Sequence[int] = DEFAULT_KS["ndcg"],
                           recall_ks: Sequence[int] = DEFAULT_KS["recall"],
                           mrr_ks: Sequence[int] = DEFAULT_KS["mrr"]) -> dict[str, float]:
    """nDCG@k, recall@k and MRR@k of ranked lists (see the module docstring for the definitions).

    Args:
        ranked: ``[Q, K]`` document indices of each query, best first (``K >= `` every k; ``-1`` pads).
        qrels: ``[R, 3]`` int (query index, document index, gain); gain > 0 is relevant.
        num_docs: the corpus size.

    Returns ``{"ndcg@k", "recall@k", "mrr@k" for each k, "num_queries"}``: means over the queries with at least one
    relevant document.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] == 0:
        raise ConfigError("ranked", f"expected [num_queries, K] document indices, got shape {ranked.shape}")
    q, depth = ranked.shape
    qrels = check_qrels(qrels, q, num_docs)
    ks = {name: _check_ks(value, depth, f"{name}_ks", f"the {depth} ranked documents")
          for name, value in (("ndcg", ndcg_ks), ("recall", recall_ks), ("mrr", mrr_ks))}
    gains = ranked_gains(ranked, qrels, num_docs)
    relevant_total = np.bincount(qrels[qrels[:, 2] > 0, 0], minlength=q)
    counted = relevant_total > 0
    if not counted.any():
        raise ConfigError("qrels", "has no relevant judgement (gain > 0) for any query",
                          "check the judgements file and its relevance scale")
    out: dict[str, float] = {}
    discount = 1.0 / np.log2(np.arange(2, depth + 2))
    ideal = _ideal_gains(qrels, q, max(ks["ndcg"]))
    for k in ks["ndcg"]:
        dcg = gains[:, :k] @ discount[:k]
        idcg = ideal[:, :k] @ discount[:k]
        out[f"ndcg@{k}"] = float(np.mean(dcg[counted] / idcg[counted]))
    hits = gains > 0
    for k in ks["recall"]:
        out[f"recall@{k}"] = float(np.mean(hits[counted, :k].sum(axis=1) / relevant_total[counted]))
    for k in ks["mrr"]:
        first = np.where(hits[:, :k].any(axis=1), hits[:, :k].argmax(axis=1) + 1, 0)
        out[f"mrr@{k}"] = float(np.mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)[counted]))
    out["num_queries"] = int(counted.sum())
    return out


def evaluate_text_retrieval(corpus_emb: Any, query_emb: Any, qrels: Any, dims: Sequence[int],
                            ndcg_ks: Sequence[int] = DEFAULT_KS["ndcg"],
                            recall_ks: Sequence[int] = DEFAULT_KS["recall"], mrr_ks: Sequence[int] = DEFAULT_KS["mrr"],
                            progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Exact cosine search of every query over the corpus at each prefix size, scored with
    :func:`text_retrieval_metrics`. ``corpus_emb [N, W]``, ``query_emb [Q, W]``, ``qrels [R, 3]``.

    Returns one row per size: ``{"dim", "ndcg@k", "recall@k", "mrr@k", "num_queries", "search_seconds"}`` (equal
    scores rank by corpus index, as in :func:`~mrl.evaluation.retrieval.search`).
    """
    corpus_emb = _as_2d(corpus_emb, "corpus_emb")
    query_emb = _as_2d(query_emb, "query_emb")
    if query_emb.shape[1] != corpus_emb.shape[1]:
        raise ConfigError("query_emb", f"has width {query_emb.shape[1]} but corpus_emb has {corpus_emb.shape[1]}",
                          "embed queries and corpus with the same model")
    dims = _check_dims(dims, corpus_emb.shape[1])
    n = len(corpus_emb)
    qrels = check_qrels(qrels, len(query_emb), n)
    depth = max(_check_ks(list(ndcg_ks) + list(recall_ks) + list(mrr_ks), n, "ks", f"the corpus size {n}"))
    rows = []
    for dim in dims:
        t0 = time.perf_counter()
        index = build_index(l2_normalize_prefix(corpus_emb, dim, field="corpus_emb"))
        _, ranked = search_index(index, l2_normalize_prefix(query_emb, dim, field="query_emb"), depth)
        seconds = time.perf_counter() - t0
        rows.append({"dim": dim, **text_retrieval_metrics(ranked, qrels, n, ndcg_ks, recall_ks, mrr_ks),
                     "search_seconds": seconds})
        if progress is not None:
            progress(dim)
    return rows
