"""Embedding files: a checkpoint's full-width embeddings, labels and per-size logits for one split.

Layout of ``<root>/<split>/`` (every evaluator reads these, so a large database is embedded once)::

    embeddings.npy        [N, width]     float16 or float32, memory-mappable
    labels.npy            [N]            int64 (the paper's float16 labels break above 2048 classes); absent for
                                         unlabelled data (meta ``labelled: false``: STS sentences, corpora, queries)
    logits.npy            [G, N, C]      logits at each trained nesting size (a model with a classifier only)
    layer_embeddings.npy  [L, N, width]  pooled outputs of the layers in meta ``layers`` (2D Matryoshka models only)
    text_embeddings.npy   [N, width]     the captions' embeddings, row i the caption of image i (image-text models)
    image_ids.npy, caption_ids.npy [N]   image-text data: int64 ids, equal for rows of one image file / caption text
    class_prompt_embeddings.npy [T, C, width]  float32: template t filled with class c, by the text tower (zero-shot)
    pairs.npy, scores.npy [P, 2], [P]    STS: int64 row indices of each sentence pair, and its gold score (float64)
    qrels.npy             [R, 3]         a queries split: int64 (query row, document row in the split meta
                                         ``corpus_split`` names, gain)
    meta.json             task, head, nesting_dims, width, num_classes, class_names, checkpoint, split, labelled, ...

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
from dataclasses import dataclass, field
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
FILES = ("embeddings.npy", "meta.json")  # labels.npy too for labelled data, logits.npy for a model with a classifier
# Arrays an evaluation set stores beside its embeddings (mrl.data.text_eval): name -> (ndim, columns, kind)
RELATIONS = {"pairs": (2, 2, "i"), "scores": (1, None, "f"), "qrels": (2, 3, "i"), "image_ids": (1, None, "i"),
             "caption_ids": (1, None, "i"), "class_prompt_embeddings": (3, None, "f")}
RELATION_FLOAT32 = ("class_prompt_embeddings",)  # stored as float32 (the others' floats as float64)


@dataclass
class EmbeddingSplit:
    """One split's arrays (memory-mapped by default) and its metadata."""

    embeddings: np.ndarray
    labels: np.ndarray | None  # [N]; None for unlabelled data (meta labelled: false)
    logits: np.ndarray | None  # [G, N, C]; None for a model without a classifier
    meta: dict[str, Any]
    path: Path
    layer_embeddings: np.ndarray | None = None  # [L, N, width] of the layers meta["layers"]; 2D models only
    text_embeddings: np.ndarray | None = None  # [N, width]: row i's caption (image-text models)
    relations: dict[str, np.ndarray] = field(default_factory=dict)  # pairs [P, 2] + scores [P], or qrels [R, 3]

    @property
    def layers(self) -> list[int] | None:
        return list(self.meta["layers"]) if self.layer_embeddings is not None else None

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


# Row-aligned arrays of a split: name -> (the axis of the rows, the key of predict_step's outputs)
ROW_ARRAYS = {"embeddings": (0, "embeddings"), "labels": (0, "labels"), "logits": (1, "logits"),
              "layer_embeddings": (1, "layer_embeddings"), "text_embeddings": (0, "text_embeddings")}


@dataclass(frozen=True)
class ArrayLayout:
    """What a model writes per row: ``width``, the sizes ``G``, classes ``C`` (None: no logits), layers ``L``
    (0: no layer embeddings), and whether the data has labels."""

    width: int
    num_sizes: int
    num_classes: int | None
    num_layers: int = 0
    labelled: bool = True
    text: bool = False  # text_embeddings [n, width] too (an image-text model)

    @classmethod
    def of(cls, module, labelled: bool = True) -> ArrayLayout:
        layers = module.task.metadata().get("layers") or []
        text = "text_embeddings" in getattr(module.task, "row_arrays", ())
        return cls(module.width, len(module.nesting_dims), module.task.num_logits, len(layers), labelled, text)


def _open_arrays(folder: Path, n: int, layout: ArrayLayout, np_dtype, mode: str = "w+") -> dict[str, np.ndarray]:
    """The row arrays of :data:`ROW_ARRAYS` the layout has, as memory-mapped ``.npy`` files: ``embeddings [n,
    width]``, ``labels [n]`` (labelled data), ``logits [G, n, C]`` (a classifier), ``layer_embeddings [L, n,
    width]`` (a 2D model)."""
    shapes = {"embeddings": ((n, layout.width), np_dtype)}
    if layout.labelled:
        shapes["labels"] = ((n,), np.int64)
    if layout.num_classes is not None:
        shapes["logits"] = ((layout.num_sizes, n, layout.num_classes), np_dtype)
    if layout.num_layers:
        shapes["layer_embeddings"] = ((layout.num_layers, n, layout.width), np_dtype)
    if layout.text:
        shapes["text_embeddings"] = ((n, layout.width), np_dtype)
    return {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode=mode, dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()}


