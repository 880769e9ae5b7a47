"""Adaptive classification with a confidence cascade over Matryoshka sizes (paper Sec. 4.2.1).

Protocol (the authors' ``model_analysis/Model_Cascades.ipynb``), implemented exactly as follows.

Inputs are per-size classifier outputs ``scores [G, N, C]`` (logits, or probabilities with
``from_logits=False``) for sizes ``m_0 < ... < m_{G-1}`` and labels ``[N]``. Only each size's max-softmax
confidence ``c_g`` and argmax prediction ``p_g`` are used.

1. **Split.** For each of ``n_splits`` seeded random splits, ``round(holdout_fraction * N)`` samples
   form the held-out (calibration) part and the rest the test part (the paper: 10,000 of ImageNet's
   50,000 validation images held out, 30 splits). Concretely ``rng = np.random.default_rng(seed)``;
   split ``s`` takes ``perm = rng.permutation(N)`` (a fresh draw per split), held-out ``perm[:n_hold]``,
   test ``perm[n_hold:]``.
2. **Thresholds (held-out part), one per consecutive pair (g, g+1), chosen independently.** The
   two-size rule ``R_t`` predicts ``p_g`` where ``c_g > t`` and ``p_{g+1}`` otherwise. For every ``t``
   in the grid (default ``np.linspace(0, 1, 101)``) compute the held-out accuracy of ``R_t``;
   ``t_g`` is the *smallest* grid value reaching the maximum (compared as exact correct counts).
   Because a smaller ``t`` keeps more samples at the smaller size, this is the cheapest of the most
   accurate thresholds. The pair's rule looks only at sizes g and g+1, not at the rest of the cascade.
3. **Cascade (test part).** With cap ``m_j`` (cascade over ``sizes[:j+1]``): start at size 0; at size
   ``g < j`` decide there if ``c_g > t_g`` (strictly), else move up (i.e. move up while
   ``c_g <= t_g``); size ``j`` always decides. Accuracy is the fraction of test samples whose deciding
   size predicts the label; the *expected representation size* is ``sum_g m_g * (fraction decided at
   g)``.
4. **Oracle (same test part).** A sample is correct if any size up to the cap is; its size is the
   smallest correct size, or the cap when none is.

Every number is the mean over splits (fractions in [0, 1], not percent); the ``*_std`` fields are the
standard deviation over splits and ``thresholds`` the mean threshold per pair.

Note the equality case: the authors' code keeps a sample at size g iff ``c_g > t`` (so ``t = 1``
always moves up and ``t = 0`` keeps every sample with non-zero confidence), which is what we do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrl.errors import ConfigError

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------

def _check_sizes(sizes: Any, g: int) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (Sequence, np.ndarray)):
        raise ConfigError("sizes", f"expected a list of ints, got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) != g:
        raise ConfigError("sizes", f"has {len(sizes)} sizes but scores has {g} (the first axis)",
                          "give one size per row of scores")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
            raise ConfigError("sizes", f"sizes must be positive ints, got {s!r} in {sizes}")
    sizes = [int(s) for s in sizes]
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError("sizes", f"must be strictly increasing, got {sizes}", f"sort them: {sorted(set(sizes))}")
    return sizes


def _check_labels(labels: Any, n: int, num_classes: int | None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError("labels", f"expected a 1-D array of class ids, got shape {labels.shape}")
    if len(labels) != n:
        raise ConfigError("labels", f"has {len(labels)} labels but scores has {n} samples (axis 1)",
                          "pass one label per sample")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError("labels", f"class ids must be integers, got dtype {labels.dtype}")
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError("labels", f"class ids must be in [0, {num_classes}), got range "
                          f"[{labels.min()}, {labels.max()}]", "check that labels match the classifier")
    return labels


def confidence_and_predictions(scores: Any, from_logits: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Max-softmax confidence ``[G, N]`` (float64) and argmax prediction ``[G, N]`` per size.

    ``scores`` is ``[G, N, C]``: logits (``from_logits=True``) or probabilities. Processed one size at a
    time to keep memory at one ``[N, C]`` slice.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ConfigError("scores", f"expected [num_sizes, num_samples, num_classes], got shape {scores.shape}")
    if 0 in scores.shape:
        raise ConfigError("scores", f"is empty (shape {scores.shape})")
    g, n, _ = scores.shape
    conf = np.empty((g, n), dtype=np.float64)
    pred = np.empty((g, n), dtype=np.int64)
    for i in range(g):
        s = np.asarray(scores[i], dtype=np.float64)
        if not np.all(np.isfinite(s)):
            raise ConfigError("scores", f"size index {i} contains NaN or inf")
        pred[i] = s.argmax(axis=1)
        if from_logits:
            # max softmax = 1 / sum_j exp(l_j - max l)
            conf[i] = 1.0 / np.exp(s - s.max(axis=1, keepdims=True)).sum(axis=1)
        else:
            if s.min() < 0 or s.max() > 1 + 1e-6:
                raise ConfigError("scores", "probabilities must lie in [0, 1]",
                                  "pass logits with from_logits=True")
            conf[i] = s.max(axis=1)
    return conf, pred


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------

def _check_grid(grid: Any) -> np.ndarray:
    grid = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ConfigError("grid", "is empty", "give candidate thresholds, e.g. np.linspace(0, 1, 101)")
    if not np.all(np.isfinite(grid)):
        raise ConfigError("grid", "contains NaN or inf")
    return np.unique(grid)  # sorted ascending


def _pair_correct_counts(conf_small: Any, correct_small: Any, correct_large: Any,
                         grid: Any) -> tuple[np.ndarray, np.ndarray, int]:
    grid = _check_grid(grid)
    conf_small = np.asarray(conf_small, dtype=np.float64).reshape(-1)
    correct_small = np.asarray(correct_small, dtype=bool).reshape(-1)
    correct_large = np.asarray(correct_large, dtype=bool).reshape(-1)
    n = len(conf_small)
    if n == 0:
        raise ConfigError("holdout_fraction", "the held-out part has no samples",
                          "use a larger holdout_fraction or more samples")
    if len(correct_small) != n or len(correct_large) != n:
        raise ConfigError("correct_small", f"conf_small, correct_small and correct_large must have equal "
                          f"lengths, got {n}, {len(correct_small)}, {len(correct_large)}")
    order = np.argsort(conf_small, kind="stable")
    c_sorted = conf_small[order]
    # samples with conf <= t move up: they are the first searchsorted(..., side="right") in sorted order
    n_up = np.searchsorted(c_sorted, grid, side="right")
    large_prefix = np.concatenate([[0], np.cumsum(correct_large[order])])
    small_suffix = np.concatenate([[0], np.cumsum(correct_small[order][::-1])])[::-1]  # correct among i..n-1
    return grid, large_prefix[n_up] + small_suffix[n_up], n


def pair_threshold_accuracy(conf_small: Any, correct_small: Any, correct_large: Any,
                            grid: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the two-size rule at each grid threshold: ``(sorted grid, accuracy per threshold)``.

    The rule predicts with the small size where ``conf_small > t`` and with the large size otherwise.
    """
    grid, counts, n = _pair_correct_counts(conf_small, correct_small, correct_large, grid)
    return grid, counts / n


