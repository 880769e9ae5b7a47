"""Classification with Matryoshka heads: the paper's ImageNet (ResNet, ViT) and BERT fine-tuning task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mrl.errors import ConfigError
from mrl.heads import create_head
from mrl.losses import CrossEntropy, MatryoshkaLoss
from mrl.metrics import SizeAccuracy
from mrl.tasks.base import Reduce, Task, register_task


@register_task
class ClassificationTask(Task):
    """A linear classifier on every prefix: ``head`` ``mrl`` (one per size), ``mrle`` (tied weights) or ``ff``
    (one size); cross-entropy with label smoothing on each size's logits, summed with the loss weights; top-1 and
    top-5 accuracy per size.

    ``forward(z [B, width]) -> logits [G, B, num_classes]``; batches carry ``label [B]`` (int64).
    """

    name = "classification"

    def __init__(self, nesting_dims: Sequence[int], loss_weights: Sequence[float], width: int, num_classes: int,
                 head: str = "mrl", label_smoothing: float = 0.0, class_names: Sequence[str] | None = None):
        super().__init__(nesting_dims, loss_weights)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError("model.label_smoothing", f"must be in [0, 1), got {label_smoothing}")
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ConfigError("model.num_classes", f"is {num_classes} but the data has {len(self.class_names)} classes",
                              "leave model.num_classes to the data (the presets use ${data.num_classes})")
        self.num_classes = num_classes
        self.head = create_head(head, self.nesting_dims, num_classes)
        self.head_type = self.head.name
        self.criterion = MatryoshkaLoss(CrossEntropy(label_smoothing), self.loss_weights)
        self.accuracy = {stage: SizeAccuracy(self.nesting_dims) for stage in ("val", "test")}

    @classmethod
    def data_args(cls, datamodule: Any) -> dict[str, Any]:
        return {"num_classes": datamodule.num_classes, "class_names": datamodule.class_names}

    def forward(self, z: torch.Tensor, batch: Mapping[str, Any] | None = None) -> torch.Tensor:
        return self.head(z)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.criterion.per_size(outputs, batch["label"])

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["label"].numel()

    def reset_metrics(self, stage: str) -> None:
        self.accuracy[stage].reset()

    def update_metrics(self, stage: str, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        y = batch["label"]
        self.accuracy[stage].update(outputs, y, loss_sum=self.criterion(outputs, y).detach() * y.numel())

    def compute_metrics(self, stage: str, reduce: Reduce) -> dict[str, float]:
        acc = self.accuracy[stage]
        correct, total, loss_sum = reduce(acc.correct), reduce(acc.total), reduce(acc.loss_sum)
        metrics = acc.compute(correct.cpu(), total.cpu())
        metrics["loss"] = float(loss_sum) / max(int(total), 1)
        metrics["num_samples"] = int(total)
        return metrics

    def monitor_keys(self) -> list[str]:
        return ([f"val/top{k}@{m}" for k in (1, 5) for m in self.nesting_dims]
                + ["val/top1_mean", "val/top5_mean", "val/loss"])

    @property
    def default_monitor(self) -> str:
        return f"val/top1@{self.nesting_dims[-1]}"

    @property
    def num_logits(self) -> int:
        return self.num_classes

    def predict(self, z: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"embeddings": z, "logits": self.head(z), "labels": batch["label"]}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "num_classes": self.num_classes, "class_names": self.class_names}
