"""Encoders: networks that map a batch to an embedding ``[B, width]`` (image backbones today)."""

from mrl.encoders.image import Backbone, create_backbone

__all__ = ["Backbone", "create_backbone"]
