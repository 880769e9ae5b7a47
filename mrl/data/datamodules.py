"""Lightning DataModules for image classification, one per data source, built by :func:`create_datamodule`.

Every DataModule exposes ``class_names``, ``num_classes``, ``in_chans`` and ``image_size`` after
``setup()``; ``batch_size`` is per device (the global batch is ``batch_size * world_size``).

Validation (``validation``) never selects on the split whose numbers are reported:

* ``holdout`` (default): a class-stratified, seeded part of train (``val_fraction``) validates and
  picks the best checkpoint; the test split is only tested;
* ``none``: no validation; the final checkpoint is tested (the paper's ImageNet protocol);
* ``test``: validate on the test split. An explicit opt-in: it warns, and runs record it.

Training order and augmentation come from :mod:`mrl.data.sampling` (exact resume, any number of
processes); evaluation loaders shard without padding, so every sample counts once under DDP.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate
from torchvision import transforms as T

from mrl.data.image_folder import (ImageFolderDataset, check_same_classes, exclusive, extract_archive,
                                   find_split_root, scan_image_folder)
from mrl.data.sampling import (EpochSampler, ResumableDataLoader, SeededAugmentation, ShardSampler,
                               distributed_rank_and_size)
from mrl.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_CACHE_DIR = Path(os.environ.get("MRL_CACHE_DIR", Path.home() / ".cache" / "mrl"))



def imagenet_transforms(image_size: int) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms, ImageNet-normalised: random-resized crop and flip; resize to 8/7 of the size
    (256 for 224) and centre crop."""
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    evaluation = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(),
                            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return train, evaluation


