"""Nearest-neighbour retrieval over Matryoshka prefixes, and the paper's retrieval metrics.

Everything here is a pure function over numpy arrays. Similarity is cosine: each prefix is
L2-normalised and compared by inner product (the same ranking as L2 distance between normalised
vectors, which is what the paper's ``exactl2`` faiss index computes).

Ties: among database rows with equal scores, the lower database index comes first, in every backend
(faiss exact and HNSW, and torch on a GPU), so a result does not depend on which library or machine
ranked it (:func:`search_index`, :func:`_torch_exact_search`).

Metrics are fractions in ``[0, 1]`` (not percent).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mrl.errors import ConfigError

DEFAULT_KS = (10, 25, 50, 100)
METHODS = ("exact", "hnsw")
DEVICES = ("cpu", "cuda")  # cuda may name a device: cuda:1


# --------------------------------------------------------------------------------------------------
# validation helpers (shared with the other evaluation modules)
# --------------------------------------------------------------------------------------------------

def _as_2d(x: Any, field: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(field, f"expected a 2-D array [num_items, width], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ConfigError(field, "is empty (0 rows)", "pass at least one embedding")
    if x.shape[1] == 0:
        raise ConfigError(field, "has width 0", "pass embeddings with at least one coordinate")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ConfigError(field, f"must be real numbers, got dtype {x.dtype}")
    return x


def _as_labels(y: Any, n: int, field: str, rows_field: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # the paper's label files are [N, 1]
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(field, f"expected a 1-D array of class ids, got shape {y.shape}")
    if len(y) != n:
        raise ConfigError(field, f"has {len(y)} labels but {rows_field} has {n} rows",
                          "pass one label per embedding")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ConfigError(field, f"class ids must be integers, got dtype {y.dtype}")
    return y


def _check_int(value: Any, field: str, low: int = 1, high: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(field, f"must be an int, got {value!r}")
    value = int(value)
    if value < low:
        raise ConfigError(field, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(field, f"is {value}, larger than {what or high}", f"use a value <= {high}")
    return value


def _check_dim(dim: Any, width: int, field: str = "dim") -> int:
    return _check_int(dim, field, 1, width, f"the embedding width {width}")


def _check_dims(dims: Any, width: int, field: str = "dims") -> list[int]:
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
        dims = [dims]
    if isinstance(dims, (str, bytes)) or not isinstance(dims, (Sequence, np.ndarray)):
        raise ConfigError(field, f"expected a list of ints, got {dims!r}")
    dims = list(dims)
    if not dims:
        raise ConfigError(field, "is empty", "give at least one size")
    return [_check_dim(d, width, field) for d in dims]


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError("method", f"unknown search method {method!r}", f"use one of {list(METHODS)}")
    return method


def check_search_settings(method: Any = "exact", hnsw_m: Any = 32, ef_search: Any = 128, ef_construction: Any = 200,
                          device: Any = "cpu") -> dict[str, Any]:
    """The search settings of :func:`search` checked together (``ConfigError`` naming the bad one), whether or
    not the chosen method uses them, so a typo is caught before any search runs."""
    _check_method(method)
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise ConfigError("device", f"unknown device {device!r}", "use cpu or cuda (cuda:N for another GPU)")
    return {"method": method, "hnsw_m": _check_int(hnsw_m, "hnsw_m", 2),
            "ef_search": _check_int(ef_search, "ef_search", 1),
            "ef_construction": _check_int(ef_construction, "ef_construction", 1), "device": device}


def import_faiss():
    """faiss, without the INFO lines its loader logs about which optional instruction-set build it found
    (Hydra's logging shows INFO records, and they say nothing about the results)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


# --------------------------------------------------------------------------------------------------
# normalisation and search
# --------------------------------------------------------------------------------------------------

def l2_normalize_prefix(emb: Any, dim: int | None = None, field: str = "embeddings") -> np.ndarray:
    """The first ``dim`` coordinates of each row, L2-normalised, as a new C-contiguous float32 array.

    ``dim=None`` keeps the full width. Rows whose prefix is all zeros stay zero (they then score 0
    against everything). Raises :class:`ConfigError` for NaN/inf rows or ``dim`` outside ``[1, width]``.
    """
    emb = _as_2d(emb, field)
    width = emb.shape[1]
    dim = width if dim is None else _check_dim(dim, width)
    out = np.array(emb[:, :dim], dtype=np.float32, order="C", copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64))
    if not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise ConfigError(field, f"row {bad} contains NaN or inf (or overflows float32)",
                          "fix the embedding file")
    norms[norms == 0] = 1.0
    out /= norms.astype(np.float32)[:, None]
    return out


