"""Image-text pairs for dual encoders (``data.name=image_text``): what :class:`mrl.tasks.DualEncoderTask` trains on.

Sources (``format``):

* ``imagefolder``: an ImageFolder tree (``<root>/train/<class>/*``, ``<root>/test/<class>/*``, or an archive of one,
  extracted once), captioned from class names with ``templates`` (``a photo of a {class}.`` and a few more): a
  training sample draws its template afresh each epoch (seeded by ``(seed, epoch, index)``, as augmentations are),
  an evaluation sample always gets the same one (seeded by ``(seed, index)``). Labels are the class indices, so
  zero-shot classification can be scored.
* ``csv`` / ``tsv``: files of ``path<TAB>caption`` rows (csv: two comma-separated, quoted columns), image paths
  relative to the file's folder; an optional header ``path, caption``. ``train`` and ``test`` name the files (or
  ``root`` a folder holding ``train.<format>`` and ``test.<format>``). An image may have several captions (one row
  each). No labels.
* ``webdataset``: tar shards for cluster file systems (``root``: a folder of ``scripts/make_shards.py``), streamed
  by rank and loader worker as ``data=webdataset`` is (:mod:`mrl.data.shards`): shards of caption files
  (``make_shards.py --captions tsv``: each sample an image and its ``.txt`` caption) or of an ImageFolder (class
  indices, captioned with ``templates`` as above). Validation reads the shards' ``holdout`` split.

Every pair is checked before training: a missing or unreadable image, or an empty caption, is skipped with one
warning that counts them (``bad_pairs=skip``) or stops the run with a one-line error (``bad_pairs=error``).
Validation (``holdout``) takes a seeded ``val_fraction`` of train (class-stratified for class-captioned data,
whole images for caption files, so no held-out image was trained on); the test split is only tested.

Batches (:class:`ImageTextCollate`, tokenised in the loader workers by the text tower's tokenizer): ``image [B, 3,
H, W]``, ``input_ids`` / ``attention_mask`` ``[B, T]`` and ``label [B]`` when the data has classes. Embedding
files also get ``image_ids`` and ``caption_ids`` (rows with the same image file / the same caption text share an
id), what cross-modal retrieval counts as a match.
"""

from __future__ import annotations

import csv
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mrl.data.datamodules import (DEFAULT_CACHE_DIR, TRANSFORMS, ImageDataModule, ShardStreaming, adopt_text_encoder,
                                  check_fraction, register_datamodule, resolve_folder_root, stratified_holdout)
from mrl.data.image_folder import IMAGE_EXTENSIONS, _is_image_ok, check_same_classes, load_rgb, scan_image_folder
from mrl.data.shards import ids_of
from mrl.errors import ConfigError

FORMATS = ("imagefolder", "csv", "tsv", "webdataset")
BAD_PAIR_POLICIES = ("skip", "error")
DEFAULT_TEMPLATES = ("a photo of a {class}.", "a blurry photo of a {class}.", "a low resolution photo of a {class}.",
                     "a close-up photo of a {class}.", "a photo of the small {class}.")
HEADER_PATHS, HEADER_CAPTIONS = ("path", "image", "filepath", "file", "filename"), ("caption", "text", "title")


