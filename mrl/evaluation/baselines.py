"""The paper's low-dimensional baselines, computed from a full-size (FF-full) model's embeddings.

* **SVD** (:func:`svd_probe`): project embeddings on the top-``k`` right singular vectors of the
  training embeddings and train a linear probe. By default the SVD is of the *uncentred* embedding
  matrix (as the paper did); ``center=True`` gives PCA directions instead. A linear probe has a bias,
  so whether the projected features themselves are centred does not matter, only which directions are
  kept.
* **SVD of the classifier** (:func:`svd_classifier`): replace the trained classifier's ``W [C, d]`` by
  its rank-``k`` approximation ``U_k S_k V_k^T`` (the authors' ``eval_ckpts/svd.py``) and classify the
  full embeddings.
* **Rand-LP** (:func:`rand_lp`): a linear probe on ``k`` randomly chosen coordinates.
* **Rand-FS** (:func:`rand_fs_retrieval`): retrieval on ``k`` randomly chosen coordinates.

Random coordinates come from one seeded permutation of the width, so for a fixed seed the
subsets are nested (the ``k``-subset contains every smaller one) and reproducible.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import (
    DEFAULT_KS,
    _as_2d,
    _as_labels,
    _check_dim,
    _check_dims,
    _check_int,
    evaluate_retrieval,
)

OPTIMIZERS = ("lbfgs", "adam")


# --------------------------------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------------------------------

def _check_probe_inputs(train_x, train_y, test_x, test_y, num_classes):
    train_x = _as_2d(train_x, "train_x")
    test_x = _as_2d(test_x, "test_x")
    if test_x.shape[1] != train_x.shape[1]:
        raise ConfigError("test_x", f"has width {test_x.shape[1]} but train_x has width {train_x.shape[1]}",
                          "use the same features for both")
    train_y = _as_labels(train_y, len(train_x), "train_y", "train_x")
    test_y = _as_labels(test_y, len(test_x), "test_y", "test_x")
    lo = min(train_y.min(), test_y.min())
    if lo < 0:
        raise ConfigError("train_y" if train_y.min() < 0 else "test_y", f"class ids must be >= 0, got {lo}")
    hi = int(max(train_y.max(), test_y.max()))
    if num_classes is None:
        num_classes = hi + 1
    num_classes = _check_int(num_classes, "num_classes", 1)
    if hi >= num_classes:
        raise ConfigError("num_classes", f"is {num_classes} but a label is {hi}", f"use num_classes >= {hi + 1}")
    seen = np.bincount(train_y, minlength=num_classes) > 0
    unseen_in_test = np.unique(test_y[~seen[test_y]])
    if len(unseen_in_test):
        shown = ", ".join(str(int(c)) for c in unseen_in_test[:5])
        raise ConfigError("train_y", f"has zero samples of class(es) {shown}"
                          f"{' ...' if len(unseen_in_test) > 5 else ''} that occur in test_y",
                          "train on data that covers every evaluated class")
    return train_x, train_y, test_x, test_y, num_classes


def check_probe_settings(optimizer: Any, steps: Any, weight_decay: Any) -> dict[str, Any]:
    """The training settings of :func:`linear_probe`, checked (``ConfigError`` naming the bad one)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError("optimizer", f"unknown optimizer {optimizer!r}", f"use one of {list(OPTIMIZERS)}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float, np.number)) \
            or not np.isfinite(weight_decay) or weight_decay < 0:
        raise ConfigError("weight_decay", f"must be a number >= 0, got {weight_decay!r}")
    return {"optimizer": optimizer, "steps": _check_int(steps, "steps", 1), "weight_decay": float(weight_decay)}


def _predict(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = (np.asarray(x[s:s + chunk], dtype=np.float32) @ weight.T + bias).argmax(axis=1)
    return out


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, num_classes: int | None = None,
                 optimizer: str = "lbfgs", steps: int = 300, lr: float | None = None,
                 weight_decay: float = 1e-4, batch_size: int | None = None, seed: int = 0,
                 device: str = "cpu", chunk_size: int = 65536) -> dict[str, Any]:
    """Multinomial logistic regression on ``train_x`` (torch), evaluated by top-1 on ``test_x``.

    Features are centred by the training mean and divided by one global scale (the RMS per-coordinate
    standard deviation) -- a rotation-equivariant rescaling, so a probe on orthogonally rotated
    features (e.g. a full-rank SVD projection) learns the same classifier. Weights start at zero.
    Loss: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` (the bias is not decayed).

    * ``optimizer="lbfgs"`` (default): full-batch L-BFGS with strong-Wolfe line search for ``steps``
      iterations (``lr`` default 1); the full-batch gradient is accumulated over chunks of
      ``chunk_size`` rows, so large training sets need not fit in one forward pass.
    * ``optimizer="adam"``: ``steps`` Adam updates (``lr`` default 1e-2) on minibatches of ``batch_size``
      rows (``None``: full batch) drawn by a ``torch.Generator`` seeded with ``seed``.

    Deterministic for a given seed on a given machine. Returns ``{"top1", "train_top1", "weight" [C, d],
    "bias" [C], "loss"}``; ``weight``/``bias`` act on the *unscaled* features (``x @ weight.T + bias``).
    """
    import torch

    train_x, train_y, test_x, test_y, num_classes = _check_probe_inputs(train_x, train_y, test_x, test_y,
                                                                         num_classes)
    steps = check_probe_settings(optimizer, steps, weight_decay)["steps"]
    chunk_size = _check_int(chunk_size, "chunk_size", 1)
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", 1)

    n_rows, width = train_x.shape
    mean = np.zeros(width)
    for s in range(0, n_rows, chunk_size):
        mean += np.asarray(train_x[s:s + chunk_size], dtype=np.float64).sum(axis=0)
    mean /= n_rows
    sq = 0.0
    for s in range(0, n_rows, chunk_size):
        sq += float(((np.asarray(train_x[s:s + chunk_size], dtype=np.float64) - mean) ** 2).sum())
    scale = float(np.sqrt(sq / (n_rows * width)))
    if not np.isfinite(scale) or not np.all(np.isfinite(mean)):
        raise ConfigError("train_x", "contains NaN or inf")
    scale = scale if scale > 0 else 1.0
    x_np = np.empty((n_rows, width), dtype=np.float32)
    for s in range(0, n_rows, chunk_size):
        x_np[s:s + chunk_size] = (np.asarray(train_x[s:s + chunk_size], dtype=np.float64) - mean) / scale
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(train_y.astype(np.int64)).to(device)
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=torch.float32, device=device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float32, device=device, requires_grad=True)
    ce = torch.nn.functional.cross_entropy

    def reg():
        return 0.5 * weight_decay * (w * w).sum()

    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS([w, b], lr=1.0 if lr is None else lr, max_iter=steps, max_eval=2 * steps,
                                history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                tolerance_change=1e-14)

        def closure():
            opt.zero_grad()
            total = 0.0
            for s in range(0, n, chunk_size):
                part = ce(x[s:s + chunk_size] @ w.T + b, y[s:s + chunk_size], reduction="sum") / n
                part.backward()
                total += float(part.detach())
            r = reg()
            r.backward()
            return torch.tensor(total + float(r.detach()))

        opt.step(closure)
        with torch.no_grad():  # LBFGS.step returns the loss at the start; report the final one
            loss = float(reg()) + sum(
                float(ce(x[s:s + chunk_size] @ w.T + b, y[s:s + chunk_size], reduction="sum")) / n
                for s in range(0, n, chunk_size))
    else:
        opt = torch.optim.Adam([w, b], lr=1e-2 if lr is None else lr)
        gen = torch.Generator().manual_seed(int(seed))
        bs = n if batch_size is None else min(batch_size, n)
        perm, pos = torch.randperm(n, generator=gen), 0
        loss = float("nan")
        for _ in range(steps):
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + bs].to(device)
            pos += bs
            opt.zero_grad()
            batch_loss = ce(x[idx] @ w.T + b, y[idx]) + reg()
            batch_loss.backward()
            opt.step()
            loss = float(batch_loss.detach())

    weight = (w.detach().cpu().numpy().astype(np.float64) / scale)
    bias = b.detach().cpu().numpy().astype(np.float64) - weight @ mean
    weight, bias = weight.astype(np.float32), bias.astype(np.float32)
    return {
        "top1": float(np.mean(_predict(test_x, weight, bias) == test_y)),
        "train_top1": float(np.mean(_predict(train_x, weight, bias) == train_y)),
        "weight": weight,
        "bias": bias,
        "loss": loss,
    }


