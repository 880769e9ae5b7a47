"""A dual encoder (ALIGN/CLIP-style): an image tower and a text tower from the encoder factory, each followed by a
linear projection to one shared width ``dim``, whose every prefix is a Matryoshka size.

Config (``model.backbone``)::

    name: dual
    dim: 128                          # the shared embedding width d (the nesting sizes are prefixes of it)
    image: {name: convnet, ...}       # any image encoder of the factory (pretrained/pretrained_path as usual)
    text: {name: hf/minilm, ...}      # any hf/ text encoder (a hub id, a local dir, or the packaged MiniLM)
    lock_image: false                 # LiT: the tower's weights frozen and kept in eval mode (its projection trains)
    lock_text: false
    cache_locked_text: false          # a locked text tower's pooled output memoised per caption (CPU speed-up)

``image.projection_dim`` / ``text.projection_dim`` may name a tower's projection width; both must equal ``dim``
(the two modalities are compared in one space), which is checked with a one-line error.

:meth:`DualEncoder.encode_pair` gives ``[2, B, dim]`` (images, captions) of an image-text batch; ``forward`` is the
factory's contract for ``MatryoshkaModule.embed``: image embeddings when the batch holds ``image``, else text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mrl.errors import ConfigError

DUAL_NAME = "dual"
TOWER_ONLY = ("projection_dim",)  # keys of a tower's config that the dual encoder reads, not the tower


def _tower_config(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value.get("name"):
        raise ConfigError(field, f"expected a tower config with a name, got {value!r}",
                          "e.g. {name: convnet} for the image tower, {name: hf/minilm} for the text tower")
    return dict(value)


class DualEncoder(nn.Module):
    """Image tower + text tower, each projected (linear, no bias, as CLIP) to ``dim``. See the module doc."""

    def __init__(self, image: Mapping[str, Any], text: Mapping[str, Any], dim: int, lock_image: bool = False,
                 lock_text: bool = False, cache_locked_text: bool = False, in_chans: int = 3,
                 image_size: int | None = None):
        super().__init__()
        from mrl.encoders import create_encoder, is_text_encoder

        image, text = _tower_config(image, "model.backbone.image"), _tower_config(text, "model.backbone.text")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError("model.backbone.dim", f"must be a positive integer, got {dim!r}",
                              "set the shared embedding width, e.g. model.backbone.dim=128")
        widths = {tower: cfg.get("projection_dim") or dim for tower, cfg in (("image", image), ("text", text))}
        for tower, other in (("image", "text"), ("text", "image")):
            if widths[tower] != dim:
                raise ConfigError(f"model.backbone.{tower}.projection_dim",
                                  f"is {widths[tower]} but the {other} tower projects to {widths[other]} and the "
                                  f"shared width model.backbone.dim is {dim}",
                                  f"both towers must project to one width: set it to {dim} or null")
        if is_text_encoder(image["name"]):
            raise ConfigError("model.backbone.image.name", f"is the text encoder {image['name']!r}",
                              "give an image encoder (convnet, torchvision/resnet18, a timm name)")
        if not is_text_encoder(text["name"]):
            raise ConfigError("model.backbone.text.name", f"is {text['name']!r}, not a text encoder",
                              "give hf/<hub id or local dir>, e.g. hf/minilm")
        image_kwargs = {"in_chans": in_chans, "image_size": image_size,
                        **{k: v for k, v in image.items() if k not in TOWER_ONLY}}
        self.image = create_encoder(**image_kwargs)
        self.text = create_encoder(**{k: v for k, v in text.items() if k not in TOWER_ONLY})
        self.image_proj = nn.Linear(self.image.width, dim, bias=False)
        self.text_proj = nn.Linear(self.text.width, dim, bias=False)
        self.width = int(dim)
        self.lock_image, self.lock_text = bool(lock_image), bool(lock_text)
        self.cache_locked_text = bool(cache_locked_text) and self.lock_text
        self._text_cache: dict[bytes, torch.Tensor] = {}
        for locked, tower in ((self.lock_image, self.image), (self.lock_text, self.text)):
            if locked:
                tower.requires_grad_(False)
                tower.eval()

    # ------------------------------------------------------------------------------------------ modes

    def train(self, mode: bool = True) -> DualEncoder:
        """Training mode for everything but a locked tower, which stays in eval mode (LiT: no dropout, frozen
        BatchNorm statistics)."""
        super().train(mode)
        for locked, tower in ((self.lock_image, self.image), (self.lock_text, self.text)):
            if locked:
                tower.eval()
        return self

    @property
    def tokenizer(self):
        return self.text.tokenizer

    @property
    def max_length(self) -> int:
        return self.text.max_length

    # ------------------------------------------------------------------------------------------ encoding

    def _image_features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.lock_image:
            with torch.no_grad():
                return self.image(batch)
        return self.image(batch)

    def _text_features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if not self.lock_text:
            return self.text(batch)
        with torch.no_grad():
            if not self.cache_locked_text:
                return self.text(batch)
            return self._cached_text(batch)

    def _cached_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The locked tower's pooled outputs, each caption (its token ids) encoded once and then looked up."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        rows = ids.masked_fill(mask == 0, -1).cpu().numpy()
        keys = [row[row >= 0].tobytes() for row in rows]
        missing = [i for i, key in enumerate(keys) if key not in self._text_cache]
        if missing:
            index = torch.tensor(missing, device=ids.device)
            sub = {k: v.index_select(0, index) for k, v in batch.items()
                   if isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape[0] == ids.shape[0]}
            for i, feature in zip(missing, self.text(sub)):
                if len(self._text_cache) < 1_000_000:
                    self._text_cache[keys[i]] = feature.detach()
                else:  # a huge caption set: no more memo
                    return self.text(batch)
        return torch.stack([self._text_cache[key] for key in keys]).to(ids.device)

    def encode_image(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[B, dim]`` image embeddings of ``batch["image"]``."""
        return self.image_proj(self._image_features(batch))

    def encode_text(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[B, dim]`` caption embeddings of a tokenised batch (``input_ids``, ``attention_mask``)."""
        return self.text_proj(self._text_features(batch).to(self.text_proj.weight.dtype))

    def encode_pair(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[2, B, dim]``: the images' and the captions' embeddings of an image-text batch."""
        return torch.stack([self.encode_image(batch), self.encode_text(batch)])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], device: torch.device | str | None = None,
                     batch_size: int = 256) -> torch.Tensor:
        """``[len(texts), dim]`` embeddings of raw strings (class prompts), tokenised with the text tower's own
        tokenizer, in chunks."""
        device = device or self.text_proj.weight.device
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.text.tokenize(list(texts[start:start + batch_size]))
            out.append(self.encode_text({k: v.to(device) for k, v in tokens.items()}))
        return torch.cat(out)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Image embeddings ``[B, dim]`` when the batch holds ``image``, else caption embeddings."""
        if isinstance(batch, torch.Tensor):
            batch = {"image": batch}
        return self.encode_image(batch) if "image" in batch else self.encode_text(batch)


def create_dual_encoder(**kwargs: Any) -> DualEncoder:
    """:class:`DualEncoder` from ``model.backbone`` (less its ``name``); an unknown key is a one-line error."""
    import inspect

    known = set(inspect.signature(DualEncoder).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"model.backbone.{unknown[0]}", "is not an option of the dual encoder",
                          f"put tower options under model.backbone.image / .text; dual options: {sorted(known)}")
    return DualEncoder(**kwargs)
