"""Adaptive retrieval (shortlist with a small prefix, rerank with a larger one), funnels, and the
paper's cost model.

Adaptive retrieval (paper Sec. 5.1): retrieve a shortlist of ``K`` candidates by exact or HNSW search
on the first ``D_s`` coordinates, then reorder the shortlist by cosine similarity on the first ``D_r``
coordinates. A funnel repeats the rerank step with growing sizes and shrinking shortlists.

Cost model (MFLOPs per query, the paper's): ``(N * D_s + sum_i K_i * D_r_i) / 1e6`` for a database of
``N`` items. It reproduces every MFLOPs value of the paper's ImageNet-1K (``N = 1,281,167``) and
ImageNet-4K (``N = 4,202,000``) adaptive-retrieval tables to the printed two decimals. The paper's
*exact search* cost table (``imagenet1k_rn50_exact_retrieval_cost.csv``, 2624.24 MFLOPs at 2048) is
not ``N * d`` (= 2623.83 at 2048) but the same formula with ``D_s = D_r = d`` and a 200-item rerank,
``(N * d + 200 * d) / 1e6`` -- i.e. the diagonal rows of the adaptive table; use
``retrieval_mflops(N, d, [(200, d)])`` to reproduce it and :func:`exact_retrieval_mflops` for the
plain ``N * d``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import (
    _as_2d,
    _check_dim,
    _check_int,
    _check_method,
    l2_normalize_prefix,
    search,
    search_index,
)

IMAGENET1K_DATABASE_SIZE = 1_281_167
IMAGENET4K_DATABASE_SIZE = 4_202_000

_RERANK_BLOCK = 1 << 22  # float32 elements gathered per rerank chunk (16 MiB)


def _check_pair(db_emb: Any, q_emb: Any) -> tuple[np.ndarray, np.ndarray]:
    db_emb = _as_2d(db_emb, "db_emb")
    q_emb = _as_2d(q_emb, "q_emb")
    if q_emb.shape[1] != db_emb.shape[1]:
        raise ConfigError("q_emb", f"has width {q_emb.shape[1]} but db_emb has width {db_emb.shape[1]}",
                          "embed queries and database with the same model")
    return db_emb, q_emb


def rerank(db_emb: Any, q_emb: Any, candidates: Any, dim: int, k: int,
           query_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reorder each query's ``candidates`` by cosine similarity on the first ``dim`` coordinates.

    Only the candidate rows are read (gathered, cut to ``dim``, L2-normalised); the query prefix is
    L2-normalised too. Returns the best ``k`` as ``(scores [Q, k], indices [Q, k])``. Equal scores come in
    increasing database index, as in :func:`~mrl.evaluation.retrieval.search`; padding candidates (``-1``)
    score ``-inf`` and come last.
    """
    db_emb, q_emb = _check_pair(db_emb, q_emb)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or len(candidates) != len(q_emb):
        raise ConfigError("candidates", f"expected shape [{len(q_emb)}, K], got {candidates.shape}")
    if not np.issubdtype(candidates.dtype, np.integer):
        raise ConfigError("candidates", f"must be integer row indices, got dtype {candidates.dtype}")
    if candidates.size and candidates.max() >= len(db_emb):
        raise ConfigError("candidates", f"index {int(candidates.max())} is out of range for a database "
                          f"of {len(db_emb)} rows")
    dim = _check_dim(dim, db_emb.shape[1])
    n_cand = candidates.shape[1]
    k = _check_int(k, "k", 1, n_cand, f"the shortlist length {n_cand}")
    if query_chunk is None:
        query_chunk = max(1, _RERANK_BLOCK // max(1, n_cand * dim))
    q_norm = l2_normalize_prefix(q_emb, dim, field="q_emb")
    scores_out = np.empty((len(q_emb), k), dtype=np.float32)
    idx_out = np.empty((len(q_emb), k), dtype=np.int64)
    for start in range(0, len(q_emb), query_chunk):
        cand = candidates[start:start + query_chunk]
        valid = cand >= 0
        vecs = np.asarray(db_emb[np.where(valid, cand, 0), :dim], dtype=np.float32)  # [c, K, dim]
        q = q_norm[start:start + query_chunk]
        dots = np.matmul(vecs, q[:, :, None])[:, :, 0]
        norms = np.sqrt(np.einsum("ckd,ckd->ck", vecs, vecs))
        scores = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 0).astype(np.float32)
        scores = np.where(valid, scores, -np.inf)
        order = np.lexsort((cand, -scores), axis=1)[:, :k]
        scores_out[start:start + len(cand)] = np.take_along_axis(scores, order, axis=1)
        idx_out[start:start + len(cand)] = np.take_along_axis(cand, order, axis=1)
    return scores_out, idx_out


