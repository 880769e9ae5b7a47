"""``train(cfg)``: the training app behind ``scripts/train.py``, callable with a composed config.

Everything that can be wrong with the config or the data is checked before the first step:
data roots are scanned, the model is built, a resume checkpoint is compared with the config.
A run ends in one of four ways: results written (success), :class:`TrainingInterrupted` (SIGTERM:
a checkpoint was saved, nothing was tested), :class:`~mrl.slurm.JobRequeued` (the SLURM pre-emption
signal: a checkpoint was saved and the job requeued), or an error (non-finite loss, bad input): no table
is written as if it had succeeded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mrl.callbacks import EpochSummary, MetricsByDimReport, RunIdentity, WandbSizeSummaries
from mrl.checkpointing import AtomicCheckpointIO, RecoveryCheckpoint, resolve_resume
from mrl.app.config_checks import PROGRESS_BARS, check_train_config
from mrl.console import quiet_known_warnings, tee_console
from mrl.data import create_datamodule
from mrl.encoders import is_text_encoder
from mrl.data.datamodules import VALIDATE_ON_TEST_WARNING
from mrl.errors import ConfigError
from mrl.lightning import MatryoshkaModule, check_resume_compatible
from mrl.tasks import TASKS
from mrl.loggers import create_loggers, logged_step, new_wandb_run_id
from mrl.slurm import (JobRequeued, RequeueOnSignal, apply_process_env, check_allocation, cluster_environment,
                       requeue_signal, restart_count, slurm_job_id)
from mrl.sync_batchnorm import CPUSyncBatchNorm


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped training after saving ``checkpoint``; rerun with ``ckpt_path`` (or ``resume=auto``)."""

    def __init__(self, checkpoint: Path | None):
        self.checkpoint = checkpoint
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"interrupted by SIGTERM: {saved}")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_module(model_cfg: dict, datamodule) -> MatryoshkaModule:
    """The LightningModule for ``model_cfg``, sized to the data (classes; channels and image size for images; a
    text encoder must be the one the data tokenises for)."""
    cfg = dict(model_cfg)
    backbone = dict(cfg.pop("backbone"))
    if is_text_encoder(backbone.get("name")):
        check_tokenizer_matches(backbone, datamodule)
    elif not hasattr(datamodule, "image_size"):
        raise ConfigError("model.backbone.name", f"is the image encoder {backbone.get('name')!r} but the data is text",
                          "choose a text encoder (model=minilm, or model.backbone.name=hf/<model>)")
    else:
        if backbone.get("name") == "dual":  # an image-text model: the text tower reads the data's token ids
            check_tokenizer_matches(dict(backbone.get("text") or {}), datamodule)
        backbone = {"in_chans": datamodule.in_chans, "image_size": datamodule.image_size, **backbone}
    task = cfg.setdefault("task", "classification")
    if task not in TASKS:
        raise ConfigError("model.task", f"unknown task {task!r}", f"choose one of {sorted(TASKS)} (configs/task/)")
    for key, value in TASKS[task].data_args(datamodule).items():
        if key == "num_classes" and cfg.get(key) not in (None, value):
            raise ConfigError("model.num_classes", f"is {cfg[key]} but the data has {value} classes",
                              "set model.num_classes=null to take it from the data")
        cfg[key] = value
    cfg.pop("ff_dim", None)
    module = MatryoshkaModule(backbone=backbone, **cfg)
    if backbone.get("name") == "mlp":
        first_layer = datamodule.in_chans * datamodule.image_size ** 2 * backbone.get("hidden_dim", 512)
        if first_layer > 10_000_000:
            print(f"warning: model.backbone.name=mlp on {datamodule.image_size} px images has a "
                  f"{first_layer / 1e6:.0f}M-parameter first layer; set data.image_size smaller or choose a "
                  "convolutional backbone")
    return module


def check_tokenizer_matches(backbone: dict, datamodule) -> None:
    """A text encoder reads the token ids of its own tokenizer: the data must tokenise with the same model name
    and token limit (the presets interpolate both from model.backbone)."""
    tokenizer = getattr(datamodule, "tokenizer_name", None)
    if tokenizer is None:
        raise ConfigError("data.name", f"{datamodule.data_name!r} is image data but model.backbone.name is the text "
                          f"encoder {backbone['name']!r}", "choose a text data set (data=trec, sst2, agnews, text)")
    if tokenizer != backbone["name"]:
        raise ConfigError("data.tokenizer", f"is {tokenizer!r} but the encoder is {backbone['name']!r}: the token ids "
                          "would not match its vocabulary", "set data.tokenizer=${model.backbone.name}")
    limit = backbone.get("max_length", 128)
    if datamodule.max_length != limit:
        raise ConfigError("data.max_length", f"is {datamodule.max_length} but model.backbone.max_length is {limit}",
                          "set data.max_length=${model.backbone.max_length}")


