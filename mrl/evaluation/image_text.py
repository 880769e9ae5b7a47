"""Image-text evaluation per Matryoshka size, on a dual encoder's embedding files (pure functions over arrays).

* :func:`zero_shot`: top-k accuracy of images against class prompts. The class embedding at size ``d`` is CLIP's
  prompt ensemble taken at that size: each prompt's ``d``-prefix L2-normalised, averaged over the templates,
  renormalised (:func:`class_embeddings`); an image's ``d``-prefix, normalised, picks the class of highest cosine.
* :func:`cross_modal_retrieval`: image->text and text->image recall@k (the share of queries with at least one
  matching item among their top k, the usual Flickr/COCO definition) over the split's distinct images and distinct
  captions. ``match="pair"``: an image and a caption match when some row pairs them (identical caption texts are
  one caption); ``match="label"``: when they share a class (class-captioned data, whose captions are class
  templates).

Equal scores rank by index (as :func:`mrl.evaluation.retrieval.search`). Metrics are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mrl.errors import ConfigError
from mrl.evaluation.retrieval import _as_2d, _check_dims, _check_ks, build_index, l2_normalize_prefix, search_index
from mrl.evaluation.text_retrieval import ranked_gains

MATCHES = ("pair", "label")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(prompts: Any, dim: int) -> np.ndarray:
    """``[C, dim]`` float32 class embeddings at size ``dim`` from prompt embeddings ``[T, C, width]``."""
    prompts = np.asarray(prompts, dtype=np.float32)
    if prompts.ndim != 3:
        raise ConfigError("class_prompt_embeddings", f"expected [templates, classes, width], got shape {prompts.shape}")
    return _unit(_unit(prompts[..., :dim]).mean(axis=0)).astype(np.float32)


def zero_shot(image_emb: Any, labels: Any, prompts: Any, dims: Sequence[int], ks: Sequence[int] = (1, 5),
              progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Zero-shot top-k accuracy at each size: one row ``{"dim", "top1", "top5", ..., "num_images"}`` per size."""
    image_emb = _as_2d(image_emb, "image_emb")
    labels = np.asarray(labels, dtype=np.int64)
    prompts = np.asarray(prompts, dtype=np.float32)
    if len(labels) != len(image_emb):
        raise ConfigError("labels", f"has {len(labels)} rows for {len(image_emb)} images")
    if prompts.ndim != 3 or prompts.shape[2] != image_emb.shape[1]:
        raise ConfigError("class_prompt_embeddings", f"has shape {prompts.shape}, not [templates, classes, "
                          f"{image_emb.shape[1]}]", "embed the split with the checkpoint's own text tower")
    num_classes = prompts.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError("labels", f"hold class {int(labels.max())} but there are prompts for {num_classes} classes",
                          "prompt every class of the data")
    dims = _check_dims(dims, image_emb.shape[1])
    ks = _check_ks(ks, num_classes, "ks", f"the {num_classes} classes")
    rows = []
    for dim in dims:
        scores = l2_normalize_prefix(image_emb, dim, field="image_emb") @ class_embeddings(prompts, dim).T
        # best first; equal scores by class index (a stable sort of the negated scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :max(ks)]
        hit = order == labels[:, None]
        rows.append({"dim": dim, **{f"top{k}": float(hit[:, :k].any(axis=1).mean()) for k in ks},
                     "num_images": len(labels)})
        if progress is not None:
            progress(dim)
    return rows


