"""The LightningModule every task shares: encoder + task (heads, Matryoshka loss, per-size metrics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mrl.checkpoint import CHECKPOINT_KEY, read_checkpoint, upgrade_checkpoint, upgrade_state_dict
from mrl.encoders import create_encoder
from mrl.errors import ConfigError
from mrl.nesting import resolve_loss_weights, resolve_nesting_dims
from mrl.optim import create_optimizer, create_scheduler
from mrl.tasks import create_task



def as_batch(batch: Any) -> dict[str, Any]:
    """A batch as the dict every encoder and task reads: a dict stays as it is (a shallow copy); the
    ``(image, label)`` pair of a plain ``DataLoader`` over a torchvision-style dataset becomes
    ``{"image", "label"}``, and a lone tensor ``{"image"}``."""
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, torch.Tensor):
        return {"image": batch}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return {"image": batch[0], "label": batch[1]}
    raise TypeError(f"expected a batch dict (image or input_ids, and label) or an (image, label) pair, "
                    f"got {type(batch).__name__}")


class MatryoshkaModule(L.LightningModule):
    """The LightningModule every task shares: an encoder (batch dict -> embedding ``z [B, width]``) and a task
    (:mod:`mrl.tasks`: heads, per-prefix loss and per-size metrics on ``z``), with the optimiser, schedule,
    checkpoint metadata and the non-finite-loss guard.

    Logs ``train/loss`` (and ``train/loss@{m}``), and for ``val``/``test`` what the task computes (classification:
    ``{stage}/top1@{m}``, ``{stage}/top5@{m}``, their means over sizes and ``{stage}/loss``). Plain keyword
    arguments only, so :func:`mrl.load_model` rebuilds the model from a checkpoint without Hydra.

    Args:
        backbone: arguments of :func:`mrl.encoders.create_encoder` (``name``, ``pretrained``, ...).
        task: a name of :data:`mrl.tasks.TASKS` (``classification``).
        nesting_dims: ``"auto"`` or a strictly increasing list of sizes.
        loss_weights: per-size weights of the loss (``None``: all ones).
        optimizer: arguments of :func:`mrl.optim.create_optimizer`; ``lr_reference_batch`` (if set)
            scales ``lr`` by ``global_batch / lr_reference_batch``, the linear scaling rule.
        scheduler: ``name`` and arguments of :func:`mrl.optim.create_scheduler` (``warmup_epochs``...).
        channels_last: NHWC weights and inputs (faster convolutions under bf16 on tensor cores).
        compile: ``torch.compile`` the encoder and task in place (``nn.Module.compile``, so state-dict keys and
            checkpoints stay those of the eager model); ``True`` or a dict of ``torch.compile`` options
            (``mode``, ``dynamic``, ...).
        task_args: the task's own arguments (classification: ``num_classes``, ``head`` = ``mrl`` | ``mrle`` |
            ``ff``, ``label_smoothing``, ``class_names``).
    """

    def __init__(self, backbone: Mapping[str, Any], task: str = "classification",
                 nesting_dims: str | Sequence[int] = "auto", loss_weights: Sequence[float] | None = None,
                 optimizer: Mapping[str, Any] | None = None, scheduler: Mapping[str, Any] | None = None,
                 channels_last: bool = False, compile: bool | Mapping[str, Any] = False, **task_args: Any):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = create_encoder(**dict(backbone))
        # An FF-k model uses a k-dim prefix by design; for MRL a missing full width is worth a warning.
        dims = resolve_nesting_dims(nesting_dims, self.encoder.width, warn_partial=task_args.get("head") != "ff")
        self.task = create_task(task, dims, resolve_loss_weights(loss_weights, dims), self.encoder.width,
                                **task_args)
        self.task.attach(self.encoder)
        self.nesting_dims = self.task.nesting_dims
        self.register_buffer("loss_weights", torch.tensor(self.task.loss_weights), persistent=False)
        self.optimizer_cfg = dict(optimizer or {"name": "sgd", "lr": 0.1})
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        self.channels_last = channels_last
        self.results: dict[str, dict[str, float]] = {}
        self._first_non_finite: torch.Tensor | None = None  # see _record_first_non_finite
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        if compile:
            options = dict(compile) if isinstance(compile, Mapping) else {}
            unknown = sorted(set(options) - {"mode", "dynamic", "fullgraph", "backend", "options"})
            if unknown:
                raise ConfigError("model.compile", f"unknown torch.compile option(s) {unknown}",
                                  "use true, false or a dict of mode/dynamic/fullgraph/backend/options")
            self.encoder.compile(**options)
            self.task.compile(**options)

    @property
    def head_type(self) -> str:
        return self.task.head_type

    @property
    def width(self) -> int:
        return self.encoder.width

    @property
    def class_names(self) -> list[str] | None:
        return getattr(self.task, "class_names", None)

    def forward(self, batch: Any) -> Any:
        """The task's per-size outputs of a batch (see :func:`as_batch`); classification: logits ``[G, B, C]``."""
        batch = self._encoder_inputs(batch)
        return self.task(self.task.encode(self.encoder, batch), batch)

    def embed(self, batch: Any) -> torch.Tensor:
        """Full-width embedding ``[B, width]``; its first m coordinates are the size-m embedding."""
        return self.encoder(self._encoder_inputs(batch))

    def _encoder_inputs(self, batch: Any) -> dict[str, Any]:
        batch = as_batch(batch)
        image = batch.get("image")
        if self.channels_last and isinstance(image, torch.Tensor) and image.ndim == 4:
            batch["image"] = image.contiguous(memory_format=torch.channels_last)
        return batch

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        batch = as_batch(batch)
        self.task.step = self.global_step
        per_size = self.task.loss(self(batch), batch)
        loss = (per_size * self.loss_weights).sum()
        self._record_first_non_finite(loss, per_size)
        batch_size = self.task.batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self._writes_step_metrics():
            self._stop_if_not_finite()
            trained = self.task.sizes_this_step  # a task training a subset of sizes per step logs only those
            self.log_dict({f"train/loss@{m}": value for g, (m, value) in enumerate(zip(self.nesting_dims,
                                                                                     per_size.detach()))
                           if trained is None or g in trained}, batch_size=batch_size)
        return loss

    def _writes_step_metrics(self) -> bool:
        """Whether the loggers receive this step's metrics (every ``trainer.log_every_n_steps`` steps). Values
        logged on other steps are overwritten unseen, and each ``self.log`` costs the host about a third of a
        millisecond (Lightning moves its whole result entry per call), time a GPU step waits for."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def _record_first_non_finite(self, loss: torch.Tensor, per_size: torch.Tensor) -> None:
        """Keep, on the device, the epoch, step and per-size losses of the first non-finite loss. Reading the
        loss on the host every step would make the CPU wait for the GPU each step, so that it cannot queue the
        next one (on an H200 that cost the framework several percent of a bare loop's images/s); the flag is
        read at the checks of :meth:`_stop_if_not_finite` instead."""
        if self._first_non_finite is None or self._first_non_finite.device != loss.device:
            self._first_non_finite = torch.full((2 + per_size.numel(),), -1.0, device=loss.device)
        record = self._first_non_finite
        new = ~torch.isfinite(loss.detach()) & (record[0] < 0)
        # Python numbers enter as kernel arguments: no host-to-device copy, which would wait for the stream.
        record[0] = torch.where(new, self.current_epoch, record[0])
        record[1] = torch.where(new, self.global_step, record[1])
        record[2:] = torch.where(new, per_size.detach().to(record.dtype), record[2:])

    def _stop_if_not_finite(self) -> None:
        """Raise if any loss so far was non-finite, on every rank at once (a lone rank raising would leave the
        others waiting in a collective). Called on the steps whose metrics reach the loggers, before every
        checkpoint (a diverged model is never saved) and when training ends, so every rank calls it at the
        same points; the error names the first non-finite step."""
        record = self._first_non_finite
        finite = record is None or bool(record[0] < 0)
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        if record is None or record[0] < 0:
            raise NonFiniteLossError("train/loss is not finite on another rank")
        epoch, step, *per_size = record.tolist()
        sizes = ", ".join(f"@{m}: {v:.4g}" for m, v in zip(self.nesting_dims, per_size))
        raise NonFiniteLossError(f"train/loss is not finite at epoch {int(epoch)}, step {int(step)} "
                                 f"(per size {sizes})")

    def on_train_end(self) -> None:
        self._stop_if_not_finite()

    def _eval_step(self, stage: str, batch) -> None:
        batch = as_batch(batch)
        self.task.update_metrics(stage, self(batch), batch)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_epoch_end(self, stage: str) -> None:
        # Sums of exact counts over ranks, so every figure is the one over the whole split.
        metrics = self.task.compute_metrics(
            stage, lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum"))
        self.results[stage] = metrics
        # Already reduced over ranks; the monitored metric also goes to the progress bar.
        shown = self.task.default_monitor.removeprefix("val/")
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", float(value), prog_bar=key == shown, sync_dist=False)
        self.task.reset_metrics(stage)

    def on_validation_epoch_start(self) -> None:
        self.task.reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.task.reset_metrics("test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        reference_batch = cfg.pop("lr_reference_batch", None)
        if reference_batch:
            cfg["lr"] = cfg["lr"] * self._global_batch_size() / reference_batch
        optimizer = create_optimizer(self, encoder=self.encoder, **cfg)
        sched = dict(self.scheduler_cfg)
        name = sched.pop("name", "none")
        if name == "none":
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        steps_per_epoch = max(total_steps // epochs, 1)
        scheduler = create_scheduler(optimizer, name, total_steps, steps_per_epoch, **sched)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _global_batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "batch_size"):
            raise ConfigError("model.optimizer.lr_reference_batch", "needs a datamodule with a batch_size",
                              "set lr_reference_batch=null and give the final lr")
        return datamodule.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """What embedding files hold (:meth:`mrl.tasks.Task.predict`): ``{"embeddings": [B, width], "labels": [B]}``
        and, for classification, ``"logits": [G, B, C]``; ``"index": [B]`` when the batch has it."""
        batch = self._encoder_inputs(batch)
        out = self.task.predict(self.task.encode(self.encoder, batch), batch)
        if "index" in batch:  # streamed data: each sample's place in its split (see mrl.embeddings.EmbeddingWriter)
            out["index"] = batch["index"]
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":  # also the checkpoints after validation
            self._stop_if_not_finite()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        split = datamodule.split_signature() if hasattr(datamodule, "split_signature") else None
        checkpoint[CHECKPOINT_KEY] = {**self.task.metadata(), "nesting_dims": list(self.nesting_dims),
                                      "width": self.width, "encoder": self.hparams.backbone.get("name"),
                                      "backbone": self.hparams.backbone.get("name"), "data_split": split}
        checkpoint[RNG_KEY] = gather_rng_states(self.trainer.world_size if self._trainer is not None else 1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)  # before Lightning loads the state dict
        # Only when training resumes: the model's own randomness (dropout, drop-path) continues where it
        # stopped. Data order and augmentation are seeded by (seed, epoch, index) in mrl.data.sampling.
        states = checkpoint.get(RNG_KEY)
        if states and self._trainer is not None and self.trainer.state.fn == "fit":
            set_rng_state(states[self.trainer.global_rank % len(states)])


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops instead of training on garbage."""


RNG_KEY = "mrl_rng_states"  # per rank: torch CPU, CUDA, NumPy and Python RNG states


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    # Tensors and plain numbers only, so checkpoints still load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      cached],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (checkpoints are written by rank 0 alone)."""
    state = _rng_state()
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        states: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(states, state)
        return states
    return [state]


def check_resume_compatible(checkpoint: str | dict[str, Any], module: MatryoshkaModule) -> None:
    """Fail before training when a checkpoint (a path, or one already read) was made for another head,
    sizes, classes or backbone (anything that would end in a state-dict mismatch)."""
    ckpt = read_checkpoint(checkpoint)[0] if isinstance(checkpoint, (str, Path)) else checkpoint
    meta = ckpt[CHECKPOINT_KEY]
    mine = {"task": module.task.name, "head": module.head_type, "nesting_dims": list(module.nesting_dims),
            "num_classes": getattr(module.task, "num_classes", None)}
    for key, value in mine.items():
        if meta.get(key, value) != value:
            raise ConfigError("ckpt_path", f"checkpoint has {key}={meta[key]} but the config has {key}={value}",
                              f"set model.{key}={meta[key]} to resume it, or start a new run without ckpt_path")
    if module.class_names is not None and meta.get("class_names") not in (None, module.class_names):
        raise ConfigError("ckpt_path", "checkpoint's class names differ from the data's classes",
                          "resume with the data the checkpoint was trained on")
    saved = dict(ckpt.get("hyper_parameters", {}).get("backbone") or {})
    for key in ("name", "small_input", "width", "hidden_dim", "channels"):
        if key in saved and saved.get(key) != module.hparams.backbone.get(key):
            raise ConfigError("ckpt_path", f"checkpoint's backbone has {key}={saved.get(key)!r} but the config has "
                              f"{module.hparams.backbone.get(key)!r}",
                              f"set model.backbone.{key}={saved.get(key)} to resume it, or start a new run")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in upgrade_state_dict(ckpt["state_dict"]).items()}
    if expected != stored:
        differing = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
        k = differing[0]
        raise ConfigError("ckpt_path", f"checkpoint's weights do not fit the configured model ({len(differing)} "
                          f"tensors differ, e.g. {k}: {stored.get(k)} in the checkpoint, {expected.get(k)} here)",
                          "resume with the model config the checkpoint was trained with")
