"""Masked-language-model data: plain texts from several sources, masked in the loader workers as BERT masks them.

Sources (``{format, root, splits, options}``; :func:`read_texts`) give texts only, whatever labels their files hold:

* ``sst2``, ``ag_news``, ``trec`` -- the shared text-classification files (:mod:`mrl.data.text`), their sentences;
* ``snli`` -- SNLI's ``s1.<split>`` (premises) and ``s2.<split>`` (hypotheses) lines;
* ``lines`` -- plain text, one text per line (a file, or ``<root>/<split>.txt``); blank lines are skipped;
* ``hf`` -- a Hugging Face ``datasets`` data set by name (``options``: ``config``, ``text_column``, ``pack_words``,
  ``num_proc``, ``cache_dir``), read lazily from its Arrow files, so Wikipedia and BookCorpus never sit in memory as
  Python strings. ``pack_words: n`` rewrites it once (cached by ``datasets``) into chunks of ``n`` words: long
  articles are cut, consecutive short rows (BookCorpus sentences) joined, paragraph breaks kept as spaces; BERT
  packs its sequences the same way, in tokens.

:class:`MLMCollate` tokenises a batch and masks each text from its own seed, as BERT's data pipeline does: of the
``n`` real tokens that are not special tokens, ``max(1, round(p * n))`` are chosen uniformly; 80% of them become
the mask token, 10% a token drawn uniformly from the vocabulary's non-special tokens, 10% stay; ``mlm_labels`` holds
the original ids at the chosen positions and -100 elsewhere. A text's masks depend on its text and its seed alone
(not on the batch, padding, worker or process count). Training seeds come from the run's seeded sample order
(:mod:`mrl.data.sampling`: a function of seed, epoch and sample, so every epoch masks afresh and a resumed run masks
as the uninterrupted one); validation and test seeds are fixed by ``eval_mask_seed`` and the text's place in its
split, and the held-out texts by ``split_seed``: neither depends on the run's seed, so every model of a study is
scored on the same masked tokens of the same texts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mrl.data.datamodules import ClassificationDataModule, adopt_text_encoder, register_datamodule
from mrl.data.text import _read_lines, _shorten, load_text_split
from mrl.errors import ConfigError

IGNORE_INDEX = -100  # mlm_labels at positions that are not predicted (cross-entropy's ignore_index)
TEXT_FORMATS = ("sst2", "ag_news", "trec", "snli", "lines", "hf")
SOURCE_KEYS = ("format", "root", "splits", "options")
ROLES = ("train", "val", "test")
HF_OPTIONS = ("config", "text_column", "pack_words", "num_proc", "cache_dir")
MASK_FIX = "set it to the share of tokens to mask, e.g. 0.15 (BERT's)"


def check_mask_probability(field: str, value: Any) -> float:
    """``value`` as a float in (0, 1), else a one-line :class:`ConfigError` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(field, f"must be a number in (0, 1), got {value!r}", MASK_FIX)
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(field, f"must be in (0, 1), got {value}", MASK_FIX)
    return float(value)


