"""Embedding files: a checkpoint's full-width embeddings, labels and per-size logits for one split.

Layout of ``<root>/<split>/`` (every evaluator reads these, so a large database is embedded once)::

    embeddings.npy   [N, width]       float16 or float32, memory-mappable
    labels.npy       [N]              int64 (the paper's float16 labels break above 2048 classes)
    logits.npy       [G, N, C]        logits at each trained nesting size (a model with a classifier only)
    meta.json        task, head, nesting_dims, width, num_classes, class_names, checkpoint, split, ...

Arrays are written chunk by chunk into memory-mapped ``.npy`` files inside a temporary folder that is
renamed into place only when complete, with ``meta.json`` last: a crash leaves no folder that a later
run could mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from mrl.checkpoint import load_model
from mrl.errors import ConfigError
from mrl.heads import HEADS

REEMBED = "re-run scripts/embed.py for this split"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of an embedding folder (``path`` is the file), checked: a JSON object with ``head`` (mrl,
    mrle or ff), ``nesting_dims`` (a non-empty list of positive ints) and ``num_classes`` (a positive int, or null
    for a model without a classifier)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("embeddings", f"{path} is not valid JSON ({err})", REEMBED) from None
    if not isinstance(meta, dict):
        raise ConfigError("embeddings", f"{path} holds a JSON {type(meta).__name__}, not an object", REEMBED)
    missing = [key for key in ("head", "nesting_dims", "num_classes") if key not in meta]
    if missing:
        raise ConfigError("embeddings", f"{path} lacks {missing}", REEMBED)
    dims = meta["nesting_dims"]
    if meta["head"] not in HEADS or not isinstance(dims, list) or not dims \
            or not all(_positive_int(d) for d in dims) \
            or not (meta["num_classes"] is None or _positive_int(meta["num_classes"])):
        raise ConfigError("embeddings", f"{path} has head {meta['head']!r}, nesting_dims {dims!r} and num_classes "
                          f"{meta['num_classes']!r}; expected one of {sorted(HEADS)}, a list of positive ints and "
                          "a positive int or null", REEMBED)
    return meta


DTYPES = {"float16": np.float16, "float32": np.float32}
FILES = ("embeddings.npy", "labels.npy", "meta.json")  # logits.npy too when the model has a classifier


@dataclass
class EmbeddingSplit:
    """One split's arrays (memory-mapped by default) and its metadata."""

    embeddings: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None  # [G, N, C]; None for a model without a classifier
    meta: dict[str, Any]
    path: Path

    @property
    def nesting_dims(self) -> list[int]:
        return list(self.meta["nesting_dims"])

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[1])


def _check_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", f"choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _open_arrays(folder: Path, n: int, width: int, num_sizes: int, num_classes: int | None, np_dtype,
                 mode: str = "w+"):
    """``(embeddings [n, width], labels [n], logits [G, n, C] or None)`` as memory-mapped ``.npy`` files (no
    logits file when ``num_classes`` is None: a model without a classifier)."""
    logits = None if num_classes is None else np.lib.format.open_memmap(
        folder / "logits.npy", mode=mode, dtype=np_dtype, shape=(num_sizes, n, num_classes))
    return (np.lib.format.open_memmap(folder / "embeddings.npy", mode=mode, dtype=np_dtype, shape=(n, width)),
            np.lib.format.open_memmap(folder / "labels.npy", mode=mode, dtype=np.int64, shape=(n,)), logits)


def _module_arrays(module, folder: Path, n: int, np_dtype):
    return _open_arrays(folder, n, module.width, len(module.nesting_dims), module.task.num_logits, np_dtype)


def _split_meta(module, split: str, n: int, dtype: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    return {"split": split, "num_samples": n, "width": module.width, "nesting_dims": list(module.nesting_dims),
            "num_classes": None, "class_names": None, **module.task.metadata(), "dtype": dtype, **(meta or {})}


def _publish(tmp: Path, final: Path, info: dict[str, Any]) -> Path:
    """``meta.json`` last into the complete ``tmp`` folder, then ``tmp`` renamed over ``final``."""
    (tmp / "meta.json").write_text(json.dumps(info, indent=2))
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp, final)
    return final


