"""Base losses of contrastive sentence embeddings, each called on one prefix size by :class:`MatryoshkaLoss`.

Both L2-normalise their inputs *after* the caller has sliced them to a prefix ``e[..., :m]``: a Matryoshka
embedding is truncated first and normalised second, so each size is trained as the cosine embedding it will be
used as.

* :class:`InBatchNegatives` -- multiple-negatives ranking (InfoNCE over the batch's candidates, the loss of
  sentence-transformers' ``MultipleNegativesRankingLoss``): each anchor must pick its own positive among every
  positive and hard negative of the (global) batch.
* :class:`CoSENT` -- the CoSENT ranking loss on scored pairs: every pair scored higher must have a higher cosine.

:func:`all_gather_with_grad` concatenates a tensor over the ranks of a process group with gradients flowing back
to each rank's own rows, the way open_clip gathers features, so negatives come from the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def world_size() -> int:
    """Processes of the default group, or 1 when torch.distributed is not running."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` on each of W ranks -> ``[W * B, ...]``, rank 0's rows first, identical on every rank; the
    backward pass sums each rank's gradient for the rows it contributed (``torch.distributed.nn``), so that with
    DDP's averaging the parameters get the gradient of the mean over ranks of the per-rank losses, exactly as one
    process computing the whole batch. Every rank must pass the same ``B`` (training loaders drop the last,
    partial batch). The identity on one process."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return _ContiguousGrad.apply(torch.cat(all_gather(x.contiguous()), dim=0))


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward makes the incoming gradient contiguous: all_gather's backward exchanges the
    gradient's per-rank slices, and over gloo a non-contiguous slice (the gradient of a later transpose) is sent
    as if it were contiguous, which scrambles it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class InBatchNegatives(nn.Module):
    """Multiple-negatives ranking: ``cross_entropy(scale * cos(anchors, candidates), targets)``.

    ``anchors [B, m]``, ``candidates [C, m]`` (every positive, then every hard negative, of the batch, gathered
    over ranks when training with ``gather``), ``targets [B]`` int64: the row of each anchor's positive in
    ``candidates``. ``scale`` is the inverse temperature (sentence-transformers' default is 20). Returns the mean
    over anchors; the softmax is in float32 under mixed precision.
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, anchors: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(anchors, candidates), targets)

    def logits(self, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` scaled cosine similarities, float32."""
        a = F.normalize(anchors.float(), dim=-1)
        c = F.normalize(candidates.float(), dim=-1)
        return self.scale * a @ c.T


class CoSENT(nn.Module):
    """CoSENT (Su, 2022): ``log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i)))``.

    ``first [B, m]``, ``second [B, m]`` (pair i is ``first[i], second[i]``), ``scores [B]`` (any monotone
    similarity, e.g. STS's 0-5). Only the order of the scores matters. ``scale`` 20 as in the paper and
    sentence-transformers.
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cos = F.cosine_similarity(first.float(), second.float(), dim=-1) * self.scale  # [B]
        diff = cos[None, :] - cos[:, None]                                            # [i, j]: cos_j - cos_i
        ordered = scores[:, None] > scores[None, :]                                    # score_i > score_j
        terms = diff[ordered]
        # log(1 + sum exp(t)) = logsumexp([0, t...]), stable for large t
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


class SymmetricInfoNCE(nn.Module):
    """CLIP/ALIGN's symmetric InfoNCE on one prefix size: the mean of image->text and text->image
    cross-entropies of the scaled cosine similarities.

    ``image_rows [b, m]`` and ``text_rows [b, m]``: the rows whose loss is taken (this rank's, with open_clip's
    ``local_loss``; else the whole gathered batch); ``text_cols [C, m]`` and ``image_cols [C, m]``: the candidates
    (the gathered batch); ``targets [b]``: the column of each row's own pair; ``scale``: the logit scale
    (``1 / temperature``, a tensor when learnt). Each input is L2-normalised here, after the caller sliced the
    prefix; the softmax is in float32 under mixed precision. Returns the mean over rows of
    ``(CE(image->text) + CE(text->image)) / 2``.
    """

    def forward(self, image_rows: torch.Tensor, text_cols: torch.Tensor, text_rows: torch.Tensor,
                image_cols: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        i2t, t2i = self.logits(image_rows, text_cols, text_rows, image_cols, scale)
        return (F.cross_entropy(i2t, targets) + F.cross_entropy(t2i, targets)) / 2

    @staticmethod
    def logits(image_rows, text_cols, text_rows, image_cols, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """``([b, C], [b, C])``: scaled cosines image->text and text->image, float32."""
        def unit(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x.float(), dim=-1)

        return scale * unit(image_rows) @ unit(text_cols).T, scale * unit(text_rows) @ unit(image_cols).T
