"""Slow: the cifar10_resnet18 preset trains on the real CIFAR-10 tar and beats chance at every size."""

from __future__ import annotations

import pytest

from conftest import CIFAR10_TAR, assert_same_training_log
from mrl.app.train import train


@pytest.mark.slow
def test_cifar10_resnet18_beats_chance_at_every_size(make_cfg, cifar10_cache):
    out = train(make_cfg("+experiment=cifar10_resnet18", "logger=csv", f"data.root={CIFAR10_TAR}",
                         f"data.cache_dir={cifar10_cache}",
                         "data.num_workers=2", "trainer.max_epochs=1", "trainer.limit_train_batches=150",
                         "callbacks.refresh_rate=20"))
    test = out["test"]
    dims = [8, 16, 32, 64, 128, 256, 512]
    assert sorted(int(k.split("@")[1]) for k in test if k.startswith("top1@")) == dims
    for m in dims:  # 10 balanced classes: chance is 10%
        assert test[f"top1@{m}"] >= 30.0, (m, test)


@pytest.mark.slow
def test_cifar10_killed_mid_epoch_resumes_to_the_uninterrupted_numbers(tmp_path):
    """Real JPEGs, random crops and flips in two loader workers, SIGKILL inside the second epoch, then the same
    command with resume=auto: the per-size test numbers equal those of a run that was never interrupted."""
    import json
    import signal

    from test_trust import start_train, train_script, wait_for

    args = ["+experiment=cifar10_resnet18", "logger=csv", "callbacks.progress_bar=none", f"data.root={CIFAR10_TAR}",
            "data.verify_images=false", "data.num_workers=2", "trainer.max_epochs=2", "trainer.limit_train_batches=40",
            "trainer.limit_val_batches=5", "trainer.limit_test_batches=10",
            "callbacks.checkpoint.every_n_train_steps=15", "test_checkpoint=last"]
    reference = train_script(*args, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "killed"
    proc = start_train(*args, f"hydra.run.dir={run}", log=tmp_path / "log")
    wait_for(lambda: any((run / "checkpoints").glob("epoch001-step*.ckpt")), proc, timeout=1200)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train_script(*args, f"hydra.run.dir={run}", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads((d / "metrics_by_dim.json").read_text())["rows"] for d in (run, tmp_path / "reference")]
    assert rows[0] == rows[1]
    assert_same_training_log(run, tmp_path / "reference")
