"""Embedding files: exact contents, atomic writes, and clear errors for inconsistent folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mrl.embeddings import embed_checkpoint, embed_split, load_split
from mrl.errors import ConfigError
from mrl.lightning import MatryoshkaModule
from mrl.app.train import train


def _module(head="mrl"):
    torch.manual_seed(0)
    return MatryoshkaModule(backbone={"name": "mlp", "in_chans": 1, "image_size": 4, "width": 32},
                            num_classes=3000, head=head, class_names=[f"c{i}" for i in range(3000)])


def _loader(n=37, batch=8):
    x = torch.randn(n, 1, 4, 4)
    y = torch.arange(n, dtype=torch.int64) + 2900  # labels above 2048: float16 would round them
    return DataLoader(TensorDataset(x, y), batch_size=batch)


@pytest.mark.parametrize("head", ["mrl", "mrle"])
def test_written_arrays_equal_the_model_outputs(tmp_path, head):
    module, loader = _module(head).eval(), _loader()
    path = embed_split(module, loader, tmp_path, "test", dtype="float32")
    split = load_split(path)
    x, y = loader.dataset.tensors
    with torch.no_grad():
        z = module.embed(x)
        logits = module.task.head(z)
    np.testing.assert_allclose(split.embeddings, z.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(split.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    assert split.labels.dtype == np.int64 and split.labels.tolist() == y.tolist()
    assert split.meta["nesting_dims"] == [8, 16, 32] and split.meta["num_samples"] == 37
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test"]


def test_float16_option_halves_the_size(tmp_path):
    split = load_split(embed_split(_module(), _loader(), tmp_path, "train", dtype="float16"))
    assert split.embeddings.dtype == np.float16 and split.logits.dtype == np.float16


def test_crash_mid_write_leaves_no_folder_and_keeps_the_old_one(tmp_path):
    module = _module()
    good = embed_split(module, _loader(), tmp_path, "test")
    before = load_split(good).embeddings.copy()

    class Exploding(DataLoader):
        def __iter__(self):
            yield next(iter(_loader()))
            raise RuntimeError("node pre-empted")

    with pytest.raises(RuntimeError, match="pre-empted"):
        embed_split(module, Exploding(_loader().dataset, batch_size=8), tmp_path, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test"]  # no temporary folder left
    np.testing.assert_array_equal(load_split(good).embeddings, before)


def test_inconsistent_folders_are_refused(tmp_path):
    path = embed_split(_module(), _loader(), tmp_path, "test")
    np.save(path / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(ConfigError, match="embeddings: .*37 embeddings, 5 labels"):
        load_split(path)
    np.save(path / "labels.npy", np.zeros(37, dtype=np.float16))
    with pytest.raises(ConfigError, match="not int64"):
        load_split(path)
    (path / "meta.json").unlink()
    with pytest.raises(ConfigError, match="not a complete embedding folder"):
        load_split(path)
    with pytest.raises(ConfigError, match="dtype"):
        embed_split(_module(), _loader(), tmp_path, "x", dtype="int8")


def test_embed_checkpoint_on_digits(make_cfg, tmp_path):
    out = train(make_cfg("logger=csv", "trainer.max_epochs=2"))
    from mrl.data import create_datamodule

    dm = create_datamodule("digits", image_size=16, seed=42)
    written = embed_checkpoint(out["best_model_path"], dm, tmp_path / "emb", splits=("train", "test"))
    train_split, test_split = load_split(written["train"]), load_split(written["test"])
    assert train_split.embeddings.shape == (1257, 256) and test_split.embeddings.shape == (270, 256)
    accuracy = 100 * (test_split.logits[-1].argmax(-1) == test_split.labels).mean()
    assert accuracy == pytest.approx(out["test"]["top1@256"], abs=0.4)  # float16 logits may flip one tie
    assert json.loads((written["test"] / "meta.json").read_text())["checkpoint"].endswith(".ckpt")
    other = create_datamodule("digits", image_size=8, seed=42)
    with pytest.raises(ConfigError, match="data.image_size: is 8 but the checkpoint was trained with 16"):
        embed_checkpoint(out["best_model_path"], other, tmp_path / "bad")
    reshuffled = create_datamodule("digits", image_size=16, seed=0)  # test images would land in "train"
    with pytest.raises(ConfigError, match="data.seed: is 0 but the checkpoint was trained with 42"):
        embed_checkpoint(out["best_model_path"], reshuffled, tmp_path / "bad")