def check_mask_token(tokenizer: Any, name: str, field: str = "model.backbone.name") -> int:
    """The tokenizer's mask token id; a :class:`ConfigError` naming ``field`` when it has none."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if getattr(tokenizer, "mask_token", None) is None or mask_id is None:
        raise ConfigError(field, f"the tokenizer of {name!r} has no mask token, so masked language modelling cannot "
                          "hide tokens from it", "use a BERT-style model whose tokenizer has one (its [MASK]), e.g. "
                          "hf/minilm or hf/bert-base-uncased")
    return int(mask_id)


# --------------------------------------------------------------------------------------------- texts


class Texts(Sequence):
    """Indexable texts: a list, the text column of a Hugging Face data set (read row by row from its Arrow files),
    or several of them one after another."""

    def __init__(self, parts: Sequence[Sequence[str]]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


class HFColumn(Sequence):
    """One text column of a Hugging Face data set, a row at a time."""

    def __init__(self, dataset: Any, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self.dataset[int(index)][self.column]


class Picked(Sequence):
    """``base[indices[i]]``: chosen texts of another sequence."""

    def __init__(self, base: Sequence[str], indices: Sequence[int]):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self.base[int(self.indices[index])]


class Without(Sequence):
    """``base`` without the (sorted, distinct) ``held`` indices, in order, in O(log k) per item and no index list of
    the whole base (Wikipedia has millions of texts)."""

    def __init__(self, base: Sequence[str], held: Sequence[int]):
        self.base = base
        held = np.unique(np.asarray(held, dtype=np.int64))
        self.shift = held - np.arange(len(held))  # held[t] - t: non-decreasing

    def __len__(self) -> int:
        return len(self.base) - len(self.shift)

    def position(self, index: int) -> int:
        """The base index of item ``index``: itself plus the held indices at or before it."""
        return int(index) + int(np.searchsorted(self.shift, index, side="right"))

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.base[self.position(index)]


def _pack(batch: Mapping[str, list], column: str, words: int) -> dict[str, list[str]]:
    """``datasets.map`` (batched): the texts of a batch as one stream of words, cut into chunks of ``words``
    (the last, shorter one kept)."""
    stream = [word for text in batch[column] if isinstance(text, str) for word in text.split()]
    return {"text": [" ".join(stream[i:i + words]) for i in range(0, len(stream), words)]}


def _load_hf(name: str, split: str, config: str | None, cache_dir: str | None) -> tuple[Any, str]:
    """``datasets.load_dataset(name, config, split=split)`` and how messages name it; every failure a one-line
    :class:`ConfigError`."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.format", "format 'hf' needs the Hugging Face datasets package, which is not "
                          "installed", "pip install datasets (the hf-datasets extra)") from None
    source = f"{name}" + (f"/{config}" if config else "") + f" [{split}]"
    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir), source
    except Exception as exc:  # noqa: BLE001  (offline, unknown name/config/split: many exception types)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("data.root", f"could not load Hugging Face dataset {source}: {reason}",
                          "check the name, config and split, and network access (or HF_DATASETS_OFFLINE with a "
                          "filled cache)") from None


def read_hf_texts(name: str, split: str, config: str | None = None, text_column: str = "text",
                  pack_words: int | None = None, num_proc: int | None = None,
                  cache_dir: str | None = None) -> Sequence[str]:
    """The ``text_column`` of a Hugging Face data set split, lazily; with ``pack_words``, chunks of that many words
    (see the module doc)."""
    if pack_words is not None and (isinstance(pack_words, bool) or not isinstance(pack_words, int) or pack_words < 1):
        raise ConfigError("data.options.pack_words", f"must be a positive number of words or null, got {pack_words!r}",
                          "e.g. 96 for 128-token sequences (about 1.3 tokens per English word)")
    dataset, source = _load_hf(name, split, config, cache_dir)
    if text_column not in dataset.column_names:
        raise ConfigError("data.options.text_column", f"column {text_column!r} is not in {source}; it has columns "
                          f"{_shorten([repr(c) for c in dataset.column_names])}", "set it to one of them")
    if pack_words:
        dataset = dataset.map(_pack, batched=True, batch_size=1000, remove_columns=dataset.column_names,
                              fn_kwargs={"column": text_column, "words": pack_words}, num_proc=num_proc,
                              desc=f"packing {source} into {pack_words}-word texts")
        text_column = "text"
    return HFColumn(dataset, text_column)


def _lines_file(root: Path, split: str | None) -> Path:
    if root.is_file():
        return root
    path = root / f"{split}.txt"
    if split is None or not path.is_file():
        missing = "" if split is None else f" and has no {path.name}"
        raise ConfigError("data.root", f"{root} is not a text file{missing}",
                          "point it at a file with one text per line, or a folder of <split>.txt files")
    return path