# --------------------------------------------------------------------------------------------------
# SVD
# --------------------------------------------------------------------------------------------------

def svd_projection(train_emb: Any, k: int, center: bool = False, chunk: int = 65536) -> np.ndarray:
    """Top-``k`` right singular vectors of ``train_emb`` as a ``[d, k]`` float32 matrix (columns).

    ``center=False`` (default, the paper's choice): SVD of the embeddings as they are; ``True``: of the
    mean-centred embeddings (PCA). Computed from the ``d x d`` Gram matrix in float64 (chunked over
    rows), so ``N`` can be large. Each vector's sign is fixed so its largest-magnitude entry is
    positive. Project with ``emb @ P``.
    """
    train_emb = _as_2d(train_emb, "train_emb")
    n, d = train_emb.shape
    k = _check_dim(k, d, "k")
    mean = np.asarray(train_emb, dtype=np.float64).mean(axis=0) if center else np.zeros(d)
    gram = np.zeros((d, d), dtype=np.float64)
    for s in range(0, n, chunk):
        block = np.asarray(train_emb[s:s + chunk], dtype=np.float64) - mean
        gram += block.T @ block
    if not np.all(np.isfinite(gram)):
        raise ConfigError("train_emb", "contains NaN or inf")
    _, vecs = np.linalg.eigh(gram)  # ascending eigenvalues = squared singular values
    top = vecs[:, ::-1][:, :k]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(k)])
    return (top * np.where(signs == 0, 1, signs)).astype(np.float32)


