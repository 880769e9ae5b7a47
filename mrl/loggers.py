"""Experiment loggers: CSV always, Weights & Biases when configured, offline unless it can sync.

A run must never stop at a W&B login prompt or wait on an unreachable server: without credentials
or without network, W&B runs in offline mode (sync later with ``wandb sync <run dir>/wandb``).
"""

from __future__ import annotations

import csv
import io
import math
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mrl.network import host_reachable
from mrl.report.run_tables import atomic_write_text

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _has_wandb_credentials(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, else ``online`` with credentials and a reachable server,
    else ``offline``."""
    if mode not in WANDB_MODES:
        from mrl.errors import ConfigError
        raise ConfigError("logger.wandb.mode", f"unknown mode {mode!r}", f"choose one of {list(WANDB_MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    return "online" if _has_wandb_credentials(host) and host_reachable(host) else "offline"


def new_wandb_run_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, W&B's own format), made without importing wandb."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_settings(cfg: Mapping[str, Any]):
    """The W&B settings that keep a run from hanging on an unreachable server: ``init_timeout`` (seconds for
    ``wandb.init``) and ``finish_timeout`` (seconds the end of the run waits for the upload; W&B's own default,
    0, waits for ever). Records never uploaded stay in the run's folder for ``wandb sync``."""
    import wandb

    return wandb.Settings(init_timeout=float(cfg.get("init_timeout", 90)),
                          finish_timeout=float(cfg.get("finish_timeout", 600)))


def logged_step(checkpoint: Mapping[str, Any]) -> int:
    """The logger step a checkpoint was saved at (Lightning's ``_batches_that_stepped``, the ``step`` column of
    ``metrics.csv``): what the run logged at or before it is not logged again when the run resumes from it."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return int(loop.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def _row_step(row: Mapping[str | None, Any]) -> float:
    """A ``metrics.csv`` row's step; ``inf`` (after every step) for a row that is not whole: Lightning writes
    every cell, so a row cut short by a kill has fewer (``csv.DictReader`` fills them with ``None``) and a bad
    one more (a ``None`` key), or a step that does not parse."""
    if None in row or None in row.values():
        return math.inf
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return math.inf


class _ContinuedMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it continues ``metrics.csv`` up to ``keep_through_step`` instead of
    deleting it (Lightning's writer starts every run with an empty file, so a resumed run would lose the
    validation curve of the epochs before its checkpoint). Rows after that step, logged by the interrupted run
    after its last save, go: the resumed run logs them again."""

    def __init__(self, log_dir: str, keep_through_step: int) -> None:
        self.keep_through_step = keep_through_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _row_step(row) <= self.keep_through_step]
        self.metrics_keys = header  # appended rows keep the columns; new ones rewrite the header (Lightning's code)
        kept = io.StringIO()
        writer = csv.DictWriter(kept, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, kept.getvalue())  # a kill while rewriting leaves the old file whole


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: ``resume_step`` (:func:`logged_step` of the
    checkpoint resumed from) keeps the rows logged up to it; ``None`` (a fresh run) starts the file anew."""

    def __init__(self, save_dir: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="csv", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = (ExperimentWriter(self.log_dir) if self.resume_step is None
                                else _ContinuedMetricsWriter(self.log_dir, self.resume_step))
        return self._experiment


def create_loggers(cfg: Mapping[str, Any] | None, output_dir: str | Path, run_name: str, group: str,
                   tags: Sequence[str], config: Mapping[str, Any] | None = None,
                   wandb_run_id: str | None = None, resume_step: int | None = None) -> list[Logger]:
    """``cfg = {"csv": {...} | None, "wandb": {"project", "entity", "mode"} | None}``. ``wandb_run_id``: the W&B
    run to log to, created or continued (``resume="allow"``): a resumed run passes the id its checkpoint holds.
    ``resume_step``: a resumed run's :func:`logged_step`, up to which ``csv/metrics.csv`` is continued."""
    cfg = dict(cfg or {})
    loggers: list[Logger] = [ResumableCSVLogger(str(output_dir), resume_step)]
    wandb_cfg = cfg.get("wandb")
    if wandb_cfg:
        mode = resolve_wandb_mode(wandb_cfg.get("mode", "auto"))
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            logger = WandbLogger(project=wandb_cfg.get("project", "mrl"), entity=wandb_cfg.get("entity"),
                                 name=run_name, group=group, tags=list(tags), save_dir=str(output_dir),
                                 offline=mode == "offline", mode=mode, job_type=wandb_cfg.get("job_type", "train"),
                                 id=wandb_run_id, resume="allow" if wandb_run_id else None,
                                 settings=wandb_settings(wandb_cfg))
            # Lightning always passes W&B's deprecated `anonymous` setting, which then prints a notice.
            logger._wandb_init.pop("anonymous", None)
            try:
                logger.experiment  # noqa: B018  (wandb.init, here, before training: a dead server fails now)
            except Exception as err:  # wandb.errors.CommError and the like, after init_timeout
                from mrl.errors import ConfigError

                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ConfigError("logger.wandb.mode", f"is {mode} but W&B did not start ({reason})",
                                  "set logger.wandb.mode=offline (and `wandb sync` the run later), or auto") from None
            if config is not None:
                logger.log_hyperparams(dict(config))
            loggers.append(logger)
    return loggers