def read_texts(format: str, root: str | Path, splits: Sequence[str] | None = None,
               **options: Any) -> Sequence[str]:
    """The texts of one source (see the module doc); local sources as a list, in file order, stripped, empty lines
    and repeats dropped."""
    if format not in TEXT_FORMATS:
        raise ConfigError("data.format", f"unknown text source format {format!r}",
                          f"choose one of {', '.join(TEXT_FORMATS)}")
    splits = [splits] if isinstance(splits, str) else list(splits or [])
    if format == "hf":
        unknown = sorted(set(options) - set(HF_OPTIONS))
        if unknown:
            raise ConfigError(f"data.options.{unknown[0]}", "is not an option of format hf",
                              f"options: {', '.join(HF_OPTIONS)}")
        if not splits:
            raise ConfigError("data.splits", "is not set", "name the Hugging Face splits to read, e.g. [train]")
        return Texts([read_hf_texts(str(root), split, **options) for split in splits])
    if options:
        raise ConfigError(f"data.options.{min(options)}", f"is not an option of format {format}",
                          "local text sources take no options")
    path = Path(str(root)).expanduser()
    texts: list[str] = []
    if format == "lines":
        for split in splits or [None]:
            texts += [line.strip() for _, line in _read_lines(_lines_file(path, split), "utf-8")]
    elif format == "snli":
        if not path.is_dir():
            raise ConfigError("data.root", f"{path} is not a folder",
                              "point it at the folder of SNLI's s1.*, s2.* files")
        for split in splits or ["dev", "test"]:
            for name in ("s1", "s2"):
                file = path / f"{name}.{split}"
                if not file.is_file():
                    present = sorted(p.suffix[1:] for p in path.glob("s1.*"))
                    raise ConfigError("data.root", f"SNLI split {split!r} expects {file}, which does not exist",
                                      f"the splits of {path} are {present or 'none'}")
                texts += [line.strip() for _, line in _read_lines(file, "utf-8")]
    else:
        for split in splits or ["train"]:
            texts += load_text_split(format, path, split).texts
    return list(dict.fromkeys(t for t in texts if t))


def _checked_sources(role: str, spec: Any) -> list[dict[str, Any]] | None:
    """A role's sources as a list of ``{format, root, splits, options}``; ``None`` for an unset val/test."""
    if spec is None and role != "train":
        return None
    specs = [spec] if isinstance(spec, Mapping) else spec
    if not isinstance(specs, Sequence) or isinstance(specs, str) or not specs:
        raise ConfigError(f"data.{role}", f"expected a source {{format, root, splits, options}} or a list of them, "
                          f"got {spec!r}", "e.g. [{format: sst2, root: ../shared/data/text/sst2, splits: [train]}]")
    sources = []
    for number, item in enumerate(specs):
        where = f"data.{role}[{number}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, f"expected a source {{format, root, splits, options}}, got {item!r}")
        unknown = sorted(set(item) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "is not a key of a text source",
                              f"keys: {', '.join(SOURCE_KEYS)}")
        if item.get("format") not in TEXT_FORMATS:
            raise ConfigError(f"{where}.format", f"unknown text source format {item.get('format')!r}",
                              f"choose one of {', '.join(TEXT_FORMATS)}")
        if not item.get("root") or not str(item["root"]).strip():
            raise ConfigError(f"{where}.root", "is not set", "give the data file or folder (hf: the data set's name)")
        options = item.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}.options", f"expected a mapping of reader options, got {options!r}")
        splits = item.get("splits")
        sources.append({"format": item["format"], "root": str(item["root"]),
                        "splits": [splits] if isinstance(splits, str) else (None if splits is None else list(splits)),
                        "options": {k: v for k, v in options.items() if v is not None}})
    return sources


def _in_source(err: ConfigError, where: str) -> ConfigError:
    """``err`` with its field moved under the source (``data.root`` -> ``data.train[0].root``)."""
    field = f"{where}.{err.field[len('data.'):]}" if err.field.startswith("data.") else err.field
    return ConfigError(field, str(err)[len(err.field) + 2:])


# --------------------------------------------------------------------------------------------- masking


class MaskedTexts(Dataset):
    """Items ``{"text", "mask_seed"}``. ``eval_seed=None`` (training): the seed is drawn from torch's generator,
    which the training loader seeds per sample (:class:`mrl.data.sampling.SeededAugmentation`); else it is fixed,
    ``eval_seed`` and the item's index."""

    def __init__(self, texts: Sequence[str], eval_seed: int | None = None):
        self.texts, self.eval_seed = texts, eval_seed

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.eval_seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        else:
            seed = (self.eval_seed * 1_000_003 + int(index)) % 2**62
        return {"text": self.texts[index], "mask_seed": seed}


