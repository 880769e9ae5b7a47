"""The Matryoshka loss as a wrapper around any base loss (as sentence-transformers' ``MatryoshkaLoss`` wraps
any sentence loss): ``sum_g w_g * base(output at size g, ...)``.

A head gives its outputs per size already (classification logits ``[G, B, C]``); an embedding loss (contrastive,
regression on embeddings) gets the prefixes ``z[..., :m]`` of its embeddings from :func:`prefixes`. Either way
the wrapper only weights and sums: the base loss is not forked per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MatryoshkaLoss(nn.Module):
    """``sum_g weights[g] * base_loss(outputs[g], *args)``.

    ``outputs``: a tensor ``[G, ...]`` (one row per nesting size) or a sequence of G items; an item that is a
    tuple is unpacked into the base loss (``base_loss(*outputs[g], *args)``: pairs of prefixes for a
    contrastive loss). ``base_loss`` returns a scalar per call. A base loss may offer
    ``stacked(outputs [G, ...], *args) -> [G]``, all sizes in one call (cross-entropy does: one kernel instead
    of G); the result equals the loop over sizes.
    """

    def __init__(self, base_loss: Callable[..., torch.Tensor], weights: Sequence[float]):
        super().__init__()
        self.base_loss = base_loss
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)

    def per_size(self, outputs: torch.Tensor | Sequence, *args, sizes: Sequence[int] | None = None) -> torch.Tensor:
        """The unweighted base loss of each size, shape ``[G]``. ``sizes``: indices of the sizes to compute this
        step (sentence-transformers' ``n_dims_per_step``); the others are 0 and get no gradient."""
        if len(outputs) != len(self.weights):
            raise ValueError(f"MatryoshkaLoss has {len(self.weights)} weights but got {len(outputs)} sizes")
        if sizes is None and isinstance(outputs, torch.Tensor) and hasattr(self.base_loss, "stacked"):
            return self.base_loss.stacked(outputs, *args)
        chosen = range(len(outputs)) if sizes is None else set(sizes)
        losses = [self.base_loss(*(out if isinstance(out, tuple) else (out,)), *args) if g in chosen else None
                  for g, out in enumerate(outputs)]
        zero = next(loss for loss in losses if loss is not None).new_zeros(())
        return torch.stack([zero if loss is None else loss for loss in losses])

    def forward(self, outputs: torch.Tensor | Sequence, *args, sizes: Sequence[int] | None = None) -> torch.Tensor:
        return (self.per_size(outputs, *args, sizes=sizes) * self.weights).sum()


class CrossEntropy(nn.Module):
    """Classification's base loss: cross-entropy with label smoothing, a batch mean, the softmax in float32
    under mixed precision. ``logits [B, C]``, ``target [B]`` int64."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.stacked(logits.unsqueeze(0), target)[0]

    def stacked(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[G]`` cross-entropies of ``logits [G, B, C]`` against one ``target [B]``, in one call."""
        num_sizes, batch, num_classes = logits.shape
        if logits.dtype in (torch.float16, torch.bfloat16):  # the softmax in full precision under AMP
            logits = logits.float()
        per_sample = F.cross_entropy(logits.reshape(num_sizes * batch, num_classes), target.repeat(num_sizes),
                                     reduction="none", label_smoothing=self.label_smoothing)
        return per_sample.view(num_sizes, batch).mean(dim=1)


def prefixes(nesting_dims: Sequence[int], *embeddings: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """For each size ``m``: the tuple ``(e[..., :m] for e in embeddings)``, the per-size inputs of an embedding
    loss wrapped in :class:`MatryoshkaLoss` (views, no copies)."""
    return [tuple(e[..., :m] for e in embeddings) for m in nesting_dims]
