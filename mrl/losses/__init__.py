"""Losses: the Matryoshka wrapper that sums any base loss over nesting sizes, and the base losses."""

from mrl.losses.matryoshka import CrossEntropy, MatryoshkaLoss, prefixes

__all__ = ["CrossEntropy", "MatryoshkaLoss", "prefixes"]
