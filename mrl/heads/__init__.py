"""Matryoshka heads: what maps an embedding to per-size outputs (the linear classifiers of MRL, MRL-E, FF)."""

from mrl.heads.linear import (HEADS, FixedFeatureHead, MatryoshkaHead, TiedMatryoshkaHead, create_head, model_label,
                              register_head)

__all__ = ["HEADS", "FixedFeatureHead", "MatryoshkaHead", "TiedMatryoshkaHead", "create_head", "model_label",
           "register_head"]
