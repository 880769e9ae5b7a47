"""What every task gives the shared LightningModule (:class:`mrl.lightning.MatryoshkaModule`).

The module owns the encoder (batch dict -> embedding ``z [B, width]``), the optimiser, checkpoints and the
training loop; a task owns everything that depends on what the embedding is trained *for*: its head(s), its
loss (the per-prefix :class:`~mrl.losses.MatryoshkaLoss` around a base loss), its per-size metrics, what
``predict`` writes into embedding files and what a checkpoint records about it. Classification
(:mod:`mrl.tasks.classification`) is the paper's ImageNet/BERT task; the contrastive, masked-language-model and
image-text tasks fit the same contract (an embedding loss gets its prefixes from :func:`mrl.losses.prefixes`).

Adding a task: subclass :class:`Task`, set ``name``, decorate with :func:`register_task`, and give its
constructor keyword arguments that come from the ``model`` config (``model.task=<name>`` selects it; see
``configs/task/``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mrl.errors import ConfigError

TASKS: dict[str, type[Task]] = {}

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over ranks (identity on one process)


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class to :data:`TASKS` under its ``name`` (``model.task`` in configs and checkpoints)."""
    TASKS[cls.name] = cls
    return cls


class Task(nn.Module):
    """The task-specific part of a Matryoshka model. ``nesting_dims``: the resolved sizes (every task trains
    every prefix ``z[..., :m]``); ``loss_weights``: one weight per size.

    Subclasses implement :meth:`forward`, :meth:`loss`, :meth:`batch_size`, the three metric methods and
    :meth:`metadata`; :meth:`predict` and :attr:`num_logits` default to "embeddings and labels only".
    """

    name: ClassVar[str]
    #: the Matryoshka kind of the model (``mrl``, ``mrle``, ``ff``): how tables name it and how runs are grouped
    head_type: str = "mrl"

    def __init__(self, nesting_dims: Sequence[int], loss_weights: Sequence[float]):
        super().__init__()
        self.nesting_dims = list(nesting_dims)
        if len(loss_weights) != len(self.nesting_dims):
            raise ConfigError("model.loss_weights", f"has {len(loss_weights)} weights for "
                              f"{len(self.nesting_dims)} sizes", "give one weight per size, or null")
        self.loss_weights = list(loss_weights)

    @classmethod
    def data_args(cls, datamodule: Any) -> dict[str, Any]:
        """The task's arguments that come from the data (classification: the classes), given a set-up
        DataModule; the training app adds them to the config's."""
        return {}

    @classmethod
    def check_config(cls, get: Callable[[str], Any]) -> None:
        """Refuse, with a one-line :class:`ConfigError`, settings elsewhere in the config that cannot work with this
        task (e.g. a data setting), before any data is read; ``get(key)`` is the value at a dotted key or
        ``None`` when it is absent. The task's own arguments are checked when it is built."""

    #: the optimiser step, set by the module before each training loss: per-step random draws (sizes, layers)
    #: seeded by it are the same on every rank and after a resume
    step: int = 0
    #: indices of the sizes whose loss this step computed, when a task trains a subset per step (None: all)
    sizes_this_step: list[int] | None = None

    def attach(self, encoder: nn.Module) -> None:
        """Check, once, what the task needs of the encoder (e.g. layers for 2D Matryoshka); a
        :class:`ConfigError` if it cannot serve."""

    def encode(self, encoder: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """The embedding(s) the task trains on: ``encoder(batch)``, ``[B, width]``, unless a task needs more
        (a 2D Matryoshka task: several layers' outputs, ``[L, B, width]``)."""
        return encoder(batch)

    def forward(self, z: torch.Tensor, batch: Mapping[str, Any]) -> Any:
        """The per-size outputs of embeddings ``z [B, width]`` (e.g. logits ``[G, B, C]``)."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        """The unweighted loss of each size, ``[G]``; the module weights and sums it."""
        raise NotImplementedError

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        raise NotImplementedError

    # Metrics: accumulated as exact sums per stage, so that one reduction over ranks gives the whole split's value.
    def reset_metrics(self, stage: str) -> None:
        raise NotImplementedError

    def update_metrics(self, stage: str, outputs: Any, batch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def compute_metrics(self, stage: str, reduce: Reduce) -> dict[str, float]:
        """``{"top1@8": ..., "loss": ..., "num_samples": n}`` over the whole split: every sum goes through
        ``reduce`` (a sum over ranks) before the division."""
        raise NotImplementedError

    def monitor_keys(self) -> list[str]:
        """Every validation metric the task logs (what a checkpoint monitor may name)."""
        return ["val/loss"]

    @property
    def default_monitor(self) -> str:
        """The validation metric the best checkpoint is chosen by, and that progress bars show."""
        return "val/loss"

    @property
    def num_logits(self) -> int | None:
        """Classes per size in the ``logits`` :meth:`predict` returns, or ``None`` when it returns none."""
        return None

    def predict(self, z: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """What embedding files hold for a batch: ``embeddings [B, width]``, ``labels [B]`` and, when
        :attr:`num_logits` is set, ``logits [G, B, C]``."""
        return {"embeddings": z, "labels": batch["label"]}

    def metadata(self) -> dict[str, Any]:
        """What checkpoints and embedding files record about the task (beside sizes, encoder and width)."""
        return {"task": self.name, "head": self.head_type}


def create_task(name: str, nesting_dims: Sequence[int], loss_weights: Sequence[float], width: int,
                **kwargs: Any) -> Task:
    """Build a registered task for an encoder of ``width``; ``kwargs`` are the task's own arguments."""
    if name not in TASKS:
        raise ConfigError("model.task", f"unknown task {name!r}", f"choose one of {sorted(TASKS)}")
    accepted = set(inspect.signature(TASKS[name]).parameters) - {"nesting_dims", "loss_weights", "width"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"is not an argument of the {name!r} task",
                          f"remove it, or use one of {sorted(accepted)}")
    return TASKS[name](nesting_dims=nesting_dims, loss_weights=loss_weights, width=width, **kwargs)