def select_threshold(conf_small: Any, correct_small: Any, correct_large: Any, grid: Any = None) -> float:
    """The smallest grid threshold whose two-size rule reaches the best accuracy (see module doc).

    Accuracies are compared as exact integer counts of correct samples.
    """
    grid, counts, _ = _pair_correct_counts(conf_small, correct_small, correct_large, grid)
    return float(grid[np.flatnonzero(counts == counts.max())[0]])


def cascade_decide(conf: Any, thresholds: Sequence[float]) -> np.ndarray:
    """Index of the deciding size per sample for a cascade over ``conf.shape[0]`` sizes.

    ``thresholds`` has one value per size but the last; the first size ``g`` with ``conf[g] > t_g``
    decides, else the last size.
    """
    conf = np.asarray(conf, dtype=np.float64)
    g = conf.shape[0]
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(thresholds) != g - 1:
        raise ConfigError("thresholds", f"has {len(thresholds)} values for a cascade of {g} sizes",
                          f"give {g - 1} (one per size but the last)")
    decided = np.full(conf.shape[1], g - 1, dtype=np.int64)
    undecided = np.ones(conf.shape[1], dtype=bool)
    for i in range(g - 1):
        stop = undecided & (conf[i] > thresholds[i])
        decided[stop] = i
        undecided &= ~stop
    return decided


