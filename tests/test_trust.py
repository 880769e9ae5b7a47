"""Numbers that stay honest under faults and DDP: checkpoints that mean what they say, atomic saves under
kills, SIGTERM, exact resume, exact counts on any number of processes, one W&B run per job, and runs that
fail loudly. Real processes are started and killed where the behaviour depends on it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT, assert_same_training_log, wait_for, write_image_folder
from mrl.data import create_datamodule
from mrl.errors import ConfigError
from mrl.app.train import train

ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
QUIET = ["logger=csv", "callbacks.progress_bar=none"]
STEPS_PER_EPOCH = 19  # digits: 1,257 training images in batches of 64, last partial batch dropped


def train_script(*args: str, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/train.py", *args], cwd=PROJECT_ROOT, env=ENV, text=True,
                          capture_output=True, timeout=timeout, **popen)


def start_train(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "scripts/train.py", *args], cwd=PROJECT_ROOT, env=ENV,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def metrics_rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics_by_dim.json").read_text())["rows"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- checkpoints -----------------------------------------------------------------------------------------

def test_last_ckpt_holds_the_final_epoch_even_when_the_monitored_metric_stops_improving(make_cfg, tmp_path):
    # mode=min on a rising accuracy: the "best" checkpoint stays at epoch 0, last.ckpt must not.
    out = train(make_cfg(*QUIET, "trainer.max_epochs=3", "callbacks.checkpoint.mode=min", "test_checkpoint=last"))
    last = load(Path(out["last_model_path"]))
    assert last["epoch"] == 2 and last["global_step"] == 3 * STEPS_PER_EPOCH
    assert load(Path(out["best_model_path"]))["epoch"] == 0
    assert json.loads((tmp_path / "run" / "metrics_by_dim.json").read_text())["protocol"]["tested_checkpoint"] \
        == out["last_model_path"]


def test_mid_epoch_checkpoints_every_n_steps_with_names_that_do_not_collide(make_cfg, tmp_path):
    train(make_cfg(*QUIET, "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=5",
                   "callbacks.checkpoint.keep_step_checkpoints=-1"))
    folder = tmp_path / "run" / "checkpoints"
    steps = sorted(int(p.stem.split("step")[1]) for p in folder.glob("epoch*-step*.ckpt"))
    # every 5th step but the epoch ends (19, 38), which the end-of-epoch last.ckpt covers
    assert steps == [5, 10, 15, 20, 25, 30, 35]
    assert load(folder / "epoch001-step00000025.ckpt")["global_step"] == 25
    assert load(folder / "last.ckpt")["global_step"] == 38
    train(make_cfg(*QUIET, "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=5", out="kept"))
    assert sorted(p.name for p in (tmp_path / "kept" / "checkpoints").glob("epoch*")) == \
        ["epoch001-step00000030.ckpt", "epoch001-step00000035.ckpt"]  # keep_step_checkpoints=2 by default


SAVE_LOOP = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from mrl.checkpointing import AtomicCheckpointIO
    io, version = AtomicCheckpointIO(), 0
    while True:
        version += 1
        io.save_checkpoint({"version": version, "w": torch.full((4_000_000,), float(version))}, sys.argv[1])
        print(version, flush=True)
""")


