"""Lightning callbacks of the training app."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mrl.report.run_tables import markdown_table, rows_by_dim, write_metrics_by_dim


def log_size_table(run, prefix: str, rows: list[dict], x: str, columns: list[str]) -> None:
    """Log ``rows`` (one per size) to the W&B ``run`` as the table ``<prefix>/metrics_by_dim``, one line plot per
    metric column against ``x`` (``<prefix>/<column>_by_dim``), and each value as the summary field
    ``<prefix>/<column>@<size>``."""
    import wandb

    table = wandb.Table(columns=[x, *columns], data=[[r[x], *(r.get(c) for c in columns)] for r in rows])
    plots = {f"{prefix}/{c}_by_dim": wandb.plot.line(table, x, c, title=f"{prefix} {c} by size") for c in columns}
    run.log({f"{prefix}/metrics_by_dim": table, **plots})
    for r in rows:
        for c in columns:
            if r.get(c) is not None:
                run.summary[f"{prefix}/{c}@{r[x]}"] = r[c]


class MetricsByDimReport(L.Callback):
    """After ``test``: write the per-size table (CSV, JSON, Markdown, PNG) to ``output_dir``, print it,
    and log it to W&B as a table. ``protocol`` (which split validated, which checkpoint was tested)
    goes into the JSON beside the numbers."""

    def __init__(self, output_dir: str | Path, title: str = "test metrics by representation size",
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
                log_size_table(logger.experiment, "test", rows, "dim", [c for c in rows[0] if c != "dim"])


class WandbSizeSummaries(L.Callback):
    """W&B runs that compare across sizes: the summary of every ``val/top{1,5}@{m}`` holds its best and its final
    value (``{"max": .., "last": ..}``; ``val/loss``: min and last), so a W&B runs table of a group shows MRL,
    MRL-E and FF-k side by side at each size (the test metrics, logged once, are their own summary)."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key in pl_module.task.monitor_keys():
                    best = "min" if key.split("/")[-1].startswith("loss") else "max"
                    logger.experiment.define_metric(key, summary=f"{best},last")


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
        for key in dict.fromkeys(("train/loss", pl_module.task.default_monitor, "val/loss")):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4g}")
        parts.append(f"{time.monotonic() - self._start:.1f} s")
        print("  ".join(parts), flush=True)


class RunIdentity(L.Callback):
    """What a resumed run shares with the run it continues, stored in every checkpoint (Lightning keeps a
    callback's ``state_dict`` under ``checkpoint["callbacks"][state_key]``): the experiment's name, so a
    checkpoint of another experiment is refused, and the W&B run (id, project, entity), so a requeued job
    continues its W&B run and ``scripts/eval.py`` adds its tables to it."""

    STATE_KEY = "RunIdentity"

    def __init__(self, experiment: str, wandb_run_id: str | None, wandb_project: str | None = None,
                 wandb_entity: str | None = None):
        self.experiment, self.wandb_run_id = experiment, wandb_run_id
        self.wandb_project, self.wandb_entity = wandb_project, wandb_entity

    @property
    def state_key(self) -> str:
        return self.STATE_KEY

    def state_dict(self) -> dict:
        return {"experiment": self.experiment, "wandb_run_id": self.wandb_run_id,
                "wandb_project": self.wandb_project, "wandb_entity": self.wandb_entity}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # read before the run is built (RunIdentity.stored), when the loggers are created

    @classmethod
    def stored(cls, checkpoint: dict | None) -> dict:
        """The identity a checkpoint was saved with (``{}`` for checkpoints older than this callback)."""
        return dict(((checkpoint or {}).get("callbacks") or {}).get(cls.STATE_KEY) or {})
