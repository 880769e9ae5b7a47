"""WebDataset shards: the converter keeps every image once, byte for byte; the streams give every rank the same
number of batches, every sample once per epoch (equal shards), exact resume, and every evaluation sample once
over any number of ranks and workers; bad folders and settings fail before training."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import write_image_folder
from mrl.data.shards import EvalShardStream, TrainShardStream, convert_image_folder, read_meta
from mrl.errors import ConfigError
from mrl.app.train import train

CLASSES = ("a", "b", "c", "d")


def image_id(image) -> int:
    """The image's identity (a hash of its pixels) and a draw of the augmentation RNG, in one tensor."""
    digest = int.from_bytes(hashlib.sha1(image.tobytes()).digest()[:6], "big")
    return torch.tensor([float(digest), float(torch.rand(1))], dtype=torch.float64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """64 training images of 4 classes in 8 shards of 8; 16 test images in 2 shards."""
    root = tmp_path_factory.mktemp("shards")
    src = write_image_folder(root / "src", classes=CLASSES, per_class=16, size=12, splits=("train",))
    write_image_folder(root / "src", classes=CLASSES, per_class=4, size=12, splits=("test",), seed=1)
    convert_image_folder(src, root / "out", samples_per_shard=8)
    return root / "out"


def pixels_of_folder(folder: Path) -> Counter:
    from PIL import Image

    return Counter(int(image_id(Image.open(p).convert("RGB"))[0]) for p in folder.rglob("*.png"))


def test_converter_keeps_every_image_once_byte_for_byte(shards):
    src = shards.parent / "src"
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["splits"]["train"]["samples"] == [8] * 8 and meta["splits"]["test"]["num_samples"] == 16
    expected = {p.read_bytes(): CLASSES.index(p.parent.name) for p in (src / "train").rglob("*.png")}
    found = []
    for name in meta["splits"]["train"]["shards"]:  # read back with the standard library, not webdataset
        with tarfile.open(shards / "train" / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = sorted({name.split(".")[0] for name in members})
        assert len(keys) == 8
        found += [(members[f"{k}.img.png"], int(members[f"{k}.cls"])) for k in keys]
    assert len(found) == 64 and dict(found) == expected
    classes_of_first_shard = {label for _, label in found[:8]}
    assert len(classes_of_first_shard) > 1  # shuffled across shards, not one class per shard


def test_converter_refuses_an_existing_folder_and_leaves_nothing_when_it_fails(shards, tmp_path):
    with pytest.raises(ConfigError, match="--out"):
        convert_image_folder(shards.parent / "src", shards)
    no_eval = write_image_folder(tmp_path / "src", splits=("train",))
    with pytest.raises(ConfigError, match="no val/ or test/"):
        convert_image_folder(no_eval, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_holdout_split_is_stratified_and_taken_out_of_train(tmp_path):
    src = write_image_folder(tmp_path / "src", classes=CLASSES, per_class=10, size=8)
    meta = convert_image_folder(src, tmp_path / "out", samples_per_shard=5, holdout_fraction=0.2, seed=3)
    assert meta["splits"]["holdout"]["num_samples"] == 8 and meta["splits"]["train"]["num_samples"] == 32
    held = EvalShardStream(tmp_path / "out", "holdout", meta, lambda image: 0, rank_and_world=(0, 1))
    assert sorted(Counter(label for _, label in held).values()) == [2, 2, 2, 2]


def epoch_of(stream: TrainShardStream, workers: int, epoch: int = 0) -> list[torch.Tensor]:
    stream.set_epoch(epoch)
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers)
    return [x for x, _ in loader]


def test_every_rank_gets_equal_batches_and_each_sample_once_per_epoch(shards):
    meta = read_meta(shards)
    batches = {}
    ids = Counter()
    for rank in range(2):
        stream = TrainShardStream(shards, meta, image_id, batch_size=4, seed=5, rank_and_world=(rank, 2))
        stream.check_workers(2)
        out = epoch_of(stream, workers=2)
        batches[rank] = len(out)
        assert len(out) == len(DataLoader(stream, batch_size=4, num_workers=2)) == 8
        ids.update(int(v) for batch in out for v in batch[:, 0])
    assert batches == {0: 8, 1: 8}
    assert ids == pixels_of_folder(shards.parent / "src" / "train")  # all 64, each once


def test_order_and_augmentation_are_seeded_by_epoch_and_resume_exactly(shards):
    meta = read_meta(shards)

    def stream():
        return TrainShardStream(shards, meta, image_id, batch_size=4, seed=5, shuffle_buffer=6, rank_and_world=(1, 2))

    first = torch.cat(epoch_of(stream(), workers=2, epoch=3))
    assert torch.equal(first, torch.cat(epoch_of(stream(), workers=2, epoch=3)))  # same epoch, same pixels and draws
    assert not torch.equal(first, torch.cat(epoch_of(stream(), workers=2, epoch=4)))
    for done in (1, 2, 5):  # batches trained before the interruption
        resumed = stream()
        resumed.resume_at(3, samples_done=done * 4)
        rest = epoch_of_resumed(resumed, workers=2)
        assert torch.equal(torch.cat(rest), first[done * 4:])
        assert torch.equal(torch.cat(epoch_of(resumed, workers=2, epoch=4)),  # only the interrupted epoch skips
                           torch.cat(epoch_of(stream(), workers=2, epoch=4)))


def epoch_of_resumed(stream: TrainShardStream, workers: int) -> list[torch.Tensor]:
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers)
    return [x for x, _ in loader]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 1), (3, 2)])
