"""Encoders: networks that map a batch to an embedding ``[B, width]``, behind one factory.

* ``hf/<name or local dir>``: a Hugging Face text encoder with pooling (:class:`~mrl.encoders.text.TextEncoder`;
  ``hf/minilm`` is the all-MiniLM-L6-v2 copy that loads offline);
* ``torchvision/<resnet>``, any timm name, and the local ``mlp``/``convnet``: image backbones
  (:mod:`mrl.encoders.image`);
* ``dual``: an image tower and a text tower projected to one shared width (:class:`~mrl.encoders.dual.DualEncoder`,
  image-text models).

Every encoder takes a batch dict (``{"image": [B, C, H, W]}``, ``{"input_ids", "attention_mask"}``; other keys
such as ``label`` are ignored), has ``width``, and returns ``[B, width]``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mrl.encoders.image import Backbone, create_backbone

TEXT_PREFIX = "hf/"
TEXT_OPTIONS = ("pooling", "max_length", "pretrained")


def is_text_encoder(name: str) -> bool:
    return isinstance(name, str) and name.startswith(TEXT_PREFIX)


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build an encoder by name (see the module doc); ``kwargs`` are that family's options
    (``pooling``/``max_length``/``pretrained`` for ``hf/``; ``pretrained``, ``small_input``, ``in_chans``,
    ``image_size`` ... for images)."""
    from mrl.errors import ConfigError

    if name == "dual":
        from mrl.encoders.dual import create_dual_encoder

        return create_dual_encoder(**kwargs)
    if is_text_encoder(name):
        from mrl.encoders.text import TextEncoder

        unknown = sorted(k for k, v in kwargs.items() if k not in TEXT_OPTIONS and v not in (None, False))
        if unknown:
            raise ConfigError(f"model.backbone.{unknown[0]}", f"is not an option of a text encoder ({name})",
                              f"remove it; text encoders take {list(TEXT_OPTIONS)}")
        options = {k: v for k, v in kwargs.items() if k in TEXT_OPTIONS}
        return TextEncoder(name[len(TEXT_PREFIX):], **options)
    return create_backbone(name, **kwargs)


__all__ = ["TEXT_PREFIX", "Backbone", "create_backbone", "create_encoder", "is_text_encoder"]