def build_callbacks(cfg: dict, module: MatryoshkaModule, output_dir: Path, validates: bool, has_logger: bool,
                    bar: str) -> tuple[list[L.Callback], RecoveryCheckpoint | None]:
    """The run's callbacks, and the one that keeps ``last.ckpt`` (``None`` with ``checkpoint: null``).
    ``bar``: the resolved progress-bar kind (:func:`progress_bar_kind`)."""
    callbacks: list[L.Callback] = []
    recovery = None
    ckpt = cfg.get("checkpoint")
    if ckpt:
        recovery = RecoveryCheckpoint(output_dir / "checkpoints",
                                      every_n_train_steps=ckpt.get("every_n_train_steps") or 0,
                                      keep_step_checkpoints=ckpt.get("keep_step_checkpoints", 2))
        callbacks.append(recovery)
        if validates:  # the best checkpoint by a validation metric (never on test: see data.validation)
            monitor = ckpt.get("monitor", "auto")
            if monitor == "auto":
                monitor = module.task.default_monitor
            if monitor not in module.task.monitor_keys():
                keys = module.task.monitor_keys()  # suggested: the default, the means over sizes, the loss
                shown = list(dict.fromkeys([module.task.default_monitor,
                                            *(k for k in keys if "mean" in k or k == "val/loss"), *keys]))
                raise ConfigError("callbacks.checkpoint.monitor", f"{monitor!r} is never logged",
                                  f"choose one of {', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}")
            callbacks.append(ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best-epoch{epoch:03d}",
                                             monitor=monitor, mode=ckpt.get("mode", "max"),
                                             save_top_k=ckpt.get("save_top_k", 1), save_last=False,
                                             auto_insert_metric_name=False))
    if cfg.get("lr_monitor", True) and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.get("refresh_rate", 1)))
    else:
        callbacks.append(EpochSummary())
    return callbacks, recovery


def progress_bar_kind(kind: str) -> str:
    """``auto``: a tqdm bar on a terminal, plain per-epoch lines otherwise (scheduler logs stay readable)."""
    if kind not in PROGRESS_BARS:
        raise ConfigError("callbacks.progress_bar", f"unknown kind {kind!r}", f"choose one of {list(PROGRESS_BARS)}")
    if kind == "auto":
        return "tqdm" if sys.stderr.isatty() else "none"
    return kind


def _stage_metrics(module: MatryoshkaModule, trainer: L.Trainer, stage: str) -> dict[str, float]:
    """Per-size metrics of ``stage``; under ``ddp_spawn`` only ``callback_metrics`` come back to this process."""
    if module.results.get(stage):
        return dict(module.results[stage])
    prefix = f"{stage}/"
    metrics = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    if "num_samples" in metrics:
        metrics["num_samples"] = int(metrics["num_samples"])
    return metrics


def _hydra_job() -> tuple[str | None, bool]:
    """``(override_dirname, is_multirun)`` of the running Hydra job, ``(None, False)`` outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        return hydra_cfg.job.override_dirname, str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    except Exception:  # no Hydra app running (library use, tests composing configs)
        return None, False


def run_name(cfg: DictConfig, module: MatryoshkaModule) -> str:
    """The W&B run name: the experiment and, in a multirun, the job's own overrides."""
    overrides, multirun = _hydra_job()
    if multirun and overrides:
        return f"{cfg.experiment_name}:{overrides}"
    sizes = str(module.nesting_dims[0]) if module.head_type == "ff" else "all"
    return f"{cfg.experiment_name}-{module.head_type}-{sizes}"


def _trainer_kwargs(cfg: DictConfig, validates: bool, bar: str, checkpoints: bool) -> dict[str, Any]:
    kwargs = apply_process_env(_plain(cfg.trainer))
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if kwargs.get(key) == 1.0:  # the default: passing it only makes Lightning print a note
            kwargs.pop(key)
    if not validates:
        kwargs.update(limit_val_batches=0, num_sanity_val_steps=0)
    kwargs.update(enable_progress_bar=bar != "none", enable_checkpointing=checkpoints and validates)
    return kwargs