def cifar_transforms(image_size: int) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms, CIFAR-normalised: 4-pixel padded random crop and flip; none."""
    train = T.Compose([T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return train, T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])


TRANSFORMS = {"imagenet": imagenet_transforms, "cifar": cifar_transforms}

VALIDATION_MODES = ("holdout", "none", "test")
VALIDATE_ON_TEST_WARNING = ("data.validation=test: validation runs on the test split, so validation metrics and the "
                            "'best' checkpoint are chosen on the split whose numbers are reported")

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


def collate_images(samples: list[tuple]) -> dict[str, torch.Tensor]:
    """``[(image, label), ...] -> {"image": [B, C, H, W], "label": [B]}``: the batch dict of image data
    (``[(image, label, index), ...]`` adds ``"index": [B]``, a streamed sample's place in its split)."""
    columns = default_collate(samples)
    return dict(zip(("image", "label", "index"), columns))


class ClassificationDataModule(L.LightningDataModule):
    """What every labelled data set shares, image or text: batch sizes, workers, the seeded resumable training
    order, unduplicated evaluation shards under DDP, validation modes, the splits for embedding. Subclasses fill
    ``train_set``/``val_set``/``test_set``/``train_eval_set`` and ``class_names``, and set ``collate_fn``, which
    turns a list of samples into the batch dict (``label`` plus what the encoder reads)."""

    collate_fn: Callable[[list[Any]], dict[str, Any]] | None = None

    def __init__(self, batch_size: int = 128, num_workers: int | str = 0, eval_batch_size: int | None = None,
                 pin_memory: bool | None = None, seed: int = 0, validation: str = "holdout"):
        super().__init__()
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {batch_size}")
        if validation not in VALIDATION_MODES:
            raise ConfigError("data.validation", f"unknown mode {validation!r}",
                              f"choose one of {list(VALIDATION_MODES)} (holdout: part of train)")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = seed
        self.validation = validation
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
                "validation": self.validation, "val_fraction": getattr(self, "val_fraction", 0.0),
                "test_fraction": getattr(self, "test_fraction", None)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self._build()
            if self.validation == "test":
                warnings.warn(VALIDATE_ON_TEST_WARNING, stacklevel=2)

    def _build(self) -> None:
        raise NotImplementedError

    def _batches_done(self) -> int:
        """Batches of the current epoch the training loop has finished (for mid-epoch checkpoints)."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def _loader_kwargs(self) -> dict[str, Any]:
        # Own generator: creating an iterator draws worker seeds from it, not from the global RNG
        # that the model's dropout uses, so a resumed run draws the same model randomness.
        return dict(num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=self.collate_fn,
                    persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data (the next sample to train on): saved in every checkpoint."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {"epoch": 0, "samples_done": 0}
        epoch, done = trainer.current_epoch, self._batches_done()
        if done >= trainer.num_training_batches:  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        return {"epoch": int(epoch), "samples_done": int(done) * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Lightning restores this before it builds the training loader when configure_optimizers asks
        # for its length, and then skips restoring the loader's own state: the loader picks it up here.
        self._resume_state = dict(state)

    def train_dataloader(self) -> DataLoader:
        rank, world = distributed_rank_and_size()
        sampler = EpochSampler(len(self.train_set), self.seed, num_replicas=world, rank=rank)
        resume = getattr(self, "_resume_state", None)
        if resume:
            sampler.resume_at(resume["epoch"], resume["samples_done"])
            self._resume_state = None
        return ResumableDataLoader(SeededAugmentation(self.train_set), batch_size=self.batch_size, sampler=sampler,
                                   drop_last=len(sampler) > self.batch_size,  # no size-1 batch for BatchNorm
                                   progress=self.state_dict, **self._loader_kwargs())

    def eval_dataloader(self, dataset: Dataset) -> DataLoader:
        """An unshuffled loader over ``dataset``; under DDP each rank gets its share, without duplicates."""
        rank, world = distributed_rank_and_size()
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=ShardSampler(len(dataset), world, rank),
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self.eval_dataloader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_set)

    def split_dataset(self, split: str) -> Dataset:
        """``train`` (all of it, evaluation transforms, no augmentation), ``val`` or ``test``."""
        self.setup("test")
        datasets = {"train": self.train_eval_set, "val": self.val_set, "test": self.test_set}
        if split not in datasets or datasets[split] is None:
            available = sorted(k for k, v in datasets.items() if v is not None)
            raise ConfigError("splits", f"unknown or absent split {split!r}", f"choose from {available}")
        return datasets[split]

    def predict_dataloader(self) -> DataLoader:
        """The split named by ``predict_split`` (set by :func:`mrl.embeddings.embed_checkpoint`)."""
        return self.split_dataloader(getattr(self, "predict_split", "test"))

    def split_dataloader(self, split: str) -> DataLoader:
        """An unshuffled loader over ``split`` (see :meth:`split_dataset`)."""
        return self.eval_dataloader(self.split_dataset(split))

    def _assign_validation(self, holdout: Dataset | None, test: Dataset) -> None:
        """``val_set`` by ``self.validation``, in a seeded shuffled order: ``limit_val_batches`` on a
        class-sorted split would otherwise validate on a few classes only."""
        source = {"holdout": holdout, "test": test, "none": None}[self.validation]
        if source is None:
            self.val_set = None
            return
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.val_set = Subset(source, order)


def resolve_folder_root(root: Any, cache_dir: Path, splits: Sequence[str]) -> Path:
    """The folder holding the ``splits`` subfolders of an ImageFolder tree given as ``data.root``: the folder itself
    or one level below, or the same inside a ``.tar.gz``/``.zip`` archive, extracted once into ``cache_dir``."""
    if not root:
        raise ConfigError("data.root", "is not set", "set data.root=/path/to/data (an ImageFolder tree or archive)")
    path = Path(str(root)).expanduser()
    if not path.exists():
        raise ConfigError("data.root", f"{path} does not exist", "set data.root to an existing folder or archive")
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        path = extract_archive(path, cache_dir)
    return find_split_root(path, tuple(splits))


class ImageDataModule(ClassificationDataModule):
    """Image data: ``image_size`` and ``in_chans`` (what an image encoder is built for), batches
    ``{"image": [B, C, H, W], "label": [B]}``."""

    in_chans = 3
    collate_fn = staticmethod(collate_images)

    def __init__(self, image_size: int | None = 32, **kwargs: Any):
        super().__init__(**kwargs)
        if image_size is not None and (type(image_size) is not int or image_size <= 0):
            raise ConfigError("data.image_size", f"must be a positive integer, got {image_size!r}",
                              "e.g. data.image_size=32 (or null for image_folder to read it from the images)")
        self.image_size = image_size


def infer_image_size(samples: list[tuple[str, int]], max_images: int = 200) -> int:
    """The median shorter side of up to ``max_images`` evenly spaced training images, in pixels."""
    from PIL import Image

    step = max(len(samples) // max_images, 1)
    sides = []
    for path, _ in samples[::step][:max_images]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except OSError:
            continue
    if not sides:
        raise ConfigError("data.image_size", "is null and no training image could be read to infer it",
                          "set data.image_size explicitly")
    size = int(np.median(sides))
    print(f"data.image_size not set: using {size} px, the median shorter side of {len(sides)} training images")
    return size


def resolve_num_workers(num_workers: int | str) -> int:
    """``auto``: the CPUs this process may use, shared by the processes of this node, at most 8."""
    if num_workers == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", 1)))
        return max(0, min(8, cpus // max(local_processes, 1) - 1))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError("data.num_workers", f"must be an integer >= 0 or auto, got {num_workers!r}",
                          "set data.num_workers=auto to fit the machine")
    return num_workers


@register_datamodule("digits")
class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled UCI digits (1,797 real 8x8 grey images), upsampled to ``image_size``.

    Stratified, seeded split into train/val/test (``val_fraction``, ``test_fraction`` of the whole).
    """

    in_chans = 1

    def __init__(self, image_size: int = 16, val_fraction: float = 0.15, test_fraction: float = 0.15, **kwargs):
        super().__init__(image_size=image_size, **kwargs)
        check_fraction("data.test_fraction", test_fraction)
        if self.validation == "holdout":
            check_fraction("data.val_fraction", val_fraction)
            if val_fraction + test_fraction >= 1:
                raise ConfigError("data.val_fraction", f"plus data.test_fraction is {val_fraction + test_fraction}, "
                                  "leaving nothing to train on", "keep their sum below 1, e.g. 0.15 and 0.15")
        self.val_fraction = val_fraction if self.validation == "holdout" else 0.0
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
        train, test = train_test_split(idx, test_size=self.test_fraction, stratify=y, random_state=self.seed)
        val = None
        if self.val_fraction > 0:
            val_share = self.val_fraction / (1.0 - self.test_fraction)
            train, val = train_test_split(train, test_size=val_share, stratify=y[train], random_state=self.seed)
        self.train_set, self.test_set = TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])
        self.train_eval_set = self.train_set
        self._assign_validation(None if val is None else TensorDataset(x[val], y[val]), self.test_set)
        self.class_names = [str(c) for c in digits.target_names]


