"""mrl.app.config_checks: every unusable setting stops ``train`` before any data is read or file written,
with one line naming the field and the fix; every preset's defaults pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import mrl.app.config_checks as config_checks
from conftest import EXPERIMENTS, PROJECT_ROOT, compose
from mrl.app.config_checks import OUTPUT_DIR_FIX, HydraLaunchCheck, check_train_config, lightning_precisions
from mrl.errors import ConfigError
from mrl.app.train import train


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    """The same answers on a GPU machine: CUDA is absent for these tests."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _refused(cfg, field: str, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.field == field, message
    assert message.startswith(f"{field}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


MAX_EPOCHS_FIX = "set trainer.max_epochs to a number of epochs, or -1 for no limit"
DEVICES_FIX = "set trainer.devices=1 (or a larger count, -1 for all devices, auto, or a list of indices such as [0,1])"
SEED_FIX = "set seed to an integer such as 42"
GPU_FIX = "use trainer=cpu (or trainer.accelerator=cpu)"
LR_FIX = "set model.optimizer.lr to a positive learning rate such as 0.001"
VAL_FIX = "set data.val_fraction in (0, 1), e.g. 0.1, or data.validation=none for no validation"
TEST_FRACTION_FIX = "set data.test_fraction in (0, 1), e.g. 0.15"
SMOOTHING_FIX = "set model.label_smoothing in [0, 1), e.g. 0.1 or 0"


def _limit_fix(field: str) -> str:
    return f"set {field} to a fraction in [0, 1] or a whole number of batches"


# (overrides, field, problem fragment, fix)
REFUSED = [
    # trainer.max_epochs
    (["trainer.max_epochs=-2"], "trainer.max_epochs", "must be an integer (or null) >= -1, got -2", MAX_EPOCHS_FIX),
    (["trainer.max_epochs=abc"], "trainer.max_epochs", "got 'abc'", MAX_EPOCHS_FIX),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs", "got 1.5", MAX_EPOCHS_FIX),
    (["trainer.max_epochs=0"], "trainer.max_epochs", "is 0 while train=true, so nothing would be trained",
     "set trainer.max_epochs >= 1, or train=false to only test ckpt_path"),
    # trainer.devices
    (["trainer.devices=0"], "trainer.devices", "is 0, so no device would run", DEVICES_FIX),
    (["trainer.devices=-2"], "trainer.devices", "got -2", DEVICES_FIX),
    (["trainer.devices=[]"], "trainer.devices", "is an empty list", DEVICES_FIX),
    (["trainer.devices=[0,-1]"], "trainer.devices", "got -1", DEVICES_FIX),
    (["trainer.devices=[0,0]"], "trainer.devices", "lists a device twice", "list each device index once"),
    (["trainer.devices=many"], "trainer.devices", "unknown value 'many'", DEVICES_FIX),
    (["trainer.devices=true"], "trainer.devices", "unknown value true", DEVICES_FIX),
    # trainer.precision: what the installed Lightning accepts
    (["trainer.precision=bogus"], "trainer.precision", "unknown precision 'bogus'", "bf16-mixed"),
    (["trainer.precision=8"], "trainer.precision", "unknown precision 8", "32-true"),
    (["trainer.precision=16.0"], "trainer.precision", "unknown precision 16.0", "16-mixed"),
    # seed
    (["seed=true"], "seed", "must be an integer in [0, 4294967295], got true", SEED_FIX),
    (["seed=1.5"], "seed", "got 1.5", SEED_FIX),
    (["seed=abc"], "seed", "got 'abc'", SEED_FIX),
    (["seed=-1"], "seed", "got -1", SEED_FIX),
    (["seed=null"], "seed", "got null", SEED_FIX),
    # a GPU that is not there
    (["trainer=gpu"], "trainer.accelerator", "is 'gpu'", GPU_FIX),
    (["trainer=ddp"], "trainer.accelerator", "torch.cuda.is_available() is False", GPU_FIX),
    (["trainer.accelerator=cuda"], "trainer.accelerator", "is 'cuda'", GPU_FIX),
    (["+experiment=imagenet_resnet50"], "trainer.accelerator", "is 'gpu'", GPU_FIX),
    (["++device=cuda"], "device", "is 'cuda'", "set device=cpu (or auto)"),
    (["trainer.accelerator=quantum"], "trainer.accelerator", "unknown accelerator 'quantum'", "trainer=cpu"),
    (["++trainer.strategy=warp"], "trainer.strategy", "unknown strategy 'warp'", "ddp_spawn"),
    # optimizer
    (["model.optimizer.lr=nan"], "model.optimizer.lr", "must be a number > 0, got nan", LR_FIX),
    (["model.optimizer.lr=inf"], "model.optimizer.lr", "got inf", LR_FIX),
    (["model.optimizer.lr=0"], "model.optimizer.lr", "got 0", LR_FIX),
    (["model.optimizer.lr=-0.1"], "model.optimizer.lr", "got -0.1", LR_FIX),
    (["model.optimizer.lr=abc"], "model.optimizer.lr", "got 'abc'", LR_FIX),
    (["model.optimizer.weight_decay=-0.0001"], "model.optimizer.weight_decay", "must be a number >= 0",
     "set model.optimizer.weight_decay >= 0 (0 turns it off)"),
    (["model=resnet18_cifar", "model.optimizer.momentum=-0.9"], "model.optimizer.momentum", "got -0.9",
     "set model.optimizer.momentum >= 0, e.g. 0.9"),
    (["model.scheduler.warmup_epochs=-1"], "model.scheduler.warmup_epochs", "got -1",
     "set model.scheduler.warmup_epochs >= 0 (0: no warm-up)"),
    # data fractions and validation
    (["data.val_fraction=0"], "data.val_fraction", "must be a number in (0, 1), got 0", VAL_FIX),
    (["data.val_fraction=1.0"], "data.val_fraction", "got 1.0", VAL_FIX),
    (["data.val_fraction=-0.1"], "data.val_fraction", "got -0.1", VAL_FIX),
    (["data.val_fraction=abc"], "data.val_fraction", "got 'abc'", VAL_FIX),
    (["data=cifar10", "data.val_fraction=1.5"], "data.val_fraction", "got 1.5", VAL_FIX),
    (["data.test_fraction=0"], "data.test_fraction", "must be a number in (0, 1), got 0", TEST_FRACTION_FIX),
    (["data.test_fraction=1"], "data.test_fraction", "got 1", TEST_FRACTION_FIX),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], "data.val_fraction",
     "plus data.test_fraction is 1, leaving nothing to train on", "keep their sum below 1, e.g. 0.15 and 0.15"),
    (["data.validation=train"], "data.validation", "must be holdout, none or test, got 'train'",
     "choose holdout (part of train), none, or test (opt-in: validates on the test split)"),
    # data sizes and loaders
    (["data.image_size=0"], "data.image_size", "must be an integer (or null) >= 1, got 0",
     "set data.image_size to a positive number of pixels such as 32"),
    (["data.image_size=-3"], "data.image_size", "got -3", "set data.image_size to a positive number of pixels"),
    (["data.image_size=null"], "data.image_size", "is null, but only folder data sets read the size",
     "set data.image_size=16"),
    (["data.batch_size=0"], "data.batch_size", "must be an integer >= 1, got 0",
     "set data.batch_size to a positive number of samples per device"),
    (["data.batch_size=abc"], "data.batch_size", "got 'abc'", "set data.batch_size to a positive number"),
    (["++data.eval_batch_size=0"], "data.eval_batch_size", "got 0",
     "set data.eval_batch_size to a positive number, or null to use data.batch_size"),
    (["data.num_workers=-1"], "data.num_workers", "must be an integer (or auto) >= 0, got -1",
     "set data.num_workers=0 (load in the main process), more, or auto"),
    (["data.num_workers=many"], "data.num_workers", "got 'many'", "or auto"),
    # choices
    (["callbacks.progress_bar=fancy"], "callbacks.progress_bar", "must be auto, tqdm, rich or none, got 'fancy'",
     "choose one of: auto, tqdm, rich, none"),
    (["test_checkpoint=first"], "test_checkpoint", "must be best or last, got 'first'",
     "set test_checkpoint=best (best validation score) or last"),
    (["train=maybe"], "train", "must be true or false, got 'maybe'", "set train=true or train=false"),
    (["test=1"], "test", "must be true or false, got 1", "set test=true or test=false"),
    # trainer counts and limits
    (["trainer.limit_train_batches=-1"], "trainer.limit_train_batches", "must be an integer (or null) >= 0, got -1",
     _limit_fix("trainer.limit_train_batches")),
    (["trainer.limit_val_batches=-0.5"], "trainer.limit_val_batches", "must be a number in [0, 1], got -0.5",
     _limit_fix("trainer.limit_val_batches")),
    (["trainer.limit_test_batches=1.5"], "trainer.limit_test_batches", "got 1.5",
     _limit_fix("trainer.limit_test_batches")),
    (["++trainer.max_steps=abc"], "trainer.max_steps", "must be an integer (or null) >= -1, got 'abc'",
     "set trainer.max_steps to a number of optimizer steps, or -1 for no limit"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "must be an integer >= 1, got 0",
     "set trainer.log_every_n_steps to a step count such as 10"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", "got 0",
     "set trainer.accumulate_grad_batches=1 (no accumulation) or more"),
    (["trainer.num_nodes=0"], "trainer.num_nodes", "got 0", "set trainer.num_nodes=1 (or the number of machines)"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch", "got 0",
     "set trainer.check_val_every_n_epoch=1 or more"),
    (["trainer.fast_dev_run=-1"], "trainer.fast_dev_run", "got -1",
     "set trainer.fast_dev_run=false, true, or a number of batches"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "got -1",
     "set trainer.gradient_clip_val >= 0, or null for no clipping"),
    # model
    (["model.label_smoothing=1.0"], "model.label_smoothing", "must be a number in [0, 1), got 1.0", SMOOTHING_FIX),
    (["model.label_smoothing=-0.1"], "model.label_smoothing", "got -0.1", SMOOTHING_FIX),
    (["model.nesting_dims=[0]"], "model.nesting_dims", "sizes must be positive", "remove zero and negative sizes"),
    (["model.nesting_dims=[32,16]"], "model.nesting_dims", "must be strictly increasing", "sort it: [16, 32]"),
    (["model.nesting_dims=[]"], "model.nesting_dims", "is empty", "give at least one size, or 'auto'"),
    (["model.nesting_dims=[8,16]", "model.loss_weights=[1]"], "model.loss_weights",
     "has 1 values but nesting_dims has 2", "give one weight per size"),
    (["model.num_classes=abc"], "model.num_classes", "must be an integer (or null) >= 1, got 'abc'",
     "set model.num_classes=null to take it from the data"),
    (["model.backbone.hidden_dim=0"], "model.backbone.hidden_dim", "got 0",
     "set model.backbone.hidden_dim to a positive width such as 512"),
    (["model.backbone.width=abc"], "model.backbone.width", "got 'abc'",
     "set model.backbone.width to a positive embedding width such as 256"),
    (["model=digits_cnn", "model.backbone.channels=[32,0]"], "model.backbone.channels", "got 0",
     "e.g. model.backbone.channels=[32,64,128]"),
    (["model=digits_cnn", "model.backbone.channels=[]"], "model.backbone.channels", "must be a non-empty list",
     "e.g. model.backbone.channels=[32,64,128]"),
    (["model=vit_b16", "model.backbone.drop_path_rate=1.5"], "model.backbone.drop_path_rate", "got 1.5",
     "set model.backbone.drop_path_rate in [0, 1), e.g. 0.1"),
    # names looked up in registries: refused before the data is scanned
    (["data.name=svhn"], "data.name", "unknown data set 'svhn'", "choose one of ['cifar10', 'cifar100', 'digits'"),
    (["model.head=slimmable"], "model.head", "unknown head type 'slimmable'", "choose one of ['ff', 'mrl', 'mrle']"),
    (["model.optimizer.name=lion"], "model.optimizer.name", "unknown optimizer 'lion'",
     "choose one of ['sgd', 'adamw']"),
    (["model.scheduler.name=warp"], "model.scheduler.name", "unknown schedule 'warp'",
     "choose one of ['none', 'step', 'cosine', 'linear_warmup_decay']"),
    # callbacks, resume, tags
    (["callbacks.checkpoint.mode=up"], "callbacks.checkpoint.mode", "must be max or min, got 'up'",
     "set callbacks.checkpoint.mode=max (accuracy) or min (loss)"),
    (["callbacks.checkpoint.save_top_k=abc"], "callbacks.checkpoint.save_top_k", "got 'abc'",
     "set callbacks.checkpoint.save_top_k=1 (or -1 to keep all)"),
    (["callbacks.checkpoint.every_n_train_steps=-5"], "callbacks.checkpoint.every_n_train_steps", "got -5",
     "set callbacks.checkpoint.every_n_train_steps to a step count, or 0 for once per epoch"),
    (["callbacks.checkpoint.keep_step_checkpoints=0"], "callbacks.checkpoint.keep_step_checkpoints",
     "must be an integer (or -1) >= 1, got 0", "set callbacks.checkpoint.keep_step_checkpoints=2 (or -1 to keep all)"),
    (["callbacks.refresh_rate=abc"], "callbacks.refresh_rate", "got 'abc'",
     "set callbacks.refresh_rate=1 (every step) or more"),
    (["resume=always"], "resume", "must be null, false, auto or never, got 'always'", "use resume=auto"),
    (["tags=abc"], "tags", "must be a list, got 'abc'", "write tags=[name] or tags=[name1,name2]"),
]