@torch.no_grad()
def embed_split(module: torch.nn.Module, loader: DataLoader, root: str | Path, split: str,
                dtype: str = "float16", device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                meta: dict[str, Any] | None = None) -> Path:
    """Run ``module`` (a :class:`~mrl.lightning.MatryoshkaModule`) over ``loader`` in this process and
    write ``root/split``. ``loader`` must not shuffle; rows follow the dataset order.
    (:func:`embed_checkpoint` does the same on any number of processes.)
    """
    np_dtype = _check_dtype(dtype)
    root = Path(root)
    tmp = root / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from mrl.lightning import as_batch

    module = module.to(device).eval()
    n = len(loader.dataset)
    emb, labels, logits = _module_arrays(module, tmp, n, np_dtype)
    start = 0
    device_type = torch.device(device).type
    try:
        for batch in loader:
            batch = as_batch(batch)
            y = batch["label"]
            inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                      for k, v in batch.items()}
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = module.predict_step(inputs, 0)
            stop = start + len(y)
            emb[start:stop] = out["embeddings"].float().cpu().numpy()
            if logits is not None:
                logits[:, start:stop] = out["logits"].float().cpu().numpy()
            labels[start:stop] = y.numpy()
            start = stop
        if start != n:
            raise RuntimeError(f"loader yielded {start} rows for a dataset of {n}")
        for array in (emb, labels, logits):
            if array is not None:
                array.flush()
        del emb, labels, logits
        return _publish(tmp, root / split, _split_meta(module, split, n, dtype, meta))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class EmbeddingWriter(L.Callback):
    """Writes ``trainer.predict`` outputs of a :class:`~mrl.lightning.MatryoshkaModule` into ``root/<split>``
    from any number of processes, each row at its sample's place in the split, and publishes the folder atomically
    (rank 0, once every rank is done). ``root`` must be shared by all processes.

    Indexed data (a map-style dataset under :class:`~mrl.data.sampling.ShardSampler`): rank ``r`` of ``W`` embeds
    samples ``r, r+W, ...`` (no padding) into its own shard, which rank 0 interleaves; with one process the shard
    is the final folder. Streamed data (``indexed=False``: webdataset shards, read by rank and loader worker in no
    fixed order) carries each sample's position as ``index`` in the batch; each rank's shard keeps those positions
    and rank 0 scatters the rows into place, checking that every sample came exactly once. ``rows_of_rank(rank,
    world)``: how many samples a rank embeds (default: the map-style split).
    """

    def __init__(self, root: str | Path, split: str, num_samples: int, dtype: str = "float16",
                 meta: dict[str, Any] | None = None, progress_every: float = 0.1, indexed: bool = True,
                 rows_of_rank: Callable[[int, int], int] | None = None):
        self.root, self.split, self.num_samples = Path(root), split, num_samples
        self.dtype, self.np_dtype, self.meta = dtype, _check_dtype(dtype), meta
        self.progress_every = progress_every
        self.indexed = indexed
        self.streamed_rows = rows_of_rank  # a bound method or None: picklable, as ddp_spawn needs
        self.tmp = self.root / f".{split}.tmp"  # one name on every rank (ranks may be separate launches)

    def _shard(self, rank: int) -> Path:
        return self.tmp if self.world == 1 and self.indexed else self.tmp / f"shard-{rank}"

    def rows_of_rank(self, rank: int, world: int) -> int:
        """Rows rank ``rank`` of ``world`` embeds: its samples ``rank, rank + world, ...`` of indexed data."""
        if self.streamed_rows is not None:
            return self.streamed_rows(rank, world)
        return len(range(rank, self.num_samples, world))

    def on_predict_start(self, trainer: L.Trainer, pl_module) -> None:
        self.world, self.rank = trainer.world_size, trainer.global_rank
        if trainer.is_global_zero:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
        trainer.strategy.barrier("embedding folder")
        shard = self._shard(self.rank)
        shard.mkdir(parents=True, exist_ok=True)
        self.rows = self.rows_of_rank(self.rank, self.world)
        self.arrays = _module_arrays(pl_module, shard, self.rows, self.np_dtype)
        self.positions = None if self.indexed else np.lib.format.open_memmap(
            shard / "positions.npy", mode="w+", dtype=np.int64, shape=(self.rows,))
        self.done = 0
        self._next_report = self.progress_every

    def on_predict_batch_end(self, trainer, pl_module, outputs: dict[str, torch.Tensor], batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        emb, labels, logits = self.arrays
        stop = self.done + len(outputs["labels"])
        if stop > self.rows:
            raise RuntimeError(f"rank {self.rank} was given more than its {self.rows} rows of {self.split}")
        emb[self.done:stop] = outputs["embeddings"].float().cpu().numpy()
        if logits is not None:
            logits[:, self.done:stop] = outputs["logits"].float().cpu().numpy()
        labels[self.done:stop] = outputs["labels"].cpu().numpy()
        if self.positions is not None:
            if "index" not in outputs:
                raise RuntimeError("streamed data must give each sample's position as batch['index']")
            self.positions[self.done:stop] = outputs["index"].cpu().numpy()
        self.done = stop
        if trainer.is_global_zero and not trainer.progress_bar_callback and stop >= self._next_report * self.rows:
            print(f"embedding {self.split}: {100 * stop / self.rows:.0f}% ({stop}/{self.rows} rows on rank 0)",
                  flush=True)
            self._next_report += self.progress_every

    def on_predict_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.done != self.rows:
            raise RuntimeError(f"rank {self.rank} embedded {self.done} rows of {self.rows}")
        for array in (*self.arrays, self.positions):
            if array is not None:
                array.flush()
        del self.arrays, self.positions
        trainer.strategy.barrier("embedding shards")
        if trainer.is_global_zero:
            if self._shard(0) != self.tmp:
                self._gather(len(pl_module.nesting_dims), pl_module.width, pl_module.task.num_logits)
            _publish(self.tmp, self.root / self.split, _split_meta(pl_module, self.split, self.num_samples,
                                                                  self.dtype, self.meta))
        trainer.strategy.barrier("embedding published")

    def _gather(self, num_sizes: int, width: int, num_classes: int | None, chunk: int = 65536) -> None:
        """Every shard's rows into their places in the split: rows ``r, r+W, ...`` for rank ``r`` (indexed data),
        else the positions it recorded; a sample missing or embedded twice is an error, not a silent hole."""
        final = _open_arrays(self.tmp, self.num_samples, width, num_sizes, num_classes, self.np_dtype)
        seen = np.zeros(self.num_samples, dtype=np.int64)
        for rank in range(self.world):
            shard_dir = self._shard(rank)
            rows = self.rows_of_rank(rank, self.world)
            shard = _open_arrays(shard_dir, rows, width, num_sizes, num_classes, self.np_dtype, mode="r")
            stored = None if self.indexed else np.load(shard_dir / "positions.npy", mmap_mode="r")
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                if stored is None:
                    positions = np.arange(rank + start * self.world, rank + stop * self.world, self.world)
                else:
                    positions = np.asarray(stored[start:stop])
                    if positions.min(initial=0) < 0 or positions.max(initial=0) >= self.num_samples:
                        raise RuntimeError(f"{self.split}: rank {rank} embedded a sample outside "
                                           f"0..{self.num_samples - 1}")
                seen[positions] += 1
                final[0][positions] = shard[0][start:stop]
                final[1][positions] = shard[1][start:stop]
                if num_classes is not None:
                    final[2][:, positions] = shard[2][:, start:stop]
            del shard, stored
            shutil.rmtree(shard_dir)
        if not (seen == 1).all():
            missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
            raise RuntimeError(f"{self.split}: {missing} samples were not embedded and {repeated} more than once")
        for array in final:
            if array is not None:
                array.flush()


def load_split(path: str | Path, mmap: bool = True) -> EmbeddingSplit:
    """Read a folder written by :func:`embed_split`, checking it is complete and consistent: a corrupt or
    incomplete one is a one-line :class:`ConfigError` naming the file, not a traceback later."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError("embeddings", f"{path} is not a complete embedding folder (missing {missing})",
                          "run scripts/embed.py for this split")
    meta = read_meta(path / "meta.json")
    mode = "r" if mmap else None
    emb = np.load(path / "embeddings.npy", mmap_mode=mode)
    labels = np.load(path / "labels.npy", mmap_mode=mode)
    logits = np.load(path / "logits.npy", mmap_mode=mode) if (path / "logits.npy").is_file() else None
    if emb.ndim != 2 or labels.ndim != 1 or (logits is not None and logits.ndim != 3):
        shapes = ", ".join(str(a.shape) for a in (emb, labels, logits) if a is not None)
        raise ConfigError("embeddings", f"{path}: arrays have shapes {shapes}",
                          "expected [N, width], [N] and [G, N, C]; re-run scripts/embed.py")
    if len(emb) != len(labels) or (logits is not None and logits.shape[1] != len(emb)):
        rows = f" and {logits.shape[1]} logit rows" if logits is not None else ""
        raise ConfigError("embeddings", f"{path}: {len(emb)} embeddings, {len(labels)} labels{rows} differ",
                          "re-run scripts/embed.py for this split")
    if labels.dtype != np.int64:
        raise ConfigError("embeddings", f"{path}: labels are {labels.dtype}, not int64", "re-run scripts/embed.py")
    if logits is not None and (logits.shape[0] != len(meta["nesting_dims"]) or logits.shape[2] != meta["num_classes"]):
        raise ConfigError("embeddings", f"{path}/logits.npy has {logits.shape[0]} sizes and {logits.shape[2]} classes "
                          f"but meta.json says {meta['nesting_dims']} and {meta['num_classes']}", REEMBED)
    return EmbeddingSplit(emb, labels, logits, meta, path)


def embed_checkpoint(ckpt_path: str | Path, datamodule, root: str | Path, splits=("train", "test"),
                     dtype: str = "float16", trainer: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Embed ``splits`` of ``datamodule`` with the checkpoint's model into ``root/<split>``.

    ``trainer``: keyword arguments of ``lightning.Trainer`` (``devices``, ``strategy``, ``precision``,
    ...): on N processes the files are the same, row for row, as on one. The data's class names must be
    the checkpoint's (same indices), so labels mean the same thing.
    """
    _check_dtype(dtype)
    path = Path(ckpt_path).expanduser()
    module = _module_from_checkpoint(path, datamodule)
    from mrl.slurm import apply_process_env

    kwargs = {key: value for key, value in apply_process_env(trainer or {}).items() if key in PREDICT_TRAINER_KEYS}
    kwargs.setdefault("enable_progress_bar", sys.stderr.isatty())  # else EmbeddingWriter prints plain lines
    meta = {"checkpoint": str(path.resolve()), "encoder": module.hparams.backbone.get("name"),
            "backbone": module.hparams.backbone.get("name")}
    written = {}
    for split in splits:
        dataset = datamodule.split_dataset(split)
        if hasattr(dataset, "rows_of_rank"):  # streamed (webdataset shards): rows placed by their recorded index
            writer = EmbeddingWriter(root, split, dataset.num_samples, dtype, meta, indexed=False,
                                     rows_of_rank=dataset.rows_of_rank)
        else:
            writer = EmbeddingWriter(root, split, len(dataset), dtype, meta)
        runner = L.Trainer(**kwargs, logger=False, callbacks=[writer], enable_checkpointing=False,
                           enable_model_summary=False)
        datamodule.predict_split = split
        runner.predict(module, datamodule=datamodule, return_predictions=False)
        written[split] = Path(root) / split
    return written


# Trainer settings that matter for inference; the rest of a training config (epochs, clipping) is ignored.
PREDICT_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "enable_progress_bar",
                        "limit_predict_batches", "deterministic")


