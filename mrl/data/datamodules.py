"""Lightning DataModules for image classification, one per data source, built by :func:`create_datamodule`.

Every DataModule exposes ``class_names``, ``num_classes``, ``in_chans`` and ``image_size`` after
``setup()``; ``batch_size`` is per device (the global batch is ``batch_size * world_size``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import transforms as T

from mrl.data.image_folder import (ImageFolderDataset, check_same_classes, extract_archive, find_split_root,
                                   scan_image_folder)
from mrl.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_CACHE_DIR = Path(os.environ.get("MRL_CACHE_DIR", Path.home() / ".cache" / "mrl"))

DATAMODULES: dict[str, type[ClassificationDataModule]] = {}


def register_datamodule(name: str):
    def wrap(cls):
        DATAMODULES[name] = cls
        cls.data_name = name
        return cls
    return wrap


def create_datamodule(name: str, **kwargs: Any) -> ClassificationDataModule:
    """Build a registered DataModule: ``digits``, ``cifar10``, ``cifar100``, ``imagenet``, ``image_folder``."""
    if name not in DATAMODULES:
        raise ConfigError("data.name", f"unknown data set {name!r}", f"choose one of {sorted(DATAMODULES)}")
    return DATAMODULES[name](**kwargs)


class ClassificationDataModule(L.LightningDataModule):
    """Shared loader logic; subclasses fill ``train_set``/``val_set``/``test_set`` and ``class_names``."""

    in_chans = 3

    def __init__(self, batch_size: int = 128, num_workers: int = 0, eval_batch_size: int | None = None,
                 pin_memory: bool | None = None, image_size: int = 32, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.image_size = image_size
        self.seed = seed
        self.class_names: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        # The whole train split with evaluation transforms: the retrieval database.
        self.train_eval_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_signature(self) -> dict[str, Any]:
        """What decides which sample lands in which split; stored in checkpoints, so a later embedding
        run can refuse data split differently from training (a "train" database holding test images)."""
        return {"name": getattr(self, "data_name", type(self).__name__), "seed": self.seed,
                "val_fraction": getattr(self, "val_fraction", 0.0), "test_fraction": getattr(self, "test_fraction", None)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._build()

    def _build(self) -> None:
        raise NotImplementedError

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        batch = self.batch_size if train else self.eval_batch_size
        return DataLoader(dataset, batch_size=batch, shuffle=train, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          drop_last=train and len(dataset) > batch)  # no size-1 batch for BatchNorm

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def split_dataloader(self, split: str) -> DataLoader:
        """An unshuffled loader over ``train`` (evaluation transforms, no augmentation), ``val`` or ``test``."""
        datasets = {"train": self.train_eval_set, "val": self.val_set, "test": self.test_set}
        if split not in datasets:
            raise ConfigError("splits", f"unknown split {split!r}", f"choose from {sorted(datasets)}")
        self.setup("test")
        return self._loader(datasets[split], False)


@register_datamodule("digits")
class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's bundled UCI digits (1,797 real 8x8 grey images), upsampled to ``image_size``.

    Stratified, seeded split into train/val/test (``val_fraction``, ``test_fraction`` of the whole).
    """

    in_chans = 1

    def __init__(self, image_size: int = 16, val_fraction: float = 0.15, test_fraction: float = 0.15, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def _build(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            x = torch.nn.functional.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        x = (x - x.mean()) / x.std()
        y = torch.tensor(digits.target, dtype=torch.int64)
        idx = np.arange(len(y))
        rest, test = train_test_split(idx, test_size=self.test_fraction, stratify=y, random_state=self.seed)
        val_share = self.val_fraction / (1.0 - self.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=self.seed)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[i], y[i]) for i in (train, val, test))
        self.train_eval_set = self.train_set
        self.class_names = [str(c) for c in digits.target_names]


