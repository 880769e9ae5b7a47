"""ImageNet robustness sets evaluated with an ImageNet-1K checkpoint (paper Sec. 4.3).

* ImageNet-V2 and ImageNet-Sketch use all 1000 classes. ImageNet-Sketch's class folders are wnids;
  ImageNet-V2's released folders are the class indices ``0`` ... ``999`` (also accepted as wnids).
* ImageNet-A and ImageNet-R cover 200 of the 1000 classes (lists shipped in ``data/``, from
  Hendrycks et al.); the checkpoint's logits are restricted to those 200 before the argmax, as in the
  authors' evaluation.

An ImageFolder over such a set numbers its classes ``0..K-1`` in sorted folder order; those labels
are remapped to the checkpoint's class indices, so labels everywhere live in the 1000-class space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mrl.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
SUBSET_FILES = {"imagenet-a": "imagenet_a_wnids.txt", "imagenet-r": "imagenet_r_wnids.txt"}
DATASETS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


def normalize_name(dataset_name: str) -> str:
    """``imagenet_a``, ``ImageNet-A``, ``a`` -> ``imagenet-a`` (one of :data:`DATASETS`)."""
    name = str(dataset_name).strip().lower().replace("_", "-")
    if not name.startswith("imagenet"):
        name = f"imagenet-{name}"
    name = {"imagenetv2": "imagenet-v2", "imagenet-v2-matched-frequency": "imagenet-v2",
            "imagenetsketch": "imagenet-sketch", "imagenet-s": "imagenet-sketch"}.get(name, name)
    if name not in DATASETS:
        raise ConfigError("dataset", f"unknown robustness set {dataset_name!r}", f"choose one of {list(DATASETS)}")
    return name


def shipped_wnids(dataset_name: str) -> list[str] | None:
    """The 200 wnids of ImageNet-A/-R (sorted), or None for a set over all 1000 classes."""
    name = normalize_name(dataset_name)
    if name not in SUBSET_FILES:
        return None
    lines = (DATA_DIR / SUBSET_FILES[name]).read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def robustness_class_mask(dataset_name: str, checkpoint_class_names: Sequence[str] | None,
                          folder_class_names: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
    """``(class_mask, folder_to_checkpoint)`` for evaluating a robustness set's ImageFolder.

    * ``class_mask``: sorted indices into the checkpoint's classes that the argmax is restricted to
      (ImageNet-A/-R: their 200 shipped wnids), or ``None`` for all classes (V2, Sketch).
    * ``folder_to_checkpoint[i]``: the checkpoint's class index of the folder's ``i``-th class (folders
      in sorted order, as :func:`mrl.data.scan_image_folder` numbers them).

    Raises :class:`ConfigError` when the folder's classes are not among the shipped list or the
    checkpoint's classes.
    """
    name = normalize_name(dataset_name)
    if not checkpoint_class_names:
        raise ConfigError("ckpt_path", "the checkpoint has no class names, so wnids cannot be matched",
                          "use a checkpoint trained by scripts/train.py on an ImageNet folder")
    ckpt = list(checkpoint_class_names)
    index = {c: i for i, c in enumerate(ckpt)}
    folder = list(folder_class_names)
    if not folder:
        raise ConfigError("root", f"the {name} folder has no classes")
    subset = shipped_wnids(name)
    if subset is not None:
        unknown = sorted(set(folder) - set(subset))
        if unknown:
            raise ConfigError("root", f"{len(unknown)} class folder(s) of this {name} copy are not among its "
                              f"200 classes, e.g. {unknown[:3]}", f"point root at an unmodified {name} "
                              "(class folders named by wnid)")
        missing = [w for w in subset if w not in index]
        if missing:
            raise ConfigError("ckpt_path", f"{len(missing)} of {name}'s 200 classes are not among the checkpoint's "
                              f"{len(ckpt)} classes, e.g. {missing[:3]}",
                              "use a checkpoint trained on ImageNet-1K (class folders named by wnid)")
        mask = np.array(sorted(index[w] for w in subset), dtype=np.int64)
        return mask, np.array([index[c] for c in folder], dtype=np.int64)
    if name == "imagenet-v2" and all(c.isdigit() for c in folder):  # the released layout: 0 ... 999
        ids = [int(c) for c in folder]
        if max(ids) >= len(ckpt):
            raise ConfigError("root", f"class folder {max(ids)} is out of range for the checkpoint's "
                              f"{len(ckpt)} classes", "use a checkpoint trained on ImageNet-1K")
        return None, np.array(ids, dtype=np.int64)
    unknown = [c for c in folder if c not in index]
    if unknown:
        raise ConfigError("root", f"{len(unknown)} class folder(s) of this {name} copy are not among the "
                          f"checkpoint's classes, e.g. {unknown[:3]}",
                          "use a checkpoint trained on ImageNet-1K and class folders named by wnid")
    return None, np.array([index[c] for c in folder], dtype=np.int64)


def imagenet_eval_transform(image_size: int = 224) -> Callable:
    """The ImageNet evaluation transform of :class:`mrl.data.ImageNetDataModule` (resize, center crop)."""
    from mrl.data.datamodules import imagenet_transforms

    return imagenet_transforms(int(image_size))[1]


class RobustnessSet(Dataset):
    """A robustness set's ImageFolder (``root/<class>/<image>``) with labels in the checkpoint's classes.

    Args:
        root: the set's folder (class folders named by wnid, or ``0``..``999`` for ImageNet-V2).
        dataset_name: ``imagenet-v2``, ``imagenet-sketch``, ``imagenet-a`` or ``imagenet-r``.
        class_names: the checkpoint's class names (its ``'mrl'`` entry, or ``module.class_names``).
        image_size: crop size of the ImageNet evaluation transform (ignored with ``transform``).

    Attributes: ``class_mask`` and ``folder_to_checkpoint`` (:func:`robustness_class_mask`),
    ``folder_class_names``, ``targets`` (remapped labels).
    """

    def __init__(self, root: str | Path, dataset_name: str, class_names: Sequence[str], image_size: int = 224,
                 transform: Callable | None = None, bad_images: str = "skip", verify: bool = True):
        from mrl.data.image_folder import ImageFolderDataset, scan_image_folder

        self.name = normalize_name(dataset_name)
        folder_classes, samples = scan_image_folder(root, "root", bad_images=bad_images, verify=verify)
        self.folder_class_names = folder_classes
        self.class_mask, self.folder_to_checkpoint = robustness_class_mask(self.name, class_names, folder_classes)
        remapped = [(path, int(self.folder_to_checkpoint[y])) for path, y in samples]
        self.dataset = ImageFolderDataset(remapped, list(class_names),
                                          transform or imagenet_eval_transform(image_size))
        self.targets = self.dataset.targets

    @classmethod
    def from_checkpoint(cls, root: str | Path, dataset_name: str, ckpt_path: str | Path,
                        **kwargs: Any) -> RobustnessSet:
        """Class names and image size from a checkpoint written by ``scripts/train.py``."""
        from mrl.checkpoint import read_checkpoint

        ckpt, meta = read_checkpoint(ckpt_path)
        image_size = (ckpt.get("hyper_parameters", {}).get("backbone") or {}).get("image_size") or 224
        kwargs.setdefault("image_size", image_size)
        return cls(root, dataset_name, meta.get("class_names"), **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


def embed_robustness_set(ckpt_path: str | Path, root: str | Path, dataset_name: str, out_root: str | Path,
                         batch_size: int = 256, num_workers: int = 4, dtype: str = "float16",
                         device: str = "auto") -> Path:
    """Embed a robustness set with a checkpoint into ``out_root/<dataset name>`` (the layout of
    :mod:`mrl.embeddings`; labels in the checkpoint's classes; ``meta.json`` records
    ``robustness_set`` so the evaluator restricts ImageNet-A/-R logits to their 200 classes)."""
    import torch
    from torch.utils.data import DataLoader

    from mrl.checkpoint import load_model
    from mrl.embeddings import embed_split

    module, _ = load_model(ckpt_path)
    data = RobustnessSet(root, dataset_name, module.class_names,
                         image_size=module.hparams.backbone.get("image_size") or 224)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    meta = {"checkpoint": str(Path(ckpt_path).expanduser().resolve()), "robustness_set": data.name,
            "folder_class_names": data.folder_class_names}
    return embed_split(module, loader, out_root, data.name, dtype, device, meta=meta)


def robustness_sweep(split: Any, head: Any, dims: Any = "nesting", ks: Sequence[int] = (1, 5),
                     dataset_name: str | None = None) -> list[dict[str, Any]]:
    """Linear top-1/top-5 (percent) of an embedded robustness set at each size, with the ImageNet-A/-R
    class mask. ``dataset_name`` defaults to the split's ``meta.json`` ``robustness_set``."""
    from mrl.embeddings import EmbeddingSplit
    from mrl.evaluation.classification import classification_sweep
    from mrl.embeddings import load_split

    split = split if isinstance(split, EmbeddingSplit) else load_split(split)
    name = normalize_name(dataset_name or split.meta.get("robustness_set") or "")
    class_names = split.meta.get("class_names")
    subset = shipped_wnids(name)
    mask = robustness_class_mask(name, class_names, subset)[0] if subset is not None else None
    rows = classification_sweep(None, split, head, dims, knn=False, ks=ks, class_mask=mask)
    return [{"dataset": name, **row} for row in rows]
