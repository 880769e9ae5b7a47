"""A Matryoshka classifier: encoder + head, and the factory that builds one from plain arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mrl.encoders import create_encoder
from mrl.heads import create_head
from mrl.nesting import resolve_nesting_dims


class MatryoshkaClassifier(nn.Module):
    """``embed(batch) -> [B, width]``; ``forward(batch) -> logits [len(nesting_dims), B, num_classes]``.

    ``batch``: what the encoder takes (a dict such as ``{"image": ...}`` or ``{"input_ids", "attention_mask"}``,
    or an image tensor). The encoder sits under ``backbone`` (the state-dict prefix of every checkpoint).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def nesting_dims(self) -> list[int]:
        return self.head.nesting_dims

    @property
    def width(self) -> int:
        return self.backbone.width

    def embed(self, batch: Any) -> torch.Tensor:
        return self.backbone(batch)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.backbone(batch))


def create_model(backbone: str | Mapping[str, Any], head: str = "mrl", num_classes: int = 1000,
                 nesting_dims: str | Sequence[int] = "auto") -> MatryoshkaClassifier:
    """Build backbone and head; ``backbone`` is a name or a dict of :func:`~mrl.encoders.create_encoder`
    arguments (an image backbone, or ``hf/...`` for a text encoder).

    >>> model = create_model("torchvision/resnet50", head="mrle", num_classes=1000)
    >>> model.nesting_dims
    [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    """
    kwargs = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
    net = create_encoder(**kwargs)
    # An FF-k model uses a k-dim prefix by design; for MRL a missing full width is worth a warning.
    dims = resolve_nesting_dims(nesting_dims, net.width, warn_partial=head != "ff")
    return MatryoshkaClassifier(net, create_head(head, dims, num_classes))