def _stratified_holdout(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(targets))
    train, val = train_test_split(idx, test_size=fraction, stratify=targets, random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


class FolderDataModule(ClassificationDataModule):
    """ImageFolder splits under one root: ``<root>/<train_split>/<class>/...`` and ``<root>/<eval_split>/...``.

    ``root`` may also be an archive (``.tar.gz``, ``.zip``) of such a tree, extracted once into
    ``cache_dir``. ``val_fraction > 0`` holds out a stratified part of train for validation and keeps
    ``eval_split`` for test; otherwise ``eval_split`` serves both.
    """

    train_split, eval_split = "train", "val"

    def __init__(self, root: str | None = None, cache_dir: str | None = None, bad_images: str = "skip",
                 verify_images: bool = True, val_fraction: float = 0.0, train_split: str | None = None,
                 eval_split: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
        self.bad_images = bad_images
        # With bad_images=error every file is verified first, so no run dies on one mid-epoch.
        self.verify_images = verify_images or bad_images == "error"
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.train_split = train_split or self.train_split
        self.eval_split = eval_split or self.eval_split

    def _resolve_root(self) -> Path:
        if not self.root:
            raise ConfigError("data.root", "is not set", "set data.root=/path/to/data (an ImageFolder tree or archive)")
        root = Path(str(self.root)).expanduser()
        if not root.exists():
            raise ConfigError("data.root", f"{root} does not exist", "set data.root to an existing folder or archive")
        if root.is_file() and root.name.endswith(ARCHIVE_SUFFIXES):
            root = extract_archive(root, self.cache_dir)
        return find_split_root(root, (self.train_split, self.eval_split))

    def train_transform(self) -> Callable:
        return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def eval_transform(self) -> Callable:
        return T.Compose([T.Resize(round(self.image_size / 0.875)), T.CenterCrop(self.image_size), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _build(self) -> None:
        root = self._resolve_root()
        scan = dict(bad_images=self.bad_images, verify=self.verify_images)
        classes, train_samples = scan_image_folder(root / self.train_split, "data.root", **scan)
        eval_classes, eval_samples = scan_image_folder(root / self.eval_split, "data.root", **scan)
        check_same_classes(classes, eval_classes, f"{self.train_split}/", f"{self.eval_split}/")
        self.class_names = classes
        self._make_sets(train_samples, eval_samples)

    def _make_sets(self, train_samples, eval_samples) -> None:
        self._assign_splits(ImageFolderDataset(train_samples, self.class_names, self.train_transform()),
                            ImageFolderDataset(train_samples, self.class_names, self.eval_transform()),
                            ImageFolderDataset(eval_samples, self.class_names, self.eval_transform()))

    def _assign_splits(self, train: Dataset, train_eval: Dataset, evaluation: Dataset) -> None:
        """``train`` (augmented) and ``train_eval`` are the same samples; ``evaluation`` is the eval split."""
        self.train_eval_set, self.test_set = train_eval, evaluation
        if self.val_fraction > 0:
            fit_idx, val_idx = _stratified_holdout(list(train.targets), self.val_fraction, self.seed)
            self.train_set, self.val_set = Subset(train, fit_idx), Subset(train_eval, val_idx)
        else:
            self.train_set, self.val_set = train, evaluation


@register_datamodule("image_folder")
class ImageFolderDataModule(FolderDataModule):
    """Any ImageFolder tree a user points at (``data.root`` with ``train/`` and ``val/``)."""


@register_datamodule("imagenet")
class ImageNetDataModule(FolderDataModule):
    """ImageNet as ``train/`` and ``val/`` ImageFolders under ``data.root`` (or ``$IMAGENET_DIR``).

    Standard transforms: RandomResizedCrop(224) + flip for training; resize 256, center-crop 224 for
    evaluation. ``val/`` must be sorted into class folders (the usual ``valprep.sh`` layout).
    """

    def __init__(self, root: str | None = None, image_size: int = 224, **kwargs):
        super().__init__(root=root or os.environ.get("IMAGENET_DIR"), image_size=image_size, **kwargs)

    def _resolve_root(self) -> Path:
        if not self.root:
            raise ConfigError("data.root", "is not set and $IMAGENET_DIR is empty",
                              "set data.root=/path/to/imagenet (holding train/ and val/) or export IMAGENET_DIR")
        return super()._resolve_root()

    def eval_transform(self) -> Callable:
        return T.Compose([T.Resize(round(self.image_size * 256 / 224)), T.CenterCrop(self.image_size),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class CIFARDataModule(FolderDataModule):
    """CIFAR-10/100 from torchvision's download, an ImageFolder root (``train/``, ``test/``) or a
    ``.tar.gz`` of one. Standard augmentation: random crop 32 with 4-pixel padding, horizontal flip."""

    eval_split = "test"
    torchvision_name = ""

    def __init__(self, root: str | None = None, download: bool = False, image_size: int = 32, **kwargs):
        super().__init__(root=root, image_size=image_size, **kwargs)
        self.download = download

    def train_transform(self) -> Callable:
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def eval_transform(self) -> Callable:
        return T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def _is_image_folder_root(self) -> bool:
        """An archive, or a folder that holds (possibly nested) ``train/`` and ``test/`` class folders."""
        if not self.root:
            return False
        root = Path(str(self.root)).expanduser()
        if root.is_file():
            return True
        try:
            find_split_root(root, (self.train_split, self.eval_split))
            return True
        except (ConfigError, OSError):
            return False

    def _build(self) -> None:
        if self._is_image_folder_root():
            return super()._build()
        import torchvision

        cls = getattr(torchvision.datasets, self.torchvision_name)
        root = str(Path(str(self.root or self.cache_dir)).expanduser())
        try:
            train = cls(root, train=True, download=self.download, transform=self.train_transform())
            test = cls(root, train=False, download=self.download, transform=self.eval_transform())
        except Exception as err:
            raise ConfigError("data.root", f"cannot load {self.torchvision_name} from {root} ({type(err).__name__})",
                              "check the network for data.download=true, or give an ImageFolder root/archive") from None
        self.class_names = list(train.classes)
        self._assign_splits(train, cls(root, train=True, download=False, transform=self.eval_transform()), test)


@register_datamodule("cifar10")
class CIFAR10DataModule(CIFARDataModule):
    torchvision_name = "CIFAR10"


@register_datamodule("cifar100")
class CIFAR100DataModule(CIFARDataModule):
    torchvision_name = "CIFAR100"
