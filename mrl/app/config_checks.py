"""Checks of the composed training config that need neither data nor a model.

:func:`check_train_config` runs first thing in :func:`mrl.app.train.train`: before the data is loaded,
the model is built or anything is written to disk. Each bad value raises a one-line
:class:`~mrl.errors.ConfigError` (``<field>: <problem>; <fix>``), which ``scripts/train.py`` prints as
``error: ...`` with exit status 2.

The checks are small reusable validators (a number in a range, one of a set of choices, a device
that exists, a directory that can be written) applied to a table of fields. A field that is absent
is not checked, so the checks also work on a plain OmegaConf config or dict built without Hydra.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mrl.data.datamodules import VALIDATION_MODES
from mrl.errors import ConfigError
from mrl.slurm import REQUEUE_SIGNALS

__all__ = ["ABSENT", "HydraLaunchCheck", "Range", "check_accelerator_available", "check_choice", "check_devices",
           "check_number", "check_train_config", "check_writable_dir", "lightning_accelerators", "lightning_precisions",
           "lightning_strategies", "lookup"]

PROGRESS_BARS = ("auto", "tqdm", "rich", "none")
TEST_CHECKPOINTS = ("best", "last")
BOOLEANS = (True, False)
GPU_ACCELERATORS = ("gpu", "cuda")
OUTPUT_DIR_FIX = "choose another hydra.run.dir / paths.output_dir"
MAX_SEED = 2**32 - 1  # numpy's (and Lightning's seed_everything's) upper bound


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""What :func:`lookup` returns for a key the config does not have."""