@pytest.mark.parametrize("overrides,field,problem,fix", REFUSED, ids=[" ".join(case[0]) for case in REFUSED])
def test_refused_before_anything_runs(tmp_path, overrides, field, problem, fix):
    cfg = compose(["logger=csv", *overrides], tmp_path / "run")
    _refused(cfg, field, problem, fix)
    assert not (tmp_path / "run").exists()  # nothing written, no data loaded


@pytest.mark.parametrize("overrides", [
    ["trainer.max_epochs=-1"], ["trainer.max_epochs=null"], ["trainer.max_epochs=0", "train=false"],
    ["trainer.devices=auto"], ["trainer.devices=-1"], ["trainer.devices=2"], ["trainer.devices='0,1'"],
    ["trainer.devices=[0,1]"],
    *[[f"trainer.precision={p}"] for p in ("bf16-mixed", "16-mixed", "64-true", "32", "16", "bf16")],
    ["seed=0"], ["seed=4294967295"], ["data.validation=none", "data.val_fraction=0"],
    ["data.validation=test", "data.val_fraction=0"], ["data=cifar10", "data.validation=none", "data.val_fraction=0"],
    ["data.num_workers=auto"], ["++data.eval_batch_size=null"], ["model.label_smoothing=0.1"],
    ["trainer.limit_val_batches=0"], ["trainer.limit_train_batches=3"], ["trainer.limit_test_batches=0.25"],
    ["trainer.fast_dev_run=true"], ["trainer.fast_dev_run=2"], ["trainer=ddp_sim"], ["++device=cpu"],
    ["callbacks.progress_bar=none"], ["model.nesting_dims=[16,64]"], ["model.optimizer.weight_decay=0"],
    ["callbacks.checkpoint=null"], ["resume=auto"], ["tags=[a,b]"], ["callbacks.checkpoint.keep_step_checkpoints=-1"],
    ["+experiment=imagenet_resnet50_ff", "trainer=cpu", "model.ff_dim=64"],
], ids=lambda overrides: " ".join(overrides))
def test_accepted(tmp_path, overrides):
    check_train_config(compose(["logger=csv", *overrides], tmp_path / "run"))


