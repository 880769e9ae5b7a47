"""The Matryoshka loss: a weighted sum of cross-entropies, one per nesting size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MatryoshkaLoss(nn.Module):
    """``sum_g w_g * CE(logits[g], y)`` with label smoothing.

    ``logits``: ``[G, B, C]`` (G nesting sizes); ``target``: ``[B]`` int64. Each CE is a batch mean.
    """

    def __init__(self, weights: Sequence[float], label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)
        self.label_smoothing = label_smoothing

    def per_size(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unweighted cross-entropy of each size, shape ``[G]``."""
        num_sizes, batch, num_classes = logits.shape
        if logits.dtype in (torch.float16, torch.bfloat16):  # the softmax in full precision under AMP
            logits = logits.float()
        per_sample = F.cross_entropy(logits.reshape(num_sizes * batch, num_classes),
                                     target.repeat(num_sizes), reduction="none",
                                     label_smoothing=self.label_smoothing)
        return per_sample.view(num_sizes, batch).mean(dim=1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.per_size(logits, target) * self.weights).sum()
