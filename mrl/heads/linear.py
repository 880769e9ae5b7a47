"""Matryoshka classification heads.

Every head maps an embedding ``z`` of shape ``[B, width]`` to logits for each nesting size, shape
``[len(nesting_dims), B, num_classes]``; row ``g`` uses only ``z[:, :nesting_dims[g]]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mrl.errors import ConfigError

HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        HEADS[name] = cls
        cls.head_type = name
        return cls
    return wrap


def _init_linear_(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    # Same init as nn.Linear, so a one-size head matches a plain linear classifier.
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(bias, -bound, bound)


@register_head("mrl")
class MatryoshkaHead(nn.Module):
    """MRL: an independent ``Linear(m, C)`` (own weight and bias) for every nesting size ``m``."""

    def __init__(self, nesting_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.nesting_dims = list(nesting_dims)
        self.num_classes = num_classes
        self.classifiers = nn.ModuleList(nn.Linear(m, num_classes) for m in self.nesting_dims)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([fc(z[:, :m]) for m, fc in zip(self.nesting_dims, self.classifiers)])

    def weight_for(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [C, dim], b [C])`` of the classifier trained at size ``dim``."""
        fc = self.classifiers[self.nesting_dims.index(dim)]
        return fc.weight, fc.bias


@register_head("mrle")
class TiedMatryoshkaHead(nn.Module):
    """MRL-E: one weight ``W [C, width]`` and one bias ``b``; ``logits_m = z[:, :m] @ W[:, :m].T + b``.

    All sizes come from one pass over ``W``: the partial product of each chunk of columns between
    consecutive sizes, then a cumulative sum over chunks. That costs one full matmul instead of one
    matmul per size.
    """

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
        partial = torch.stack([z[:, lo:hi] @ self.weight[:, lo:hi].T for lo, hi in self._chunks])
        return partial.cumsum(dim=0) + self.bias

    def weight_for(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W[:, :dim], b)``: MRL-E serves any prefix length, not only the trained sizes."""
        return self.weight[:, :dim], self.bias


@register_head("ff")
class FixedFeatureHead(nn.Module):
    """FF-k baseline: one ``Linear(k, C)`` on the first ``k`` coordinates; a model whose
    representation has ``k`` dims. ``nesting_dims`` must be ``[k]``."""

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
        return self.classifier(z[:, : self.nesting_dims[0]]).unsqueeze(0)

    def weight_for(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if dim != self.nesting_dims[0]:
            raise ConfigError("dims", f"an FF-{self.nesting_dims[0]} model has no classifier at size {dim}",
                              f"evaluate it at {self.nesting_dims[0]} only")
        return self.classifier.weight, self.classifier.bias


def create_head(name: str, nesting_dims: Sequence[int], num_classes: int) -> nn.Module:
    """Build a registered head (``mrl``, ``mrle``, ``ff``)."""
    if name not in HEADS:
        raise ConfigError("model.head", f"unknown head type {name!r}", f"choose one of {sorted(HEADS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("model.num_classes", f"must be an int >= 2, got {num_classes!r}")
    return HEADS[name](nesting_dims, num_classes)