def _write_rows(arrays: dict[str, np.ndarray], start: int, outputs: dict[str, Any], split: str) -> int:
    """``predict_step`` outputs of one batch into rows ``start:`` of every array; returns the end row."""
    stop = start + len(outputs["embeddings"])
    for name, array in arrays.items():
        axis, key = ROW_ARRAYS[name]
        if key not in outputs:
            raise RuntimeError(f"{split}: the model's predict gave no {key!r}, which this split stores")
        value = outputs[key].float().cpu().numpy() if name != "labels" else outputs[key].cpu().numpy()
        if axis == 0:
            array[start:stop] = value
        else:
            array[:, start:stop] = value
    return stop


def _write_relations(folder: Path, relations: Mapping[str, np.ndarray] | None) -> None:
    for name, values in (relations or {}).items():
        if name not in RELATIONS:
            raise ValueError(f"unknown relation array {name!r}; known: {sorted(RELATIONS)}")
        np.save(folder / f"{name}.npy", np.asarray(values, dtype=np.int64 if RELATIONS[name][2] == "i"
                                                       else np.float32 if name in RELATION_FLOAT32 else np.float64))


def task_arrays(module) -> dict[str, np.ndarray]:
    """Arrays a task stores once per split beside the rows (an image-text model's class prompt embeddings)."""
    split_arrays = getattr(module.task, "split_arrays", None)
    return split_arrays(module.encoder) if split_arrays is not None else {}