@dataclass(frozen=True)
class Range:
    """An interval of numbers; ``None`` bounds are unbounded, ``*_open`` bounds are excluded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)


# --- reading the config ---------------------------------------------------------------------------------

def lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved value at dotted ``key``, or :data:`ABSENT`; an interpolation that cannot be resolved
    is a :class:`ConfigError` naming ``key``."""
    try:
        value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True)
    except OmegaConfBaseException as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(key, f"cannot be resolved ({reason})", f"set {key} to a value") from None
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _show(value: Any) -> str:
    """A value as it is written on the command line: true/false/null, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _choices(values: Iterable[Any]) -> str:
    return ", ".join(_show(v) if not isinstance(v, str) else v for v in values)


# --- validators -----------------------------------------------------------------------------------------

def check_number(field: str, value: Any, allowed: Range, fix: str, *, integer: bool = False,
                 specials: Sequence[Any] = ()) -> Any:
    """``value`` must be a finite number (an int if ``integer``) in ``allowed``, or one of ``specials``
    (such as ``None`` or ``"auto"``). Booleans and strings are never numbers."""
    if value is ABSENT or any(value is s or (type(value) is type(s) and value == s) for s in specials):
        return value
    kind = "an integer" if integer else "a number"
    if specials:
        kind += f" (or {_choices(specials)})"
    is_number = not isinstance(value, bool) and isinstance(value, (int, float) if not integer else int)
    if not is_number or (isinstance(value, float) and not math.isfinite(value)) or value not in allowed:
        raise ConfigError(field, f"must be {kind} {allowed}, got {_show(value)}", fix)
    return value


def check_choice(field: str, value: Any, choices: Sequence[Any], fix: str | None = None,
                 what: str | None = None) -> Any:
    """``value`` must be one of ``choices``, of the same type (so ``16.0`` is not ``16``, ``1`` not ``true``).
    The problem reads ``must be a, b or c, got x``, or ``unknown <what> x`` for long lists of names."""
    if value is ABSENT or any(type(value) is type(c) and value == c for c in choices):
        return value
    if what:
        problem = f"unknown {what} {_show(value)}"
    else:
        names = [_choices([c]) for c in choices]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        problem = f"must be {listed}, got {_show(value)}"
    raise ConfigError(field, problem, fix or f"choose one of: {_choices(choices)}")


def check_devices(value: Any, accelerator: Any) -> None:
    """``trainer.devices``: ``auto``, a count >= 1, -1 (all), or a non-empty list of distinct indices
    (also as a string: ``"2"``, ``"0,1"``); no more GPUs than CUDA sees."""
    field = "trainer.devices"
    fix = "set trainer.devices=1 (or a larger count, -1 for all devices, auto, or a list of indices such as [0,1])"
    if value is ABSENT or value == "auto":
        return
    parsed = value
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = [int(v) for v in text.strip(",").split(",")] if "," in text else int(text)
        except ValueError:
            raise ConfigError(field, f"unknown value {value!r}", fix) from None
    if isinstance(parsed, (list, tuple)):
        if not parsed:
            raise ConfigError(field, "is an empty list, so no device would run", fix)
        for index in parsed:
            check_number(field, index, NON_NEGATIVE, fix, integer=True)
        if len(set(parsed)) != len(parsed):
            raise ConfigError(field, f"lists a device twice: {parsed}", "list each device index once")
        count = len(parsed)
    elif isinstance(parsed, int) and not isinstance(parsed, bool):
        if parsed == 0:
            raise ConfigError(field, "is 0, so no device would run", fix)
        check_number(field, parsed, AT_LEAST_ONE, fix, integer=True, specials=(-1,))
        count = parsed
    else:
        raise ConfigError(field, f"unknown value {_show(value)}", fix)
    if accelerator in GPU_ACCELERATORS and _cuda_available():
        import torch

        visible = torch.cuda.device_count()
        wanted = max(parsed) + 1 if isinstance(parsed, (list, tuple)) else count
        if wanted > visible:
            raise ConfigError(field, f"asks for {value!r} but only {visible} GPU(s) are visible",
                              f"use at most {visible} GPU(s), or trainer.devices=-1 for all of them")


def check_accelerator_available(field: str, accelerator: Any, fix: str) -> None:
    """A ``gpu``/``cuda`` (or ``mps``, ``tpu``) accelerator must exist on this machine."""
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower().split(":")[0]
    if name in GPU_ACCELERATORS:
        available = _cuda_available() or (name == "gpu" and _mps_available())
        why = "torch.cuda.is_available() is False"
    elif name in ("auto", "cpu"):
        return
    else:
        available = _registry_accelerator_available(name)
        why = f"Lightning finds no {name} device"
        if available is None:
            return
    if not available:
        raise ConfigError(field, f"is {accelerator!r} but this machine has no such device ({why})", fix)


def check_writable_dir(field: str, path: Any, fix: str = OUTPUT_DIR_FIX) -> None:
    """``path`` must be a directory that can be written, or creatable under the nearest existing
    ancestor, which must be a writable directory."""
    if path is ABSENT or path is None:
        return
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ConfigError(field, f"must be a path, got {_show(path)}", fix)
    target = Path(path).expanduser()
    try:
        existing = target if target.exists() else next((p for p in target.absolute().parents if p.exists()), None)
        is_dir = existing is None or existing.is_dir()  # None: unreachable on POSIX, "/" exists
    except OSError as err:  # e.g. a parent folder that may not be searched
        raise ConfigError(field, f"{target} cannot be checked ({err.strerror or type(err).__name__})", fix) from None
    if existing is None:
        return
    if not is_dir:
        where = "exists" if existing == target else f"cannot be created: {existing} exists"
        raise ConfigError(field, f"{target} {where} and is not a directory", fix)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(field, f"{target} is not writable (no write permission on {existing})", fix)


class HydraLaunchCheck(Callback):
    """Hydra callback refusing, before Hydra creates any folder or submits any job (so before the app and
    :func:`check_train_config` run), an unusable ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``) and a SLURM
    launcher without a partition. Prints the one-line error and exits with status 2. Enabled in
    ``configs/hydra/default.yaml``::

        callbacks:
          launch_check:
            _target_: mrl.app.config_checks.HydraLaunchCheck
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            check_writable_dir(key, lookup(config, key))
            if str(lookup(config, "hydra.launcher._target_")).endswith("SlurmLauncher"):
                partition = OmegaConf.select(config, "hydra.launcher.partition", throw_on_missing=False)
                if partition in (None, "", "???") or OmegaConf.is_missing(config.hydra.launcher, "partition"):
                    raise ConfigError("hydra.launcher.partition", "is not set, so SLURM cannot place the jobs",
                                      "pass hydra.launcher.partition=<a GPU partition> (sinfo lists them)")
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


# --- what the installed packages accept -----------------------------------------------------------------

def _flatten_literals(tp: Any) -> list[Any]:
    args = get_args(tp)
    return [v for arg in args for v in _flatten_literals(arg)] if args else [tp]


@lru_cache(maxsize=None)
def lightning_precisions() -> tuple[Any, ...]:
    """Every ``precision`` the installed Lightning's Trainer accepts (its ``_PRECISION_INPUT`` type),
    or ``()`` when that private name has moved (then precision is left to Lightning)."""
    for module in ("lightning.fabric.connector", "lightning.fabric.plugins.precision.precision"):
        try:
            precision_input = importlib.import_module(module)._PRECISION_INPUT
        except (ImportError, AttributeError):
            continue
        return tuple(dict.fromkeys(_flatten_literals(precision_input)))
    return ()