def test_a_kill_during_a_save_never_truncates_the_checkpoint(tmp_path):
    # TMPDIR on another filesystem than the checkpoint (tmpfs vs the disk): nothing may be staged there.
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    if other_fs is None or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem for TMPDIR")
    tmpdir = Path(os.environ.get("TMPDIR_FOR_TEST", other_fs)) / f"mrl-test-{os.getpid()}"
    tmpdir.mkdir(exist_ok=True)
    target = tmp_path / "last.ckpt"
    (tmp_path / "loop.py").write_text(SAVE_LOOP)
    rng = np.random.default_rng(0)
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "loop.py"), str(target), str(PROJECT_ROOT)],
                                env={**ENV, "TMPDIR": str(tmpdir)}, stdout=subprocess.PIPE, text=True)
        for _ in range(2 + attempt):  # some complete saves, then a kill at a random point of the next one
            proc.stdout.readline()
        time.sleep(float(rng.uniform(0.0, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(target, weights_only=False)
        assert torch.all(ckpt["w"] == ckpt["version"]) and ckpt["version"] >= 1
    assert not any(tmpdir.iterdir())  # nothing was staged in TMPDIR
    tmpdir.rmdir()


def test_training_saves_every_checkpoint_through_the_atomic_writer(make_cfg, tmp_path, monkeypatch):
    from mrl.checkpointing import AtomicCheckpointIO

    saved = []
    original = AtomicCheckpointIO.save_checkpoint
    def recording(self, checkpoint, path, storage_options=None):
        saved.append(Path(path).name)
        original(self, checkpoint, path)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording)
    train(make_cfg(*QUIET, "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=10"))
    on_disk = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert on_disk <= set(saved) | {"last.ckpt"} and {"last.ckpt", "best-epoch001.ckpt"} <= set(saved) | on_disk
    assert saved.count("last.ckpt") == 2 and "epoch000-step00000010.ckpt" in saved


def test_sigterm_saves_a_checkpoint_and_exits_non_zero_without_results(tmp_path):
    run = tmp_path / "run"
    proc = start_train(*QUIET, "trainer.max_epochs=500", "callbacks.checkpoint.every_n_train_steps=7",
                       f"hydra.run.dir={run}", log=tmp_path / "log")
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log = (tmp_path / "log").read_text()
    assert code == 143, log[-3000:]
    assert "interrupted by SIGTERM: checkpoint saved to" in log and "ckpt_path=" in log
    saved = Path(log.split("checkpoint saved to ")[1].split(";")[0].strip())
    assert saved.is_file() and load(saved)["global_step"] == load(run / "checkpoints" / "last.ckpt")["global_step"]
    assert not (run / "metrics_by_dim.csv").exists()  # nothing tested, no table


# --- exact resume ----------------------------------------------------------------------------------------

def test_sigkill_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(tmp_path):
    args = [*QUIET, "trainer.max_epochs=4", "callbacks.checkpoint.every_n_train_steps=6", "test_checkpoint=last"]
    reference = train_script(*args, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]

    run = tmp_path / "killed"
    proc = start_train(*args, f"hydra.run.dir={run}", log=tmp_path / "log")
    wait_for(lambda: any((run / "checkpoints").glob("epoch001-step*.ckpt")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics_by_dim.json").exists()
    newest = max(load(p)["global_step"] for p in (run / "checkpoints").glob("*.ckpt"))
    assert newest % STEPS_PER_EPOCH  # the resume starts mid-epoch

    resumed = train_script(*args, f"hydra.run.dir={run}", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume=auto: resuming from" in resumed.stdout
    assert metrics_rows(run) == metrics_rows(tmp_path / "reference")
    assert_same_training_log(run, tmp_path / "reference")  # the curve before the kill is kept, not logged twice
    final, ref = load(run / "checkpoints" / "last.ckpt"), load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref["global_step"] == 4 * STEPS_PER_EPOCH
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=1e-6)


def test_a_resumed_csv_log_keeps_the_rows_up_to_the_checkpoint_and_nothing_after(tmp_path):
    """Worked by hand: rows up to the resumed step stay (an epoch-end row at that very step included), later
    ones and a line cut short by a kill go, and a new column rewrites the header over the kept rows."""
    from mrl.loggers import ResumableCSVLogger

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,step,train/loss,val/top1@8\n0,4,2.0,\n0,9,,51.5\n1,14,1.5,\n"
                                        "1,19,,60.0\n2,24,1.2,\n2,2")  # killed after step 24, mid-line
    logger = ResumableCSVLogger(str(tmp_path), resume_step=19)
    logger.log_metrics({"train/loss": 1.25, "lr": 0.1, "epoch": 2}, step=24)
    logger.save()
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"], r["train/loss"], r["val/top1@8"], r["lr"]) for r in rows] == [
        ("0", "4", "2.0", "", ""), ("0", "9", "", "51.5", ""), ("1", "14", "1.5", "", ""),
        ("1", "19", "", "60.0", ""), ("2", "24", "1.25", "", "0.1")]
    assert not list(folder.glob(".*"))  # the staged copy was moved into place
    fresh = ResumableCSVLogger(str(tmp_path))  # no resume: a new run starts the file anew, as Lightning does
    fresh.log_metrics({"train/loss": 3.0}, step=0)
    fresh.save()
    assert (folder / "metrics.csv").read_text().splitlines() == ["step,train/loss", "0,3.0"]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_resume_with_augmentation_and_workers_is_exact(make_cfg, tmp_path, where):
    """Random crops and flips in two loader workers: the resumed run sees the same pixels, whether it
    resumes inside an epoch or at its end (constant LR there, so a shorter first run has the same schedule).
    Resumed at an epoch's end in its own folder, its training log goes on from the first run's."""
    root = write_image_folder(tmp_path / "imgs", per_class=16, size=20)
    args = [*QUIET, "data=image_folder", f"data.root={root}", "data.image_size=16", "data.batch_size=8",
            "data.num_workers=2", "model=digits_cnn", "model.backbone.channels=[8,16,16]", "trainer.max_epochs=3",
            "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.keep_step_checkpoints=-1",
            "test_checkpoint=last", "model.scheduler.name=none"]
    full = train(make_cfg(*args, out="full"))
    if where == "mid-epoch":
        start = sorted((tmp_path / "full" / "checkpoints").glob("epoch001-step*.ckpt"))[0]
    else:
        start = Path(train(make_cfg(*args, "trainer.max_epochs=2", out="resumed"))["last_model_path"])
    resumed = train(make_cfg(*args, f"ckpt_path={start}", out="resumed"))
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-9)
    a, b = load(Path(full["last_model_path"])), load(Path(resumed["last_model_path"]))
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6)
    if where == "epoch-end":
        assert_same_training_log(tmp_path / "resumed", tmp_path / "full")


