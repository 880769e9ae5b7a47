"""Matryoshka classification heads.

Every head maps an embedding ``z`` of shape ``[..., width]`` (``[B, width]``, or ``[B, T, width]`` per token)
to logits for each nesting size, shape ``[len(nesting_dims), ..., num_classes]``; row ``g`` uses only
``z[..., :nesting_dims[g]]``. Each head answers :meth:`classifier_at` itself: the linear classifier that serves
a prefix of any length it supports, so evaluators never read parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mrl.errors import ConfigError

HEADS: dict[str, type[nn.Module]] = {}


def register_head(cls: type[nn.Module]) -> type[nn.Module]:
    """Add a head class to :data:`HEADS` under its ``name`` (the head type in configs and checkpoints)."""
    HEADS[cls.name] = cls
    return cls


def _init_linear_(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    # Same init as nn.Linear, so a one-size head matches a plain linear classifier.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(bias, -bound, bound)


@register_head
class MatryoshkaHead(nn.Module):
    """MRL: an independent ``Linear(m, C)`` (own weight and bias) for every nesting size ``m``."""

    name, label = "mrl", "MRL"

    def __init__(self, nesting_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.nesting_dims = list(nesting_dims)
        self.num_classes = num_classes
        self.classifiers = nn.ModuleList(nn.Linear(m, num_classes) for m in self.nesting_dims)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([fc(z[..., :m]) for m, fc in zip(self.nesting_dims, self.classifiers)])

    def classifier_at(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [C, dim], b [C])``: the classifier of the smallest trained size ``m >= dim``, its weight sliced
        to ``[:, :dim]``, with its own bias (the paper's interpolation to untrained sizes); at a trained size,
        exactly that size's classifier."""
        g = next(i for i, m in enumerate(self.nesting_dims) if m >= _check_dim(self, dim))
        fc = self.classifiers[g]
        return fc.weight[:, :dim], fc.bias


@register_head
class TiedMatryoshkaHead(nn.Module):
    """MRL-E: one weight ``W [C, width]`` and one bias ``b``; ``logits_m = z[:, :m] @ W[:, :m].T + b``.

    All sizes come from one pass over ``W``: the partial product of each chunk of columns between
    consecutive sizes, then a cumulative sum over chunks. That costs one full matmul instead of one
    matmul per size.
    """

    name, label = "mrle", "MRL-E"

    def __init__(self, nesting_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.nesting_dims = list(nesting_dims)
        self.num_classes = num_classes
        width = self.nesting_dims[-1]
        self.weight = nn.Parameter(torch.empty(num_classes, width))
        self.bias = nn.Parameter(torch.empty(num_classes))
        _init_linear_(self.weight, self.bias, width)
        bounds = [0, *self.nesting_dims]
        self._chunks = list(zip(bounds[:-1], bounds[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        partial = torch.stack([z[..., lo:hi] @ self.weight[:, lo:hi].T for lo, hi in self._chunks])
        return partial.cumsum(dim=0) + self.bias

    def classifier_at(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W[:, :dim], b)``: MRL-E serves any prefix length, not only the trained sizes."""
        return self.weight[:, :_check_dim(self, dim)], self.bias


@register_head
class FixedFeatureHead(nn.Module):
    """FF-k baseline: one ``Linear(k, C)`` on the first ``k`` coordinates; a model whose
    representation has ``k`` dims. ``nesting_dims`` must be ``[k]``."""

    name, label = "ff", "FF-{k}"

    def __init__(self, nesting_dims: Sequence[int], num_classes: int):
        super().__init__()
        if len(nesting_dims) != 1:
            raise ConfigError("model.nesting_dims", f"head 'ff' trains one size, got {list(nesting_dims)}",
                              "set one size, e.g. model.ff_dim=64 with the imagenet_resnet50_ff preset "
                              "or model.nesting_dims=[64]")
        self.nesting_dims = list(nesting_dims)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.nesting_dims[0], num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z[..., : self.nesting_dims[0]]).unsqueeze(0)

    def classifier_at(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [C, k], b [C])``; an FF-k model classifies its own size only."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim != self.nesting_dims[0]:
            raise ConfigError("dims", f"an FF-k model is evaluated at its own size only: this is "
                              f"FF-{self.nesting_dims[0]}, asked for size {dim}",
                              f"use dims=nesting (= [{self.nesting_dims[0]}])")
        return self.classifier.weight, self.classifier.bias


def _check_dim(head: nn.Module, dim: int) -> int:
    """``dim`` if it is an int in ``1..width`` of ``head`` (the prefix lengths MRL and MRL-E classify)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ConfigError("dims", f"sizes must be ints, got {dim!r}")
    top = head.nesting_dims[-1]
    if not 1 <= dim <= top:
        raise ConfigError("dims", f"size {dim} is outside 1..{top}, the sizes this '{head.name}' head classifies",
                          f"use sizes between 1 and {top}")
    return dim


def model_label(head_type: str, nesting_dims: Sequence[int]) -> str:
    """How tables and plots name a model of this head: ``MRL``, ``MRL-E``, ``FF-64``."""
    cls = HEADS.get(head_type)
    return cls.label.format(k=nesting_dims[0]) if cls is not None else head_type


def create_head(name: str, nesting_dims: Sequence[int], num_classes: int) -> nn.Module:
    """Build a registered head (``mrl``, ``mrle``, ``ff``)."""
    if name not in HEADS:
        raise ConfigError("model.head", f"unknown head type {name!r}", f"choose one of {sorted(HEADS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("model.num_classes", f"must be an int >= 2, got {num_classes!r}")
    return HEADS[name](nesting_dims, num_classes)