def _module_from_checkpoint(path: Path, datamodule):
    """The checkpoint's module, rebuilt from its own hyperparameters, after checking ``datamodule``
    is the data it was trained on, split the same way."""
    module, info = load_model(path)
    if hasattr(datamodule, "use_encoder"):  # text data tokenises for the checkpoint's encoder
        datamodule.use_encoder(module.hparams.backbone)
    datamodule.setup("test")
    if module.class_names is not None and module.class_names != datamodule.class_names:
        raise ConfigError("data", f"the data's {datamodule.num_classes} classes differ from the checkpoint's "
                          f"{len(module.class_names)}", "embed with the data set the checkpoint was trained on")
    stored = info.get("data_split")
    if stored:
        for key, value in datamodule.split_signature().items():
            if stored.get(key) != value:
                raise ConfigError(f"data.{key}", f"is {value!r} but the checkpoint was trained with "
                                  f"{stored.get(key)!r}, so the splits would differ",
                                  f"set data.{key}={stored.get(key)}")
    trained = module.hparams.backbone
    for key, value in ((k, getattr(datamodule, k)) for k in ("image_size", "in_chans") if hasattr(datamodule, k)):
        if trained.get(key) not in (None, value):
            raise ConfigError(f"data.{key}", f"is {value} but the checkpoint was trained with {trained[key]}",
                              f"set data.{key}={trained[key]}")
    return module
