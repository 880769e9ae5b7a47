"""DataModules and ImageFolder handling on real and hand-made data."""

from __future__ import annotations

import tarfile

import pytest
import torch
from PIL import Image

from conftest import CIFAR10_TAR, PROJECT_ROOT, write_image_folder
from mrl.data import create_datamodule, extract_archive, scan_image_folder
from mrl.errors import ConfigError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_digits_split_is_stratified_disjoint_and_complete():
    dm = create_datamodule("digits", image_size=16, batch_size=32)
    dm.setup("fit")
    sets = [dm.train_set, dm.val_set, dm.test_set]
    assert [len(s) for s in sets] == [1257, 270, 270]
    x, y = dm.train_set.tensors
    assert x.shape[1:] == (1, 16, 16) and dm.in_chans == 1 and dm.class_names == [str(i) for i in range(10)]
    tensors = [torch.stack([s[i][0] for i in range(len(s))]) for s in sets]
    labels = [torch.tensor([int(s[i][1]) for i in range(len(s))]) for s in sets]
    for y in labels:  # every class in every split, in proportion
        counts = torch.bincount(y, minlength=10)
        assert counts.min() >= 0.08 * len(y) and counts.max() <= 0.12 * len(y)
    flat = [t.flatten(1) for t in tensors]
    assert torch.cdist(flat[0], flat[2]).min() > 0 and torch.cdist(flat[1], flat[2]).min() > 0  # test is unseen
    assert torch.cdist(flat[0], flat[1]).min() > 0  # validation is not trained on


def test_scan_sorts_classes_and_ignores_hidden_files(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("zebra", "ant", "mole"), per_class=2, splits=("train",))
    (root / "train" / "ant" / ".DS_Store").write_text("x")
    (root / "train" / ".cache").mkdir()
    classes, samples = scan_image_folder(root / "train")
    assert classes == ["ant", "mole", "zebra"]
    assert [(p.split("/")[-2], y) for p, y in samples] == [("ant", 0), ("ant", 0), ("mole", 1), ("mole", 1),
                                                           ("zebra", 2), ("zebra", 2)]


def test_image_folder_module_shares_class_indices_across_splits(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("b", "a", "c"), per_class=3, size=50)
    dm = create_datamodule("image_folder", root=str(root), image_size=32, batch_size=4, validation="test")
    dm.setup("fit")
    assert dm.class_names == ["a", "b", "c"] and dm.num_classes == 3
    for ds in (dm.train_set, dm.test_set):
        for path, y in ds.samples:
            assert dm.class_names[y] == path.split("/")[-2]
    batch = next(iter(dm.val_dataloader()))  # batches are dicts: what every encoder and task reads
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64


def test_val_fraction_holds_out_part_of_train(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=10, size=40)
    dm = create_datamodule("image_folder", root=str(root), image_size=32, val_fraction=0.2)
    dm.setup("fit")
    held_out = dm.val_set.dataset  # the hold-out (a Subset of train), read in a shuffled order
    fit, val = set(dm.train_set.indices), set(held_out.indices)
    assert len(val) == 6 and not fit & val and len(fit | val) == 30
    assert sorted(dm.val_set.indices) == list(range(6))
    assert dm.test_set is not dm.val_set


def test_imagenet_transforms(tmp_path):
    root = write_image_folder(tmp_path / "imnet", per_class=1, size=300)
    dm = create_datamodule("imagenet", root=str(root), batch_size=2)  # validation: none, the paper's protocol
    dm.setup("fit")
    assert dm.train_set[0][0].shape == dm.test_set[0][0].shape == (3, 224, 224) and dm.val_set is None
    resize = dm.eval_transform().transforms[0]
    assert resize.size == 256


def _tar_folder(root, archive):
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="mydata")
    return archive


def test_archive_is_extracted_once_atomically(tmp_path):
    archive = _tar_folder(write_image_folder(tmp_path / "src"), tmp_path / "mydata.tar.gz")
    cache = tmp_path / "cache"
    first = extract_archive(archive, cache)
    marker = first / "mydata" / "train" / "cat" / "0.png"
    mtime = marker.stat().st_mtime_ns
    assert extract_archive(archive, cache) == first and marker.stat().st_mtime_ns == mtime
    # no temporary folder left behind (the lock file stays: removing it could let two processes hold a lock)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [first.name]
    dm = create_datamodule("image_folder", root=str(archive), cache_dir=str(cache), image_size=32, validation="none")
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "emu"] and len(dm.train_set) == 12


def test_ranks_sharing_a_cache_extract_an_archive_once(tmp_path):
    """The DDP ranks of a node start together: one extracts, the others wait for it and reuse its folder."""
    import subprocess
    import sys

    archive = _tar_folder(write_image_folder(tmp_path / "src", per_class=40), tmp_path / "mydata.tar.gz")
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from mrl.data import extract_archive; "
            "print('->', extract_archive(sys.argv[1], sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(archive), str(tmp_path / "cache"), str(PROJECT_ROOT)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(line.startswith("extracting ") for out in outputs for line in out.splitlines()) == 1
    assert len({out.split("-> ")[1].strip() for out in outputs}) == 1


def test_corrupt_archive_leaves_nothing(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ConfigError, match="data.root: cannot extract"):
        extract_archive(archive, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_cifar10_from_shared_tar(cifar10_cache):
    dm = create_datamodule("cifar10", root=str(CIFAR10_TAR), cache_dir=cifar10_cache, verify_images=False,
                           batch_size=16)
    dm.setup("fit")
    assert dm.class_names == CIFAR10_CLASSES  # torchvision's order too
    # 5,000 training images validate (500 per class); the 10,000 test images are only tested
    assert len(dm.train_set) == 45_000 and len(dm.val_set) == 5_000 and len(dm.test_set) == 10_000
    assert len(dm.train_eval_set) == 50_000
    assert torch.bincount(torch.tensor(dm.test_set.targets)).tolist() == [1000] * 10
    held_out = dm.val_set.dataset
    assert torch.bincount(torch.tensor([held_out.dataset.targets[i] for i in held_out.indices])).tolist() == [500] * 10
    assert next(iter(dm.train_dataloader()))["image"].shape == (16, 3, 32, 32)
    image = Image.open(dm.test_set.samples[0][0])
    assert image.size == (32, 32)


def test_cifar10_from_torchvision_folder(tmp_path, monkeypatch):
    # torchvision's own layout (what data.download=true fetches), with a few fake rows per batch file.
    import pickle

    import numpy as np
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_CLASSES}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    dm = create_datamodule("cifar10", root=str(tmp_path), download=False, batch_size=10, val_fraction=0.2)
    dm.setup("fit")
    assert dm.class_names == CIFAR10_CLASSES
    assert len(dm.train_set) == 80 and len(dm.val_set) == 20 and len(dm.test_set) == 20
    assert len(dm.train_eval_set) == 100
    batch = next(iter(dm.split_dataloader("train")))
    assert batch["image"].shape == (10, 3, 32, 32) and batch["label"].tolist() == list(range(10))