def _shortlist(db_emb: np.ndarray, q_emb: np.ndarray, dim: int, shortlist_k: int, method: str,
               hnsw_m: int, ef_search: int, ef_construction: int, device: str, index) -> np.ndarray:
    if index is not None:
        if index.d != dim or index.ntotal != len(db_emb):
            raise ConfigError("index", f"was built on {index.ntotal} vectors of width {index.d}, expected "
                              f"{len(db_emb)} of width {dim}",
                              "build it from l2_normalize_prefix(db_emb, shortlist_dim)")
        return search_index(index, l2_normalize_prefix(q_emb, dim, field="q_emb"), shortlist_k, ef_search)[1]
    return search(l2_normalize_prefix(db_emb, dim, field="db_emb"), l2_normalize_prefix(q_emb, dim, field="q_emb"),
                  shortlist_k, method=method, hnsw_m=hnsw_m, ef_search=ef_search,
                  ef_construction=ef_construction, device=device, normalize=False)[1]


def check_funnel(dims: Any, shortlist_sizes: Any, k: Any, width: int,
                 n_database: int) -> tuple[list[int], list[int], int]:
    """``(dims, shortlist_sizes, k)`` of a funnel checked against an embedding width and a database size:
    ``dims = [D_s, D_r1, ...]`` (at least two sizes in ``1..width``), one shortlist length per rerank size,
    the first at most the database size, each at most the one before (a funnel only shrinks), and
    ``k`` at most the last."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, (Sequence, np.ndarray)) or len(dims) < 2:
        raise ConfigError("dims", f"expected [D_s, D_r1, ...] with at least two sizes, got {dims!r}")
    dims = [_check_dim(d, width, "dims") for d in dims]
    if isinstance(shortlist_sizes, (str, bytes)) or not isinstance(shortlist_sizes, (Sequence, np.ndarray)):
        raise ConfigError("shortlist_sizes", f"expected a list of ints, got {shortlist_sizes!r}")
    sizes = list(shortlist_sizes)
    if len(sizes) != len(dims) - 1:
        raise ConfigError("shortlist_sizes", f"has {len(sizes)} entries but dims {dims} has "
                          f"{len(dims) - 1} rerank sizes", "give one shortlist length per rerank size")
    sizes[0] = _check_int(sizes[0], "shortlist_sizes", 1, n_database, f"the database size {n_database}")
    for i in range(1, len(sizes)):
        sizes[i] = _check_int(sizes[i], "shortlist_sizes", 1, sizes[i - 1],
                              f"the previous shortlist length {sizes[i - 1]} (a funnel only shrinks)")
    k = _check_int(k, "k", 1, sizes[-1], f"the last shortlist length {sizes[-1]}")
    return dims, sizes, k


def funnel_retrieval(db_emb: Any, q_emb: Any, dims: Sequence[int], shortlist_sizes: Sequence[int], k: int,
                     method: str = "exact", hnsw_m: int = 32, ef_search: int = 128,
                     ef_construction: int = 200, device: str = "cpu", index=None,
                     return_scores: bool = False):
    """The paper's funnel retrieval: ``dims = [D_s, D_r1, ..., D_rm]``, ``shortlist_sizes = [K1, ..., Km]``.

    Shortlist ``K1`` items by search on the first ``D_s`` coordinates (``method`` exact or HNSW, or a
    prebuilt ``index`` over ``l2_normalize_prefix(db_emb, D_s)``); rerank those ``K1`` on ``D_r1`` and
    keep the best ``K2``; rerank the ``K2`` on ``D_r2`` and keep ``K3``; ...; rerank the ``Km`` on
    ``D_rm`` and keep the best ``k``. Cost: ``retrieval_mflops(N, D_s, zip(shortlist_sizes, dims[1:]))``.

    Returns indices ``[Q, k]`` (with ``return_scores``: ``(scores, indices)``, scores at ``D_rm``).
    """
    db_emb, q_emb = _check_pair(db_emb, q_emb)
    _check_method(method)
    dims, sizes, k = check_funnel(dims, shortlist_sizes, k, db_emb.shape[1], len(db_emb))

    candidates = _shortlist(db_emb, q_emb, dims[0], sizes[0], method, hnsw_m, ef_search, ef_construction,
                            device, index)
    keeps = sizes[1:] + [k]
    scores = None
    for dim, keep in zip(dims[1:], keeps):
        scores, candidates = rerank(db_emb, q_emb, candidates, dim, keep)
    return (scores, candidates) if return_scores else candidates


def adaptive_retrieval(db_emb: Any, q_emb: Any, shortlist_dim: int, rerank_dim: int, shortlist_k: int,
                       k: int, method: str = "exact", hnsw_m: int = 32, ef_search: int = 128,
                       ef_construction: int = 200, device: str = "cpu", index=None,
                       return_scores: bool = False):
    """Shortlist ``shortlist_k`` items on the ``shortlist_dim`` prefix, rerank them on ``rerank_dim``.

    The shortlist is the top ``shortlist_k`` by cosine similarity of the L2-normalised ``D_s`` prefixes
    (``method`` ``"exact"`` or ``"hnsw"``, or a prebuilt ``index``); the rerank is exact cosine
    similarity of the L2-normalised ``D_r`` prefixes of the shortlisted items. Returns the top ``k``
    indices ``[Q, k]`` (with ``return_scores``: ``(scores, indices)``).

    With ``D_s = D_r`` (and an exact shortlist) this equals exact search at that size; with
    ``shortlist_k = N`` it equals exact search at ``D_r``.
    """
    db_emb, q_emb = _check_pair(db_emb, q_emb)
    width = db_emb.shape[1]
    shortlist_dim = _check_dim(shortlist_dim, width, "shortlist_dim")
    rerank_dim = _check_dim(rerank_dim, width, "rerank_dim")
    shortlist_k = _check_int(shortlist_k, "shortlist_k", 1, len(db_emb), f"the database size {len(db_emb)}")
    k = _check_int(k, "k", 1, shortlist_k, f"shortlist_k={shortlist_k}")
    return funnel_retrieval(db_emb, q_emb, [shortlist_dim, rerank_dim], [shortlist_k], k, method=method,
                            hnsw_m=hnsw_m, ef_search=ef_search, ef_construction=ef_construction,
                            device=device, index=index, return_scores=return_scores)


def setting_label(row: Mapping[str, Any]) -> str:
    """How a row of the adaptive-retrieval table searched, for a plot label: ``Ds=16 K=200 Dr=512`` (shortlist
    ``K`` on ``D_s`` dims, rerank on ``D_r``), a funnel's stages as lists (``Ds=8 K=200,100 Dr=16,512``), and
    ``exact d=512`` for full-width search."""
    if str(row.get("kind", "")).startswith("exact"):
        return f"exact d={row.get('D_s')}"
    return f"Ds={row.get('D_s')} K={row.get('K')} Dr={row.get('D_r')}"


def retrieval_mflops(n_database: int, shortlist_dim: int,
                     rerank: Iterable[tuple[int, int]] = ()) -> float:
    """The paper's cost model in MFLOPs per query: ``(N * D_s + sum_i K_i * D_r_i) / 1e6``.

    ``rerank`` lists ``(K_i, D_r_i)``: the shortlist length reranked at each step and the size it is
    reranked with. Examples (ImageNet-1K, N = 1,281,167): ``retrieval_mflops(N, 16, [(200, 2048)])``
    = 20.91 (paper: 20.91); ``retrieval_mflops(N, 2048, [(200, 2048)])`` = 2624.24, the paper's
    "exact 2048" cost; plain exact search is ``retrieval_mflops(N, 2048)`` = 2623.83.
    """
    n = _check_int(n_database, "n_database", 1)
    ds = _check_int(shortlist_dim, "shortlist_dim", 1)
    total = n * ds
    for step in rerank:
        try:
            kk, dr = step
        except (TypeError, ValueError):
            raise ConfigError("rerank", f"expected (K, D_r) pairs, got {step!r}") from None
        total += _check_int(kk, "rerank", 1) * _check_int(dr, "rerank", 1)
    return total / 1e6


def exact_retrieval_mflops(n_database: int, dim: int) -> float:
    """Brute-force search at ``dim``: ``N * dim / 1e6`` MFLOPs per query."""
    return retrieval_mflops(n_database, dim)


def funnel_mflops(n_database: int, dims: Sequence[int], shortlist_sizes: Sequence[int]) -> float:
    """Cost of :func:`funnel_retrieval` with these ``dims`` and ``shortlist_sizes``."""
    if len(shortlist_sizes) != len(dims) - 1:
        raise ConfigError("shortlist_sizes", f"has {len(shortlist_sizes)} entries but dims {list(dims)} has "
                          f"{len(dims) - 1} rerank sizes")
    return retrieval_mflops(n_database, dims[0], list(zip(shortlist_sizes, dims[1:])))