@lru_cache(maxsize=None)
def lightning_accelerators() -> tuple[str, ...]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


@lru_cache(maxsize=None)
def lightning_strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mps_available() -> bool:
    import torch

    return sys.platform == "darwin" and torch.backends.mps.is_available()


def _registry_accelerator_available(name: str) -> bool | None:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if name not in AcceleratorRegistry:
        return None
    try:
        return bool(AcceleratorRegistry[name]["accelerator"].is_available())
    except Exception:  # noqa: BLE001 - an accelerator whose probe fails is left to Lightning
        return None


# --- the training config --------------------------------------------------------------------------------

# (field, allowed range, fix, specials) of the integer settings.
INTEGER_FIELDS: tuple[tuple[str, Range, str, tuple], ...] = (
    ("seed", Range(0, MAX_SEED), "set seed to an integer such as 42", ()),
    ("trainer.max_epochs", Range(-1), "set trainer.max_epochs to a number of epochs, or -1 for no limit", (None,)),
    ("trainer.num_nodes", AT_LEAST_ONE, "set trainer.num_nodes=1 (or the number of machines)", ()),
    ("trainer.log_every_n_steps", AT_LEAST_ONE, "set trainer.log_every_n_steps to a step count such as 10", ()),
    ("trainer.accumulate_grad_batches", AT_LEAST_ONE,
     "set trainer.accumulate_grad_batches=1 (no accumulation) or more", ()),
    ("trainer.check_val_every_n_epoch", AT_LEAST_ONE, "set trainer.check_val_every_n_epoch=1 or more", (None,)),
    ("data.batch_size", AT_LEAST_ONE, "set data.batch_size to a positive number of samples per device", ()),
    ("data.eval_batch_size", AT_LEAST_ONE,
     "set data.eval_batch_size to a positive number, or null to use data.batch_size", (None,)),
    ("data.num_workers", NON_NEGATIVE, "set data.num_workers=0 (load in the main process), more, or auto",
     ("auto",)),
    ("data.image_size", AT_LEAST_ONE, "set data.image_size to a positive number of pixels such as 32", (None,)),
    ("trainer.max_steps", Range(-1), "set trainer.max_steps to a number of optimizer steps, or -1 for no limit",
     (None,)),
    ("model.num_classes", AT_LEAST_ONE, "set model.num_classes=null to take it from the data", (None,)),
    ("model.backbone.hidden_dim", AT_LEAST_ONE, "set model.backbone.hidden_dim to a positive width such as 512", ()),
    ("model.backbone.width", AT_LEAST_ONE, "set model.backbone.width to a positive embedding width such as 256", ()),
    ("callbacks.refresh_rate", NON_NEGATIVE, "set callbacks.refresh_rate=1 (every step) or more", ()),
    ("callbacks.checkpoint.save_top_k", Range(-1), "set callbacks.checkpoint.save_top_k=1 (or -1 to keep all)", ()),
    ("callbacks.checkpoint.every_n_train_steps", NON_NEGATIVE,
     "set callbacks.checkpoint.every_n_train_steps to a step count, or 0 for once per epoch", (None,)),
    ("callbacks.checkpoint.keep_step_checkpoints", AT_LEAST_ONE,
     "set callbacks.checkpoint.keep_step_checkpoints=2 (or -1 to keep all)", (-1,)),
)

# (field, allowed range, fix, specials) of the real-valued settings.
NUMBER_FIELDS: tuple[tuple[str, Range, str, tuple], ...] = (
    ("model.optimizer.lr", POSITIVE, "set model.optimizer.lr to a positive learning rate such as 0.001", ()),
    ("model.optimizer.weight_decay", NON_NEGATIVE, "set model.optimizer.weight_decay >= 0 (0 turns it off)", ()),
    ("model.optimizer.momentum", NON_NEGATIVE, "set model.optimizer.momentum >= 0, e.g. 0.9", ()),
    ("model.label_smoothing", Range(0, 1, high_open=True), "set model.label_smoothing in [0, 1), e.g. 0.1 or 0", ()),
    ("model.scheduler.warmup_epochs", NON_NEGATIVE, "set model.scheduler.warmup_epochs >= 0 (0: no warm-up)", ()),
    ("model.backbone.drop_path_rate", Range(0, 1, high_open=True),
     "set model.backbone.drop_path_rate in [0, 1), e.g. 0.1", ()),
    ("trainer.gradient_clip_val", NON_NEGATIVE, "set trainer.gradient_clip_val >= 0, or null for no clipping", (None,)),
    ("logger.wandb.init_timeout", POSITIVE, "set logger.wandb.init_timeout to seconds, e.g. 90", ()),
    ("logger.wandb.finish_timeout", NON_NEGATIVE,
     "set logger.wandb.finish_timeout to seconds, e.g. 600 (0: wait until every record is uploaded)", ()),
)

