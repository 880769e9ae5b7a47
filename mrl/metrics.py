"""Accuracy at every nesting size, accumulated as exact counts (so it reduces exactly across ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is in the top-k logits, per k and size.

    ``logits``: ``[G, B, C]``; ``target``: ``[B]``. Returns int64 ``[len(ks), G]``. ``k`` is capped at C.
    """
    num_classes = logits.shape[-1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=-1).indices  # [G, B, kmax]
    hits = top == target.view(1, -1, 1)
    return torch.stack([hits[..., : min(k, num_classes)].any(dim=-1).sum(dim=-1) for k in ks])


class SizeAccuracy:
    """Running top-1/top-5 counts per nesting size for one stage (val or test)."""

    def __init__(self, nesting_dims: Sequence[int], ks: Sequence[int] = (1, 5)):
        self.nesting_dims = list(nesting_dims)
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(len(self.ks), len(self.nesting_dims), dtype=torch.int64)
        self.total = torch.zeros((), dtype=torch.int64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)  # summed per-sample loss: an exact mean over ranks

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss_sum: torch.Tensor | float = 0.0) -> None:
        self.correct += topk_correct(logits.detach(), target, self.ks).cpu()
        self.total += target.numel()
        self.loss_sum += float(loss_sum)

    def compute(self, correct: torch.Tensor | None = None, total: torch.Tensor | None = None) -> dict[str, float]:
        """``{"top1@8": 71.2, ..., "top1_mean": ...}`` in percent (pass reduced counts under DDP)."""
        correct = self.correct if correct is None else correct
        total = self.total if total is None else total
        n = max(int(total), 1)
        out: dict[str, float] = {}
        for i, k in enumerate(self.ks):
            accs = [100.0 * int(c) / n for c in correct[i]]
            out.update({f"top{k}@{m}": a for m, a in zip(self.nesting_dims, accs)})
            out[f"top{k}_mean"] = sum(accs) / len(accs)
        return out
