"""Embedding files: a checkpoint's full-width embeddings, labels and per-size logits for one split.

Layout of ``<root>/<split>/`` (every evaluator reads these, so a large database is embedded once)::

    embeddings.npy   [N, width]       float16 or float32, memory-mappable
    labels.npy       [N]              int64 (the paper's float16 labels break above 2048 classes)
    logits.npy       [G, N, C]        logits at each trained nesting size
    meta.json        head, nesting_dims, width, num_classes, class_names, checkpoint, split, ...

Arrays are written chunk by chunk into memory-mapped ``.npy`` files inside a temporary folder that is
renamed into place only when complete, with ``meta.json`` last: a crash leaves no folder that a later
run could mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrl.checkpoint import read_checkpoint
from mrl.errors import ConfigError

DTYPES = {"float16": np.float16, "float32": np.float32}
FILES = ("embeddings.npy", "labels.npy", "logits.npy", "meta.json")


@dataclass
class EmbeddingSplit:
    """One split's arrays (memory-mapped by default) and its metadata."""

    embeddings: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    meta: dict[str, Any]
    path: Path

    @property
    def nesting_dims(self) -> list[int]:
        return list(self.meta["nesting_dims"])

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[1])


@torch.no_grad()
def embed_split(module: torch.nn.Module, loader: DataLoader, root: str | Path, split: str,
                dtype: str = "float16", device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                meta: dict[str, Any] | None = None) -> Path:
    """Run ``module`` (a :class:`~mrl.lightning.MatryoshkaModule`) over ``loader`` and write ``root/split``.

    ``loader`` must not shuffle; rows follow the dataset order.
    """
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"unknown dtype {dtype!r}", f"choose one of {sorted(DTYPES)}")
    np_dtype = DTYPES[dtype]
    root = Path(root)
    final = root / split
    tmp = root / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module = module.to(device).eval()
    n = len(loader.dataset)
    width, dims = module.model.width, list(module.nesting_dims)
    num_classes = module.hparams.num_classes
    emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np_dtype, shape=(n, width))
    labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.int64, shape=(n,))
    logits = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np_dtype, shape=(len(dims), n, num_classes))
    start = 0
    device_type = torch.device(device).type
    try:
        for x, y in loader:
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                z = module.embed(x.to(device, non_blocking=True))
                out = module.model.head(z)
            stop = start + len(y)
            emb[start:stop] = z.float().cpu().numpy()
            logits[:, start:stop] = out.float().cpu().numpy()
            labels[start:stop] = y.numpy()
            start = stop
        if start != n:
            raise RuntimeError(f"loader yielded {start} rows for a dataset of {n}")
        for array in (emb, labels, logits):
            array.flush()
        del emb, labels, logits
        info = {"split": split, "num_samples": n, "width": width, "nesting_dims": dims, "num_classes": num_classes,
                "head": module.head_type, "dtype": dtype, "class_names": module.class_names, **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2))
        if final.exists():
            old = root / f".{split}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_split(path: str | Path, mmap: bool = True) -> EmbeddingSplit:
    """Read a folder written by :func:`embed_split`, checking it is complete and consistent."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError("embeddings", f"{path} is not a complete embedding folder (missing {missing})",
                          "run scripts/embed.py for this split")
    meta = json.loads((path / "meta.json").read_text())
    mode = "r" if mmap else None
    emb = np.load(path / "embeddings.npy", mmap_mode=mode)
    labels = np.load(path / "labels.npy", mmap_mode=mode)
    logits = np.load(path / "logits.npy", mmap_mode=mode)
    if emb.ndim != 2 or labels.ndim != 1 or logits.ndim != 3:
        raise ConfigError("embeddings", f"{path}: arrays have shapes {emb.shape}, {labels.shape}, {logits.shape}",
                          "expected [N, width], [N] and [G, N, C]; re-run scripts/embed.py")
    if not (len(emb) == len(labels) == logits.shape[1]):
        raise ConfigError("embeddings", f"{path}: {len(emb)} embeddings, {len(labels)} labels and "
                          f"{logits.shape[1]} logit rows differ", "re-run scripts/embed.py for this split")
    if labels.dtype != np.int64:
        raise ConfigError("embeddings", f"{path}: labels are {labels.dtype}, not int64", "re-run scripts/embed.py")
    return EmbeddingSplit(emb, labels, logits, meta, path)


def embed_checkpoint(ckpt_path: str | Path, datamodule, root: str | Path, splits=("train", "test"),
                     dtype: str = "float16", device: str = "auto", bf16: bool = False) -> dict[str, Path]:
    """Embed ``splits`` of ``datamodule`` with the checkpoint's model into ``root/<split>``.

    The data's class names must be the checkpoint's (same indices), so labels mean the same thing.
    """
    from mrl.lightning import MatryoshkaModule

    path = Path(ckpt_path).expanduser()
    ckpt, info = read_checkpoint(path)  # read once: validated, then rebuilt from its own hyperparameters
    hparams = dict(ckpt["hyper_parameters"])
    # The weights come from the checkpoint: never fetch the backbone's pretrained weights again.
    hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "pretrained_path": None}
    module = MatryoshkaModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    datamodule.setup("test")
    if module.class_names is not None and module.class_names != datamodule.class_names:
        raise ConfigError("data", f"the data's {datamodule.num_classes} classes differ from the checkpoint's "
                          f"{len(module.class_names)}", "embed with the data set the checkpoint was trained on")
    stored = info.get("data_split")
    if stored:
        for key, value in datamodule.split_signature().items():
            if stored.get(key) != value:
                raise ConfigError(f"data.{key}", f"is {value!r} but the checkpoint was trained with {stored.get(key)!r}, "
                                  "so the splits would differ", f"set data.{key}={stored.get(key)}")
    trained = module.hparams.backbone
    for key, value in (("image_size", datamodule.image_size), ("in_chans", datamodule.in_chans)):
        if trained.get(key) not in (None, value):
            raise ConfigError(f"data.{key}", f"is {value} but the checkpoint was trained with {trained[key]}",
                              f"set data.{key}={trained[key]}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {"checkpoint": str(path.resolve()), "backbone": module.hparams.backbone.get("name")}
    return {split: embed_split(module, datamodule.split_dataloader(split), root, split, dtype, device,
                               torch.bfloat16 if bf16 else None, meta) for split in splits}
