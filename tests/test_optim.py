"""Parameter groups, optimizers and LR schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mrl.errors import ConfigError
from mrl.heads import create_head
from mrl.optim import create_optimizer, create_scheduler, lr_multiplier, param_groups


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.LayerNorm(16),
    )


def _check_groups(model: nn.Module, groups: list[dict], weight_decay: float) -> None:
    decay, no_decay = groups
    assert decay["weight_decay"] == weight_decay and no_decay["weight_decay"] == 0.0
    decay_ids = [id(p) for p in decay["params"]]
    no_decay_ids = [id(p) for p in no_decay["params"]]
    all_ids = [id(p) for p in model.parameters()]
    # Every parameter exactly once.
    assert sorted(decay_ids + no_decay_ids) == sorted(all_ids)
    assert len(set(decay_ids + no_decay_ids)) == len(all_ids)
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            assert id(p) in no_decay_ids, f"{name} ({tuple(p.shape)}) should not decay"
        else:
            assert id(p) in decay_ids, f"{name} ({tuple(p.shape)}) should decay"


def test_param_groups_split_small_net():
    model = _small_net()
    groups = param_groups(model, 5e-4)
    _check_groups(model, groups, 5e-4)
    conv1, bn1, conv2, bn2, lin, ln = model[0], model[1], model[3], model[4], model[8], model[9]
    assert {id(p) for p in groups[0]["params"]} == {id(conv1.weight), id(conv2.weight), id(lin.weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(conv1.bias), id(bn1.weight), id(bn1.bias), id(bn2.weight),
                                                    id(bn2.bias), id(lin.bias), id(ln.weight), id(ln.bias)}


def test_param_groups_resnet18_with_heads():
    import torchvision

    for head in ("mrl", "mrle"):
        model = nn.Sequential(torchvision.models.resnet18(num_classes=10), create_head(head, [8, 10], 5))
        groups = param_groups(model, 1e-4)
        _check_groups(model, groups, 1e-4)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(groups[1]["params"]) >= 2 * len(bns) + 1  # BN weights/biases + at least one Linear bias


def test_param_groups_skip_frozen_parameters():
    model = _small_net()
    model[0].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in decay["params"] + no_decay["params"]}
    assert id(model[0].weight) not in ids
    assert len(ids) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_create_optimizer_uses_param_groups(name, cls):
    model = _small_net()
    opt = create_optimizer(model, name=name, lr=0.2, weight_decay=1e-3)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert all(g["lr"] == 0.2 for g in opt.param_groups)


def test_unknown_optimizer_raises_config_error():
    with pytest.raises(ConfigError, match="model.optimizer.name") as err:
        create_optimizer(_small_net(), name="rmsprop")
    assert "sgd" in str(err.value) and "adamw" in str(err.value)


def test_nonpositive_lr_raises_config_error():
    with pytest.raises(ConfigError, match="model.optimizer.lr"):
        create_optimizer(_small_net(), lr=0.0)


@pytest.mark.parametrize("warmup, total, start_factor", [(10, 100, 1e-4), (3, 17, 0.1), (1, 5, 0.0)])
def test_linear_warmup_decay_matches_interp(warmup, total, start_factor):
    for step in range(total + 5):
        expected = float(np.interp([step], [0, warmup, total], [start_factor, 1.0, 0.0])[0])
        got = lr_multiplier(step, total, "linear_warmup_decay", warmup_steps=warmup, start_factor=start_factor)
        assert got == pytest.approx(expected, abs=1e-12), f"step {step}"


def test_linear_warmup_decay_min_factor():
    warmup, total, min_factor = 4, 20, 0.05
    for step in range(total + 3):
        expected = float(np.interp([step], [0, warmup, total], [1e-4, 1.0, min_factor])[0])
        got = lr_multiplier(step, total, "linear_warmup_decay", warmup_steps=warmup, min_factor=min_factor)
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("min_factor", [0.0, 0.01])
def test_cosine_schedule(min_factor):
    warmup, total = 5, 105
    kwargs = dict(warmup_steps=warmup, min_factor=min_factor, start_factor=0.1)
    assert lr_multiplier(warmup, total, "cosine", **kwargs) == pytest.approx(1.0, abs=1e-12)
    assert lr_multiplier(total, total, "cosine", **kwargs) == pytest.approx(min_factor, abs=1e-12)
    assert lr_multiplier(total + 50, total, "cosine", **kwargs) == pytest.approx(min_factor, abs=1e-12)
    mid = warmup + (total - warmup) // 2
    assert lr_multiplier(mid, total, "cosine", **kwargs) == pytest.approx((1 + min_factor) / 2, abs=1e-12)
    quarter = warmup + (total - warmup) // 4
    expected = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_multiplier(quarter, total, "cosine", **kwargs) == pytest.approx(expected, abs=1e-12)
    # Warm-up: linear from start_factor to 1.
    for step in range(warmup):
        expected = float(np.interp([step], [0, warmup], [0.1, 1.0])[0])
        assert lr_multiplier(step, total, "cosine", **kwargs) == pytest.approx(expected, abs=1e-12)
    values = [lr_multiplier(s, total, "cosine", **kwargs) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_schedule_milestones_in_epochs():
    kwargs = dict(milestones=(3, 6), gamma=0.1, steps_per_epoch=10)
    for step in range(80):
        epoch = step // 10
        expected = 1.0 if epoch < 3 else 0.1 if epoch < 6 else 0.01
        assert lr_multiplier(step, 80, "step", **kwargs) == pytest.approx(expected, rel=1e-12), f"step {step}"


def test_none_schedule_is_constant():
    assert {lr_multiplier(s, 10, "none", warmup_steps=3) for s in range(12)} == {1.0}


def test_create_scheduler_drives_optimizer_lr():
    model = _small_net()
    opt = create_optimizer(model, "sgd", lr=0.5)
    total, steps_per_epoch = 30, 10
    sched = create_scheduler(opt, "linear_warmup_decay", total, steps_per_epoch, warmup_epochs=0.5)
    for step in range(total):
        expected = 0.5 * float(np.interp([step], [0, 5, total], [1e-4, 1.0, 0.0])[0])
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected, expected], abs=1e-12)
        opt.step()
        sched.step()


def test_create_scheduler_step_milestones():
    opt = create_optimizer(_small_net(), "sgd", lr=1.0)
    sched = create_scheduler(opt, "step", total_steps=40, steps_per_epoch=4, milestones=[2, 5], gamma=0.5)
    lrs = []
    for _ in range(28):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0] * 8 + [0.5] * 12 + [0.25] * 8)


def test_unknown_schedule_raises_config_error():
    with pytest.raises(ConfigError, match="model.scheduler.name") as err:
        lr_multiplier(0, 10, "exponential")
    assert "linear_warmup_decay" in str(err.value)
    opt = create_optimizer(_small_net(), "sgd", lr=0.1)
    with pytest.raises(ConfigError, match="model.scheduler.name"):
        create_scheduler(opt, "exponential", total_steps=10, steps_per_epoch=2, warmup_epochs=1)


def test_encoder_lr_factor_puts_the_encoder_in_its_own_groups_and_schedules_keep_the_ratio():
    from mrl.model import create_model

    model = create_model({"name": "mlp", "in_chans": 1, "image_size": 4, "hidden_dim": 8, "width": 16},
                         nesting_dims=[4, 16], num_classes=3)
    opt = create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01, encoder_lr_factor=0.1)
    encoder = {id(p) for p in model.backbone.parameters()}
    for group in opt.param_groups:
        in_encoder = {id(p) in encoder for p in group["params"]}
        assert len(in_encoder) == 1  # a group is all encoder or all head
        assert group["lr"] == pytest.approx(1e-4 if in_encoder.pop() else 1e-3)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 0.01)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = create_scheduler(opt, "linear_warmup_decay", total_steps=10, steps_per_epoch=5, warmup_epochs=1)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = sorted({round(g["lr"] / (1e-3 if id(g["params"][0]) not in encoder else 1e-4), 12) for g in opt.param_groups})
    assert len(lrs) == 1  # every group at the same multiplier of its own base LR
    with pytest.raises(ConfigError, match="^model.optimizer.encoder_lr_factor"):
        create_optimizer(model, "adamw", lr=1e-3, encoder_lr_factor=0.0)