def test_seeded_augmentation_is_a_function_of_the_sample_seed_alone():
    """A sample's random transforms come from its seed (the same draws as seeding torch and random globally),
    whatever ran before, and the caller's torch and Python RNG streams go on as if nothing was drawn."""
    import random

    from mrl.data.sampling import SeededAugmentation

    class Draws(torch.utils.data.Dataset):  # stands in for random crops and flips
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return index, torch.rand(3).tolist(), random.random()

    wrapped = SeededAugmentation(Draws())
    torch.manual_seed(0), random.seed(0)
    first = wrapped[(2, 12345)]
    torch.rand(7), random.random()  # other draws in between must not matter
    assert wrapped[(2, 12345)] == first
    torch.manual_seed(12345), random.seed(12345)
    assert first == (2, torch.rand(3).tolist(), random.random())  # the slow obvious way
    assert wrapped[(2, 54321)] != first
    torch.manual_seed(7), random.seed(7)
    expected = (torch.rand(2).tolist(), random.random())
    torch.manual_seed(7), random.seed(7)
    wrapped[(1, 99)]
    assert (torch.rand(2).tolist(), random.random()) == expected
    torch.manual_seed(5), random.seed(5)
    plain = wrapped[3]  # a plain index: no reseeding, the caller's streams as they are
    torch.manual_seed(5), random.seed(5)
    assert plain == Draws()[3]


def test_an_unreadable_checkpoint_falls_back_to_the_newest_readable_one(make_cfg, tmp_path, capsys):
    args = [*QUIET, "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=5", "test_checkpoint=last"]
    train(make_cfg(*args))
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: 1000])  # a truncated file, as a kill during a plain write leaves
    out = train(make_cfg(*args, "trainer.max_epochs=3", f"ckpt_path={last}", out="resumed"))
    said = capsys.readouterr().out
    # the newest readable file: the best checkpoint, saved at the end of the last epoch after step 35
    assert f"{last} is unreadable; resuming from {folder / 'best-epoch001.ckpt'}" in said
    assert load(Path(out["last_model_path"]))["global_step"] == 3 * STEPS_PER_EPOCH