def test_evaluation_reads_every_sample_once_on_any_number_of_ranks(shards, world, workers):
    meta = read_meta(shards)
    seen = Counter()
    total = 0
    for rank in range(world):
        stream = EvalShardStream(shards, "test", meta, image_id, rank_and_world=(rank, world))
        loader = DataLoader(stream, batch_size=3, num_workers=min(workers, len(stream.urls[rank::world])))
        rows = [v for x, _ in loader for v in x[:, 0]]
        assert len(rows) == len(stream)
        total += len(rows)
        seen.update(int(v) for v in rows)
    assert total == 16 and seen == pixels_of_folder(shards.parent / "src" / "test")


def test_too_few_shards_for_ranks_and_workers_is_refused(shards):
    stream = TrainShardStream(shards, read_meta(shards), image_id, batch_size=4, seed=0, rank_and_world=(0, 4))
    stream.check_workers(2)  # 4 x 2 = 8 shards: enough
    with pytest.raises(ConfigError, match=r"data.num_workers: 4 processes x 3 loader workers need 12 training shards"):
        stream.check_workers(3)


def test_bad_shard_folders_fail_with_one_line(shards, tmp_path):
    with pytest.raises(ConfigError, match="no meta.json"):
        read_meta(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((shards / "meta.json").read_text())
    with pytest.raises(ConfigError, match="lacks 8 of its shards"):
        read_meta(broken)


def test_training_on_shards_resumes_mid_epoch_to_the_same_weights(make_cfg, shards):
    """scripts/train.py's path on shards, two loader workers, random crops: interrupted and resumed inside an
    epoch, the run ends with the weights of an uninterrupted one."""
    args = ["logger=csv", "callbacks.progress_bar=none", "data=webdataset", f"data.root={shards}",
            "data.image_size=12", "data.transform=cifar", "data.batch_size=4", "data.num_workers=2",
            "data.shuffle_buffer=6", "model=digits_cnn", "model.backbone.channels=[4,8,8]", "trainer.max_epochs=2",
            "callbacks.checkpoint.every_n_train_steps=3", "callbacks.checkpoint.keep_step_checkpoints=-1",
            "test_checkpoint=last", "model.scheduler.name=none"]
    full = train(make_cfg(*args, out="full"))
    steps = {int(p.stem.split("step")[1]): p for p in Path(full["last_model_path"]).parent.glob("epoch001-step*.ckpt")}
    start = steps[21]  # 5 batches into the second epoch: an odd count, so the loader workers must swap streams
    resumed = train(make_cfg(*args, f"ckpt_path={start}", out="resumed"))
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-9)
    a = torch.load(full["last_model_path"], map_location="cpu", weights_only=False)
    b = torch.load(resumed["last_model_path"], map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 2 * 16
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6)


