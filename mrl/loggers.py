"""Experiment loggers: CSV always, Weights & Biases when configured, offline unless it can sync.

A run must never stop at a W&B login prompt or wait on an unreachable server: without credentials
or without network, W&B runs in offline mode (sync later with ``wandb sync <run dir>/wandb``).
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from mrl.network import host_reachable

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


def create_loggers(cfg: Mapping[str, Any] | None, output_dir: str | Path, run_name: str, group: str,
                   tags: Sequence[str], config: Mapping[str, Any] | None = None,
                   wandb_run_id: str | None = None) -> list[Logger]:
    """``cfg = {"csv": {...} | None, "wandb": {"project", "entity", "mode"} | None}``. ``wandb_run_id``: the W&B
    run to log to, created or continued (``resume="allow"``): a resumed run passes the id its checkpoint holds."""
    cfg = dict(cfg or {})
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="csv", version="")]
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
