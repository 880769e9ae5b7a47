"""The training app end to end: presets compose and run, digits trains to a real accuracy, checkpoints
reload to the same numbers, DDP on CPU."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import CIFAR10_TAR, EXPERIMENTS, write_image_folder
from mrl.lightning import MatryoshkaModule
from mrl.app.train import train

FAST = ["trainer.fast_dev_run=true", "logger=csv"]
# ImageNet presets run on the CPU in tests: one process, full precision.
ON_CPU = ["trainer=cpu", "data.num_workers=0", "data.batch_size=2", "data.eval_batch_size=2"]


def test_every_preset_composes(make_cfg):
    assert {"digits_mlp", "digits_cnn", "cifar10_resnet18", "imagenet_resnet50", "imagenet_resnet50_mrle",
            "imagenet_resnet50_ff", "imagenet_vitb16"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        cfg = make_cfg(f"+experiment={name}", out=name)
        assert cfg.experiment_name == name
        assert cfg.model.head in ("mrl", "mrle", "ff")


def test_imagenet_presets_follow_the_paper(make_cfg):
    cfg = make_cfg("+experiment=imagenet_resnet50")
    assert cfg.model.backbone.name == "torchvision/resnet50"
    assert cfg.trainer.max_epochs == 40 and cfg.model.label_smoothing == 0.1
    assert cfg.model.optimizer.name == "sgd" and cfg.model.scheduler.name == "linear_warmup_decay"
    # 2 GPUs x 512 images: the paper's LR 0.425
    assert cfg.model.optimizer.lr * 2 * cfg.data.batch_size / cfg.model.optimizer.lr_reference_batch == 0.425
    assert make_cfg("+experiment=imagenet_resnet50_mrle", out="e").model.head == "mrle"
    ff = make_cfg("+experiment=imagenet_resnet50_ff", "model.ff_dim=64", out="f")
    assert ff.model.head == "ff" and list(ff.model.nesting_dims) == [64]


@pytest.mark.parametrize("name,width", [("digits_mlp", 256), ("digits_cnn", 128)])
def test_digits_presets_fast_dev_run(make_cfg, name, width):
    out = train(make_cfg(f"+experiment={name}", *FAST))
    assert out["test"]["num_samples"] == 64  # fast_dev_run scores one test batch
    dims = [m for m in (8, 16, 32, 64, 128, 256) if m <= width]
    assert sorted(int(k.split("@")[1]) for k in out["test"] if k.startswith("top1@")) == dims


def on_shared_cifar10(cache: str) -> list[str]:
    """The shared CIFAR-10 archive (extracted once per session into ``cache``), small batches, no workers."""
    return [f"data.root={CIFAR10_TAR}", f"data.cache_dir={cache}", "data.verify_images=false", "data.num_workers=0",
            "data.batch_size=8"]


def test_cifar10_preset_fast_dev_run_on_shared_tar(make_cfg, cifar10_cache):
    out = train(make_cfg("+experiment=cifar10_resnet18", *FAST, *on_shared_cifar10(cifar10_cache)))
    assert set(out["test"]) >= {f"top1@{m}" for m in (8, 16, 32, 64, 128, 256, 512)}


def test_cifar10_vit_preset_trains_on_the_shared_tar(make_cfg, cifar10_cache):
    """The CPU-scale ViT (results/cifar10_vit): timm's ViT cut to 6 blocks with 8x8 patches on 32x32 images."""
    out = train(make_cfg("+experiment=cifar10_vit", *FAST, *on_shared_cifar10(cifar10_cache)))
    assert {f"top1@{m}" for m in (12, 24, 48, 96, 192)} == {k for k in out["test"] if k.startswith("top1@")}


@pytest.mark.parametrize("name,extra", [("imagenet_resnet50", []), ("imagenet_resnet50_mrle", []),
                                        ("imagenet_resnet50_ff", ["model.ff_dim=64"]), ("imagenet_vitb16", [])])
