"""WebDataset tar shards: a converter from ImageFolder and the streams a DataModule trains and evaluates on.

At ImageNet scale on a cluster file system, opening 1.28M small files per epoch is what starves the GPUs; a few
hundred large tar files read front to back are not. :func:`write_shards` converts an ImageFolder tree (or an
archive of one) into ``<out>/<split>/<split>-NNNNNN.tar`` shards with ``webdataset.ShardWriter`` (each sample:
the image's original bytes, never re-encoded, and its class index), :func:`convert_caption_files` image-caption files
(``path<TAB>caption``) into shards whose samples hold the image and its caption (``.txt``); both write a
``meta.json`` with the class names and the samples of every shard, and per split an ``index.npz`` (each sample's
label, and ids shared by samples of the same source image / the same caption, by the sample's place in the split:
what cross-modal retrieval counts as a match). The webdataset library reads them back (``tarfile_to_samples``,
``shuffle``). What a stream yields per sample is its ``make_item`` (default: ``(image, label)``).

Streams keep the guarantees of the map-style path (:mod:`mrl.data.sampling`) under DDP on any number of nodes:

* :class:`TrainShardStream`: in epoch ``e`` the shard list is permuted by ``(seed, e)``; rank ``r`` of ``W``
  takes every ``W``-th shard from ``r``, and its loader worker ``w`` of ``K`` every ``K``-th of those. Every rank
  yields the same number of batches (``floor(N / (W * batch))``, so the gradient all-reduce never waits on a
  rank that ran out): a worker whose shards run short reads them again, so with unequal shards a few samples of
  an epoch repeat and as many are left out (equal shards of a multiple of ``W * K`` avoid it). Samples are
  shuffled in a buffer seeded by ``(seed, e, r)`` and the worker's stream, each sample's augmentation is
  seeded by its position in the stream, and a run resumed mid-epoch skips, undecoded, exactly the samples it
  had trained on.
* :class:`EvalShardStream`: rank ``r`` reads shards ``r, r+W, ...`` (worker ``w`` every ``K``-th of those), in
  order, each sample once: summed over ranks, counts cover the split exactly, as :class:`ShardSampler` does.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from mrl.data.sampling import distributed_rank_and_size, seeded
from mrl.errors import ConfigError

META_FILE = "meta.json"
INDEX_FILE = "index.npz"
FORMAT = "mrl-webdataset-v1"


def ids_of(values: list[Any]) -> np.ndarray:
    """``[N]`` int64: equal values share an id (numbered in order of first appearance)."""
    seen: dict[Any, int] = {}
    return np.array([seen.setdefault(v, len(seen)) for v in values], dtype=np.int64)


def write_shards(splits: dict[str, list[tuple[str, int]]], class_names: list[str], out: str | Path,
                 samples_per_shard: int = 1000, seed: int = 0,
                 captions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Write each split's ``(path, label)`` samples as shards under ``out/<split>/`` and ``out/meta.json``.
    ``captions``: per split, each sample's caption (written as its ``txt``); labels are then -1 (none) or classes.

    The order of samples is shuffled once with ``seed`` before writing, so that every shard holds a mix of
    classes (streams shuffle only within a buffer). Written into a temporary sibling folder that is renamed
    into place when complete: an interrupted conversion never leaves shards a run would mistake for a set.
    """
    import webdataset as wds

    out = Path(out).expanduser()
    if out.exists():
        raise ConfigError("--out", f"{out} exists", "choose a new folder, or delete it to convert again")
    if samples_per_shard < 1:
        raise ConfigError("--samples-per-shard", f"must be >= 1, got {samples_per_shard}")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta: dict[str, Any] = {"format": FORMAT, "classes": list(class_names), "captions": captions is not None,
                            "splits": {}}
    try:
        for split, samples in splits.items():
            texts = captions[split] if captions is not None else [None] * len(samples)
            order = [(path, label, text) for (path, label), text in zip(samples, texts, strict=True)]
            random.Random(seed).shuffle(order)
            folder = tmp / split
            folder.mkdir(parents=True)
            # ustar, whole-second mtime: no PAX header per member, which doubles the header parsing of every read
            with wds.ShardWriter(str(folder / f"{split}-%06d.tar"), maxcount=samples_per_shard, verbose=0,
                                 mtime=0, format=tarfile.USTAR_FORMAT) as sink:
                for index, (path, label, text) in enumerate(order):
                    suffix = Path(path).suffix.lower().lstrip(".") or "jpg"
                    sample = {"__key__": f"{index:09d}", "img." + suffix: Path(path).read_bytes()}
                    sample.update({"cls": label} if label >= 0 else {})
                    sample.update({"txt": text} if text is not None else {})
                    sink.write(sample)
            np.savez(folder / INDEX_FILE, labels=np.array([label for _, label, _ in order], dtype=np.int64),
                     image_ids=ids_of([path for path, _, _ in order]),
                     caption_ids=ids_of([text for _, _, text in order]) if captions is not None
                     else np.full(len(order), -1, dtype=np.int64))
            names = sorted(p.name for p in folder.glob("*.tar"))
            counts = [min(samples_per_shard, len(order) - start) for start in range(0, len(order), samples_per_shard)]
            assert len(names) == len(counts), (names, counts)
            meta["splits"][split] = {"num_samples": len(order), "shards": names, "samples": counts}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(root: str | Path) -> dict[str, Any]:
    """``meta.json`` of a shard folder, checked: a clear one-line error for anything that is not one."""
    root = Path(str(root)).expanduser()
    path = root / META_FILE
    if not path.is_file():
        raise ConfigError("data.root", f"{root} has no {META_FILE}, so it is not a shard folder",
                          "convert an ImageFolder first: python scripts/make_shards.py --src DIR --out DIR")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError("data.root", f"{path} is unreadable ({type(err).__name__})", "convert again") from None
    if meta.get("format") != FORMAT:
        raise ConfigError("data.root", f"{path} is not a {FORMAT} folder (format {meta.get('format')!r})",
                          "convert with scripts/make_shards.py")
    for split, info in meta["splits"].items():
        missing = [name for name in info["shards"] if not (root / split / name).is_file()]
        if missing:
            raise ConfigError("data.root", f"{root / split} lacks {len(missing)} of its shards (e.g. {missing[0]})",
                              "copy the whole shard folder, or convert again")
    return meta