def _asks_for_gpu(cfg) -> bool:
    return cfg.trainer.get("accelerator") in ("gpu", "cuda")


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_preset_passes(tmp_path, experiment):
    overrides = [] if experiment is None else [f"+experiment={experiment}"]
    cfg = compose(overrides, tmp_path / "run")
    if _asks_for_gpu(cfg):
        cfg = compose([*overrides, "trainer=cpu"], tmp_path / "run")
    check_train_config(cfg)


def test_gpu_presets_are_accepted_where_cuda_is(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_train_config(compose(["+experiment=imagenet_resnet50"], tmp_path / "run"))
    check_train_config(compose(["trainer=gpu", "trainer.devices=[0,1]"], tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^trainer\.devices: asks for 4 but only 2 GPU\(s\) are visible; "
                                          r"use at most 2 GPU\(s\), or trainer.devices=-1 for all of them$"):
        check_train_config(compose(["trainer=gpu", "trainer.devices=4"], tmp_path / "run"))


@pytest.mark.filterwarnings("ignore:`precision=")
def test_precisions_come_from_lightning():
    from lightning.fabric.connector import _convert_precision_to_unified_args

    assert {"32-true", "bf16-mixed", "16-mixed", 32, "bf16"} <= set(lightning_precisions())
    for precision in lightning_precisions():  # each one is accepted by Lightning itself
        _convert_precision_to_unified_args(precision)


def test_output_dir_that_is_a_file_or_under_one(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    for path in (blocker, blocker / "run"):
        cfg = compose(["logger=csv"], path)
        message = _refused(cfg, "paths.output_dir", "is not a directory", OUTPUT_DIR_FIX)
        assert message.endswith(f"; {OUTPUT_DIR_FIX}")
    assert blocker.read_text() == "a file, not a folder"


def test_output_dir_not_writable(tmp_path, monkeypatch):
    # Root may write anywhere, so the permission answer is simulated for the nearest existing folder.
    monkeypatch.setattr(config_checks.os, "access", lambda path, mode: os.fspath(path) != os.fspath(tmp_path))
    cfg = compose(["logger=csv"], tmp_path / "a" / "b")
    _refused(cfg, "paths.output_dir", f"{tmp_path / 'a' / 'b'} is not writable (no write permission on {tmp_path})",
             OUTPUT_DIR_FIX)
    assert not (tmp_path / "a").exists()


def test_plain_omegaconf_config_without_hydra(tmp_path):
    """Only the keys present are checked; old-style data configs without data.validation still work."""
    check_train_config(OmegaConf.create({"seed": 1}))
    check_train_config({"seed": 1, "data": {"name": "cifar10", "val_fraction": 0.0}})  # a plain dict too
    check_train_config({"data": {"name": "imagenet", "validation": "none", "val_fraction": 5}})
    check_train_config({"paths": {"output_dir": str(tmp_path / "new" / "dir")}})
    cases = [
        ({"data": {"name": "cifar10", "val_fraction": -0.1}}, "data.val_fraction",
         "set data.val_fraction in (0, 1), e.g. 0.1"),
        ({"data": {"name": "digits", "val_fraction": 0.6, "test_fraction": 0.4}}, "data.val_fraction",
         "keep their sum below 1, e.g. 0.15 and 0.15"),
        ({"trainer": {"devices": 0}}, "trainer.devices", DEVICES_FIX),
        ({"paths": {"output_dir": "${oc.env:MRL_TEST_UNSET_VARIABLE}"}}, "paths.output_dir",
         "set paths.output_dir to a value"),
    ]
    for cfg, field, fix in cases:
        with pytest.raises(ConfigError) as info:
            check_train_config(OmegaConf.create(cfg))
        assert info.value.field == field and str(info.value).endswith(fix), str(info.value)
    # Without data.validation a zero val_fraction means "no holdout"; with holdout it is refused.
    with pytest.raises(ConfigError, match="data.validation=none for no validation$"):
        check_train_config({"data": {"validation": "holdout", "val_fraction": 0.0}})


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "scripts/train.py", "logger=csv", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_script_prints_one_line_and_exits_2(tmp_path):
    proc = _script("trainer.max_epochs=abc", f"paths.log_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.max_epochs: must be an integer (or null) >= -1, got 'abc'; " + MAX_EPOCHS_FIX]
    assert not list(tmp_path.rglob("checkpoints"))


CALLBACK = "++hydra.callbacks.launch_check._target_=mrl.app.config_checks.HydraLaunchCheck"


def test_hydra_run_dir_under_a_file_is_refused_before_hydra_creates_it(tmp_path):
    # Hydra makes hydra.run.dir before the app runs; the callback checks it first.
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    proc = _script(CALLBACK, f"hydra.run.dir={blocker}/run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.run.dir: {blocker}/run cannot be created: {blocker} exists and is not a directory; "
        f"{OUTPUT_DIR_FIX}"]


def test_hydra_sweep_dir_check(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    with pytest.raises(SystemExit) as info:
        HydraLaunchCheck().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(blocker)}}}))
    assert info.value.code == 2
    assert capsys.readouterr().err == (f"error: hydra.sweep.dir: {blocker} exists and is not a directory; "
                                       f"{OUTPUT_DIR_FIX}\n")
    HydraLaunchCheck().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "new")}}}))
