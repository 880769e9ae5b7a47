"""Optimizers and learning-rate schedules used by the paper and by common ImageNet recipes.

Schedules are per optimizer step (iteration), as ``LambdaLR`` multipliers of the base LR.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from mrl.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "step", "cosine", "linear_warmup_decay")


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 encoder_lr_factor: float = 1.0, encoder: nn.Module | None = None) -> list[dict]:
    """Weights that decay, and norm parameters and biases (any tensor with ndim <= 1: LayerNorm and BatchNorm
    scales, biases) that don't, as in the paper's (FFCV) recipe and the usual BERT fine-tuning one.

    ``encoder_lr_factor`` != 1 (fine-tuning a pretrained encoder more gently than the freshly initialised heads)
    splits each group by encoder (``encoder``, by default ``model.backbone``) and the rest, the encoder's at
    ``lr * encoder_lr_factor``;
    schedules multiply every group's own LR, so the ratio holds throughout."""
    def split(params) -> tuple[list, list]:
        decay, no_decay = [], []
        for p in params:
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        return decay, no_decay

    if encoder_lr_factor == 1.0:
        decay, no_decay = split(model.parameters())
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    encoder = encoder if encoder is not None else getattr(model, "backbone", None)
    if encoder is None or lr is None:
        raise ConfigError("model.optimizer.encoder_lr_factor", "needs a model with an encoder",
                          "leave it at 1.0")
    encoder_ids = {id(p) for p in encoder.parameters()}
    groups = []
    for params, group_lr in ((encoder.parameters(), lr * encoder_lr_factor),
                             ((p for p in model.parameters() if id(p) not in encoder_ids), lr)):
        decay, no_decay = split(params)
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": group_lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": group_lr}]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0,
                     momentum: float = 0.9, nesterov: bool = False, betas: Sequence[float] = (0.9, 0.999),
                     encoder_lr_factor: float = 1.0, encoder: nn.Module | None = None) -> torch.optim.Optimizer:
    if lr <= 0:
        raise ConfigError("model.optimizer.lr", f"must be positive, got {lr}")
    if not 0 < encoder_lr_factor <= 1e3:
        raise ConfigError("model.optimizer.encoder_lr_factor", f"must be positive, got {encoder_lr_factor}",
                          "e.g. 0.1 for an encoder at a tenth of the heads' LR, or 1.0")
    groups = param_groups(model, weight_decay, lr, encoder_lr_factor, encoder)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    raise ConfigError("model.optimizer.name", f"unknown optimizer {name!r}", f"choose one of {list(OPTIMIZERS)}")


def lr_multiplier(step: int, total_steps: int, name: str, warmup_steps: int = 0,
                  milestones: Iterable[int] = (), gamma: float = 0.1, steps_per_epoch: int = 1,
                  start_factor: float = 1e-4, min_factor: float = 0.0) -> float:
    """LR multiplier at optimizer ``step`` (0-based) of ``total_steps``.

    * ``step``: ``gamma ** (#milestones passed)``; milestones in epochs.
    * ``cosine``: linear warm-up from ``start_factor`` over ``warmup_steps``, then cosine to ``min_factor``.
    * ``linear_warmup_decay``: the paper's FFCV schedule, per iteration: linear from ``start_factor``
      to 1 over ``warmup_steps``, then linear down to ``min_factor`` at ``total_steps``.
    """
    if name not in SCHEDULERS:
        raise ConfigError("model.scheduler.name", f"unknown schedule {name!r}", f"choose one of {list(SCHEDULERS)}")
    if name == "none":
        return 1.0
    if name == "step":
        epoch = step // max(steps_per_epoch, 1)
        return gamma ** sum(epoch >= m for m in milestones)
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if name == "cosine":
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 + (min_factor - 1.0) * progress  # linear_warmup_decay


def create_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, steps_per_epoch: int,
                     warmup_epochs: float = 0.0, milestones: Sequence[int] = (), gamma: float = 0.1,
                     start_factor: float = 1e-4, min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    lr_multiplier(0, total_steps, name)  # validates the name before training starts
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(
        step, total_steps, name, warmup_steps, tuple(milestones), gamma, steps_per_epoch, start_factor, min_factor))