def build_index(database: Any, method: str = "exact", hnsw_m: int = 32, ef_construction: int = 200):
    """A faiss inner-product index over ``database`` rows, used as-is (normalise them first).

    ``exact``: ``IndexFlatIP``; ``hnsw``: ``IndexHNSWFlat(d, hnsw_m, METRIC_INNER_PRODUCT)`` with
    ``efConstruction = ef_construction``.
    """
    faiss = import_faiss()
    _check_method(method)
    database = np.ascontiguousarray(_as_2d(database, "database"), dtype=np.float32)
    d = database.shape[1]
    if method == "exact":
        index = faiss.IndexFlatIP(d)
    else:
        _check_int(hnsw_m, "hnsw_m", 2)
        _check_int(ef_construction, "ef_construction", 1)
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
    index.add(database)
    return index


def _top_k_ties_by_index(run: Callable[[Any, int], tuple[np.ndarray, np.ndarray]], num_queries: int, k: int,
                         num_database: int, exhaustive: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query, best first, equal scores in increasing database index.

    ``run(rows, length)`` returns the ``length`` best ``(scores, indices)`` of the queries ``rows`` (a slice or
    an index array), best first in any order among equal scores (padding: index -1, score -inf). A backend
    keeps an arbitrary subset of the items tied at its cut-off, so each query is searched one item deeper than
    ``k``; a query whose last item still ties with its k-th may have more of that score beyond the list and is
    searched again with a list twice as long, up to ``max(4 (k + 1), k + 256)``. The few queries still open
    then (a tie as wide as a class of duplicates, or a 1-dim prefix where half the database scores the same)
    go to ``exhaustive(rows, k)``: every database item scored, a stable sort. Then every list is sorted by
    (score descending, index ascending).
    """
    scores_out = np.empty((num_queries, k), dtype=np.float32)
    idx_out = np.empty((num_queries, k), dtype=np.int64)
    pending: Any = slice(None)
    todo = np.arange(num_queries)
    length = min(k + 1, num_database)
    deepest = min(num_database, max(4 * (k + 1), k + 256))
    while True:
        scores, indices = run(pending, length)
        if length < num_database:
            open_ = (scores[:, -1] >= scores[:, k - 1]) & np.isfinite(scores[:, k - 1])
        else:
            open_ = np.zeros(len(scores), dtype=bool)
        done = ~open_
        order = np.lexsort((indices[done], -scores[done]), axis=1)[:, :k]
        scores_out[todo[done]] = np.take_along_axis(scores[done], order, axis=1)
        idx_out[todo[done]] = np.take_along_axis(indices[done], order, axis=1)
        if not open_.any():
            return scores_out, idx_out
        todo = todo[open_]
        pending = todo
        if length >= deepest:
            scores_out[todo], idx_out[todo] = exhaustive(todo, k)
            return scores_out, idx_out
        length = min(2 * length, num_database)


def _exhaustive_top_k(database: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int,
                      chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries[rows]`` over every database row, equal scores in increasing index."""
    scores_out = np.empty((len(rows), k), dtype=np.float32)
    idx_out = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), chunk):
        scores = queries[rows[start:start + chunk]] @ database.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: lower index first among equals
        scores_out[start:start + chunk] = np.take_along_axis(scores, order, axis=1)
        idx_out[start:start + chunk] = order
    return scores_out, idx_out


