"""Losses: the Matryoshka wrapper that sums a base loss over nesting sizes."""

from mrl.losses.matryoshka import MatryoshkaLoss

__all__ = ["MatryoshkaLoss"]