def _split_meta(module, split: str, n: int, dtype: str, meta: dict[str, Any] | None,
                labelled: bool = True) -> dict[str, Any]:
    return {"split": split, "num_samples": n, "width": module.width, "nesting_dims": list(module.nesting_dims),
            "num_classes": None, "class_names": None, **module.task.metadata(), "dtype": dtype,
            "labelled": labelled, **(meta or {})}


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
                meta: dict[str, Any] | None = None, labelled: bool = True,
                relations: Mapping[str, np.ndarray] | None = None) -> Path:
    """Run ``module`` (a :class:`~mrl.lightning.MatryoshkaModule`) over ``loader`` in this process and
    write ``root/split``. ``loader`` must not shuffle; rows follow the dataset order.
    (:func:`embed_checkpoint` does the same on any number of processes.) ``labelled=False``: no labels file;
    ``relations``: arrays of :data:`RELATIONS` stored beside the embeddings (``{"pairs": ..., "scores": ...}``).
    """
    np_dtype = _check_dtype(dtype)
    root = Path(root)
    tmp = root / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from mrl.lightning import as_batch

    module = module.to(device).eval()
    n = len(loader.dataset)
    arrays = _open_arrays(tmp, n, ArrayLayout.of(module, labelled), np_dtype)
    start = 0
    device_type = torch.device(device).type
    try:
        for batch in loader:
            batch = as_batch(batch)
            inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                      for k, v in batch.items()}
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = module.predict_step(inputs, 0)
            start = _write_rows(arrays, start, out, split)
        if start != n:
            raise RuntimeError(f"loader yielded {start} rows for a dataset of {n}")
        for array in arrays.values():
            array.flush()
        del arrays
        _write_relations(tmp, {**(relations or {}), **task_arrays(module)})
        return _publish(tmp, root / split, _split_meta(module, split, n, dtype, meta, labelled))
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
    world)``: how many samples a rank embeds (default: the map-style split). ``labelled=False``: unlabelled data,
    no labels file; ``relations``: arrays of :data:`RELATIONS` written beside the embeddings (rank 0).
    """

    def __init__(self, root: str | Path, split: str, num_samples: int, dtype: str = "float16",
                 meta: dict[str, Any] | None = None, progress_every: float = 0.1, indexed: bool = True,
                 rows_of_rank: Callable[[int, int], int] | None = None, labelled: bool = True,
                 relations: Mapping[str, np.ndarray] | None = None):
        self.root, self.split, self.num_samples = Path(root), split, num_samples
        self.dtype, self.np_dtype, self.meta = dtype, _check_dtype(dtype), meta
        self.labelled, self.relations = labelled, relations
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
        self.layout = ArrayLayout.of(pl_module, self.labelled)
        self.arrays = _open_arrays(shard, self.rows, self.layout, self.np_dtype)
        self.positions = None if self.indexed else np.lib.format.open_memmap(
            shard / "positions.npy", mode="w+", dtype=np.int64, shape=(self.rows,))
        self.done = 0
        self._next_report = self.progress_every

    def on_predict_batch_end(self, trainer, pl_module, outputs: dict[str, torch.Tensor], batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        stop = self.done + len(outputs["embeddings"])
        if stop > self.rows:
            raise RuntimeError(f"rank {self.rank} was given more than its {self.rows} rows of {self.split}")
        _write_rows(self.arrays, self.done, outputs, self.split)
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
        for array in (*self.arrays.values(), self.positions):
            if array is not None:
                array.flush()
        del self.arrays, self.positions
        trainer.strategy.barrier("embedding shards")
        if trainer.is_global_zero:
            if self._shard(0) != self.tmp:
                self._gather()
            _write_relations(self.tmp, {**(self.relations or {}), **task_arrays(pl_module)})
            _publish(self.tmp, self.root / self.split, _split_meta(pl_module, self.split, self.num_samples,
                                                                  self.dtype, self.meta, self.labelled))
        trainer.strategy.barrier("embedding published")

    def _gather(self, chunk: int = 65536) -> None:
        """Every shard's rows into their places in the split: rows ``r, r+W, ...`` for rank ``r`` (indexed data),
        else the positions it recorded; a sample missing or embedded twice is an error, not a silent hole."""
        final = _open_arrays(self.tmp, self.num_samples, self.layout, self.np_dtype)
        seen = np.zeros(self.num_samples, dtype=np.int64)
        for rank in range(self.world):
            shard_dir = self._shard(rank)
            rows = self.rows_of_rank(rank, self.world)
            shard = _open_arrays(shard_dir, rows, self.layout, self.np_dtype, mode="r")
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
                for name, array in final.items():
                    if ROW_ARRAYS[name][0] == 0:
                        array[positions] = shard[name][start:stop]
                    else:
                        array[:, positions] = shard[name][:, start:stop]
            del shard, stored
            shutil.rmtree(shard_dir)
        if not (seen == 1).all():
            missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
            raise RuntimeError(f"{self.split}: {missing} samples were not embedded and {repeated} more than once")
        for array in final.values():
            array.flush()


def load_split(path: str | Path, mmap: bool = True) -> EmbeddingSplit:
    """Read a folder written by :func:`embed_split`, checking it is complete and consistent: a corrupt or
    incomplete one is a one-line :class:`ConfigError` naming the file, not a traceback later."""
    path = Path(path)
    labelled = True
    if (path / "meta.json").is_file():
        labelled = read_meta(path / "meta.json").get("labelled", True)  # folders from before it are labelled
    missing = [f for f in (*FILES, *(("labels.npy",) if labelled else ())) if not (path / f).is_file()]
    if missing:
        raise ConfigError("embeddings", f"{path} is not a complete embedding folder (missing {missing})",
                          "run scripts/embed.py for this split")
    meta = read_meta(path / "meta.json")
    mode = "r" if mmap else None

    def optional(name: str) -> np.ndarray | None:
        return np.load(path / f"{name}.npy", mmap_mode=mode) if (path / f"{name}.npy").is_file() else None

    emb = np.load(path / "embeddings.npy", mmap_mode=mode)
    labels = optional("labels") if labelled else None
    logits, layer_emb, text_emb = optional("logits"), optional("layer_embeddings"), optional("text_embeddings")
    if emb.ndim != 2 or (labels is not None and labels.ndim != 1) or (logits is not None and logits.ndim != 3):
        shapes = ", ".join(str(a.shape) for a in (emb, labels, logits) if a is not None)
        raise ConfigError("embeddings", f"{path}: arrays have shapes {shapes}",
                          "expected [N, width], [N] and [G, N, C]; re-run scripts/embed.py")
    if (labels is not None and len(emb) != len(labels)) or (logits is not None and logits.shape[1] != len(emb)):
        rows = f" and {logits.shape[1]} logit rows" if logits is not None else ""
        counted = f", {len(labels)} labels" if labels is not None else ""
        raise ConfigError("embeddings", f"{path}: {len(emb)} embeddings{counted}{rows} differ",
                          "re-run scripts/embed.py for this split")
    if labels is not None and labels.dtype != np.int64:
        raise ConfigError("embeddings", f"{path}: labels are {labels.dtype}, not int64", "re-run scripts/embed.py")
    if logits is not None and (logits.shape[0] != len(meta["nesting_dims"]) or logits.shape[2] != meta["num_classes"]):
        raise ConfigError("embeddings", f"{path}/logits.npy has {logits.shape[0]} sizes and {logits.shape[2]} classes "
                          f"but meta.json says {meta['nesting_dims']} and {meta['num_classes']}", REEMBED)
    layers = meta.get("layers")
    if layer_emb is not None and (layer_emb.ndim != 3 or layer_emb.shape[1:] != emb.shape
                                  or not isinstance(layers, list) or len(layers) != len(layer_emb)):
        raise ConfigError("embeddings", f"{path}/layer_embeddings.npy has shape {layer_emb.shape} but the embeddings "
                          f"are {emb.shape} and meta.json names layers {layers!r}", REEMBED)
    if text_emb is not None and text_emb.shape != emb.shape:
        raise ConfigError("embeddings", f"{path}/text_embeddings.npy has shape {text_emb.shape} but the embeddings are "
                          f"{emb.shape}", REEMBED)
    relations = {name: array for name in RELATIONS if (array := optional(name)) is not None}
    _check_relations(path, relations, len(emb))
    return EmbeddingSplit(emb, labels, logits, meta, path, layer_emb, relations=relations, text_embeddings=text_emb)


def _check_relations(path: Path, relations: dict[str, np.ndarray], n: int) -> None:
    """Shapes and dtypes of the relation arrays; ``pairs`` index rows of this split and come with ``scores``."""
    for name, array in relations.items():
        ndim, columns, kind = RELATIONS[name]
        if array.ndim != ndim or (columns is not None and array.shape[1] != columns) or array.dtype.kind != kind:
            raise ConfigError("embeddings", f"{path}/{name}.npy is {array.dtype} of shape {array.shape}", REEMBED)
    if ("pairs" in relations) != ("scores" in relations):
        raise ConfigError("embeddings", f"{path} has only one of pairs.npy and scores.npy", REEMBED)
    if "pairs" in relations:
        pairs, scores = relations["pairs"], relations["scores"]
        if len(pairs) != len(scores) or (pairs.size and (pairs.min() < 0 or pairs.max() >= n)):
            raise ConfigError("embeddings", f"{path}: {len(pairs)} pairs (rows {pairs.min(initial=0)}.."
                              f"{pairs.max(initial=0)}) for {len(scores)} scores and {n} sentences", REEMBED)
    for name in ("image_ids", "caption_ids"):
        if name in relations and len(relations[name]) != n:
            raise ConfigError("embeddings", f"{path}/{name}.npy has {len(relations[name])} rows for {n} embeddings",
                              REEMBED)
    if "qrels" in relations:
        queries = relations["qrels"][:, 0]
        if queries.size and (queries.min() < 0 or queries.max() >= n):
            raise ConfigError("embeddings", f"{path}/qrels.npy names query rows outside 0..{n - 1}", REEMBED)


def embed_checkpoint(ckpt_path: str | Path, datamodule, root: str | Path, splits=("train", "test"),
                     dtype: str = "float16", trainer: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Embed ``splits`` of ``datamodule`` with the checkpoint's model into ``root/<split>``.

    ``trainer``: keyword arguments of ``lightning.Trainer`` (``devices``, ``strategy``, ``precision``,
    ...): on N processes the files are the same, row for row, as on one. The data's class names must be
    the checkpoint's (same indices), so labels mean the same thing. Unlabelled data (a DataModule with
    ``labelled = False``: evaluation sets of :mod:`mrl.data.text_eval`) is embedded by any checkpoint, without
    labels, and each split's ``split_relations(split)`` (pairs and scores, qrels) is stored beside it.
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
        labelled = getattr(datamodule, "labelled", True)  # known once the data is set up
        relations, extra = datamodule.split_relations(split) if hasattr(datamodule, "split_relations") else ({}, {})
        # streamed (webdataset shards): each rank's rows placed by their recorded index
        streamed = {"indexed": False, "rows_of_rank": dataset.rows_of_rank} if hasattr(dataset, "rows_of_rank") else {}
        writer = EmbeddingWriter(root, split, dataset.num_samples if streamed else len(dataset), dtype,
                                 {**meta, **extra}, labelled=labelled, relations=relations, **streamed)
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
    # unlabelled data has no classes to agree with: any checkpoint embeds it
    if getattr(datamodule, "labelled", True) and module.class_names is not None \
            and module.class_names != datamodule.class_names:
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