def search_index(index, queries: Any, k: int, ef_search: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Search a :func:`build_index` index: ``(scores [Q, k] float32, indices [Q, k] int64)``.

    Scores are inner products, best first; equal scores in increasing database index. For HNSW the search
    beam is at least ``max(ef_search, k)``; an HNSW search that finds fewer than ``k`` items pads with index
    ``-1`` and score ``-inf``.
    """
    queries = np.ascontiguousarray(_as_2d(queries, "queries"), dtype=np.float32)
    if queries.shape[1] != index.d:
        raise ConfigError("queries", f"have width {queries.shape[1]} but the database has width {index.d}",
                          "search with the same prefix size on both sides")
    k = _check_int(k, "k", 1, index.ntotal, f"the database size {index.ntotal}")
    hnsw = hasattr(index, "hnsw")
    if hnsw:
        _check_int(ef_search, "ef_search", 1)

    def run(rows, length: int) -> tuple[np.ndarray, np.ndarray]:
        if hnsw:
            index.hnsw.efSearch = max(int(ef_search), length)
        scores, indices = index.search(queries[rows], length)
        return np.where(indices < 0, -np.inf, scores).astype(np.float32), indices.astype(np.int64, copy=False)

    def exhaustive(rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return _exhaustive_top_k(index.reconstruct_n(0, index.ntotal), queries, rows, length)

    return _top_k_ties_by_index(run, len(queries), k, index.ntotal, exhaustive)


def _torch_exact_search(database: np.ndarray, queries: np.ndarray, k: int, device: str,
                        query_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with torch (matmul + topk), chunked over queries; equal scores in
    increasing database index (``topk`` itself leaves their order open)."""
    import torch

    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32)).to(device)

    def run(rows, length: int) -> tuple[np.ndarray, np.ndarray]:
        selected = queries[rows]
        scores_out = np.empty((len(selected), length), dtype=np.float32)
        idx_out = np.empty((len(selected), length), dtype=np.int64)
        for start in range(0, len(selected), query_chunk):
            q = torch.from_numpy(np.ascontiguousarray(selected[start:start + query_chunk],
                                                      dtype=np.float32)).to(device)
            top = (q @ db.T).topk(length, dim=1, largest=True, sorted=True)
            scores_out[start:start + len(q)] = top.values.cpu().numpy()
            idx_out[start:start + len(q)] = top.indices.cpu().numpy()
        return scores_out, idx_out

    def exhaustive(rows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        return _exhaustive_top_k(np.ascontiguousarray(database, dtype=np.float32), queries, rows, length)

    with torch.no_grad():
        return _top_k_ties_by_index(run, len(queries), k, len(database), exhaustive)


def search(database: Any, queries: Any, k: int, method: str = "exact", hnsw_m: int = 32,
           ef_search: int = 128, ef_construction: int = 200, device: str = "cpu",
           normalize: bool = True, query_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows for each query by cosine similarity.

    Returns ``(scores [Q, k] float32, indices [Q, k] int64)``, best first; scores are inner products
    of the L2-normalised rows (``normalize=False``: of the rows as given).

    * ``method="exact"``: faiss ``IndexFlatIP`` (brute force).
    * ``method="hnsw"``: faiss ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT`` (``hnsw_m`` links per
      node, ``ef_construction``/``ef_search`` beam widths; the search beam is at least ``k``).
    * ``device="cuda..."`` with ``method="exact"`` and a visible GPU: torch matmul + topk in chunks
      of ``query_chunk`` queries. Without a GPU it warns and uses faiss on the CPU. HNSW always runs on
      the CPU (faiss-cpu).

    Equal scores come in increasing database index, whichever backend ranked them.
    """
    check_search_settings(method, hnsw_m, ef_search, ef_construction, device)
    database = _as_2d(database, "database")
    queries = _as_2d(queries, "queries")
    if queries.shape[1] != database.shape[1]:
        raise ConfigError("queries", f"have width {queries.shape[1]} but the database has width "
                          f"{database.shape[1]}", "search with the same prefix size on both sides")
    k = _check_int(k, "k", 1, len(database), f"the database size {len(database)}")
    if normalize:
        database = l2_normalize_prefix(database, field="database")
        queries = l2_normalize_prefix(queries, field="queries")
    if device.startswith("cuda") and method == "exact":
        import torch

        if torch.cuda.is_available():
            return _torch_exact_search(database, queries, k, device, query_chunk)
        warnings.warn(f"device={device!r} but torch.cuda.is_available() is False; "
                      "searching on the CPU with faiss", stacklevel=2)
    index = build_index(database, method, hnsw_m, ef_construction)
    return search_index(index, queries, k, ef_search)


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------

def class_counts(labels: Any) -> dict[int, int]:
    """``{class id: number of items}`` for a label array (the ``database_class_counts`` argument)."""
    values, counts = np.unique(np.asarray(labels).reshape(-1), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _relevant_counts(query_labels: np.ndarray, database_class_counts: Any) -> np.ndarray:
    """Number of database items of each query's class (0 for classes absent from the database)."""
    field = "database_class_counts"
    if isinstance(database_class_counts, Mapping):
        out = np.array([database_class_counts.get(int(c), 0) for c in query_labels], dtype=np.float64)
    else:
        counts = np.asarray(database_class_counts)
        if counts.ndim != 1:
            raise ConfigError(field, f"expected a dict {{class: count}} or a 1-D array indexed by class, "
                              f"got shape {counts.shape}")
        inside = (query_labels >= 0) & (query_labels < len(counts))
        out = np.zeros(len(query_labels), dtype=np.float64)
        out[inside] = counts[query_labels[inside]]
    if np.any(out < 0) or not np.all(np.isfinite(out)):
        raise ConfigError(field, "counts must be finite and >= 0")
    return out


def _check_ks(ks: Any, max_k: int, field: str = "ks", what: str | None = None) -> list[int]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = [ks]
    if isinstance(ks, (str, bytes)) or not isinstance(ks, (Sequence, np.ndarray)):
        raise ConfigError(field, f"expected a list of ints, got {ks!r}")
    ks = list(ks)
    if not ks:
        raise ConfigError(field, "is empty", "give at least one k, e.g. ks=[10]")
    what = what or f"the {max_k} retrieved neighbours"
    return [_check_int(k, field, 1, max_k, what) for k in ks]


def retrieval_metrics(retrieved_labels: Any, query_labels: Any, database_class_counts: Any,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The paper's retrieval metrics from the labels of the ranked neighbours.

    Args:
        retrieved_labels: ``[Q, K]`` class ids of each query's neighbours, best first (``K >= max(ks)``).
        query_labels: ``[Q]`` class ids.
        database_class_counts: number of database items per class, as ``{class: count}`` (see
            :func:`class_counts`) or an array indexed by class id.
        ks: cut-offs.

    Returns ``{"top1", "map@k", "precision@k", "recall@k", "hit@k" for each k}``, fractions in [0, 1],
    each the mean over all queries:

    * ``map@k``: per query ``(1/k) * sum over positions i <= k that are hits of precision@i`` -- the
      paper's definition (``compute_mAP_recall_at_k`` in the authors' code): it divides by ``k``, not by
      the number of hits, so a query with fewer than ``k`` relevant items cannot reach 1.
    * ``precision@k``: hits in the top ``k`` / ``k``.
    * ``recall@k``: hits in the top ``k`` / number of database items of the query's class. A query whose
      class is absent from the database has recall 0 and still counts in the mean (it is a failed
      query, not a skipped one). (The authors' code divided by a constant 1300, ImageNet's nominal
      images per class; we use the true count.)
    * ``hit@k``: 1 if any of the top ``k`` is a hit (the authors' "top-k").
    * ``top1``: the first neighbour's class equals the query's (1-NN accuracy).
    """
    retrieved = np.asarray(retrieved_labels)
    if retrieved.ndim != 2:
        raise ConfigError("retrieved_labels", f"expected a 2-D array [num_queries, K], got shape "
                          f"{retrieved.shape}")
    if retrieved.shape[0] == 0:
        raise ConfigError("retrieved_labels", "has no queries", "pass at least one query")
    query_labels = _as_labels(query_labels, retrieved.shape[0], "query_labels", "retrieved_labels")
    ks = _check_ks(ks, retrieved.shape[1])
    kmax = max(ks)
    hits = retrieved[:, :kmax] == query_labels[:, None]  # [Q, kmax]
    n_hits = np.cumsum(hits, axis=1, dtype=np.float64)  # hits among the first i+1
    precision_at_i = n_hits / np.arange(1, kmax + 1)
    ap_sum = np.cumsum(np.where(hits, precision_at_i, 0.0), axis=1)  # sum of precision@i over hits
    relevant = _relevant_counts(query_labels, database_class_counts)
    safe_relevant = np.where(relevant > 0, relevant, 1.0)

    out: dict[str, float] = {"top1": float(hits[:, 0].mean())}
    for k in ks:
        hk = n_hits[:, k - 1]
        out[f"map@{k}"] = float(np.mean(ap_sum[:, k - 1] / k))
        out[f"precision@{k}"] = float(np.mean(hk / k))
        out[f"recall@{k}"] = float(np.mean(np.where(relevant > 0, hk / safe_relevant, 0.0)))
        out[f"hit@{k}"] = float(np.mean(hk > 0))
    return out


def labels_of(indices: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """Class ids of retrieved ``indices``; padding indices (``-1``) get a label no class has."""
    indices = np.asarray(indices)
    labels = database_labels[np.clip(indices, 0, None)]
    if np.any(indices < 0):
        missing = (database_labels.min() if len(database_labels) else 0) - 1
        labels = np.where(indices < 0, missing, labels)
    return labels


def evaluate_retrieval(db_emb: Any, db_labels: Any, q_emb: Any, q_labels: Any, dims: Sequence[int],
                       ks: Sequence[int] = DEFAULT_KS, method: str = "exact", hnsw_m: int = 32,
                       ef_search: int = 128, ef_construction: int = 200, device: str = "cpu",
                       progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Retrieval metrics at each prefix size: one search per size with ``max(ks)`` neighbours.

    For each ``dim`` the database and queries are cut to their first ``dim`` coordinates and
    L2-normalised, searched with :func:`search`, and scored with :func:`retrieval_metrics`. Returns one
    row per dim: ``{"dim", "top1", "map@k", "precision@k", "recall@k", "hit@k", ...,
    "index_seconds", "search_seconds"}`` (index build and query wall-clock, normalisation excluded;
    on the torch/GPU path everything counts as search). ``progress(dim)`` is called as each size is done.
    """
    db_emb = _as_2d(db_emb, "db_emb")
    q_emb = _as_2d(q_emb, "q_emb")
    db_labels = _as_labels(db_labels, len(db_emb), "db_labels", "db_emb")
    q_labels = _as_labels(q_labels, len(q_emb), "q_labels", "q_emb")
    if q_emb.shape[1] != db_emb.shape[1]:
        raise ConfigError("q_emb", f"has width {q_emb.shape[1]} but db_emb has width {db_emb.shape[1]}",
                          "embed queries and database with the same model")
    dims = _check_dims(dims, db_emb.shape[1])
    ks = _check_ks(ks, len(db_emb), what=f"the database size {len(db_emb)}")
    check_search_settings(method, hnsw_m, ef_search, ef_construction, device)
    kmax = max(ks)
    counts = class_counts(db_labels)
    use_torch = device.startswith("cuda") and method == "exact" and _cuda_available()
    if device.startswith("cuda") and method == "exact" and not use_torch:
        warnings.warn(f"device={device!r} but torch.cuda.is_available() is False; "
                      "searching on the CPU with faiss", stacklevel=2)
    rows = []
    for dim in dims:
        db = l2_normalize_prefix(db_emb, dim, field="db_emb")
        q = l2_normalize_prefix(q_emb, dim, field="q_emb")
        t0 = time.perf_counter()
        if use_torch:
            index_seconds = 0.0
            _, idx = search(db, q, kmax, method, device=device, normalize=False)
        else:
            index = build_index(db, method, hnsw_m, ef_construction)
            index_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, idx = search_index(index, q, kmax, ef_search)
        search_seconds = time.perf_counter() - t0
        row: dict[str, float] = {"dim": dim}
        row.update(retrieval_metrics(labels_of(idx, db_labels), q_labels, counts, ks))
        row["index_seconds"] = index_seconds
        row["search_seconds"] = search_seconds
        rows.append(row)
        if progress is not None:
            progress(dim)
    return rows


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False