def test_imagenet_presets_fast_dev_run_on_tiny_folder(make_cfg, tmp_path, name, extra):
    root = write_image_folder(tmp_path / "imagenet", per_class=2, size=64)
    out = train(make_cfg(f"+experiment={name}", *FAST, *ON_CPU, *extra, f"data.root={root}"))
    dims = [64] if "ff" in name else ([12, 24, 48, 96, 192, 384, 768] if "vit" in name else
                                      [8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    assert {f"top1@{m}" for m in dims} == {k for k in out["test"] if k.startswith("top1@")}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_digits_trains_to_90_percent_and_checkpoint_reevaluates(make_cfg, tmp_path):
    out = train(make_cfg("logger=csv", "trainer.max_epochs=15"))
    dims = [8, 16, 32, 64, 128, 256]
    assert out["test"]["top1@256"] >= 90.0
    rows = _read_csv(tmp_path / "run" / "metrics_by_dim.csv")
    assert [int(r["dim"]) for r in rows] == dims
    assert [float(r["top1"]) for r in rows] == pytest.approx([out["test"][f"top1@{m}"] for m in dims])
    report = json.loads((tmp_path / "run" / "metrics_by_dim.json").read_text())
    assert report["head"] == "mrl" and report["nesting_dims"] == dims and report["num_samples"] == 270
    assert (tmp_path / "run" / "metrics_by_dim.png").stat().st_size > 1000
    assert "| 256 |" in (tmp_path / "run" / "metrics_by_dim.md").read_text()

    best = out["best_model_path"]
    again = train(make_cfg("logger=csv", "train=false", f"ckpt_path={best}", out="reeval"))
    assert again["test"] == pytest.approx(out["test"])

    # The plain Python API reloads it too, with the class names stored in the checkpoint.
    module = MatryoshkaModule.load_from_checkpoint(best, map_location="cpu")
    assert module.class_names == [str(i) for i in range(10)] and module.nesting_dims == dims
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["mrl"]["class_names"] == module.class_names and ckpt["mrl"]["head"] == "mrl"


@pytest.mark.parametrize("head", ["mrl", "ff"])
def test_load_model_round_trips_a_trained_checkpoint(make_cfg, tmp_path, head):
    """``mrl.load_model`` and ``mrl.checkpoint.load_head`` give back what was trained: the same logits as
    Lightning's own ``load_from_checkpoint`` (an independent loader), the head alone equal to the model's head,
    and the Matryoshka metadata."""
    import mrl
    from mrl.checkpoint import load_head

    extra = ["model.head=ff", "model.nesting_dims=[32]"] if head == "ff" else []
    train(make_cfg("logger=csv", "trainer.max_epochs=1", *extra))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module, meta = mrl.load_model(last)
    reference = MatryoshkaModule.load_from_checkpoint(last, map_location="cpu").eval()
    assert not module.training and meta["head"] == head and meta["num_classes"] == 10
    assert meta["nesting_dims"] == module.nesting_dims and meta["class_names"] == reference.class_names
    shape = reference.hparams.backbone
    x = torch.randn(5, shape["in_chans"], shape["image_size"], shape["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(x), rtol=0, atol=0)
        head_only = load_head(last)
        torch.testing.assert_close(head_only.head(reference.embed(x)), reference(x), rtol=0, atol=0)
    assert head_only.head_type == head and head_only.nesting_dims == meta["nesting_dims"]
    with pytest.raises(mrl.ConfigError, match="^head: .* checkpoint of another head type"):
        mrl.load_model(last, expected_head="mrle")


def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path):
    train(make_cfg("logger=csv", "trainer.max_epochs=2"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 1
    train(make_cfg("logger=csv", "trainer.max_epochs=3", f"ckpt_path={last}", out="resumed"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    # one more epoch on top of the two restored, not three from scratch
    assert resumed["epoch"] == 2 and resumed["global_step"] == first["global_step"] * 3 // 2


@pytest.mark.parametrize("overrides,dims", [(["model.head=mrle"], [8, 16, 32, 64, 128, 256]),
                                            (["model.head=ff", "model.nesting_dims=[32]"], [32])])
def test_mrle_and_ff_train_on_digits(make_cfg, overrides, dims):
    out = train(make_cfg("logger=csv", "trainer.max_epochs=5", *overrides))
    assert sorted(int(k.split("@")[1]) for k in out["test"] if k.startswith("top1@")) == dims
    assert out["test"][f"top1@{dims[-1]}"] >= 85.0


def test_wandb_offline_run_logs_table(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(make_cfg("trainer.max_epochs=1"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_ddp_on_cpu_reduces_metrics_over_both_processes(make_cfg, tmp_path):
    out = train(make_cfg("logger=csv", "trainer=ddp_sim", "trainer.max_epochs=2"))
    report = json.loads((tmp_path / "run" / "metrics_by_dim.json").read_text())
    assert report["num_samples"] == 270  # both halves of the test split counted
    assert out["test"]["top1@256"] == pytest.approx(report["rows"][-1]["top1"])


def test_mixed_precision_and_channels_last_through_config(make_cfg):
    out = train(make_cfg("+experiment=digits_cnn", *FAST, "trainer.precision=bf16-mixed", "model.channels_last=true"))
    assert set(out["test"]) >= {f"top1@{m}" for m in (8, 16, 32, 64, 128)}


def test_last_checkpoint_can_be_the_one_tested(make_cfg, tmp_path):
    out = train(make_cfg("logger=csv", "trainer.max_epochs=2", "test_checkpoint=last"))
    assert out["last_model_path"].endswith("last.ckpt")
    from mrl.errors import ConfigError
    with pytest.raises(ConfigError, match="test_checkpoint: must be best or last"):
        train(make_cfg("logger=csv", "test_checkpoint=worst", out="bad"))


def test_ff_sweep_as_a_hydra_multirun(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "scripts/train.py", "-m", "model.head=ff", "model.nesting_dims=[8],[32]",
                           "trainer.max_epochs=1", "logger=csv", "callbacks.progress_bar=none",
                           f"hydra.sweep.dir={tmp_path}"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job, dim in (("model.head=ff,model.nesting_dims=_8_,trainer.max_epochs=1", 8),
                     ("model.head=ff,model.nesting_dims=_32_,trainer.max_epochs=1", 32)):
        rows = _read_csv(tmp_path / job / "metrics_by_dim.csv")
        assert [int(r["dim"]) for r in rows] == [dim]


def test_compile_keeps_the_eager_function_and_checkpoint_keys():
    """model.compile=true compiles the network in place: same logits and gradients as the eager module, and
    state-dict keys without torch.compile's `_orig_mod.` prefix, so checkpoints load in either mode."""
    from mrl.errors import ConfigError

    kwargs = dict(backbone={"name": "mlp", "in_chans": 1, "image_size": 4, "hidden_dim": 8}, num_classes=3,
                  nesting_dims=[2, 4, 8])
    torch.manual_seed(0)
    eager = MatryoshkaModule(**kwargs)
    torch.manual_seed(0)
    compiled = MatryoshkaModule(**kwargs, compile={"backend": "eager"})  # dynamo capture without a C++ toolchain
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(compiled(x), eager(x))
    compiled(x).sum().backward(), eager(x).sum().backward()
    for (name, a), (_, b) in zip(compiled.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    with pytest.raises(ConfigError, match="model.compile"):
        MatryoshkaModule(**kwargs, compile={"modes": "max-autotune"})
