"""Slow: the cifar10_resnet18 preset trains on the real CIFAR-10 tar and beats chance at every size."""

from __future__ import annotations

import pytest

from conftest import CIFAR10_TAR
from mrl.training import train


@pytest.mark.slow
def test_cifar10_resnet18_beats_chance_at_every_size(make_cfg):
    out = train(make_cfg("+experiment=cifar10_resnet18", "logger=csv", f"data.root={CIFAR10_TAR}",
                         "data.num_workers=2", "trainer.max_epochs=1", "trainer.limit_train_batches=150",
                         "callbacks.refresh_rate=20"))
    test = out["test"]
    dims = [8, 16, 32, 64, 128, 256, 512]
    assert sorted(int(k.split("@")[1]) for k in test if k.startswith("top1@")) == dims
    for m in dims:  # 10 balanced classes: chance is 10%
        assert test[f"top1@{m}"] >= 30.0, (m, test)
