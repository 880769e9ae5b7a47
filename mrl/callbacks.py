"""Lightning callbacks of the training app."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mrl.reporting import markdown_table, rows_by_dim, write_metrics_by_dim


class MetricsByDimReport(L.Callback):
    """After ``test``: write the per-size table (CSV, JSON, Markdown, PNG) to ``output_dir``, print it,
    and log it to W&B as a table."""

    def __init__(self, output_dir: str | Path, title: str = "test accuracy by representation size"):
        self.output_dir = Path(output_dir)
        self.title = title
        self.paths: dict[str, Path] = {}

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = pl_module.results.get("test")
        if not metrics:
            return
        rows = rows_by_dim(metrics, pl_module.nesting_dims)
        extra = {"head": pl_module.head_type, "nesting_dims": list(pl_module.nesting_dims),
                 "num_samples": metrics["num_samples"], "backbone": pl_module.hparams.backbone.get("name")}
        self.paths = write_metrics_by_dim(rows, self.output_dir, self.title, extra)
        print("\n" + markdown_table(rows, f"{self.title} ({pl_module.head_type}, {metrics['num_samples']} samples)"))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table("test/metrics_by_dim", columns=list(rows[0]), data=[list(r.values()) for r in rows])
