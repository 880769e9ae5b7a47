"""Lightning callbacks of the training app."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mrl.reporting import markdown_table, rows_by_dim, write_metrics_by_dim


class MetricsByDimReport(L.Callback):
    """After ``test``: write the per-size table (CSV, JSON, Markdown, PNG) to ``output_dir``, print it,
    and log it to W&B as a table. ``protocol`` (which split validated, which checkpoint was tested)
    goes into the JSON beside the numbers."""

    def __init__(self, output_dir: str | Path, title: str = "test accuracy by representation size",
                 protocol: dict | None = None):
        self.output_dir = Path(output_dir)
        self.title = title
        self.protocol = dict(protocol or {})
        self.paths: dict[str, Path] = {}

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = pl_module.results.get("test")
        if not metrics:
            return
        rows = rows_by_dim(metrics, pl_module.nesting_dims)
        extra = {"head": pl_module.head_type, "nesting_dims": list(pl_module.nesting_dims),
                 "num_samples": metrics["num_samples"], "backbone": pl_module.hparams.backbone.get("name"),
                 "protocol": self.protocol}
        self.paths = write_metrics_by_dim(rows, self.output_dir, self.title, extra)
        print("\n" + markdown_table(rows, f"{self.title} ({pl_module.head_type}, {metrics['num_samples']} samples)"))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("test/metrics_by_dim", columns=list(rows[0]), data=[list(r.values()) for r in rows])


class EpochSummary(L.Callback):
    """One plain line per epoch (for logs, where a progress bar would be noise): the training loss,
    the full-size validation top-1 and the time taken."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()  # a run resumed mid-epoch starts there, without an epoch start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        for key in ("train/loss", f"val/top1@{pl_module.nesting_dims[-1]}", "val/loss"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4g}")
        parts.append(f"{time.monotonic() - self._start:.1f} s")
        print("  ".join(parts), flush=True)