def svd_probe(train_emb: Any, train_y: Any, test_emb: Any, test_y: Any, k: int, center: bool = False,
              **probe_kwargs) -> dict[str, Any]:
    """SVD baseline at size ``k``: :func:`svd_projection` of the training embeddings, then
    :func:`linear_probe` on the projected train/test embeddings. Returns the probe's dict plus
    ``"k"`` and ``"projection"``."""
    train_emb = _as_2d(train_emb, "train_emb")
    test_emb = _as_2d(test_emb, "test_emb")
    if test_emb.shape[1] != train_emb.shape[1]:
        raise ConfigError("test_emb", f"has width {test_emb.shape[1]} but train_emb has width "
                          f"{train_emb.shape[1]}")
    proj = svd_projection(train_emb, k, center)
    out = linear_probe(np.asarray(train_emb, dtype=np.float32) @ proj, train_y,
                       np.asarray(test_emb, dtype=np.float32) @ proj, test_y, **probe_kwargs)
    out.update(k=int(k), projection=proj)
    return out


def low_rank(weight: Any, k: int) -> np.ndarray:
    """Rank-``k`` approximation ``U_k S_k V_k^T`` of a ``[C, d]`` matrix (truncated SVD)."""
    weight = _as_2d(weight, "weight")
    k = _check_int(k, "k", 1, min(weight.shape), f"min(C, d) = {min(weight.shape)}, the largest rank")
    u, s, vt = np.linalg.svd(np.asarray(weight, dtype=np.float64), full_matrices=False)
    return ((u[:, :k] * s[:k]) @ vt[:k]).astype(np.float32)


