"""Checkpoints that mean what their names say, survive kills, and resume runs exactly.

* :class:`AtomicCheckpointIO`: every checkpoint is written to a temporary file beside its target,
  flushed to disk, then renamed over it. A kill at any moment leaves the previous file intact, on any
  filesystem (``TMPDIR`` is never involved).
* :class:`RecoveryCheckpoint`: ``last.ckpt`` is always the state at the end of the latest completed
  epoch or the latest mid-epoch save (``every_n_train_steps``, files ``epoch{E}-step{S}.ckpt`` that
  never overwrite each other); SIGTERM saves one before the run exits.
* :func:`resolve_resume`: the checkpoint a run resumes from (``ckpt_path``, or ``resume=auto``: the
  newest in the run's ``checkpoints/``), falling back to the newest loadable one when a file is
  damaged, and saying so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mrl.checkpoint import read_checkpoint
from mrl.errors import ConfigError

LAST = "last.ckpt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into ``.<name>.tmp-<pid>`` beside ``target``, flush it to disk, rename it over
    ``target``: readers see the old file or the new one, never a part of it."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`replace_atomically`: a kill mid-save leaves the previous file whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage (s3://...): fsspec writes whole objects
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def publish_as(source: Path, target: Path) -> None:
    """Make ``target`` hold the same bytes as ``source``, atomically: a hard link where the filesystem
    allows it (no second write of a large file), else a copy."""
    import shutil

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    replace_atomically(target, link_or_copy)


class RecoveryCheckpoint(L.Callback):
    """``last.ckpt`` after every training epoch (after its validation) and every ``every_n_train_steps``
    optimizer steps, plus ``epoch{E:03d}-step{S:08d}.ckpt`` for each mid-epoch save (the newest
    ``keep_step_checkpoints`` are kept; -1 keeps all). On SIGTERM the current state is saved the same way.

    ``interrupted_path`` is set when a SIGTERM save happened.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0, keep_step_checkpoints: int = 2):
        if every_n_train_steps < 0:
            raise ConfigError("callbacks.checkpoint.every_n_train_steps", f"must be >= 0, got {every_n_train_steps}",
                              "0 turns mid-epoch checkpoints off")
        if keep_step_checkpoints == 0 or keep_step_checkpoints < -1:
            raise ConfigError("callbacks.checkpoint.keep_step_checkpoints",
                              f"must be >= 1 or -1 (all), got {keep_step_checkpoints}", "e.g. 2")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.keep_step_checkpoints = keep_step_checkpoints
        self.last_path = self.dirpath / LAST
        self.interrupted_path: Path | None = None
        self._last_step_saved = -1

    @property
    def state_key(self) -> str:
        return f"RecoveryCheckpoint{{every_n_train_steps={self.every_n_train_steps}}}"

    def save_now(self, trainer: L.Trainer) -> Path:
        """Save ``epoch{E}-step{S}.ckpt`` and publish it as ``last.ckpt`` (every rank calls this)."""
        path = self.dirpath / f"epoch{trainer.current_epoch:03d}-step{trainer.global_step:08d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            publish_as(path, self.last_path)
            if self.keep_step_checkpoints > 0:
                for old in self.step_checkpoints()[: -self.keep_step_checkpoints]:
                    old.unlink(missing_ok=True)
        self._last_step_saved = trainer.global_step
        return path

    def step_checkpoints(self) -> list[Path]:
        """Mid-epoch checkpoints, oldest first (names sort by epoch, then step)."""
        return sorted(self.dirpath.glob("epoch*-step*.ckpt"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        n = self.every_n_train_steps
        step = trainer.global_step
        if not n or step % n or step == self._last_step_saved or trainer.sanity_checking:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the end-of-epoch save follows, after validation
        self.save_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)
        self._last_step_saved = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self.interrupted_path = self.save_now(trainer)


def checkpoint_candidates(folder: Path) -> list[Path]:
    """The ``.ckpt`` files of ``folder``, newest first."""
    files = [p for p in folder.glob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of saves that a kill interrupted (the checkpoints they were replacing are intact)."""
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)


def resolve_resume(ckpt_path: str | None, resume: str | bool | None,
                   checkpoint_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """``(path, checkpoint)`` to resume from (the checkpoint already read, so callers need not read it
    again), or ``None`` to start afresh.

    ``ckpt_path`` wins; with ``resume=auto`` the newest checkpoint in ``checkpoint_dir`` is taken (none:
    a fresh start). A checkpoint that cannot be read is replaced by the newest readable one beside it,
    with a warning; when none is readable the run stops with a one-line error.
    """
    if resume not in (None, False, "auto", "never"):
        raise ConfigError("resume", f"unknown value {resume!r}", "use resume=auto (newest checkpoint of the run "
                          "directory) or give ckpt_path=...")
    if ckpt_path:
        wanted = Path(str(ckpt_path)).expanduser()
        if not wanted.is_file():
            raise ConfigError("ckpt_path", f"{wanted} does not exist", "give an existing .ckpt, or resume=auto")
        folder, first = wanted.parent, wanted
    elif resume == "auto":
        folder, first = checkpoint_dir, None
        if not checkpoint_candidates(folder):
            print(f"resume=auto: no checkpoint in {folder}; starting from scratch")
            return None
    else:
        return None
    remove_stale_temporaries(folder)
    candidates = ([first] if first else []) + [p for p in checkpoint_candidates(folder) if p != first]
    problems = []
    for path in candidates:
        try:
            checkpoint, _ = read_checkpoint(path)
        except ConfigError as err:
            problems.append(str(err).split("; ")[0].removeprefix("ckpt_path: "))
            warnings.warn(f"cannot resume from {path} ({problems[-1]}); trying an older checkpoint", stacklevel=2)
            continue
        if first is not None and path != first:
            print(f"warning: {first} is unreadable; resuming from {path}, the newest readable checkpoint beside it")
        elif first is None:
            print(f"resume=auto: resuming from {path}")
        return str(path), checkpoint
    raise ConfigError("ckpt_path", f"no readable checkpoint in {folder} ({problems[0]})",
                      "give a checkpoint written by scripts/train.py, or start afresh without ckpt_path/resume")
