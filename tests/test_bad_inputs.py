"""Every bad input stops before training with one line that names the field and the fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT, write_image_folder
from mrl.errors import ConfigError
from mrl.app.train import train

CSV = "logger=csv"


def _fails(cfg, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("dims,fragment", [
    ("[16,8,32]", "strictly increasing"),
    ("[8,8,16]", "duplicate"),
    ("[0,8,16]", "positive"),
    ("[-8,16]", "positive"),
    ("[8,16,512]", "larger than the backbone's embedding width 256"),
])
def test_bad_nesting_dims(make_cfg, tmp_path, dims, fragment):
    _fails(make_cfg(CSV, f"model.nesting_dims={dims}"), "model.nesting_dims", fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


@pytest.mark.parametrize("weights,fragment", [("[1,1]", "has 2 values but nesting_dims has 6"),
                                              ("[1,1,1,1,1,-1]", ">= 0"), ("[0,0,0,0,0,0]", "all weights are zero")])
def test_bad_loss_weights(make_cfg, weights, fragment):
    _fails(make_cfg(CSV, f"model.loss_weights={weights}"), "model.loss_weights", fragment)


def test_unknown_backbone_and_head(make_cfg):
    _fails(make_cfg(CSV, "model.backbone.name=resnet_9000"), "model.backbone.name", "unknown backbone 'resnet_9000'")
    _fails(make_cfg(CSV, "model.head=slimmable", out="h"), "model.head", "unknown head type", "mrle")


def test_unknown_data_set(make_cfg):
    _fails(make_cfg(CSV, "data.name=svhn"), "data.name", "unknown data set")


def _folder_cfg(make_cfg, root, *extra):
    # 4 images per class: half of train validates, so every class is on both sides of the hold-out
    return make_cfg(CSV, "data=image_folder", "model=digits_cnn", f"data.root={root}", "data.image_size=32",
                    "data.num_workers=0", "trainer.max_epochs=1", "data.val_fraction=0.5", *extra)


def test_data_root_missing_empty_or_with_empty_class(make_cfg, tmp_path):
    _fails(_folder_cfg(make_cfg, tmp_path / "nowhere"), "data.root", "does not exist")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    _fails(_folder_cfg(make_cfg, tmp_path / "empty"), "data.root", "has no class folders")
    root = write_image_folder(tmp_path / "hollow")
    (root / "train" / "zebra").mkdir()
    (root / "val" / "zebra").mkdir()
    _fails(_folder_cfg(make_cfg, root), "data.root", "['zebra']", "have no images")
    _fails(make_cfg(CSV, "data=image_folder"), "data.root", "is not set")
    _fails(make_cfg(CSV, "+experiment=imagenet_resnet50", "trainer=cpu", "data.root=null"), "data.root", "IMAGENET_DIR")


def test_train_and_val_class_sets_differ(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "mismatch", splits=("train",))
    write_image_folder(root, classes=("cat", "dog", "fox"), splits=("val",))
    _fails(_folder_cfg(make_cfg, root), "data.root", "different class folders", "only in train/: ['emu']",
           "only in val/: ['fox']")


def _add_bad_files(root):
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "train" / "dog" / "notes.txt").write_text("a stray file")


def test_corrupt_files_fail_clearly_with_bad_images_error(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "corrupt")
    _add_bad_files(root)
    _fails(_folder_cfg(make_cfg, root, "data.bad_images=error"), "data.root", "2 corrupt or non-image file(s)",
           "data.bad_images=skip")


def test_corrupt_files_are_skipped_with_a_warning(make_cfg, tmp_path):
    root = write_image_folder(tmp_path / "corrupt")
    _add_bad_files(root)
    with pytest.warns(UserWarning, match="skipping 2 corrupt or non-image"):
        out = train(_folder_cfg(make_cfg, root, "data.bad_images=skip"))
    assert out["test"]["num_samples"] == 12  # the 4 good images of each of 3 val classes, all scored
    assert sorted(int(k.split("@")[1]) for k in out["test"] if k.startswith("top1@")) == [8, 16, 32, 64, 128]


def test_corrupt_file_met_mid_epoch_is_substituted(make_cfg, tmp_path):
    # Verification off (as for ImageNet): the loader meets the bad file and must not crash.
    root = write_image_folder(tmp_path / "corrupt")
    (root / "train" / "cat" / "0.png").write_bytes(b"\x89PNG truncated")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        train(_folder_cfg(make_cfg, root, "data.verify_images=false", "data.batch_size=4"))


def test_resume_checkpoint_of_another_model(make_cfg, tmp_path):
    out = train(make_cfg(CSV, "trainer.max_epochs=1"))
    ckpt = out["best_model_path"]
    _fails(make_cfg(CSV, "model.head=mrle", f"ckpt_path={ckpt}", out="a"), "ckpt_path", "head=mrl",
           "model.head=mrl")
    _fails(make_cfg(CSV, "model.nesting_dims=[64,128,256]", f"ckpt_path={ckpt}", out="b"), "ckpt_path",
           "nesting_dims=[8, 16, 32, 64, 128, 256]")
    root = write_image_folder(tmp_path / "three", size=16)
    _fails(make_cfg(CSV, "data=image_folder", "model=digits_mlp", f"data.root={root}", "data.image_size=16",
                    "data.val_fraction=0.5", f"ckpt_path={ckpt}", out="c"), "ckpt_path", "num_classes=10")
    _fails(make_cfg(CSV, f"ckpt_path={tmp_path / 'missing.ckpt'}", out="d"), "ckpt_path", "does not exist")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    _fails(make_cfg(CSV, f"ckpt_path={foreign}", out="e"), "ckpt_path", "not an mrl checkpoint")


def test_pretrained_without_reachable_weights(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fails(make_cfg(CSV, "model=resnet18_cifar", "model.backbone.name=resnet18",
                    "model.backbone.pretrained=true"), "model.backbone.pretrained", "pretrained_path")
    _fails(make_cfg(CSV, "model=resnet18_cifar", "model.backbone.pretrained=true",
                    f"model.backbone.pretrained_path={tmp_path / 'none.pth'}", out="p"),
           "model.backbone.pretrained_path", "does not exist")


def test_script_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "scripts/train.py", "model.nesting_dims=[32,16]", "logger=csv",
                           f"paths.log_dir={tmp_path}"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: model.nesting_dims: must be strictly increasing, got [32, 16]; sort it: [16, 32]")


TREC_ROOT = f"data.root={PROJECT_ROOT.parent / 'shared' / 'data' / 'text' / 'trec'}"


@pytest.mark.parametrize("overrides,match", [
    # an image encoder on text data
    (["data=trec", TREC_ROOT, "data.tokenizer=hf/minilm", "data.max_length=64"],
     r"^model.backbone.name: is the image encoder 'mlp' but the data is text; choose a text encoder"),
    # the data tokenises for another token limit than the encoder's
    (["+experiment=trec_minilm", TREC_ROOT, "data.max_length=32"],
     r"^data.max_length: is 32 but model.backbone.max_length is 64"),
    # a text encoder on image data
    (["model.backbone.name=hf/minilm"], r"^data.name: 'digits' is image data but model.backbone.name is the text"),
    # a hub model that is not cached, with the hub offline: say so, and how to point at a local copy
    (["+experiment=trec_minilm", TREC_ROOT, "model.backbone.name=hf/nonexistent-org/xyz", "data.tokenizer=null"],
     r"^data.tokenizer: is not set"),
])
def test_text_encoder_and_data_mismatches_fail_before_training(make_cfg, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        train(make_cfg(*overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()