def choose_masks(candidates: torch.Tensor, probability: float, generator: torch.Generator,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the ``candidates`` positions of one text, the ``max(1, round(p * n))`` to predict (uniformly chosen) and
    how each is replaced: a draw in [0, 1) per chosen position (below 0.8: the mask token; below 0.9: a random
    token; else unchanged)."""
    n = len(candidates)
    if n == 0:
        return candidates, torch.zeros(0)
    count = min(n, max(1, round(probability * n)))
    chosen = candidates[torch.randperm(n, generator=generator)[:count]]
    return chosen, torch.rand(count, generator=generator)


class MLMCollate:
    """DataLoader ``collate_fn`` of :class:`MaskedTexts` items: tokenise (padding to the longest text of the batch,
    truncating at ``max_length``) and mask each text from its seed (see the module doc). Returns the tokenizer's
    outputs with the masked ``input_ids`` and ``mlm_labels [B, T]`` (int64, -100 where nothing is predicted)."""

    def __init__(self, tokenizer: Callable[..., Any], max_length: int, mask_probability: float = 0.15,
                 name: str | None = None):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError("data.max_length", f"must be an integer >= 2 (room for the special tokens), got "
                              f"{max_length!r}", "set it to e.g. 128")
        self.mask_probability = check_mask_probability("data.mask_probability", mask_probability)
        self.mask_id = check_mask_token(tokenizer, name or getattr(tokenizer, "name_or_path", "the tokenizer"))
        self.tokenizer, self.max_length = tokenizer, max_length
        special = set(tokenizer.all_special_ids)
        self.random_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.int64)

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise ValueError("empty batch")
        encoded = self.tokenizer([item["text"] for item in batch], padding=True, truncation=True,
                                 max_length=self.max_length, return_special_tokens_mask=True, return_tensors="pt")
        out = {key: value for key, value in encoded.items() if key != "special_tokens_mask"}
        input_ids = out["input_ids"].clone()
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        real = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
        for row, item in enumerate(batch):
            generator = torch.Generator().manual_seed(int(item["mask_seed"]))
            chosen, draws = choose_masks(real[row].nonzero().flatten(), self.mask_probability, generator)
            random_ids = self.random_ids[torch.randint(len(self.random_ids), (len(chosen),), generator=generator)]
            labels[row, chosen] = input_ids[row, chosen]
            masked, randomised = draws < 0.8, (draws >= 0.8) & (draws < 0.9)
            input_ids[row, chosen[masked]] = self.mask_id
            input_ids[row, chosen[randomised]] = random_ids[randomised]
        out["input_ids"], out["mlm_labels"] = input_ids, labels
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.tokenizer).__name__}, max_length={self.max_length}, "
                f"mask_probability={self.mask_probability})")


# --------------------------------------------------------------------------------------------- DataModule


def _count(field: str, value: Any, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"must be a positive number of texts{' or null' if allow_none else ''}, got {value!r}",
                          "e.g. 1000")
    return value


@register_datamodule("mlm_text")
class MLMTextDataModule(ClassificationDataModule):
    """Masked language modelling on plain texts (see the module doc): ``train``, ``val`` and ``test`` are each a
    source or a list of sources. ``val: null`` holds ``val_size`` texts of train out to validate on (with
    ``validation=holdout``), ``test: null`` holds ``test_size`` texts out to test on; a given ``test`` source is
    subsampled to ``test_size`` texts when that is set. Held-out texts are drawn with ``split_seed`` and their masks
    with ``eval_mask_seed``, not with the run's ``seed``, so they are the same for every model of a study; local
    training texts equal to a held-out text are dropped. ``mask_probability``: the share of tokens predicted
    (the presets take the task's ``model.mask_probability``). No classes: ``class_names`` is empty.
    """

    labelled = False

    def __init__(self, train: Any = None, val: Any = None, test: Any = None, tokenizer: str | None = None,
                 max_length: int | None = None, mask_probability: float = 0.15, val_size: int = 1000,
                 test_size: int | None = None, split_seed: int = 0, eval_mask_seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.mask_probability = check_mask_probability("data.mask_probability", mask_probability)
        self.sources = {"train": _checked_sources("train", train), "val": _checked_sources("val", val),
                        "test": _checked_sources("test", test)}
        self.val_size = _count("data.val_size", val_size, allow_none=False)
        self.test_size = _count("data.test_size", test_size, allow_none=self.sources["test"] is not None)
        for field, value in (("data.split_seed", split_seed), ("data.eval_mask_seed", eval_mask_seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(field, f"must be an integer >= 0, got {value!r}", "e.g. 0")
        self.split_seed, self.eval_mask_seed = split_seed, eval_mask_seed
        self.tokenizer_name, self.max_length = tokenizer, max_length

    def _read(self, role: str) -> Sequence[str] | None:
        specs = self.sources[role]
        if specs is None:
            return None
        parts = []
        for number, spec in enumerate(specs):
            try:
                parts.append(read_texts(spec["format"], spec["root"], spec["splits"], **spec["options"]))
            except ConfigError as err:
                raise _in_source(err, f"data.{role}[{number}]") from None
        if all(isinstance(p, list) for p in parts):  # local texts: one list, each text once
            return list(dict.fromkeys(t for p in parts for t in p))
        return Texts(parts)

    def prepare_data(self) -> None:
        """Once per node (local rank 0), before :meth:`setup` on every rank: the download (and packing) of each
        Hugging Face source; local files need nothing."""
        for role, specs in self.sources.items():
            if specs and any(spec["format"] == "hf" for spec in specs):
                self._read(role)

    def _held(self, count: int, pool: int, salt: int) -> np.ndarray:
        if count >= pool:
            raise ConfigError("data.val_size" if salt == 1 else "data.test_size", f"is {count} but only {pool} texts "
                              "are there to draw from", f"choose fewer than {pool}")
        rng = np.random.default_rng([self.split_seed, salt])
        return np.sort(rng.choice(pool, size=count, replace=False))

    def _build(self) -> None:
        from mrl.encoders import TEXT_PREFIX
        from mrl.encoders.text import load_tokenizer

        if self.tokenizer_name is None or self.max_length is None:
            raise ConfigError("data.tokenizer", "is not set, so the texts cannot be tokenised",
                              "set data.tokenizer=${model.backbone.name} and data.max_length (the presets do)")
        name = self.tokenizer_name.removeprefix(TEXT_PREFIX)
        # the collate first: a tokenizer without a mask token is refused before any text is read
        self.collate_fn = MLMCollate(load_tokenizer(name), self.max_length, self.mask_probability, name)
        train, test = self._read("train"), self._read("test")
        val = self._read("val") if self.validation == "holdout" else None
        if isinstance(train, list):  # a local text that is also a given val or test text is not trained on
            seen = {text for split in (val, test) if isinstance(split, list) for text in split}
            train = [text for text in train if text not in seen]
        if test is None:
            held = self._held(self.test_size, len(train), 2)
            test, train = Picked(train, held), Without(train, held)
        elif self.test_size is not None and self.test_size < len(test):
            test = Picked(test, self._held(self.test_size, len(test), 2))
        if self.validation == "holdout" and val is None:
            held = self._held(self.val_size, len(train), 1)
            val, train = Picked(train, held), Without(train, held)
        elif val is not None and self.val_size < len(val):
            val = Picked(val, self._held(self.val_size, len(val), 1))
        if len(train) == 0:
            raise ConfigError("data.train", "holds no texts to train on", "give a non-empty source")
        self.train_set = self.train_eval_set = MaskedTexts(train)
        self.test_set = MaskedTexts(test, eval_seed=self.eval_mask_seed)
        holdout = MaskedTexts(val, eval_seed=self.eval_mask_seed + 1) if val is not None else None
        self._assign_validation(holdout, self.test_set)

    def use_encoder(self, encoder: dict[str, Any]) -> None:
        """As :meth:`mrl.data.datamodules.TextDataModule.use_encoder`: tokenise for a checkpoint's encoder."""
        adopt_text_encoder(self, encoder)

    def split_signature(self) -> dict[str, Any]:
        """The base's, plus what decides the held-out texts and their masks, and what each source reads (not the
        roots, which differ between machines)."""
        signature = super().split_signature()
        signature.update(split_seed=self.split_seed, eval_mask_seed=self.eval_mask_seed, val_size=self.val_size,
                         test_size=self.test_size, mask_probability=self.mask_probability)
        for role, specs in self.sources.items():
            signature[role] = None if specs is None else [
                {"format": s["format"], "splits": s["splits"],
                 "options": {k: v for k, v in s["options"].items() if k not in ("cache_dir", "num_proc")}}
                for s in specs]
        return signature