def test_resume_refuses_a_checkpoint_of_another_backbone(make_cfg, tmp_path):
    out = train(make_cfg(*QUIET, "trainer.max_epochs=1", "test_checkpoint=last"))
    ckpt = f"ckpt_path={out['last_model_path']}"
    with pytest.raises(ConfigError, match=r"^ckpt_path: checkpoint's backbone has hidden_dim=512 but the config has "
                                          r"128; set model.backbone.hidden_dim=512 to resume it"):
        train(make_cfg(*QUIET, "model.backbone.hidden_dim=128", ckpt, out="other"))
    with pytest.raises(ConfigError, match=r"^ckpt_path: checkpoint's weights do not fit the configured model \(1 "
                                          r"tensors differ, e.g. encoder.net.1.weight: \(512, 256\) in the "
                                          r"checkpoint, \(512, 64\) here\)"):
        train(make_cfg(*QUIET, "data.image_size=8", ckpt, out="smaller"))


# --- validation never touches the test split ------------------------------------------------------------

def test_default_validation_is_a_stratified_shuffled_holdout_of_train(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class=20, size=8)
    dm = create_datamodule("image_folder", root=str(root), image_size=8, batch_size=4, num_workers=0)
    dm.setup("fit")
    val_paths = [dm.val_set.dataset.dataset.samples[dm.val_set.dataset.indices[i]][0] for i in dm.val_set.indices]
    train_paths = {dm.train_set.dataset.samples[i][0] for i in dm.train_set.indices}
    test_paths = {p for p, _ in dm.test_set.samples}
    assert len(val_paths) == 8 and not set(val_paths) & (train_paths | test_paths)
    assert sorted(Path(p).parent.name for p in val_paths) == sorted("abcd" * 2)  # 2 per class
    first_batch = {Path(p).parent.name for p in val_paths[:4]}
    assert len(first_batch) > 1  # shuffled: a limit_val_batches subset is not one class
    labels = torch.cat([batch["label"] for batch in dm.val_dataloader()])
    assert len(labels) == 8


def test_validating_on_test_is_an_opt_in_that_warns_and_is_recorded(make_cfg, tmp_path):
    with pytest.warns(UserWarning, match="validation runs on the test split"):
        train(make_cfg(*QUIET, "trainer.max_epochs=1", "data.validation=test"))
    protocol = json.loads((tmp_path / "run" / "metrics_by_dim.json").read_text())["protocol"]
    assert protocol["validation"] == "test" and protocol["selected_on_test"] is True
    train(make_cfg(*QUIET, "trainer.max_epochs=1", out="honest"))
    protocol = json.loads((tmp_path / "honest" / "metrics_by_dim.json").read_text())["protocol"]
    assert protocol == {**protocol, "validation": "holdout", "selected_on_test": False}


def test_validation_none_tests_the_final_checkpoint(make_cfg, tmp_path):
    out = train(make_cfg(*QUIET, "trainer.max_epochs=2", "data.validation=none", "test_checkpoint=last"))
    assert out["val"] == {} and out["best_model_path"] == ""
    assert not list((tmp_path / "run" / "checkpoints").glob("best*"))
    with pytest.raises(ConfigError, match="test_checkpoint: is best but data.validation=none"):
        train(make_cfg(*QUIET, "data.validation=none", out="bad"))


def test_presets_never_select_on_the_reported_split(make_cfg):
    from conftest import EXPERIMENTS

    for name in EXPERIMENTS:
        cfg = make_cfg(f"+experiment={name}", out=name)
        assert cfg.data.validation in ("holdout", "none"), name
        if cfg.data.validation == "none":
            assert cfg.test_checkpoint == "last", name


