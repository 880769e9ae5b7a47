"""``train(cfg)``: the training app behind ``scripts/train.py``, callable with a composed config.

Everything that can be wrong with the config or the data is checked before the first step:
data roots are scanned, the model is built, a resume checkpoint is compared with the config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from mrl.callbacks import MetricsByDimReport
from mrl.data import create_datamodule
from mrl.errors import ConfigError
from mrl.lightning import MatryoshkaModule, check_resume_compatible
from mrl.loggers import create_loggers


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_module(model_cfg: dict, datamodule) -> MatryoshkaModule:
    """The LightningModule for ``model_cfg``, sized to the data (channels, image size, classes)."""
    cfg = dict(model_cfg)
    backbone = {"in_chans": datamodule.in_chans, "image_size": datamodule.image_size, **cfg.pop("backbone")}
    num_classes = cfg.pop("num_classes", None)
    if num_classes not in (None, datamodule.num_classes):
        raise ConfigError("model.num_classes", f"is {num_classes} but the data has {datamodule.num_classes} classes",
                          "set model.num_classes=null to take it from the data")
    cfg.pop("ff_dim", None)
    return MatryoshkaModule(backbone=backbone, num_classes=datamodule.num_classes,
                            class_names=datamodule.class_names, **cfg)


def build_callbacks(cfg: dict, module: MatryoshkaModule, output_dir: Path, has_logger: bool) -> list[L.Callback]:
    callbacks: list[L.Callback] = []
    ckpt = cfg.get("checkpoint")
    if ckpt:
        monitor = ckpt.get("monitor", "auto")
        if monitor == "auto":
            monitor = f"val/top1@{module.nesting_dims[-1]}"
        callbacks.append(ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="epoch{epoch:03d}",
                                         monitor=monitor, mode=ckpt.get("mode", "max"),
                                         save_top_k=ckpt.get("save_top_k", 1), save_last=ckpt.get("save_last", True),
                                         auto_insert_metric_name=False))
    if cfg.get("lr_monitor", True) and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    bar = cfg.get("progress_bar", "tqdm")
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.get("refresh_rate", 1)))
    callbacks.append(MetricsByDimReport(output_dir))
    return callbacks


def _stage_metrics(module: MatryoshkaModule, trainer: L.Trainer, stage: str) -> dict[str, float]:
    """Per-size metrics of ``stage``; under ``ddp_spawn`` only ``callback_metrics`` come back to this process."""
    if module.results.get(stage):
        return dict(module.results[stage])
    prefix = f"{stage}/"
    return {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items()
            if (k.startswith(prefix) and "@" in k) or k in (f"{prefix}top1_mean", f"{prefix}top5_mean")}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and/or test one model. Returns ``{"val": {...}, "test": {...}, "best_model_path": ...,
    "output_dir": ...}`` with per-size metrics in percent."""
    test_checkpoint = cfg.get("test_checkpoint", "best")
    if test_checkpoint not in ("best", "last"):
        raise ConfigError("test_checkpoint", f"must be best or last, got {test_checkpoint!r}")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = create_datamodule(**_plain(cfg.data))
    datamodule.setup("fit")
    module = build_module(_plain(cfg.model), datamodule)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        check_resume_compatible(ckpt_path, module)

    dims = module.nesting_dims
    tags = [f"head={module.head_type}", f"dims={dims[0]}-{dims[-1]}x{len(dims)}", *cfg.get("tags", [])]
    run_name = f"{cfg.experiment_name}-{module.head_type}-" + (str(dims[0]) if module.head_type == "ff" else "all")
    loggers = create_loggers(_plain(cfg.get("logger")), output_dir, run_name, cfg.experiment_name, tags,
                             config=_plain(cfg))
    callbacks = build_callbacks(_plain(cfg.get("callbacks")) or {}, module, output_dir, bool(loggers))
    trainer_kwargs = _plain(cfg.trainer)
    if trainer_kwargs.get("strategy") == "ddp" and trainer_kwargs.get("accelerator") == "cpu":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    trainer = L.Trainer(**trainer_kwargs, logger=loggers, callbacks=callbacks, default_root_dir=str(output_dir))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    results: dict[str, Any] = {"output_dir": str(output_dir), "val": _stage_metrics(module, trainer, "val")}
    checkpoint = trainer.checkpoint_callback
    trained = cfg.get("train", True) and checkpoint is not None
    results["best_model_path"] = checkpoint.best_model_path if trained else ""
    results["last_model_path"] = checkpoint.last_model_path if trained else ""
    if cfg.get("test", True):
        # Without training, test the given checkpoint; without checkpoints (fast_dev_run), the weights in memory.
        test_ckpt = results[f"{test_checkpoint}_model_path"] if trained else (ckpt_path if not cfg.get("train", True) else None)
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt or None, verbose=False)
        results["test"] = _stage_metrics(module, trainer, "test")
    for logger in loggers:
        logger.finalize("success")
    return results
