"""Semantic textual similarity per Matryoshka size: Spearman correlation between the cosine similarity of
sentence pairs and their human scores (STS Benchmark), at every prefix size, and per (layer, size) for 2D
Matryoshka models.

Each prefix ``x[:, :m]`` is L2-normalised after slicing (truncation before normalisation, as a user of a
size-``m`` embedding computes it). Spearman's rho is the Pearson correlation of the average ranks (ties
share their mean rank), as :func:`scipy.stats.spearmanr` computes it. Results are in ``[-1, 1]`` (NaN when
either side is constant).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import _as_2d, _check_dims


def _check_scores(scores: Any, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) != n:
        raise ConfigError("scores", f"expected [{n}] (one score per pair), got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ConfigError("scores", "contains NaN or inf", "fix the pair scores")
    if n < 2:
        raise ConfigError("scores", f"a correlation needs at least 2 pairs, got {n}")
    return scores


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x [G, N]`` with ``y [N]``: ``[G]`` (NaN for a constant row)."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    denominator = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc @ yc) / np.where(denominator > 0, denominator, 1.0), np.nan)


def cosine_by_size(first: Any, second: Any, dims: Sequence[int]) -> np.ndarray:
    """Cosine similarity of each pair at each size: ``[G, N]`` for ``first, second [N, W]``.

    All sizes in one pass: running sums over coordinates of ``a*b``, ``a*a`` and ``b*b`` give every prefix's dot
    product and norms (float64, so a 1-coordinate prefix is as exact as the full one). A zero prefix scores 0.
    """
    first = _as_2d(first, "first")
    second = _as_2d(second, "second")
    if first.shape != second.shape:
        raise ConfigError("second", f"has shape {second.shape} but first has {first.shape}",
                          "embed both sides of every pair with the same model")
    dims = _check_dims(dims, first.shape[1])
    cols = np.asarray(dims) - 1
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    dot = np.cumsum(a * b, axis=1)[:, cols]
    norms = np.sqrt(np.cumsum(a * a, axis=1)[:, cols] * np.cumsum(b * b, axis=1)[:, cols])
    if not (np.all(np.isfinite(dot)) and np.all(np.isfinite(norms))):
        raise ConfigError("first", "the embeddings contain NaN or inf", "fix the embedding file")
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0).T


def spearman_by_size(first: Any, second: Any, scores: Any, dims: Sequence[int]) -> np.ndarray:
    """Spearman's rho between pair scores and the cosine of the L2-normalised size-``m`` prefixes.

    Args:
        first, second: ``[N, W]`` embeddings of each pair's two sentences.
        scores: ``[N]`` gold similarity scores.
        dims: the sizes ``m`` (each in ``1..W``).

    Returns ``[G]`` float64, one rho in ``[-1, 1]`` per size of ``dims`` (NaN when the cosines at a size are all
    equal).
    """
    cosines = cosine_by_size(first, second, dims)
    scores = _check_scores(scores, cosines.shape[1])
    return _pearson_rows(rankdata(cosines, axis=1), rankdata(scores))


def spearman_by_layer_and_size(first: Any, second: Any, scores: Any, dims: Sequence[int]) -> np.ndarray:
    """:func:`spearman_by_size` for every layer of a 2D Matryoshka model: ``first, second [L, N, W]`` (each
    layer's pooled embeddings) -> ``[L, G]``."""
    first, second = np.asarray(first), np.asarray(second)
    if first.ndim != 3 or first.shape != second.shape:
        raise ConfigError("first", f"expected two [layers, pairs, width] arrays of one shape, got {first.shape} and "
                          f"{second.shape}")
    return np.stack([spearman_by_size(f, s, scores, dims) for f, s in zip(first, second)])