def read_caption_file(path: str | Path, format: str, bad_pairs: str = "skip", verify: bool = True,
                      field: str = "data.train") -> tuple[list[str], list[str]]:
    """``(image paths, captions)`` of a ``csv``/``tsv`` caption file, paths resolved against its folder. Rows
    with a missing or unreadable image (``verify``: decoded by PIL) or an empty caption are skipped with a warning
    that counts them, or are a :class:`ConfigError` with ``bad_pairs="error"``; a row without two columns is
    always an error."""
    if bad_pairs not in BAD_PAIR_POLICIES:
        raise ConfigError("data.bad_pairs", f"unknown policy {bad_pairs!r}", f"choose one of {list(BAD_PAIR_POLICIES)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(field, f"{path} does not exist", f"give a {format} file of path<TAB>caption rows")
    with open(path, newline="", encoding="utf-8") as handle:
        if format == "tsv":
            rows = [line.rstrip("\r\n").split("\t", 1) for line in handle]
        else:
            rows = list(csv.reader(handle))
    folder = path.parent
    entries: list[tuple[int, str, str]] = []
    for number, row in enumerate(rows, 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < 2:
            raise ConfigError(field, f"{path} line {number} has no caption column ({row[0][:60]!r})",
                              f"write path{'<TAB>' if format == 'tsv' else ','}caption on every line")
        image, caption = row[0].strip(), row[1].strip()
        if number == 1 and image.lower() in HEADER_PATHS and caption.lower() in HEADER_CAPTIONS:
            continue  # a header
        entries.append((number, str((folder / image) if not Path(image).is_absolute() else Path(image)), caption))
    if not entries:
        raise ConfigError(field, f"{path} has no pairs", f"write path{'<TAB>' if format == 'tsv' else ','}caption "
                          "rows")
    missing = [e for e in entries if not (Path(e[1]).is_file() and e[1].lower().endswith(IMAGE_EXTENSIONS))]
    if verify:
        present = [e for e in entries if e not in missing]
        with ThreadPoolExecutor(8) as pool:
            ok = list(pool.map(_is_image_ok, (e[1] for e in present), chunksize=64))
        missing += [e for e, good in zip(present, ok) if not good]
    empty = [e for e in entries if not e[2]]
    bad = {e[0] for e in missing} | {e[0] for e in empty}
    if bad:
        example = (f"line {missing[0][0]}: missing or unreadable image {missing[0][1]}" if missing
                   else f"line {empty[0][0]}: empty caption")
        what = f"{len(missing)} missing or unreadable image(s) and {len(empty)} empty caption(s)"
        if bad_pairs == "error":
            raise ConfigError("data.bad_pairs", f"is error and {path} has {what} ({example})",
                              "fix or remove those rows, or set data.bad_pairs=skip to skip them")
        warnings.warn(f"skipping {len(bad)} of {len(entries)} pairs in {path}: {what} ({example})", stacklevel=2)
        entries = [e for e in entries if e[0] not in bad]
        if not entries:
            raise ConfigError(field, f"every pair of {path} is bad ({what})", "check the image paths and captions")
    return [e[1] for e in entries], [e[2] for e in entries]


def template_caption(templates: Sequence[str], class_name: str, draw: str, seed: int, index: int) -> str:
    """A template of ``templates`` filled with ``class_name`` (``_`` read as a space): drawn with Python's
    ``random`` (``draw="random"``: training, where the caller seeds it per sample) or fixed by ``(seed, index)``."""
    rng = random if draw == "random" else random.Random(seed * 1_000_003 + index)
    return templates[rng.randrange(len(templates))].replace("{class}", class_name.replace("_", " "))


class ShardPair:
    """``make_item`` of image-text shards (:mod:`mrl.data.shards`): ``{"image", "text"[, "label"]}``, the text
    the sample's own caption, or for class-labelled shards a template caption (:func:`template_caption`, ``draw``
    as there, the index the sample's place in its split). A class, so it pickles into loader workers."""

    def __init__(self, templates: Sequence[str] | None, class_names: Sequence[str], draw: str, seed: int):
        self.templates, self.class_names, self.draw, self.seed = templates, list(class_names), draw, seed

    def __call__(self, sample: Mapping[str, Any], transform: Callable, index: int | None) -> dict[str, Any]:
        from mrl.data.shards import decode_image, raw_image_and_label

        data, label = raw_image_and_label(sample)
        if "txt" in sample:
            text = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else str(sample["txt"])
        else:
            text = template_caption(self.templates, self.class_names[label], self.draw, self.seed, index or 0)
        item = {"image": transform(decode_image(data)), "text": text}
        return {**item, "label": label} if self.class_names else item


class ImageTextDataset(Dataset):
    """``{"image", "text"[, "label"]}`` items: images from ``paths``, each with its caption (``captions``) or, for
    class-captioned data (``captions=None``), a template of ``templates`` filled with its class's name, drawn by
    ``draw``: ``random`` (the caller's seeded RNG: training) or ``fixed`` (seeded by ``(seed, index)``)."""

    def __init__(self, paths: Sequence[str], captions: Sequence[str] | None, labels: Sequence[int] | None,
                 transform: Callable | None, templates: Sequence[str] = (), class_names: Sequence[str] = (),
                 draw: str = "fixed", seed: int = 0):
        self.paths, self.labels = list(paths), None if labels is None else list(labels)
        self.captions = None if captions is None else list(captions)
        self.transform, self.templates, self.class_names = transform, list(templates), list(class_names)
        self.draw, self.seed = draw, seed
        if self.captions is None and (self.labels is None or not self.templates):
            raise ValueError("class-captioned items need labels and templates")

    @property
    def targets(self) -> list[int]:
        return self.labels or []

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        """The caption of item ``index`` (for ``draw="random"``: a draw from Python's ``random``)."""
        if self.captions is not None:
            return self.captions[index]
        return template_caption(self.templates, self.class_names[self.labels[index]], self.draw, self.seed, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(min(len(self.paths), 100)):
            i = (index + offset) % len(self.paths)
            try:
                image = load_rgb(self.paths[i])
            except Exception as err:
                warnings.warn(f"skipping unreadable image {self.paths[i]} ({type(err).__name__})", stacklevel=2)
                continue
            item = {"image": self.transform(image) if self.transform else image, "text": self.caption(i)}
            if self.labels is not None:
                item["label"] = self.labels[i]
            return item
        raise RuntimeError(f"100 consecutive unreadable images from index {index} on; is the data mount broken?")


class ImageTextCollate:
    """``collate_fn``: images stacked, captions tokenised in one call (padded to the longest, truncated to
    ``max_length``), ``label`` and ``index`` when the items have them. A class, so it pickles into loader workers."""

    def __init__(self, tokenizer: Callable[..., Mapping[str, torch.Tensor]], max_length: int):
        from mrl.data.text import TokenizeCollate

        TokenizeCollate(tokenizer, max_length)  # the same checks of max_length
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not batch:
            raise ValueError("empty batch")
        out: dict[str, Any] = dict(self.tokenizer([item["text"] for item in batch], padding=True, truncation=True,
                                                  max_length=self.max_length, return_tensors="pt").items())
        out["image"] = torch.stack([item["image"] for item in batch])
        for key in ("label", "index"):  # index: a streamed sample's place in its split (embedding files)
            if key in batch[0]:
                out[key] = torch.tensor([int(item[key]) for item in batch], dtype=torch.int64)
        return out


def _per_class(samples: list[tuple[str, int]], limit: int | None, seed: int) -> list[tuple[str, int]]:
    """At most ``limit`` samples of each class, a seeded choice, in the original order."""
    if limit is None:
        return samples
    generator = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    keep = sorted(i for members in by_class.values()
                  for i in generator.permutation(members)[:limit].tolist())
    return [samples[i] for i in keep]


def _base_and_indices(dataset: Dataset) -> tuple[ImageTextDataset, list[int]]:
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        step = list(dataset.indices)
        indices = step if indices is None else [step[i] for i in indices]
        dataset = dataset.dataset
    return dataset, list(range(len(dataset))) if indices is None else indices


@register_datamodule("image_text")
class ImageTextDataModule(ShardStreaming, ImageDataModule):
    """Image-text pairs (see the module doc). ``tokenizer``/``max_length``: the text tower's (the presets take
    ``model.backbone.text``); ``transform``: ``cifar`` (padded crop, flip; none) or ``imagenet`` (random-resized
    crop, flip; resize, centre crop); ``max_per_class`` / ``max_test_per_class``: a seeded subset of class-captioned
    data (CPU-sized runs)."""

    def __init__(self, format: str = "imagefolder", root: str | None = None, train: str | None = None,
                 test: str | None = None, tokenizer: str | None = None, max_length: int | None = None,
                 templates: Sequence[str] | None = None, image_size: int = 32, transform: str = "cifar",
                 cache_dir: str | None = None, bad_pairs: str = "skip", verify_images: bool = True,
                 val_fraction: float = 0.1, train_split: str = "train", eval_split: str = "test",
                 max_per_class: int | None = None, max_test_per_class: int | None = None,
                 shuffle_buffer: int = 5000, **kwargs: Any):
        super().__init__(image_size=image_size, **kwargs)
        from mrl.tasks.dual_encoder import check_templates

        if format not in FORMATS:
            raise ConfigError("data.format", f"unknown image-text source {format!r}", f"choose one of {list(FORMATS)}")
        if bad_pairs not in BAD_PAIR_POLICIES:
            raise ConfigError("data.bad_pairs", f"unknown policy {bad_pairs!r}",
                              f"choose one of {list(BAD_PAIR_POLICIES)}")
        if transform not in TRANSFORMS:
            raise ConfigError("data.transform", f"unknown transform {transform!r}", f"choose one of {list(TRANSFORMS)}")
        if format == "imagefolder" and not root:
            raise ConfigError("data.root", "is not set",
                              "give an ImageFolder tree (train/, test/) or an archive of one")
        if format == "webdataset" and not root:
            raise ConfigError("data.root", "is not set", "give a shard folder made by scripts/make_shards.py")
        if format in ("csv", "tsv") and not root and not (train and test):
            raise ConfigError("data.train", "is not set", f"give data.train and data.test ({format} files of "
                              "path<TAB>caption rows), or data.root holding train.<format> and test.<format>")
        for field, value in (("data.max_per_class", max_per_class), ("data.max_test_per_class", max_test_per_class)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(field, f"must be a positive integer or null, got {value!r}")
        if self.validation == "holdout":
            check_fraction("data.val_fraction", val_fraction)
        self.format, self.root, self.files = format, root, {"train": train, "test": test}
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.templates = check_templates(list(templates) if templates is not None else list(DEFAULT_TEMPLATES),
                                         "data.templates") if format in ("imagefolder", "webdataset") else None
        self.transform, self.cache_dir = transform, Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
        self.bad_pairs, self.verify_images = bad_pairs, verify_images or bad_pairs == "error"
        self.val_fraction = val_fraction if self.validation == "holdout" else 0.0
        self.train_split, self.eval_split = train_split, eval_split
        self.max_per_class, self.max_test_per_class = max_per_class, max_test_per_class
        if format == "webdataset" and (max_per_class is not None or max_test_per_class is not None):
            raise ConfigError("data.max_per_class", "subsets are not drawn from streamed shards",
                              "set data.max_per_class=null data.max_test_per_class=null, or convert a subset")
        self.shuffle_buffer = shuffle_buffer
        self.class_names: list[str] = []

    @property
    def labelled(self) -> bool:
        return self.format == "imagefolder" or bool(self.class_names)

    def use_encoder(self, encoder: Mapping[str, Any]) -> None:
        """Tokenise for a checkpoint's dual encoder (its ``backbone`` settings): fills ``tokenizer``/``max_length``
        left unset (``scripts/embed.py`` has no model config) and refuses ones set to another model's."""
        adopt_text_encoder(self, dict(encoder.get("text") or {}), owner="text tower")

    # ------------------------------------------------------------------------------------------ reading

    def _caption_files(self) -> dict[str, Path]:
        files = {}
        for split in ("train", "test"):
            given = self.files[split]
            files[split] = Path(str(given)).expanduser() if given else \
                Path(str(self.root)).expanduser() / f"{split}.{self.format}"
        return files

    def _build(self) -> None:
        from mrl.encoders import TEXT_PREFIX
        from mrl.encoders.text import load_tokenizer

        if self.tokenizer_name is None or self.max_length is None:
            raise ConfigError("data.tokenizer", "is not set, so the captions cannot be tokenised",
                              "set data.tokenizer=${model.backbone.text.name} and data.max_length (the presets do)")
        train_transform, eval_transform = TRANSFORMS[self.transform](self.image_size)
        if self.format == "imagefolder":
            root = resolve_folder_root(self.root, self.cache_dir, (self.train_split, self.eval_split))
            scan = dict(bad_images=self.bad_pairs, verify=self.verify_images)
            try:
                classes, train_samples = scan_image_folder(root / self.train_split, "data.root", **scan)
                eval_classes, test_samples = scan_image_folder(root / self.eval_split, "data.root", **scan)
            except ConfigError as err:
                if err.field == "data.bad_images":
                    raise ConfigError("data.bad_pairs", str(err)[len(err.field) + 2:]) from None
                raise
            check_same_classes(classes, eval_classes, f"{self.train_split}/", f"{self.eval_split}/")
            self.class_names = classes
            train_samples = _per_class(train_samples, self.max_per_class, self.seed)
            test_samples = _per_class(test_samples, self.max_test_per_class, self.seed)

            def make(samples, transform, draw):
                return ImageTextDataset([p for p, _ in samples], None, [y for _, y in samples], transform,
                                        self.templates, classes, draw, self.seed)

            train, train_eval = make(train_samples, train_transform, "random"), make(train_samples, eval_transform,
                                                                                      "fixed")
            test = make(test_samples, eval_transform, "fixed")
            fit, held = (stratified_holdout([y for _, y in train_samples], self.val_fraction, self.seed)
                         if self.validation == "holdout" else (None, None))
        elif self.format == "webdataset":
            self._build_streams(train_transform)
            name = self.tokenizer_name.removeprefix(TEXT_PREFIX)
            self.collate_fn = ImageTextCollate(load_tokenizer(name), self.max_length)
            return
        else:
            files = self._caption_files()
            read = {split: read_caption_file(path, self.format, self.bad_pairs, self.verify_images, f"data.{split}")
                    for split, path in files.items()}
            self.class_names = []
            paths, captions = read["train"]
            train = ImageTextDataset(paths, captions, None, train_transform)
            train_eval = ImageTextDataset(paths, captions, None, eval_transform)
            test = ImageTextDataset(*read["test"], None, eval_transform)
            fit, held = (None, None)
            if self.validation == "holdout":
                from mrl.data.pairs import anchor_holdout

                fit, held = anchor_holdout(paths, self.val_fraction, self.seed)  # whole images
        name = self.tokenizer_name.removeprefix(TEXT_PREFIX)
        self.collate_fn = ImageTextCollate(load_tokenizer(name), self.max_length)
        holdout = None
        if fit is not None:
            self.train_set, holdout = Subset(train, fit), Subset(train_eval, held)
            self.train_eval_set = Subset(train_eval, fit)
        else:
            self.train_set, self.train_eval_set = train, train_eval
        self.test_set = test
        self._assign_validation(holdout, test)

    def _build_streams(self, train_transform: Callable) -> None:
        from mrl.data.shards import TrainShardStream, read_meta

        self.shard_root = Path(str(self.root)).expanduser()
        self.meta = read_meta(self.shard_root)
        splits = self.meta["splits"]
        for split in ("train", self.eval_split) + (("holdout",) if self.validation == "holdout" else ()):
            if split not in splits:
                raise ConfigError("data.root", f"{self.shard_root} has no {split} split (it has {sorted(splits)})",
                                  "convert with --holdout-fraction for validation, or set data.validation=none"
                                  if split == "holdout" else "convert train/ and test/ with scripts/make_shards.py")
        self.class_names = list(self.meta["classes"])
        if not self.meta.get("captions") and not self.class_names:
            raise ConfigError("data.root", f"the samples of {self.shard_root} have neither captions nor classes",
                              "convert caption files (--captions tsv) or an ImageFolder with scripts/make_shards.py")
        if self.meta.get("captions"):
            self.templates = None  # captions of their own: no templates to use or report
        self.train_set = TrainShardStream(self.shard_root, self.meta, train_transform, self.batch_size, self.seed,
                                          self.shuffle_buffer,
                                          make_item=ShardPair(self.templates, self.class_names, "random", self.seed))
        self.test_set = self._eval_stream(self.eval_split)
        self.val_set = {"holdout": lambda: self._eval_stream("holdout"), "test": lambda: self.test_set,
                        "none": lambda: None}[self.validation]()

    def _eval_stream(self, split: str, with_index: bool = False):
        from mrl.data.shards import EvalShardStream

        _, eval_transform = TRANSFORMS[self.transform](self.image_size)
        return EvalShardStream(self.shard_root, split, self.meta, eval_transform, with_index=with_index,
                               make_item=ShardPair(self.templates, self.class_names, "fixed", self.seed))

    def split_dataset(self, split: str):
        """As the base's, and for shards the split streamed with each sample's index: ``train`` (evaluation
        transforms), ``val`` (the ``holdout`` split) or ``test``."""
        if self.format != "webdataset":
            return super().split_dataset(split)
        return self._eval_stream(self.shard_split(split), with_index=True)

    # ------------------------------------------------------------------------------------------ embedding

    def split_relations(self, split: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``image_ids`` and ``caption_ids`` of the split's rows (equal image files / caption texts share an id),
        stored beside its embeddings for cross-modal retrieval."""
        dataset = self.split_dataset(split)
        if self.format == "webdataset":
            return self._shard_relations(dataset.split)
        base, indices = _base_and_indices(dataset)
        return ({"image_ids": ids_of([base.paths[i] for i in indices]),
                 "caption_ids": ids_of([base.caption(i) for i in indices])},
                {"captions": "class templates" if base.captions is None else "caption file"})

    def split_signature(self) -> dict[str, Any]:
        return {**super().split_signature(), "format": self.format, "max_per_class": self.max_per_class,
                "max_test_per_class": self.max_test_per_class, "templates": self.templates}

    def _shard_relations(self, split: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The converter's ids by sample index (``index.npz``); for template captions, the ids of the captions
        the evaluation stream gives (fixed by ``(seed, index)``)."""
        from mrl.data.shards import read_index

        index = read_index(self.shard_root, split)
        if self.meta.get("captions"):
            return {"image_ids": index["image_ids"], "caption_ids": index["caption_ids"]}, {"captions": "caption file"}
        captions = [template_caption(self.templates, self.class_names[label], "fixed", self.seed, i)
                    for i, label in enumerate(index["labels"].tolist())]
        return {"image_ids": index["image_ids"], "caption_ids": ids_of(captions)}, {"captions": "class templates"}