# --- exact counts under DDP ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_271(tmp_path_factory):
    """A digits model whose test split holds 271 samples: divisible by neither 2 nor 3."""
    from conftest import compose

    out_dir = tmp_path_factory.mktemp("ddp") / "train"
    out = train(compose([*QUIET, "trainer.max_epochs=1", "data.test_fraction=0.1508", "test_checkpoint=last"], out_dir))
    assert out["test"]["num_samples"] == 271
    return out


@pytest.mark.parametrize("processes", [2, 3])
def test_ddp_test_metrics_count_every_sample_once(make_cfg, trained_271, processes):
    out = train(make_cfg(*QUIET, "trainer=ddp_sim", f"trainer.devices={processes}", "data.test_fraction=0.1508",
                         "train=false", f"ckpt_path={trained_271['last_model_path']}", out=f"ddp{processes}"))
    assert out["test"]["num_samples"] == 271
    for key, value in trained_271["test"].items():  # through ddp_spawn the figures come back as float32
        assert out["test"][key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("processes", [2, 3])
def test_embeddings_on_n_processes_equal_one_process(tmp_path, trained_271, processes):
    from mrl.embeddings import embed_checkpoint, embed_split, load_split
    from mrl.lightning import MatryoshkaModule

    def data():
        return create_datamodule("digits", seed=42, test_fraction=0.1508, batch_size=64)

    one = embed_checkpoint(trained_271["last_model_path"], data(), tmp_path / "one", dtype="float32")
    many = embed_checkpoint(trained_271["last_model_path"], data(), tmp_path / "many", dtype="float32",
                            trainer={"accelerator": "cpu", "devices": processes, "strategy": "ddp_spawn"})
    # and an independent reference: the plain single-process loop over the unshuffled test split
    module = MatryoshkaModule.load_from_checkpoint(trained_271["last_model_path"], map_location="cpu")
    dm = data()
    dm.setup("test")
    loader = torch.utils.data.DataLoader(dm.test_set, batch_size=50, shuffle=False)
    reference = load_split(embed_split(module, loader, tmp_path / "ref", "test", dtype="float32"))
    for split in ("train", "test"):
        a, b = load_split(one[split]), load_split(many[split])
        assert len(b.labels) == len(dm.split_dataset(split)) == (1256 if split == "train" else 271)
        assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.logits, b.logits) and a.meta == b.meta
    np.testing.assert_allclose(load_split(many["test"]).embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)
    assert np.array_equal(load_split(many["test"]).labels, reference.labels)
    assert not list((tmp_path / "many").glob(".*"))  # no shards or temporaries left


# --- one W&B run per multirun job ------------------------------------------------------------------------

def test_a_two_job_multirun_writes_two_wandb_runs_in_folders_named_by_overrides(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/train.py", "-m", "model.head=ff", "model.nesting_dims=[8],[32]",
                           "trainer.max_epochs=1", "callbacks.progress_bar=none", f"hydra.sweep.dir={tmp_path}"],
                          cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert jobs == {f"model.head=ff,model.nesting_dims=_{d}_,trainer.max_epochs=1" for d in (8, 32)}
    for dims, other in (("8", "32"), ("32", "8")):
        runs = list((tmp_path / f"model.head=ff,model.nesting_dims=_{dims}_,trainer.max_epochs=1" / "wandb")
                    .glob("offline-run-*/*.wandb"))
        assert len(runs) == 1  # each job its own W&B run
        record = runs[0].read_bytes()  # the run's name is stored in its records
        assert f"digits_mlp:model.head=ff,model.nesting_dims=[{dims}],trainer.max_epochs=1".encode() in record
        assert f"digits_mlp:model.head=ff,model.nesting_dims=[{other}],".encode() not in record


# --- no silent failures ----------------------------------------------------------------------------------

def test_a_diverging_loss_stops_the_run_without_a_table(tmp_path):
    run = tmp_path / "run"
    proc = train_script(*QUIET, "model.optimizer.lr=1e30", "model.optimizer.name=sgd", "trainer.max_epochs=3",
                        f"hydra.run.dir={run}")
    assert proc.returncode == 1
    assert "error: train/loss is not finite at epoch 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "metrics_by_dim.csv").exists()