def finish_loggers(loggers: list, status: str) -> None:
    """Close every logger; a W&B run is finished, so the next job of a multirun starts its own. A requeued
    run (``status="preempted"``) is marked as pre-empted: W&B shows it so until the restarted job continues it."""
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            if status == "preempted":
                logger.experiment.mark_preempting()
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and/or test one model. Returns ``{"val": {...}, "test": {...}, "best_model_path": ...,
    "last_model_path": ..., "output_dir": ...}`` with per-size metrics in percent.

    Raises :class:`ConfigError` for bad input (before training), :class:`NonFiniteLossError` when the loss
    diverges, :class:`TrainingInterrupted` on SIGTERM (after saving a checkpoint).
    """
    check_train_config(cfg)
    check_allocation(cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1))
    quiet_known_warnings()
    test_checkpoint = cfg.get("test_checkpoint", "best")
    validation = cfg.data.get("validation", "holdout")
    if test_checkpoint == "best" and validation == "none" and cfg.get("train", True):
        raise ConfigError("test_checkpoint", "is best but data.validation=none gives nothing to pick it by",
                          "set test_checkpoint=last (the final state), or data.validation=holdout")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_bar_kind((cfg.get("callbacks") or {}).get("progress_bar", "auto"))  # before the tee: a tty?
    with tee_console(output_dir / "train.log"):
        print(f"outputs: {output_dir.resolve()}", flush=True)
        return _train(cfg, output_dir, test_checkpoint, validation, bar)


def _train(cfg: DictConfig, output_dir: Path, test_checkpoint: str, validation: str, bar: str) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = create_datamodule(**_plain(cfg.data))
    datamodule.setup("fit")
    module = build_module(_plain(cfg.model), datamodule)
    validates = datamodule.val_set is not None
    do_train = cfg.get("train", True)
    ckpt_path = checkpoint = cfg.get("ckpt_path")
    if do_train:
        resume = _default_resume(cfg.get("resume"), output_dir)
        ckpt_path, checkpoint = resolve_resume(ckpt_path, resume, output_dir / "checkpoints") or (None, None)
    if ckpt_path:
        check_resume_compatible(checkpoint, module)
    identity = _run_identity(cfg, checkpoint if do_train else None)
    if validation == "test":
        print(f"warning: {VALIDATE_ON_TEST_WARNING}")

    dims = module.nesting_dims
    # the tags a W&B runs table filters a study by: head, encoder, data, sizes
    tags = [f"head={module.head_type}", f"backbone={module.hparams.backbone.get('name')}", f"data={cfg.data.name}",
            f"dims={dims[0]}-{dims[-1]}x{len(dims)}", *cfg.get("tags", [])]
    config = _plain(cfg)
    config["model"]["nesting_dims"] = list(dims)  # resolved ("auto" -> the sizes), so W&B can group runs by them
    loggers = create_loggers(_plain(cfg.get("logger")), output_dir, run_name(cfg, module), cfg.experiment_name, tags,
                             config=config, wandb_run_id=identity.wandb_run_id,
                             resume_step=logged_step(checkpoint) if (do_train and ckpt_path) else None)
    callbacks, recovery = build_callbacks(_plain(cfg.get("callbacks")) or {}, module, output_dir, validates,
                                          bool(loggers), bar)
    callbacks += [identity, WandbSizeSummaries()]
    slurm = _plain(cfg.get("slurm")) or {}
    if slurm_job_id() and slurm.get("requeue", True) and recovery is not None and do_train:
        callbacks.append(RequeueOnSignal(requeue_signal(slurm.get("requeue_signal", "USR2")), recovery.save_now,
                                         slurm_job_id(), slurm.get("scontrol", "scontrol")))
    protocol = {"validation": validation, "test_checkpoint": test_checkpoint if do_train else "given",
                "selected_on_test": validation == "test" and test_checkpoint == "best" and do_train}
    report = MetricsByDimReport(output_dir, protocol=protocol)
    callbacks.append(report)
    kwargs = _trainer_kwargs(cfg, validates, bar, recovery is not None)
    on_cpu = kwargs.get("accelerator") == "cpu" or (kwargs.get("accelerator") in (None, "auto")
                                                      and not torch.cuda.is_available())
    plugins = [AtomicCheckpointIO(), *([environment] if (environment := cluster_environment(slurm)) else []),
               *([CPUSyncBatchNorm()] if kwargs.get("sync_batchnorm") and on_cpu else [])]  # torch's: CUDA only
    trainer = L.Trainer(**kwargs, logger=loggers, callbacks=callbacks, plugins=plugins,
                        default_root_dir=str(output_dir))
    try:
        results = _fit_and_test(cfg, trainer, module, datamodule, ckpt_path, test_checkpoint, recovery, report)
    except SIGTERMException:
        finish_loggers(loggers, "interrupted")
        raise TrainingInterrupted(recovery.interrupted_path if recovery else None) from None
    except JobRequeued:
        finish_loggers(loggers, "preempted")
        raise
    except BaseException:
        finish_loggers(loggers, "failed")
        raise
    finish_loggers(loggers, "success")
    _print_outputs(results, report)
    return results


def _default_resume(resume: Any, output_dir: Path) -> Any:
    """``resume`` as given; unset inside a SLURM job: ``auto``, so a requeued job (same job id, so the same run
    directory) continues from its checkpoint without a new argument (``resume=never`` starts afresh)."""
    job = slurm_job_id()
    if resume is not None or not job:
        return resume
    restarts = restart_count()
    if restarts and not any((output_dir / "checkpoints").glob("*.ckpt")):
        print(f"warning: restart {restarts} of SLURM job {job} finds no checkpoint in {output_dir / 'checkpoints'} "
              "(the run directory was deleted or moved, or the job stopped before its first save): training "
              "starts from scratch")
    return "auto"


def _run_identity(cfg: DictConfig, checkpoint: dict[str, Any] | None) -> RunIdentity:
    """The run's identity: continued from the resumed checkpoint (same experiment required, same W&B run),
    else new."""
    stored = RunIdentity.stored(checkpoint)
    experiment = str(cfg.experiment_name)
    if stored.get("experiment") not in (None, experiment):
        raise ConfigError("ckpt_path", f"checkpoint belongs to experiment {stored['experiment']!r}, this run is "
                          f"{experiment!r}", f"resume it with +experiment={stored['experiment']} (or "
                          "experiment_name=...), or start this experiment without ckpt_path/resume")
    wandb = (cfg.get("logger") or {}).get("wandb") or {}
    logs_to_wandb = bool(wandb) and wandb.get("mode", "auto") != "disabled"
    run_id = stored.get("wandb_run_id") or (new_wandb_run_id() if logs_to_wandb else None)
    return RunIdentity(experiment, run_id, wandb.get("project", "mrl"), wandb.get("entity"))


def _fit_and_test(cfg, trainer, module, datamodule, ckpt_path, test_checkpoint, recovery, report) -> dict[str, Any]:
    do_train = cfg.get("train", True)
    if do_train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    results: dict[str, Any] = {"output_dir": str(trainer.default_root_dir),
                               "val": _stage_metrics(module, trainer, "val")}
    best = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    saved = do_train and not trainer.fast_dev_run
    results["best_model_path"] = best.best_model_path if (saved and best) else ""
    has_last = saved and recovery is not None and recovery.last_path.is_file()
    results["last_model_path"] = str(recovery.last_path) if has_last else ""
    if saved and ckpt_path and not results["last_model_path"]:
        results["last_model_path"] = str(ckpt_path)  # resumed a finished run: the final state is the one given
    if cfg.get("test", True):
        if not do_train:
            test_ckpt = ckpt_path  # evaluate the given checkpoint
        elif not saved:
            test_ckpt = None  # fast_dev_run: the weights in memory
        else:
            test_ckpt = results[f"{test_checkpoint}_model_path"]
            if not test_ckpt:
                raise ConfigError("test_checkpoint", f"is {test_checkpoint} but no such checkpoint was saved",
                                  "set test_checkpoint=last, or keep callbacks.checkpoint on")
        report.protocol["tested_checkpoint"] = str(test_ckpt) if test_ckpt else "weights in memory"
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt or None, verbose=False)
        results["test"] = _stage_metrics(module, trainer, "test")
    return results


def _print_outputs(results: dict[str, Any], report: MetricsByDimReport) -> None:
    lines = [f"{name}: {path}" for name, path in (("best checkpoint", results.get("best_model_path")),
                                                  ("last checkpoint", results.get("last_model_path"))) if path]
    lines += [f"table: {path}" for suffix, path in report.paths.items() if suffix in ("csv", "md")]
    if lines:
        print("\n".join(lines), flush=True)
