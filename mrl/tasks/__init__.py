"""Tasks: what a Matryoshka embedding is trained for (heads, loss, per-size metrics) on top of the shared
LightningModule. ``classification`` today; contrastive, masked-LM and image-text tasks register the same way."""

from mrl.tasks.base import TASKS, Task, create_task, register_task
from mrl.tasks.classification import ClassificationTask
from mrl.tasks.contrastive import ContrastiveTask
from mrl.tasks.dual_encoder import DualEncoderTask
from mrl.tasks.mlm import MaskedLMTask

__all__ = ["TASKS", "ClassificationTask", "ContrastiveTask", "DualEncoderTask", "MaskedLMTask", "Task", "create_task",
           "register_task"]