def expected_size(decided: Any, sizes: Sequence[int]) -> float:
    """``sum_g m_g * (fraction of samples decided at g)`` = mean of ``sizes[decided]``."""
    decided = np.asarray(decided)
    if decided.size == 0:
        raise ConfigError("decided", "is empty")
    return float(np.mean(np.asarray(sizes, dtype=np.float64)[decided]))


def oracle(correct: Any, sizes: Sequence[int]) -> tuple[float, float]:
    """Oracle accuracy and expected size over ``correct [G, N]`` (bool, one row per size in ``sizes``).

    A sample counts as correct if any size is correct; its size is the smallest correct one, or the
    largest size (the cap: pass ``correct[:j+1]`` and ``sizes[:j+1]``) when none is.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ConfigError("correct", f"expected a non-empty [num_sizes, num_samples] array, got shape {correct.shape}")
    sizes = _check_sizes(sizes, correct.shape[0])
    any_correct = correct.any(axis=0)
    first = np.where(any_correct, correct.argmax(axis=0), len(sizes) - 1)
    return float(any_correct.mean()), expected_size(first, sizes)


def fixed_size_accuracy(scores: Any, labels: Any, sizes: Sequence[int], from_logits: bool = True) -> list[dict]:
    """Top-1 of each size on its own: rows ``{"dim", "accuracy"}`` (the second curve of the plot)."""
    conf, pred = confidence_and_predictions(scores, from_logits)
    sizes = _check_sizes(sizes, pred.shape[0])
    labels = _check_labels(labels, pred.shape[1], np.asarray(scores).shape[2])
    return [{"dim": m, "accuracy": float(np.mean(pred[i] == labels))} for i, m in enumerate(sizes)]


# --------------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------------

def check_splits(num_samples: int, holdout_fraction: Any, n_splits: Any) -> None:
    """``holdout_fraction`` in (0, 1) leaving both parts of ``num_samples`` non-empty, ``n_splits`` an int >= 1."""
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float, np.floating)) \
            or not 0 < holdout_fraction < 1:
        raise ConfigError("holdout_fraction", f"must be a number in (0, 1), got {holdout_fraction!r}")
    n_hold = int(round(holdout_fraction * num_samples))
    if n_hold == 0 or n_hold == num_samples:
        raise ConfigError("holdout_fraction", f"{holdout_fraction} of {num_samples} samples leaves an empty "
                          f"{'held-out' if n_hold == 0 else 'test'} part",
                          "use more samples or a fraction nearer 0.5")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ConfigError("n_splits", f"must be an int >= 1, got {n_splits!r}")


def _split(n: int, holdout_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_hold = int(round(holdout_fraction * n))
    perm = rng.permutation(n)
    return perm[:n_hold], perm[n_hold:]


def adaptive_classification(scores: Any, labels: Any, sizes: Sequence[int], holdout_fraction: float = 0.2,
                            n_splits: int = 30, grid: Any = None, seed: int = 0,
                            from_logits: bool = True) -> list[dict[str, Any]]:
    """The paper's adaptive-classification cascade for every cap (see the module docstring).

    Args:
        scores: ``[G, N, C]`` logits (or probabilities with ``from_logits=False``) per size.
        labels: ``[N]`` class ids.
        sizes: the ``G`` representation sizes, strictly increasing.
        holdout_fraction: share of samples used to choose thresholds in each split.
        n_splits: number of seeded random splits to average over.
        grid: candidate thresholds (default ``np.linspace(0, 1, 101)``).
        seed: seed of the split generator (``np.random.default_rng(seed)``).

    Returns one row per cap ``sizes[j]`` (``j = 0`` is the smallest size on its own)::

        {"cap", "accuracy", "accuracy_std", "expected_dim", "expected_dim_std", "oracle_accuracy",
         "oracle_expected_dim", "thresholds" (mean t_g per pair g < j), "size_fractions"
         (mean fraction decided at each size up to the cap)}
    """
    conf, pred = confidence_and_predictions(scores, from_logits)
    g, n = conf.shape
    sizes = _check_sizes(sizes, g)
    labels = _check_labels(labels, n, np.asarray(scores).shape[2])
    check_splits(n, holdout_fraction, n_splits)
    grid = _check_grid(grid)
    correct = pred == labels[None, :]
    rng = np.random.default_rng(seed)

    acc = np.zeros((n_splits, g))
    exp_dim = np.zeros((n_splits, g))
    or_acc = np.zeros((n_splits, g))
    or_dim = np.zeros((n_splits, g))
    thr = np.zeros((n_splits, max(g - 1, 0)))
    frac = np.zeros((n_splits, g, g))
    for s in range(n_splits):
        hold, test = _split(n, holdout_fraction, rng)
        for i in range(g - 1):
            thr[s, i] = select_threshold(conf[i, hold], correct[i, hold], correct[i + 1, hold], grid)
        for j in range(g):
            decided = cascade_decide(conf[: j + 1, test], thr[s, :j])
            acc[s, j] = correct[decided, test].mean()
            exp_dim[s, j] = expected_size(decided, sizes)
            frac[s, j, : j + 1] = np.bincount(decided, minlength=j + 1) / len(test)
            or_acc[s, j], or_dim[s, j] = oracle(correct[: j + 1, test], sizes[: j + 1])
    rows = []
    for j, cap in enumerate(sizes):
        rows.append({
            "cap": cap,
            "accuracy": float(acc[:, j].mean()),
            "accuracy_std": float(acc[:, j].std()),
            "expected_dim": float(exp_dim[:, j].mean()),
            "expected_dim_std": float(exp_dim[:, j].std()),
            "oracle_accuracy": float(or_acc[:, j].mean()),
            "oracle_expected_dim": float(or_dim[:, j].mean()),
            "thresholds": [float(t) for t in thr[:, :j].mean(axis=0)],
            "size_fractions": [float(f) for f in frac[:, j, : j + 1].mean(axis=0)],
        })
    return rows


def plot_adaptive_classification(rows: Sequence[Mapping[str, Any]], fixed_rows: Sequence[Any], path: str,
                                 title: str = "Adaptive classification", oracle: bool = False) -> str:
    """Accuracy against (expected) representation size: the cascade and the fixed sizes, as a PNG.

    ``rows``: :func:`adaptive_classification` output; ``fixed_rows``: ``{"dim", "accuracy"}`` dicts
    (:func:`fixed_size_accuracy`) or ``(dim, accuracy)`` pairs. ``oracle=True`` adds the oracle curve.
    The x axis is log2. Returns ``path``.
    """
    from mrl.report.run_tables import new_figure, save_figure

    def pair(r):
        return (r["dim"], r["accuracy"]) if isinstance(r, Mapping) else (r[0], r[1])

    fixed = sorted(pair(r) for r in fixed_rows)
    fig, ax = new_figure()
    ax.plot([r["expected_dim"] for r in rows], [100 * r["accuracy"] for r in rows], "o-",
            label="adaptive (expected size)")
    if fixed:
        ax.plot([d for d, _ in fixed], [100 * a for _, a in fixed], "s--", label="fixed size")
    if oracle:
        ax.plot([r["oracle_expected_dim"] for r in rows], [100 * r["oracle_accuracy"] for r in rows], "^:",
                label="oracle")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("representation size")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, Path(path))
    return path