def read_index(root: str | Path, split: str) -> dict[str, np.ndarray]:
    """``labels``, ``image_ids`` and ``caption_ids`` ``[N]`` of a split's samples by their place in it (written by
    the converters); a shard folder from before the index stops with one line."""
    path = Path(str(root)).expanduser() / split / INDEX_FILE
    if not path.is_file():
        raise ConfigError("data.root", f"{path} is missing (shards converted before sample indexes were written)",
                          "convert again with scripts/make_shards.py")
    with np.load(path) as index:
        return {key: index[key] for key in ("labels", "image_ids", "caption_ids")}


def image_and_label(sample: dict[str, Any], transform: Callable, index: int | None) -> tuple[Any, int]:
    """The default item of a stream: ``(transform(image), class index)``."""
    data, label = raw_image_and_label(sample)
    return transform(decode_image(data)), label


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def raw_image_and_label(sample: dict[str, Any]) -> tuple[bytes, int]:
    image = next(value for key, value in sample.items() if key.startswith("img."))
    return image, int(sample.get("cls", -1))  # -1: a captioned sample without a class


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _read(urls: list[str]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    return wds.tarfile_to_samples(handler=wds.reraise_exception)(iter([{"url": url} for url in urls]))


class EvalShardStream(IterableDataset):
    """``make_item(sample, transform, index)`` (default ``(image, label)``) of each sample of one split, in shard
    order; rank ``r`` and worker ``w`` read their shards only. ``with_index``: the sample's place in the split (the
    converter's ``__key__``) added (``(image, label, index)``, or an ``index`` key of a dict item), so that embedding
    files put every row where it belongs although ranks and workers read in no fixed order."""

    def __init__(self, root: Path, split: str, meta: dict[str, Any], transform: Callable,
                 rank_and_world: tuple[int, int] | None = None, with_index: bool = False,
                 make_item: Callable[[dict[str, Any], Callable, int | None], Any] = image_and_label):
        info = meta["splits"][split]
        self.make_item = make_item
        self.split = split
        self.urls = [str(root / split / name) for name in info["shards"]]
        self.counts = list(info["samples"])
        self.num_samples = sum(self.counts)  # of the whole split, on every rank
        self.transform = transform
        self.with_index = with_index
        self.rank, self.world = rank_and_world or distributed_rank_and_size()

    def place(self, rank: int, world: int) -> None:
        """Read as rank ``rank`` of ``world``: set by the DataModule in each process once DDP has started (a
        stream built earlier, in the launching process, would otherwise read as a lone rank)."""
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        """Samples this rank yields (over all its workers)."""
        return self.rows_of_rank(self.rank, self.world)

    def rows_of_rank(self, rank: int, world: int) -> int:
        """Samples rank ``rank`` of ``world`` yields: those of its shards ``rank, rank + world, ...``."""
        return sum(self.counts[rank::world])

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = _worker()
        mine = self.urls[self.rank::self.world][worker::workers]
        for sample in _read(mine):
            index = self._index(sample)
            item = self.make_item(sample, self.transform, index)
            if self.with_index:
                item = {**item, "index": index} if isinstance(item, dict) else (*item, index)
            yield item

    def _index(self, sample: dict[str, Any]) -> int:
        key = str(sample.get("__key__", "")).rsplit("/", 1)[-1]
        if not key.isdigit() or int(key) >= self.num_samples:
            raise ConfigError("data.root", f"a sample of split {self.split!r} has the key {key!r}, not its position "
                              f"0..{self.num_samples - 1} in the split",
                              "convert the shards with scripts/make_shards.py")
        return int(key)


class TrainShardStream(IterableDataset):
    """The training stream of one rank: ``batches`` whole batches per epoch, shared by the loader's workers
    (the DataLoader takes batch ``i`` from worker ``i mod K``). See the module docstring for the guarantees."""

    def __init__(self, root: Path, meta: dict[str, Any], transform: Callable, batch_size: int, seed: int,
                 shuffle_buffer: int = 5000, split: str = "train", rank_and_world: tuple[int, int] | None = None,
                 make_item: Callable[[dict[str, Any], Callable, int | None], Any] = image_and_label):
        info = meta["splits"][split]
        self.make_item = make_item
        self.urls = [str(root / split / name) for name in info["shards"]]
        self.num_samples = int(info["num_samples"])
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.place(*(rank_and_world or distributed_rank_and_size()))
        self.epoch = 0
        self.resume: tuple[int, int] | None = None  # (epoch, batches of it already trained on): a resumed run

    def place(self, rank: int, world: int) -> None:
        """Read as rank ``rank`` of ``world`` (see :meth:`EvalShardStream.place`)."""
        self.rank, self.world = rank, world
        self.batches = self.num_samples // (world * self.batch_size)  # of every rank, per epoch

    def __len__(self) -> int:
        """Samples of this rank per epoch (so ``len(loader)`` is its number of batches)."""
        return self.batches * self.batch_size

    def check_workers(self, workers: int) -> None:
        """Every rank needs a whole batch and every (rank, worker) a shard of its own: refuse before training, not
        mid-epoch (a run that only embeds or tests never trains, so never asks)."""
        if self.batches < 1:
            raise ConfigError("data.batch_size", f"{self.batch_size} per process on {self.world} processes is more "
                              f"than the {self.num_samples} training samples", "choose a smaller batch")
        needed = self.world * max(workers, 1)
        if len(self.urls) < needed:
            raise ConfigError("data.num_workers", f"{self.world} processes x {max(workers, 1)} loader workers need "
                              f"{needed} training shards, the data has {len(self.urls)}",
                              "lower data.num_workers, or convert with fewer --samples-per-shard")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Start at ``epoch``, whose first ``samples_done`` samples (of this rank) were trained on already."""
        self.epoch, self.resume = epoch, (epoch, samples_done // self.batch_size)

    def worker_plan(self, worker: int, workers: int) -> tuple[int, list[str], int, int]:
        """``(stream, shards, samples to skip, samples to yield)`` of loader worker ``worker`` in this epoch.

        Batch ``i`` of an epoch belongs to stream ``i mod K``, which reads every ``K``-th of the rank's shards. A
        loader yields batch ``j`` of its iterator from worker ``j mod K``, so a loader resumed after ``k``
        batches gives worker ``w`` the stream ``(w + k) mod K``, and that stream skips its first batches."""
        done = self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0
        stream = (worker + done) % workers
        order = torch.randperm(len(self.urls), generator=torch.Generator().manual_seed(self.seed * 1_000_003
                                                                                         + self.epoch)).tolist()
        shards = [self.urls[i] for i in order][self.rank::self.world][stream::workers]
        quota = len(range(stream, self.batches, workers))  # batches s, s+K, ... of this rank
        skipped = len(range(stream, min(done, self.batches), workers))
        return stream, shards, skipped * self.batch_size, (quota - skipped) * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        import webdataset as wds

        worker, workers = _worker()
        stream, shards, skip, count = self.worker_plan(worker, workers)
        stream_seed = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{stream}").getrandbits(62)
        rng = random.Random(stream_seed)

        def passes() -> Iterator[dict[str, Any]]:
            # Shuffled one pass over the worker's shards at a time (the buffer empties at the end of each, so an
            # epoch never mixes in a second pass early); a worker whose shards run short reads them again.
            while True:
                yield from wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 1000), rng=rng)(
                    _read(shards))

        for position, sample in enumerate(passes()):
            if position >= skip + count:
                return
            if position < skip:
                continue  # already trained on: not decoded
            with seeded(stream_seed + position):  # the augmentation, and any random choice of make_item
                item = self.make_item(sample, self.transform, None)
            yield item  # outside the seeded block: the consumer runs on its own random streams


def convert_image_folder(src: str | Path, out: str | Path, samples_per_shard: int = 1000,
                         holdout_fraction: float = 0.0, seed: int = 0, cache_dir: str | Path | None = None,
                         bad_images: str = "skip") -> dict[str, Any]:
    """Shards of an ImageFolder tree (``train/`` and ``val/`` or ``test/``, or an archive of one) under ``out``.

    ``holdout_fraction > 0`` moves a class-stratified part of train, drawn with ``seed``, into a ``holdout``
    split (``data.validation=holdout`` validates on it), as the ImageFolder DataModules do at load time."""
    from mrl.data.datamodules import ARCHIVE_SUFFIXES, DEFAULT_CACHE_DIR, check_fraction, stratified_holdout
    from mrl.data.image_folder import check_same_classes, extract_archive, find_split_root, scan_image_folder

    src = Path(str(src)).expanduser()
    if src.is_file() and src.name.endswith(ARCHIVE_SUFFIXES):
        src = extract_archive(src, cache_dir or DEFAULT_CACHE_DIR, field="--src")
    if not src.is_dir():
        what = "does not exist" if not src.exists() else "is neither a folder nor an archive"
        raise ConfigError("--src", f"{src} {what}", "give an ImageFolder root or an archive of one")
    for eval_split in ("val", "test"):
        try:
            root = find_split_root(src, ("train", eval_split), field="--src")
            break
        except ConfigError:
            continue
    else:
        raise ConfigError("--src", f"no val/ or test/ folder beside a train/ folder under {src}",
                          "expected <src>/train/<class>/<image> and <src>/val/<class>/<image> (or test/)")
    classes, train = scan_image_folder(root / "train", "--src", bad_images=bad_images, verify=False)
    eval_classes, evaluation = scan_image_folder(root / eval_split, "--src", bad_images=bad_images, verify=False)
    check_same_classes(classes, eval_classes, "train/", f"{eval_split}/")
    splits = {"train": train, eval_split: evaluation}
    if holdout_fraction:
        check_fraction("--holdout-fraction", holdout_fraction)
        kept, held = stratified_holdout([label for _, label in train], holdout_fraction, seed)
        splits.update(train=[train[i] for i in kept], holdout=[train[i] for i in held])
    return write_shards(splits, classes, out, samples_per_shard=samples_per_shard, seed=seed)


def convert_caption_files(src: str | Path, out: str | Path, format: str = "tsv", samples_per_shard: int = 1000,
                          holdout_fraction: float = 0.0, seed: int = 0, bad_pairs: str = "skip") -> dict[str, Any]:
    """Shards of image-caption files: ``src`` holds ``train.<format>`` and ``test.<format>`` (rows
    ``path<TAB>caption``, csv: two quoted columns; paths relative to the file), each pair a sample with the image's
    original bytes and its caption. An image with several captions gives one sample per caption, sharing an image
    id. ``holdout_fraction > 0`` moves a seeded part of train's images, with all their captions, into ``holdout``
    (``data.validation=holdout``). Missing or unreadable images and empty captions: ``bad_pairs`` (skip | error)."""
    from mrl.data.datamodules import check_fraction
    from mrl.data.image_text import read_caption_file
    from mrl.data.pairs import anchor_holdout

    src = Path(str(src)).expanduser()
    if format not in ("tsv", "csv"):
        raise ConfigError("--captions", f"unknown caption file format {format!r}", "choose tsv or csv")
    files = {split: src / f"{split}.{format}" for split in ("train", "test")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ConfigError("--src", f"{missing[0]} does not exist", f"give a folder holding train.{format} and "
                          f"test.{format} (rows path<TAB>caption)")
    read = {split: read_caption_file(path, format, bad_pairs, True, "--src") for split, path in files.items()}
    splits = {split: [(path, -1) for path in paths] for split, (paths, _) in read.items()}
    captions = {split: list(texts) for split, (_, texts) in read.items()}
    if holdout_fraction:
        check_fraction("--holdout-fraction", holdout_fraction)
        kept, held = anchor_holdout([path for path, _ in splits["train"]], holdout_fraction, seed)
        train, texts = splits["train"], captions["train"]
        splits.update(train=[train[i] for i in kept], holdout=[train[i] for i in held])
        captions.update(train=[texts[i] for i in kept], holdout=[texts[i] for i in held])
    return write_shards(splits, [], out, samples_per_shard=samples_per_shard, seed=seed, captions=captions)
