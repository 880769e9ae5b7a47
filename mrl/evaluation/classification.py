"""Classification at any embedding size from a checkpoint's head weights: linear (the trained
classifiers) and 1-NN, over the embedding files of :mod:`mrl.embeddings`.

Which classifier serves a prefix of length ``dim`` (:func:`classifier_at`):

* ``mrle`` (MRL-E): its single weight ``W [C, width]`` sliced to ``W[:, :dim]`` with the shared bias;
  any ``dim`` in ``1..width``.
* ``mrl`` (MRL): the classifier of the smallest trained size ``m >= dim``, its weight sliced to
  ``[:, :dim]``, with its own bias -- the paper's interpolation to untrained sizes ("next larger
  head's slice"); at a trained size it is exactly that size's classifier.
* ``ff`` (FF-k): only ``dim == k``.

Accuracies here are percentages (like the training run's ``metrics_by_dim``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mrl.checkpoint import LoadedHead, check_head_type, load_head
from mrl.errors import ConfigError
from mrl.evaluation.retrieval import _as_2d, _as_labels, search
from mrl.embeddings import load_split
from mrl.heads import FixedFeatureHead

__all__ = ["LoadedHead", "check_head_type", "classification_sweep", "classifier_at", "knn_accuracy",
           "linear_accuracy", "load_head", "resolve_dims"]


def classifier_at(head: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W [C, dim], b [C])`` float32 classifying the first ``dim`` coordinates: what the head's own
    ``classifier_at`` serves (see the module doc). ``head``: a head module or :func:`load_head`'s result."""
    import torch

    module = _head_module(head)
    if isinstance(dim, np.integer):
        dim = int(dim)
    with torch.no_grad():
        weight, bias = module.classifier_at(dim)
    return (np.ascontiguousarray(weight.detach().float().cpu().numpy()),
            np.ascontiguousarray(bias.detach().float().cpu().numpy()))


def _head_module(head: Any):
    if isinstance(head, LoadedHead):
        return head.head
    if hasattr(head, "classifier_at") and hasattr(head, "nesting_dims"):
        return head
    raise ConfigError("head", f"expected load_head(...)'s result or a head module, got {type(head).__name__}")


# --------------------------------------------------------------------------------------------------
# accuracies
# --------------------------------------------------------------------------------------------------

def linear_accuracy(emb: Any, labels: Any, W: Any, b: Any, ks: Sequence[int] = (1, 5), class_mask: Any = None,
                    chunk: int = 16384) -> dict[str, float]:
    """Top-k accuracy (percent) of ``emb[:, :dim] @ W.T + b`` with ``dim = W.shape[1]``.

    ``emb`` may be wider than ``dim`` (its prefix is used). ``class_mask`` (indices of allowed classes,
    e.g. ImageNet-A's 200 of 1000): the ranking is over those classes only; ``labels`` stay in the
    full class index space, and a label outside the mask is never correct. ``k`` is capped at the number
    of allowed classes. Returns ``{"top1": .., "top5": ..}`` (one key per k).
    """
    emb = _as_2d(emb, "emb")
    labels = _as_labels(labels, len(emb), "labels", "emb")
    W = np.asarray(W, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32).reshape(-1)
    if W.ndim != 2 or len(b) != W.shape[0]:
        raise ConfigError("W", f"expected W [C, dim] and b [C], got {W.shape} and {b.shape}")
    num_classes, dim = W.shape
    if emb.shape[1] < dim:
        raise ConfigError("emb", f"has width {emb.shape[1]}, smaller than the classifier's {dim}")
    if class_mask is None:
        allowed = np.arange(num_classes)
    else:
        allowed = np.asarray(class_mask, dtype=np.int64).reshape(-1)
        if (allowed.size == 0 or allowed.min() < 0 or allowed.max() >= num_classes
                or len(np.unique(allowed)) != allowed.size):
            raise ConfigError("class_mask", f"must be distinct class indices in [0, {num_classes})")
        W, b = W[allowed], b[allowed]
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ConfigError("ks", f"must be positive ints, got {ks}")
    kmax = min(max(ks), len(allowed))
    hits = np.zeros(len(ks), dtype=np.int64)
    for s in range(0, len(emb), chunk):
        x = np.asarray(emb[s:s + chunk, :dim], dtype=np.float32)
        logits = x @ W.T + b
        if kmax < logits.shape[1]:
            top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax]
            order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
        else:
            top = np.argsort(-logits, axis=1, kind="stable")[:, :kmax]
        match = allowed[top] == labels[s:s + chunk, None]
        for i, k in enumerate(ks):
            hits[i] += int(match[:, :min(k, kmax)].any(axis=1).sum())
    return {f"top{k}": 100.0 * float(h) / len(emb) for k, h in zip(ks, hits)}