def svd_classifier(weight: Any, test_emb: Any, test_y: Any, k: int, bias: Any = None) -> float:
    """Top-1 of the classifier ``weight [C, d]`` (+ ``bias [C]``) replaced by its rank-``k``
    approximation, applied to the full embeddings ``test_emb [N, d]``."""
    weight = _as_2d(weight, "weight")
    test_emb = _as_2d(test_emb, "test_emb")
    c, d = weight.shape
    if test_emb.shape[1] != d:
        raise ConfigError("test_emb", f"has width {test_emb.shape[1]} but the classifier weight has width {d}")
    test_y = _as_labels(test_y, len(test_emb), "test_y", "test_emb")
    if test_y.min() < 0 or test_y.max() >= c:
        raise ConfigError("test_y", f"class ids must be in [0, {c}) for a {c}-class classifier")
    bias = np.zeros(c, dtype=np.float32) if bias is None else np.asarray(bias, dtype=np.float32).reshape(-1)
    if len(bias) != c:
        raise ConfigError("bias", f"has {len(bias)} entries for {c} classes")
    return float(np.mean(_predict(test_emb, low_rank(weight, k), bias) == test_y))


# --------------------------------------------------------------------------------------------------
# random features
# --------------------------------------------------------------------------------------------------

def random_coordinates(width: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct coordinates of ``range(width)``, sorted: the first ``k`` of a permutation drawn
    by ``np.random.default_rng(seed)`` (nested across ``k`` for a fixed seed)."""
    width = _check_int(width, "width", 1)
    k = _check_dim(k, width, "k")
    return np.sort(np.random.default_rng(seed).permutation(width)[:k])


def rand_lp(train_emb: Any, train_y: Any, test_emb: Any, test_y: Any, k: int, seed: int = 0,
            **probe_kwargs) -> dict[str, Any]:
    """Rand-LP at size ``k``: :func:`linear_probe` on ``k`` random coordinates (:func:`random_coordinates`
    with ``seed``; the probe gets the same ``seed``). Returns the probe's dict plus ``"k"`` and
    ``"coordinates"``."""
    train_emb = _as_2d(train_emb, "train_emb")
    test_emb = _as_2d(test_emb, "test_emb")
    if test_emb.shape[1] != train_emb.shape[1]:
        raise ConfigError("test_emb", f"has width {test_emb.shape[1]} but train_emb has width "
                          f"{train_emb.shape[1]}")
    coords = random_coordinates(train_emb.shape[1], k, seed)
    probe_kwargs.setdefault("seed", seed)
    out = linear_probe(train_emb[:, coords], train_y, test_emb[:, coords], test_y, **probe_kwargs)
    out.update(k=int(k), coordinates=coords)
    return out


def rand_fs_retrieval(db_emb: Any, db_labels: Any, q_emb: Any, q_labels: Any, dims: Sequence[int],
                      seed: int = 0, ks: Sequence[int] = DEFAULT_KS, **search_kwargs) -> list[dict[str, Any]]:
    """Rand-FS: retrieval metrics using ``k`` random coordinates for each ``k`` in ``dims``.

    Same rows as :func:`~mrl.evaluation.retrieval.evaluate_retrieval` (``"dim"`` is ``k``), plus
    ``"coordinates"``. ``search_kwargs`` go to ``evaluate_retrieval`` (``method``, ``device``, ...).
    """
    db_emb = _as_2d(db_emb, "db_emb")
    q_emb = _as_2d(q_emb, "q_emb")
    if q_emb.shape[1] != db_emb.shape[1]:
        raise ConfigError("q_emb", f"has width {q_emb.shape[1]} but db_emb has width {db_emb.shape[1]}")
    dims = _check_dims(dims, db_emb.shape[1])
    rows = []
    for k in dims:
        coords = random_coordinates(db_emb.shape[1], k, seed)
        row = evaluate_retrieval(db_emb[:, coords], db_labels, q_emb[:, coords], q_labels, [k], ks,
                                 **search_kwargs)[0]
        row["coordinates"] = coords
        rows.append(row)
    return rows