def check_fraction(field: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(field, f"must be in (0, 1), got {value}", "e.g. 0.1 for a tenth")


def stratified_holdout(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    import math

    from sklearn.model_selection import train_test_split

    held, classes = math.ceil(fraction * len(targets)), len(set(targets))
    if held < classes or len(targets) - held < classes:
        raise ConfigError("data.val_fraction", f"{fraction} of {len(targets)} training images holds out {held}, "
                          f"which cannot cover the {classes} classes on both sides",
                          "choose a fraction that leaves at least one image per class in each part, "
                          "or data.validation=none")
    idx = np.arange(len(targets))
    train, val = train_test_split(idx, test_size=fraction, stratify=targets, random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


class FolderDataModule(ImageDataModule):
    """ImageFolder splits under one root: ``<root>/<train_split>/<class>/...`` and ``<root>/<eval_split>/...``.

    ``root`` may also be an archive (``.tar.gz``, ``.zip``) of such a tree, extracted once into
    ``cache_dir``. ``val_fraction > 0`` holds out a stratified part of train for validation and keeps
    ``eval_split`` for test; otherwise ``eval_split`` serves both.
    """

    train_split, eval_split = "train", "val"

    def __init__(self, root: str | None = None, cache_dir: str | None = None, bad_images: str = "skip",
                 verify_images: bool = True, val_fraction: float = 0.1, train_split: str | None = None,
                 eval_split: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
        self.bad_images = bad_images
        # With bad_images=error every file is verified first, so no run dies on one mid-epoch.
        self.verify_images = verify_images or bad_images == "error"
        if self.validation == "holdout":
            check_fraction("data.val_fraction", val_fraction)
        self.val_fraction = val_fraction if self.validation == "holdout" else 0.0
        self.train_split = train_split or self.train_split
        self.eval_split = eval_split or self.eval_split

    def _resolve_root(self) -> Path:
        return resolve_folder_root(self.root, self.cache_dir, (self.train_split, self.eval_split))

    transforms = staticmethod(imagenet_transforms)

    def train_transform(self) -> Callable:
        return self.transforms(self.image_size)[0]

    def eval_transform(self) -> Callable:
        return self.transforms(self.image_size)[1]

    def _build(self) -> None:
        root = self._resolve_root()
        scan = dict(bad_images=self.bad_images, verify=self.verify_images)
        classes, train_samples = scan_image_folder(root / self.train_split, "data.root", **scan)
        eval_classes, eval_samples = scan_image_folder(root / self.eval_split, "data.root", **scan)
        check_same_classes(classes, eval_classes, f"{self.train_split}/", f"{self.eval_split}/")
        self.class_names = classes
        if self.image_size is None:
            self.image_size = infer_image_size(train_samples)
        self._make_sets(train_samples, eval_samples)

    def _make_sets(self, train_samples, eval_samples) -> None:
        self._assign_splits(ImageFolderDataset(train_samples, self.class_names, self.train_transform()),
                            ImageFolderDataset(train_samples, self.class_names, self.eval_transform()),
                            ImageFolderDataset(eval_samples, self.class_names, self.eval_transform()))

    def _assign_splits(self, train: Dataset, train_eval: Dataset, evaluation: Dataset) -> None:
        """``train`` (augmented) and ``train_eval`` are the same samples; ``evaluation`` is the test split."""
        self.train_eval_set, self.test_set = train_eval, evaluation
        holdout = None
        if self.validation == "holdout":
            fit_idx, val_idx = stratified_holdout(list(train.targets), self.val_fraction, self.seed)
            self.train_set, holdout = Subset(train, fit_idx), Subset(train_eval, val_idx)
        else:
            self.train_set = train
        self._assign_validation(holdout, evaluation)


@register_datamodule("image_folder")
class ImageFolderDataModule(FolderDataModule):
    """Any ImageFolder tree a user points at (``data.root`` with ``train/`` and ``val/``)."""


@register_datamodule("imagenet")
class ImageNetDataModule(FolderDataModule):
    """ImageNet as ``train/`` and ``val/`` ImageFolders under ``data.root`` (or ``$IMAGENET_DIR``).

    Standard transforms: RandomResizedCrop(224) + flip for training; resize 256, center-crop 224 for
    evaluation. ``val/`` must be sorted into class folders (the usual ``valprep.sh`` layout).
    """

    def __init__(self, root: str | None = None, image_size: int = 224, validation: str = "none", **kwargs):
        # The paper's protocol: train on all of train/, test the final model on val/ without selection.
        super().__init__(root=root or os.environ.get("IMAGENET_DIR"), image_size=image_size, validation=validation,
                         **kwargs)

    def _resolve_root(self) -> Path:
        if not self.root:
            raise ConfigError("data.root", "is not set and $IMAGENET_DIR is empty",
                              "set data.root=/path/to/imagenet (holding train/ and val/) or export IMAGENET_DIR")
        return super()._resolve_root()


class CIFARDataModule(FolderDataModule):
    """CIFAR-10/100 from torchvision's download, an ImageFolder root (``train/``, ``test/``) or a
    ``.tar.gz`` of one. Standard augmentation: random crop 32 with 4-pixel padding, horizontal flip."""

    eval_split = "test"
    torchvision_name = ""

    def __init__(self, root: str | None = None, download: bool = False, image_size: int = 32, **kwargs):
        super().__init__(root=root, image_size=image_size, **kwargs)
        self.download = download

    transforms = staticmethod(cifar_transforms)

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
        root = Path(str(self.root or self.cache_dir)).expanduser()
        if root.name.endswith(ARCHIVE_SUFFIXES):  # the user meant a file: never download into a folder of that name
            raise ConfigError("data.root", f"{root} does not exist", "check the path of the archive")
        try:
            train = cls(str(root), train=True, download=False, transform=self.train_transform())
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            if not self.download:
                raise ConfigError("data.root", f"{root} holds neither torchvision's {self.torchvision_name} files nor "
                                  "train/ and test/ class folders", "fix the path, or set data.download=true") from None
            train = self._download(cls, root)
        test = cls(str(root), train=False, download=False, transform=self.eval_transform())
        self.class_names = list(train.classes)
        self._assign_splits(train, cls(str(root), train=True, download=False, transform=self.eval_transform()), test)

    def _download(self, cls, root: Path):
        """torchvision's download into ``root``; nothing is left behind when it fails."""
        from urllib.parse import urlparse

        from mrl.network import host_reachable

        host = urlparse(cls.url).hostname
        if not root.parent.is_dir():
            raise ConfigError("data.root", f"{root}: the folder {root.parent} does not exist",
                              "check the path (data.download=true creates only the last folder)")
        if not host_reachable(host):
            raise ConfigError("data.root", f"{root} has no {self.torchvision_name} and {host} is unreachable to "
                              "download it", "give the path of a local copy (torchvision folder, ImageFolder root or "
                              ".tar.gz), or run where the network is reachable")
        created = not root.exists()
        try:
            with exclusive(root.parent / f".{root.name}.download.lock", f"downloading into {root}"):
                print(f"downloading {self.torchvision_name} from {host} into {root} (torchvision skips what is "
                      "there)", flush=True)
                return cls(str(root), train=True, download=True, transform=self.train_transform())
        except Exception as err:
            if created:
                shutil.rmtree(root, ignore_errors=True)
            raise ConfigError("data.root", f"downloading {self.torchvision_name} into {root} failed "
                              f"({type(err).__name__}: {err})", "retry, or give the path of a local copy") from None


@register_datamodule("cifar10")
class CIFAR10DataModule(CIFARDataModule):
    torchvision_name = "CIFAR10"


@register_datamodule("cifar100")
class CIFAR100DataModule(CIFARDataModule):
    torchvision_name = "CIFAR100"


class ShardStreamLoader(DataLoader):
    """The training loader over a :class:`~mrl.data.shards.TrainShardStream`: each epoch's iterator tells the
    stream its epoch (workers start afresh per epoch and take the stream as it is then)."""

    def __init__(self, *args: Any, epoch: Callable[[], int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epoch = epoch

    def __iter__(self):
        self.dataset.set_epoch(self.epoch())
        return super().__iter__()


class ShardStreaming:
    """Loaders of streamed splits (:mod:`mrl.data.shards`), mixed into a DataModule before its map-style base:
    a :class:`~mrl.data.shards.TrainShardStream` train set and :class:`~mrl.data.shards.EvalShardStream` evaluation
    sets are read by rank and loader worker and resumed mid-epoch; any other set goes to the base's loaders."""

    def train_dataloader(self) -> DataLoader:
        from mrl.data.shards import TrainShardStream

        stream = self.train_set
        if not isinstance(stream, TrainShardStream):
            return super().train_dataloader()
        stream.place(*distributed_rank_and_size())
        stream.check_workers(self.num_workers)
        resume = getattr(self, "_resume_state", None)
        if resume:
            stream.resume_at(resume["epoch"], resume["samples_done"])
            self._resume_state = None
        trainer = getattr(self, "trainer", None)
        # Workers start afresh each epoch (not persistent), so each sees the epoch set by the loader.
        return ShardStreamLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                                 pin_memory=self.pin_memory, collate_fn=self.collate_fn,
                                 epoch=lambda: trainer.current_epoch if trainer is not None else stream.epoch)

    def shard_split(self, split: str) -> str:
        """The shard split that ``scripts/embed.py``'s ``split`` names (``train``, ``val``: the converter's
        ``holdout``, ``test``: ``eval_split``), after setting the data up; an absent one is a one-line error."""
        self.setup("test")
        names = {"train": "train", "val": "holdout", "test": self.eval_split}
        if split not in names or names[split] not in self.meta["splits"]:
            available = sorted(k for k, v in names.items() if v in self.meta["splits"])
            raise ConfigError("splits", f"unknown or absent split {split!r}", f"choose from {available}")
        return names[split]

    def eval_dataloader(self, dataset) -> DataLoader:
        from mrl.data.shards import EvalShardStream

        if isinstance(dataset, EvalShardStream):  # it splits itself by rank and worker
            dataset.place(*distributed_rank_and_size())
            workers = min(self.num_workers, len(dataset.urls[dataset.rank::dataset.world]))
            return DataLoader(dataset, batch_size=self.eval_batch_size, num_workers=workers, pin_memory=self.pin_memory,
                              collate_fn=self.collate_fn)
        return super().eval_dataloader(dataset)


@register_datamodule("webdataset")
class ShardsDataModule(ShardStreaming, ImageDataModule):
    """WebDataset tar shards written by ``scripts/make_shards.py`` (:mod:`mrl.data.shards`), streamed.

    ``transform``: ``imagenet`` (random-resized crop and flip; resize and centre crop) or ``cifar`` (4-pixel
    padded crop and flip; none). Validation: ``holdout`` reads the converter's ``holdout`` split (made with
    ``--holdout-fraction``), ``test`` the test split, ``none`` nothing. Embedding (``scripts/embed.py``) streams
    the shards too, on any number of processes, each row placed by its sample's index.
    """

    def __init__(self, root: str | None = None, image_size: int = 224, transform: str = "imagenet",
                 shuffle_buffer: int = 5000, eval_split: str | None = None, validation: str = "none", **kwargs):
        super().__init__(image_size=image_size, validation=validation, **kwargs)
        if transform not in TRANSFORMS:
            raise ConfigError("data.transform", f"unknown transform {transform!r}", f"choose one of {list(TRANSFORMS)}")
        if shuffle_buffer < 1:
            raise ConfigError("data.shuffle_buffer", f"must be >= 1, got {shuffle_buffer}")
        self.root, self.transform, self.shuffle_buffer, self.eval_split = root, transform, shuffle_buffer, eval_split

    def _build(self) -> None:
        from mrl.data.shards import EvalShardStream, TrainShardStream, read_meta

        if not self.root:
            raise ConfigError("data.root", "is not set", "set data.root to a folder made by scripts/make_shards.py")
        self.shard_root = Path(str(self.root)).expanduser()
        self.meta = read_meta(self.shard_root)
        splits = self.meta["splits"]
        if "train" not in splits:
            raise ConfigError("data.root", f"{self.shard_root} has no train split (it has {sorted(splits)})",
                              "convert with --splits train,...")
        if self.eval_split is None:
            self.eval_split = next((s for s in ("val", "test") if s in splits), None)
        if self.eval_split not in splits:
            raise ConfigError("data.eval_split", f"{self.eval_split!r} is not a split of {self.shard_root} "
                              f"({sorted(splits)})", "name one of them")
        if self.validation == "holdout" and "holdout" not in splits:
            raise ConfigError("data.validation", f"is holdout but {self.shard_root} has no holdout split",
                              "convert with --holdout-fraction 0.01, or set data.validation=none")
        self.class_names = list(self.meta["classes"])
        train_transform, eval_transform = TRANSFORMS[self.transform](self.image_size)
        self.test_set = EvalShardStream(self.shard_root, self.eval_split, self.meta, eval_transform)
        self.val_set = {"holdout": lambda: EvalShardStream(self.shard_root, "holdout", self.meta, eval_transform),
                        "test": lambda: self.test_set, "none": lambda: None}[self.validation]()
        self.train_set = TrainShardStream(self.shard_root, self.meta, train_transform, self.batch_size, self.seed,
                                          self.shuffle_buffer)

    def split_dataset(self, split: str):
        """``train`` (the converter's train split, evaluation transforms), ``val`` (its ``holdout`` split) or
        ``test`` (``eval_split``), streamed with each sample's index (see :class:`EvalShardStream`)."""
        from mrl.data.shards import EvalShardStream

        _, eval_transform = TRANSFORMS[self.transform](self.image_size)
        return EvalShardStream(self.shard_root, self.shard_split(split), self.meta, eval_transform, with_index=True)


def adopt_text_encoder(datamodule: Any, encoder: Mapping[str, Any], owner: str = "encoder") -> None:
    """Point ``datamodule``'s ``tokenizer_name``/``max_length`` at a checkpoint's text encoder (its ``name`` and
    ``max_length`` settings; ``owner`` names it in the error): fills the ones left unset (``scripts/embed.py`` has no
    model config) and refuses, with one line, ones set to another model's."""
    name, limit = encoder.get("name"), encoder.get("max_length", 128)
    for field, mine, theirs in (("tokenizer", datamodule.tokenizer_name, name),
                                ("max_length", datamodule.max_length, limit)):
        if mine is not None and mine != theirs:
            raise ConfigError(f"data.{field}", f"is {mine!r} but the checkpoint's {owner} has {theirs!r}",
                              f"set data.{field}={theirs} or leave it unset (null)")
    datamodule.tokenizer_name, datamodule.max_length = name, limit


@register_datamodule("text")
class TextDataModule(ClassificationDataModule):
    """Text classification (:mod:`mrl.data.text`): a shared format (``trec``, ``sst2``, ``ag_news``), local
    ``tsv``/``csv``/``jsonl`` files with the columns named in config, or a Hugging Face data set (``hf``, by name,
    downloaded once per node in :meth:`prepare_data`). Batches: the tokenizer's outputs (padded per batch, in the
    loader workers) and ``label``.

    ``tokenizer``: the text encoder's name (``hf/minilm``, ``hf/bert-base-uncased``, a local directory; the
    presets take ``model.backbone.name``) and ``max_length`` its token limit. ``root``: a folder with one file per
    split (the shared formats' file names, or ``<split>.<format>``), or for ``hf`` the data set's name.
    ``splits``: which file splits are ``train`` and ``test`` (``{"train": "train", "test": "dev"}`` for SST-2,
    whose test labels are hidden in the GLUE release). Validation ``holdout`` takes a class-stratified, seeded
    ``val_fraction`` of train.
    """

    def __init__(self, format: str, root: str | None = None, tokenizer: str | None = None,
                 max_length: int | None = None, splits: dict[str, str] | None = None, val_fraction: float = 0.1,
                 options: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        from mrl.data.text import TEXT_FORMATS

        if format not in TEXT_FORMATS:
            raise ConfigError("data.format", f"unknown text format {format!r}", f"choose one of {sorted(TEXT_FORMATS)}")
        if not root:
            raise ConfigError("data.root", "is not set", "give the folder of the data files (or the HF data set name)")
        if self.validation == "holdout":
            check_fraction("data.val_fraction", val_fraction)
        self.format, self.root, self.tokenizer_name, self.max_length = format, str(root), tokenizer, max_length
        self.splits = {"train": "train", "test": "test", **dict(splits or {})}
        unknown = sorted(set(self.splits) - {"train", "test"})
        if unknown:
            raise ConfigError("data.splits", f"names {unknown}, but only train and test are read",
                              "map train and test to the file splits, e.g. {train: train, test: dev}")
        self.val_fraction = val_fraction if self.validation == "holdout" else 0.0
        self.options = dict(options or {})

    def use_encoder(self, encoder: dict[str, Any]) -> None:
        """Tokenise for ``encoder`` (a checkpoint's ``backbone`` settings): fills ``tokenizer``/``max_length``
        left unset (``scripts/embed.py`` has no model config), and refuses ones set to another model's."""
        adopt_text_encoder(self, encoder)

    def prepare_data(self) -> None:
        """Lightning calls this once per node (local rank 0) before :meth:`setup` on every rank: the one
        download of a Hugging Face data set; local files need nothing."""
        if self.format == "hf":
            self._read()

    def _read(self) -> dict[str, Any]:
        from mrl.data.text import load_text_splits

        read = load_text_splits(self.format, self.root, [self.splits["train"], self.splits["test"]], **self.options)
        return {"train": read[self.splits["train"]], "test": read[self.splits["test"]]}

    def _build(self) -> None:
        from mrl.data.text import TokenizeCollate
        from mrl.encoders import TEXT_PREFIX
        from mrl.encoders.text import load_tokenizer

        if self.tokenizer_name is None or self.max_length is None:
            raise ConfigError("data.tokenizer", "is not set, so the texts cannot be tokenised",
                              "set data.tokenizer=${model.backbone.name} and data.max_length (the presets do)")
        data = self._read()
        train, test = data["train"], data["test"]
        self.class_names = list(train.class_names)
        name = self.tokenizer_name[len(TEXT_PREFIX):] if self.tokenizer_name.startswith(TEXT_PREFIX) \
            else self.tokenizer_name
        self.collate_fn = TokenizeCollate(load_tokenizer(name), self.max_length)
        holdout = None
        if self.validation == "holdout":
            fit_idx, val_idx = stratified_holdout(list(train.labels), self.val_fraction, self.seed)
            self.train_set, holdout = Subset(train, fit_idx), Subset(train, val_idx)
        else:
            self.train_set = train
        self.train_eval_set, self.test_set = self.train_set, test
        self._assign_validation(holdout, test)

    def split_signature(self) -> dict[str, Any]:
        return {**super().split_signature(), "format": self.format, "splits": dict(self.splits)}