@pytest.mark.slow  # ~60 s; in CI: the rank split in process (above), DDP training in test_ddp and test_trust
def test_two_processes_train_on_shards_and_count_every_test_sample_once(make_cfg, shards):
    """DDP (2 CPU processes, gloo) on the shard streams: equal steps on both ranks, and the test accuracy
    counted over both ranks' shards covers the 16 test images exactly once."""
    out = train(make_cfg("logger=csv", "callbacks.progress_bar=none", "data=webdataset", f"data.root={shards}",
                         "data.image_size=12", "data.transform=cifar", "data.batch_size=4", "data.num_workers=1",
                         "model=digits_cnn", "model.backbone.channels=[4,8,8]", "trainer=ddp_sim",
                         "trainer.max_epochs=1", "test_checkpoint=last"))
    ckpt = torch.load(out["last_model_path"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 64 // (2 * 4)
    assert out["test"]["num_samples"] == 16


@pytest.fixture(scope="module")
def trained_on_shards(shards, tmp_path_factory) -> str:
    from conftest import compose

    out = train(compose(["logger=csv", "callbacks.progress_bar=none", "data=webdataset", f"data.root={shards}",
                         "data.image_size=12", "data.transform=cifar", "data.batch_size=8", "data.num_workers=0",
                         "model=digits_cnn", "model.backbone.channels=[4,8,8]", "trainer.max_epochs=1",
                         "test_checkpoint=last"], tmp_path_factory.mktemp("shard_run")))
    return out["last_model_path"]


# two processes: ~40 s, slow; in CI the gather across processes is tested on digits (test_trust)
@pytest.mark.parametrize("processes,workers", [(1, 2), pytest.param(2, 1, marks=pytest.mark.slow)])
def test_embedding_from_shards_puts_every_sample_in_its_place(shards, trained_on_shards, tmp_path, processes,
                                                              workers):
    """scripts/embed.py's path on streamed shards: with loader workers and ranks reading in no fixed order, every
    row lands at its sample's index, once, equal to the model run sample by sample in the converter's order."""
    import numpy as np

    from mrl.data import create_datamodule
    from mrl.data.datamodules import TRANSFORMS
    from mrl.embeddings import embed_checkpoint, load_split
    from mrl.lightning import MatryoshkaModule

    def data():
        return create_datamodule("webdataset", root=str(shards), image_size=12, transform="cifar", batch_size=4,
                                 num_workers=workers, seed=42)

    trainer = {"accelerator": "cpu", "devices": processes, **({"strategy": "ddp_spawn"} if processes > 1 else {})}
    written = embed_checkpoint(trained_on_shards, data(), tmp_path / "emb", dtype="float32", trainer=trainer)
    module = MatryoshkaModule.load_from_checkpoint(trained_on_shards, map_location="cpu").eval()
    meta = read_meta(shards)
    _, eval_transform = TRANSFORMS["cifar"](12)
    for split, n in (("train", 64), ("test", 16)):
        got = load_split(written[split])
        assert got.embeddings.shape == (n, module.width) and got.meta["num_samples"] == n
        # the reference: one process, no workers, shard after shard; the converter numbered samples in this order
        stream = EvalShardStream(shards, split, meta, eval_transform, rank_and_world=(0, 1), with_index=True)
        images, labels, indices = zip(*stream)
        assert list(indices) == list(range(n))
        with torch.no_grad():
            expected = module.embed(torch.stack(images)).numpy()
            logits = module(torch.stack(images)).numpy()
        np.testing.assert_allclose(got.embeddings, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.logits, logits, rtol=1e-5, atol=1e-5)
        assert got.labels.tolist() == list(labels)


def test_shards_with_foreign_keys_are_refused_when_embedding(shards, tmp_path):
    import shutil

    import webdataset as wds

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    first = sorted((copy / "test").glob("*.tar"))[0]
    samples = list(wds.tarfile_to_samples()(iter([{"url": str(first)}])))
    with wds.TarWriter(str(first)) as sink:
        for i, sample in enumerate(samples):
            sink.write({k: v for k, v in sample.items() if not k.startswith("__")} | {"__key__": f"img_a{i}"})
    from mrl.data.datamodules import TRANSFORMS

    stream = EvalShardStream(copy, "test", read_meta(copy), TRANSFORMS["cifar"](12)[1], rank_and_world=(0, 1),
                             with_index=True)
    with pytest.raises(ConfigError, match="^data.root: a sample of split 'test' has the key 'img_a0', not its "
                                          "position 0..15"):
        next(iter(stream))