def test_a_non_finite_loss_is_named_by_its_first_step_and_never_checkpointed(tmp_path):
    """The loss is read on the host only at the logging steps and before each save (a read every step makes
    the CPU wait for the GPU): a NaN entering at step 3 stops the run at the step-4 checkpoint, not later,
    with the error naming step 3, and the diverged weights are not saved."""
    import lightning as L

    from mrl.lightning import MatryoshkaModule, NonFiniteLossError

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    x[24:32] = float("nan")  # batch 3 of 8-image batches
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    module = MatryoshkaModule(backbone={"name": "mlp", "in_chans": 1, "image_size": 4, "hidden_dim": 8},
                              num_classes=3, nesting_dims=[2, 4, 8])
    saves = L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, log_every_n_steps=50, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[saves])
    with pytest.raises(NonFiniteLossError, match=r"not finite at epoch 0, step 3 \(per size @2: nan, @4: nan"):
        trainer.fit(module, loader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=2.ckpt"]  # the step-4 save was refused
    assert trainer.global_step == 4


def test_a_monitor_that_is_never_logged_is_refused_before_training(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks.checkpoint.monitor: 'val/acc' is never logged; choose one of "
                                          r"val/top1@256"):
        train(make_cfg(*QUIET, "callbacks.checkpoint.monitor=val/acc"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_root_with_download_neither_creates_a_folder_nor_blames_the_network(tmp_path):
    meant = tmp_path / "cifar10-jpeg.tar.gz"
    dm = create_datamodule("cifar10", root=str(meant), download=True)
    with pytest.raises(ConfigError, match=r"data.root: .*cifar10-jpeg.tar.gz does not exist; check the path"):
        dm.setup("fit")
    assert not meant.exists()
    wrong_parent = tmp_path / "no" / "such" / "cifar10"
    with pytest.raises(ConfigError, match="does not exist; check the path"):
        create_datamodule("cifar10", root=str(wrong_parent), download=True).setup("fit")
    assert not (tmp_path / "no").exists()


# --- the front door --------------------------------------------------------------------------------------

def test_console_goes_to_train_log_and_the_run_prints_its_paths(tmp_path):
    run = tmp_path / "run"
    proc = train_script(*QUIET, "trainer.max_epochs=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"outputs: {run}")
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    assert f"table: {run / 'metrics_by_dim.csv'}" in proc.stdout
    log = (run / "train.log").read_text()
    assert "epoch 2/2" in log and "| 256 |" in log and f"outputs: {run}" in log
    noise = ("Predicting", "it/s]", "was configured so", "litlogger", "anonymous setting", "weights_only")
    assert not [n for n in noise if n in proc.stdout + proc.stderr]  # no bar when not a terminal, no chatter


def test_image_folder_reads_the_image_size_from_the_data(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=10, size=24)
    dm = create_datamodule("image_folder", root=str(root), image_size=None, num_workers="auto", batch_size=2)
    dm.setup("fit")
    assert dm.image_size == 24 and 0 <= dm.num_workers <= 8
    assert dm.train_set[0][0].shape == (3, 24, 24)
    few = write_image_folder(tmp_path / "few", per_class=3)
    with pytest.raises(ConfigError, match=r"data.val_fraction: 0.1 of 9 training images holds out 1, which cannot "
                                          r"cover the 3 classes on both sides"):
        create_datamodule("image_folder", root=str(few), val_fraction=0.1, image_size=8).setup("fit")


def test_the_progress_bar_shows_on_a_terminal_only(tmp_path):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "scripts/train.py", "logger=csv", "trainer.max_epochs=1",
                             f"hydra.run.dir={tmp_path / 'tty'}"], cwd=PROJECT_ROOT, env=ENV, stdout=slave,
                            stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the run is over
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=600) == 0
    text = seen.decode(errors="replace")
    assert "Epoch 0: 100%" in text and "epoch 1/1  step" not in text  # tqdm, not the plain lines
    assert "Epoch 0: 100%" in (tmp_path / "tty" / "train.log").read_text()  # the console, copied
