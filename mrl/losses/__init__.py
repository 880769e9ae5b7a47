"""Losses: the Matryoshka wrapper that sums any base loss over nesting sizes, and the base losses."""

from mrl.losses.contrastive import CoSENT, InBatchNegatives, SymmetricInfoNCE, all_gather_with_grad
from mrl.losses.matryoshka import CrossEntropy, MatryoshkaLoss, prefixes

__all__ = ["CoSENT", "CrossEntropy", "InBatchNegatives", "MatryoshkaLoss", "SymmetricInfoNCE", "all_gather_with_grad",
           "prefixes"]