# (field, choices, fix) of the settings that take one of a few values.
CHOICE_FIELDS: tuple[tuple[str, tuple, str | None], ...] = (
    ("train", BOOLEANS, "set train=true or train=false"),
    ("test", BOOLEANS, "set test=true or test=false"),
    ("test_checkpoint", TEST_CHECKPOINTS, "set test_checkpoint=best (best validation score) or last"),
    ("callbacks.progress_bar", PROGRESS_BARS, f"choose one of: {_choices(PROGRESS_BARS)}"),
    ("data.validation", VALIDATION_MODES,
     "choose holdout (part of train), none, or test (opt-in: validates on the test split)"),
    ("callbacks.checkpoint.mode", ("max", "min"), "set callbacks.checkpoint.mode=max (accuracy) or min (loss)"),
    ("resume", (None, False, "auto", "never"),
     "use resume=auto (newest checkpoint of the run directory) or give ckpt_path=..."),
    ("slurm.requeue", BOOLEANS, "set slurm.requeue=true (save and requeue on the signal) or false"),
    ("slurm.requeue_signal", REQUEUE_SIGNALS,
     "choose USR1 or USR2, the signal of sbatch's --signal=<name>@<seconds> (submitit: SUBMITIT_PREEMPT_SIGNAL)"),
)

LIMIT_BATCHES = ("trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches",
                 "trainer.limit_predict_batches")


