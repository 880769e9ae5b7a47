"""Data parallelism that changes nothing but speed: 2 processes (CPU, gloo) with half the batch each reach the
weights of 1 process on the whole batch, without BatchNorm and with synchronised BatchNorm."""

from __future__ import annotations

import pytest
import torch

from mrl.app.train import train

STEPS = 19  # digits: 1,257 training images, 64 per step (2 x 32 with two processes)


def weights(result: dict) -> dict[str, torch.Tensor]:
    return torch.load(result["last_model_path"], map_location="cpu", weights_only=False)["state_dict"]


def run(make_cfg, out: str, *overrides: str) -> dict:
    # SGD, not the preset's AdamW: Adam divides each gradient by its own scale, which turns the float noise of a
    # gradient that is zero in exact arithmetic (a Linear bias just before BatchNorm) into full-size steps
    cfg = make_cfg("trainer.max_epochs=1", "test=false", "logger=csv", "model.optimizer.name=sgd",
                   "model.optimizer.lr=0.05", *overrides, out=out)
    return train(cfg)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_two_processes_equal_one_on_the_global_batch(make_cfg, norm):
    model = [f"+model.backbone.norm={norm}"]
    one = run(make_cfg, "one", *model, "data.batch_size=64")
    two = run(make_cfg, "two", *model, "trainer=ddp_sim", "data.batch_size=32", "++trainer.sync_batchnorm=true")
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=key)  # float sums in another order
    if norm == "batch":
        assert "encoder.net.2.running_var" in a  # BatchNorm statistics (running_*) compared too

        # the control: BatchNorm without synchronisation normalises each half on its own, and the weights differ
        alone = weights(run(make_cfg, "alone", *model, "trainer=ddp_sim", "data.batch_size=32"))
        assert (alone["encoder.net.1.weight"] - a["encoder.net.1.weight"]).abs().max() > 1e-3