def knn_accuracy(db_emb: Any, db_labels: Any, q_emb: Any, q_labels: Any, dim: int) -> float:
    """1-NN top-1 (percent) on the L2-normalised first ``dim`` coordinates (exact cosine search)."""
    db_emb = _as_2d(db_emb, "db_emb")
    q_emb = _as_2d(q_emb, "q_emb")
    db_labels = _as_labels(db_labels, len(db_emb), "db_labels", "db_emb")
    q_labels = _as_labels(q_labels, len(q_emb), "q_labels", "q_emb")
    width = min(db_emb.shape[1], q_emb.shape[1])
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= width:
        raise ConfigError("dims", f"size {dim!r} is outside 1..{width}, the embedding width")
    _, idx = search(db_emb[:, :dim], q_emb[:, :dim], 1)
    return 100.0 * float(np.mean(db_labels[idx[:, 0]] == q_labels))


# --------------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------------

def resolve_dims(spec: Any, head_type: str, nesting_dims: Sequence[int], width: int) -> list[int]:
    """``"nesting"`` (the trained sizes), ``"all"`` (every prefix length ``1..nesting_dims[-1]``) or a
    list of sizes (sorted, duplicates dropped), each in ``1..width``."""
    dims = [int(d) for d in nesting_dims]
    if isinstance(spec, str):
        if spec == "nesting":
            return dims
        if spec == "all":
            if head_type == FixedFeatureHead.name:
                raise ConfigError("dims", f"dims=all asks for every size, but an FF-k model is evaluated at its "
                                  f"own size only (FF-{dims[0]})", "use dims=nesting")
            return list(range(1, dims[-1] + 1))
        raise ConfigError("dims", f"unknown value {spec!r}", "use nesting, all, or a list of sizes such as [8,64]")
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = [spec]
    if not isinstance(spec, (Sequence, np.ndarray)) or isinstance(spec, bytes) or len(spec) == 0:
        raise ConfigError("dims", f"expected nesting, all or a non-empty list of sizes, got {spec!r}")
    out = []
    for d in spec:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise ConfigError("dims", f"sizes must be ints, got {d!r} in {list(spec)}")
        if not 1 <= int(d) <= width:
            raise ConfigError("dims", f"size {int(d)} is outside 1..{width}, the embedding width",
                              f"use sizes between 1 and {width}")
        out.append(int(d))
    return sorted(set(out))


def _split(split: Any):
    from mrl.embeddings import EmbeddingSplit

    if split is None or isinstance(split, EmbeddingSplit):
        return split
    return load_split(split)


def classification_sweep(train_split: Any, test_split: Any, head: Any, dims: Any = "nesting", knn: bool = True,
                         ks: Sequence[int] = (1, 5), class_mask: Any = None,
                         progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Linear and 1-NN accuracy (percent) of ``test_split`` at each size in ``dims``.

    ``train_split``/``test_split``: :class:`~mrl.embeddings.EmbeddingSplit` or their folders (the train
    split is the k-NN database; it may be None with ``knn=False``). ``head``: :func:`load_head`'s result
    or a head module. ``dims``: ``"nesting"``, ``"all"`` or a list (:func:`resolve_dims`).

    Rows: ``{"dim", "trained" (dim is a trained size), "top1", "top5", "knn_top1"}``. ``progress(dim)`` is
    called as each size is done.
    """
    module = _head_module(head)
    head_type, nesting_dims = module.name, list(module.nesting_dims)
    test = _split(test_split)
    train = _split(train_split)
    if test is None:
        raise ConfigError("test_split", "is required")
    if knn and train is None:
        raise ConfigError("train_split", "is required for k-NN (the database)", "pass it, or knn=False")
    width = test.width
    if train is not None and train.width != width:
        raise ConfigError("train_split", f"has width {train.width} but the test split has {width}",
                          "embed both splits with the same checkpoint")
    dims = resolve_dims(dims, head_type, nesting_dims, width)
    num_classes = module.num_classes
    if test.meta["num_classes"] != num_classes:
        raise ConfigError("ckpt_path", f"the head has {num_classes} classes but the embeddings have "
                          f"{test.meta['num_classes']}", "use the checkpoint the embeddings were made with")
    rows = []
    for dim in dims:
        W, b = classifier_at(module, dim)
        row: dict[str, Any] = {"dim": dim, "trained": dim in nesting_dims}
        row.update(linear_accuracy(test.embeddings, test.labels, W, b, ks, class_mask))
        if knn:
            row["knn_top1"] = knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels, dim)
        rows.append(row)
        if progress is not None:
            progress(dim)
    return rows