def first_rows(ids: Any) -> np.ndarray:
    """Row of the first appearance of each id, ordered by first appearance."""
    ids = np.asarray(ids)
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def cross_modal_items(image_ids: Any, caption_ids: Any, labels: Any = None, match: str = "pair"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image rows [I], caption rows [K], matches [M, 2])``: a row of each distinct image and of each distinct
    caption, and the matching (image index, caption index) pairs among them (see the module doc)."""
    if match not in MATCHES:
        raise ConfigError("match", f"is {match!r}", f"choose one of {list(MATCHES)}")
    image_ids, caption_ids = np.asarray(image_ids, dtype=np.int64), np.asarray(caption_ids, dtype=np.int64)
    if image_ids.shape != caption_ids.shape or image_ids.ndim != 1:
        raise ConfigError("image_ids", f"has shape {image_ids.shape} and caption_ids {caption_ids.shape}",
                          "give one image id and one caption id per row")
    image_rows, caption_rows = first_rows(image_ids), first_rows(caption_ids)
    image_index = {v: i for i, v in enumerate(image_ids[image_rows].tolist())}
    caption_index = {v: i for i, v in enumerate(caption_ids[caption_rows].tolist())}
    if match == "pair":
        pairs = {(image_index[a], caption_index[b]) for a, b in zip(image_ids.tolist(), caption_ids.tolist())}
        matches = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    else:
        if labels is None:
            raise ConfigError("match", "is label but the split has no labels", "use match=pair")
        labels = np.asarray(labels, dtype=np.int64)
        image_labels, caption_labels = labels[image_rows], labels[caption_rows]
        by_label: dict[int, list[int]] = {}
        for c, y in enumerate(caption_labels.tolist()):
            by_label.setdefault(y, []).append(c)
        matches = np.array([(i, c) for i, y in enumerate(image_labels.tolist()) for c in by_label.get(y, [])],
                           dtype=np.int64).reshape(-1, 2)
    return image_rows, caption_rows, matches


def hits_at(ranked: np.ndarray, qrels: np.ndarray, num_docs: int, ks: Sequence[int]) -> dict[int, float]:
    """``{k: share of queries with a match in their top k}`` of ranked lists ``[Q, depth]``."""
    hit = ranked_gains(ranked, qrels, num_docs) > 0
    return {k: float(hit[:, :k].any(axis=1).mean()) for k in ks}


def qrels_of(matches: np.ndarray, flip: bool = False) -> np.ndarray:
    """``[M, 3]`` judgements (query, document, 1) from matching pairs (image, caption); ``flip``: caption queries."""
    pairs = matches[:, ::-1] if flip else matches
    return np.column_stack([pairs, np.ones(len(pairs), dtype=np.int64)]).astype(np.int64)


def cross_modal_retrieval(image_emb: Any, text_emb: Any, image_ids: Any, caption_ids: Any, dims: Sequence[int],
                          ks: Sequence[int] = (1, 5, 10), labels: Any = None, match: str = "pair",
                          progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Exact cosine search at each size of every distinct image over the distinct captions (``i2t_r@k``) and of
    every distinct caption over the distinct images (``t2i_r@k``); ``rsum``: the sum of the recalls (in %).
    One row per size, with ``num_images``, ``num_captions`` and ``search_seconds``."""
    image_emb, text_emb = _as_2d(image_emb, "image_emb"), _as_2d(text_emb, "text_emb")
    if image_emb.shape != text_emb.shape:
        raise ConfigError("text_emb", f"has shape {text_emb.shape} but image_emb {image_emb.shape}",
                          "give one caption embedding per image row")
    dims = _check_dims(dims, image_emb.shape[1])
    image_rows, caption_rows, matches = cross_modal_items(image_ids, caption_ids, labels, match)
    n_images, n_captions = len(image_rows), len(caption_rows)
    ks = _check_ks(ks, min(n_images, n_captions), "ks", f"the {min(n_images, n_captions)} distinct images/captions")
    i2t_qrels, t2i_qrels = qrels_of(matches), qrels_of(matches, flip=True)
    images, captions = image_emb[image_rows], text_emb[caption_rows]
    depth = max(ks)
    rows = []
    for dim in dims:
        t0 = time.perf_counter()
        img, cap = l2_normalize_prefix(images, dim, field="image_emb"), l2_normalize_prefix(captions, dim,
                                                                                            field="text_emb")
        _, i2t = search_index(build_index(cap), img, depth)
        _, t2i = search_index(build_index(img), cap, depth)
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"dim": dim}
        row.update({f"i2t_r@{k}": v for k, v in hits_at(i2t, i2t_qrels, n_captions, ks).items()})
        row.update({f"t2i_r@{k}": v for k, v in hits_at(t2i, t2i_qrels, n_images, ks).items()})
        row["rsum"] = 100.0 * sum(v for key, v in row.items() if "_r@" in key)
        rows.append({**row, "num_images": n_images, "num_captions": n_captions, "search_seconds": seconds})
        if progress is not None:
            progress(dim)
    return rows