def check_train_config(cfg: DictConfig | Mapping) -> None:
    """Refuse, with a one-line :class:`ConfigError`, any setting of a ``configs/train.yaml`` config that
    cannot work, before any data is read or file written. Absent keys are not checked."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    get = lambda key: lookup(cfg, key)  # noqa: E731

    for field, choices, fix in CHOICE_FIELDS:
        check_choice(field, get(field), choices, fix)
    for field, allowed, fix, specials in INTEGER_FIELDS:
        check_number(field, get(field), allowed, fix, integer=True, specials=specials)
    for field, allowed, fix, specials in NUMBER_FIELDS:
        check_number(field, get(field), allowed, fix, specials=specials)

    _check_registered_names(get)
    _check_task(get)
    tags = get("tags")
    if tags is not ABSENT and not isinstance(tags, list):
        raise ConfigError("tags", f"must be a list, got {_show(tags)}", "write tags=[name] or tags=[name1,name2]")
    _check_trainer(cfg, get)
    _check_data(get)
    _check_model(get)
    device = get("device")
    if device is not ABSENT:
        check_accelerator_available("device", device, "set device=cpu (or auto)")
    check_writable_dir("paths.output_dir", get("paths.output_dir"))


def _check_trainer(cfg: DictConfig, get) -> None:
    if get("trainer.max_epochs") == 0 and get("train") in (True, ABSENT):
        raise ConfigError("trainer.max_epochs", "is 0 while train=true, so nothing would be trained",
                          "set trainer.max_epochs >= 1, or train=false to only test ckpt_path")
    precisions = lightning_precisions()
    precision = get("trainer.precision")
    if precisions and precision is not None:
        check_choice("trainer.precision", precision, precisions,
                     f"choose one of: {_choices(p for p in precisions if isinstance(p, str))}", what="precision")
    accelerator = get("trainer.accelerator")
    if isinstance(accelerator, str):  # Lightning also takes Accelerator objects, which are not checked
        check_choice("trainer.accelerator", accelerator, lightning_accelerators(),
                     f"choose one of: {_choices(lightning_accelerators())} (trainer=cpu for the CPU)",
                     what="accelerator")
        check_accelerator_available("trainer.accelerator", accelerator,
                                    "use trainer=cpu (or trainer.accelerator=cpu)")
    elif accelerator is not ABSENT:
        raise ConfigError("trainer.accelerator", f"unknown value {_show(accelerator)}",
                          "use trainer=cpu or trainer=gpu")
    strategy = get("trainer.strategy")
    if isinstance(strategy, str):  # or a Strategy object, not checked
        check_choice("trainer.strategy", strategy, lightning_strategies(),
                     "choose auto, ddp, ddp_spawn, fsdp or another Lightning strategy name", what="strategy")
    check_devices(get("trainer.devices"), accelerator)
    for field in LIMIT_BATCHES:  # a float is a fraction of the batches, an int a count
        value = get(field)
        fix = f"set {field} to a fraction in [0, 1] or a whole number of batches"
        if isinstance(value, float):
            check_number(field, value, Range(0, 1), fix)
        else:
            check_number(field, value, NON_NEGATIVE, fix, integer=True, specials=(None,))
    fast_dev_run = get("trainer.fast_dev_run")
    if not isinstance(fast_dev_run, bool):
        check_number("trainer.fast_dev_run", fast_dev_run, NON_NEGATIVE,
                     "set trainer.fast_dev_run=false, true, or a number of batches", integer=True)


def _check_data(get) -> None:
    if get("data.name") == "digits" and get("data.image_size") is None:
        raise ConfigError("data.image_size", "is null, but only folder data sets read the size from the images",
                          "set data.image_size=16 (the 8x8 digits are upsampled to it)")
    validation = get("data.validation")
    val_fraction = get("data.val_fraction")
    test_fraction = get("data.test_fraction")
    if validation is ABSENT:  # the older configs: a non-zero val_fraction holds part of train out
        holdout = val_fraction is not ABSENT and val_fraction != 0
    else:
        holdout = validation == "holdout"
    if holdout:
        fix = "set data.val_fraction in (0, 1), e.g. 0.1"
        if validation is not ABSENT:
            fix += ", or data.validation=none for no validation"
        check_number("data.val_fraction", val_fraction, OPEN_UNIT, fix)
    check_number("data.test_fraction", test_fraction, OPEN_UNIT, "set data.test_fraction in (0, 1), e.g. 0.15")
    if (holdout and get("data.name") == "digits" and test_fraction is not ABSENT
            and val_fraction + test_fraction >= 1):
        raise ConfigError("data.val_fraction", f"plus data.test_fraction is {val_fraction + test_fraction:g}, "
                          "leaving nothing to train on", "keep their sum below 1, e.g. 0.15 and 0.15")


def _check_registered_names(get) -> None:
    """Names looked up in mrl's registries, so a typo stops the run before the data is scanned; the
    messages are those of the registries' own checks, which run later."""
    from mrl.data import DATAMODULES
    from mrl.heads import HEADS
    from mrl.optim import OPTIMIZERS, SCHEDULERS
    from mrl.tasks import TASKS

    for field, what, names in (("data.name", "data set", sorted(DATAMODULES)),
                               ("model.task", "task", sorted(TASKS)),
                               ("model.head", "head type", sorted(HEADS)),
                               ("model.optimizer.name", "optimizer", list(OPTIMIZERS)),
                               ("model.scheduler.name", "schedule", list(SCHEDULERS))):
        check_choice(field, get(field), tuple(names), f"choose one of {names}", what=what)


def _check_task(get) -> None:
    """The chosen task's checks of the rest of the config (:meth:`mrl.tasks.Task.check_config`)."""
    from mrl.tasks import TASKS

    task = get("model.task")
    if task is not ABSENT:
        TASKS[task].check_config(lambda key: None if (value := get(key)) is ABSENT else value)


def _check_model(get) -> None:
    """Backbone channels, and an explicit ``model.nesting_dims`` list (and its loss weights), with the same
    messages as when the model is built, except against the backbone's width (not known yet)."""
    from mrl.nesting import resolve_loss_weights, resolve_nesting_dims

    channels = get("model.backbone.channels")
    if channels is not ABSENT:
        fix = "give a non-empty list of positive channel counts, e.g. model.backbone.channels=[32,64,128]"
        if not isinstance(channels, list) or not channels:
            raise ConfigError("model.backbone.channels", f"must be a non-empty list, got {_show(channels)}", fix)
        for value in channels:
            check_number("model.backbone.channels", value, AT_LEAST_ONE, fix, integer=True)

    dims = get("model.nesting_dims")
    if dims is ABSENT or dims is None or dims == "auto":
        return
    if isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        width = max(max(dims), 1)
    else:
        width = 1  # resolve_nesting_dims refuses a non-list or non-int entries before looking at the width
    dims = resolve_nesting_dims(dims, width, warn_partial=False)
    weights = get("model.loss_weights")
    if weights is not ABSENT:
        resolve_loss_weights(weights, dims)
