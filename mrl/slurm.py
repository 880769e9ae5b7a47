"""SLURM: a run directory per job, pre-emption handled by saving and requeueing, the allocation checked.

* :func:`slurm_job_id`: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``; ``None`` outside
  SLURM. It is the same on every task of a job, on every node, and across a requeue (SLURM keeps the id),
  which is why ``configs/hydra/default.yaml`` names the run directory after it (resolver ``mrl.slurm_or``).
* :class:`RequeueOnSignal`: SLURM sends ``--signal=USR2@120`` (the sbatch templates; submitit's default) some
  time before a pre-emption or the time limit. The handler only notes it; at the end of the current training
  step (under DDP, of the next step that is a multiple of ``AGREE_EVERY_N_STEPS``) every rank agrees on it, the
  state is saved (step checkpoint + ``last.ckpt``), rank 0 runs ``scontrol requeue <job>``, and the run stops
  with :class:`JobRequeued`. The restarted job resolves the same run directory and resumes from that checkpoint
  (``resume`` defaults to ``auto`` under SLURM).

Why not Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``): it saves from inside the signal
handler, i.e. at an arbitrary point of the step (possibly half-way through ``optimizer.step()``, or inside a
checkpoint save already being written, which crashed the run), and on each rank independently. Lightning's
``SLURMEnvironment`` is still what reads ranks, world size and the main address from SLURM; it is created
with ``auto_requeue=False`` so that only this handler owns the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from mrl.errors import ConfigError

REQUEUE_SIGNALS = ("USR1", "USR2")
# Under DDP the ranks agree on the signal every this many steps: a collective at every step would make each step
# wait for the GPU. At most 9 steps late, well inside the grace time of --signal=USR2@120.
AGREE_EVERY_N_STEPS = 10


def slurm_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol requeue`` takes: ``<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`` for a task of a job
    array, else ``SLURM_JOB_ID``; ``None`` outside a SLURM job."""
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID") or None


def slurm_or(fallback: str) -> str:
    """Resolver ``${mrl.slurm_or:<fallback>}``: ``slurm-<job id>`` inside a SLURM job, else ``fallback``
    (a timestamp): a run directory that every rank and node of a job, and the job after a requeue, agree on."""
    job = slurm_job_id()
    return f"slurm-{job}" if job else str(fallback)


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """How many times SLURM has restarted this job (``SLURM_RESTART_COUNT``; 0 for the first start)."""
    try:
        return int(env.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def requeue_signal(name: str) -> signal.Signals:
    if name not in REQUEUE_SIGNALS:
        raise ConfigError("slurm.requeue_signal", f"is {name!r}", f"choose one of {list(REQUEUE_SIGNALS)} and "
                          "give sbatch the same one (#SBATCH --signal=<name>@<seconds>)")
    return signal.Signals[f"SIG{name}"]


def cluster_environment(cfg: Mapping[str, Any] | None):
    """Lightning's ``SLURMEnvironment`` when the process was started by ``srun`` (else ``None``: Lightning's
    own detection), with its requeue handler off: :class:`RequeueOnSignal` owns the signal."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    cfg = dict(cfg or {})
    return SLURMEnvironment(auto_requeue=False, requeue_signal=requeue_signal(cfg.get("requeue_signal", "USR2")))


def check_allocation(devices: Any, num_nodes: Any, env: Mapping[str, str] = os.environ) -> None:
    """Inside ``srun``, ``trainer.devices`` x ``trainer.num_nodes`` must be the job's tasks: one task per
    device (``--ntasks-per-node``) on ``--nodes`` nodes. A mismatch would hang at the first collective."""
    # Lightning's rule for "started by srun" (SLURMEnvironment.detect), on the given environment
    if "SLURM_NTASKS" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "4(x2)" on heterogeneous allocations
    nodes = env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES")
    if per_node.isdigit() and isinstance(devices, int) and devices > 0 and devices != int(per_node):
        raise ConfigError("trainer.devices", f"is {devices} but the SLURM job runs {per_node} tasks per node",
                          f"set trainer.devices={per_node}, or submit with --ntasks-per-node={devices} "
                          "(one task per GPU)")
    if nodes and nodes.isdigit() and isinstance(num_nodes, int) and num_nodes != int(nodes):
        raise ConfigError("trainer.num_nodes", f"is {num_nodes} but the SLURM job has {nodes} nodes",
                          f"set trainer.num_nodes={nodes}, or submit with --nodes={num_nodes}")


def apply_process_env(trainer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``trainer`` group's ``env`` (NCCL / gloo settings: ``NCCL_SOCKET_IFNAME``, ``GLOO_SOCKET_IFNAME``, ...)
    exported before the processes group forms, a value already in the shell winning; returns the other keys,
    Lightning's ``Trainer`` arguments."""
    kwargs = dict(trainer_kwargs)
    for name, value in (kwargs.pop("env", None) or {}).items():
        if value is not None:
            os.environ.setdefault(str(name), str(value))
    return kwargs


class JobRequeued(RuntimeError):
    """Training stopped on the requeue signal after saving ``checkpoint``; ``requeued`` tells whether
    ``scontrol requeue`` succeeded (on rank 0; ``None`` on the other ranks)."""

    def __init__(self, checkpoint: Path, job_id: str | None, requeued: bool | None, detail: str = ""):
        self.checkpoint, self.job_id, self.requeued = checkpoint, job_id, requeued
        if requeued:
            what = f"requeued SLURM job {job_id}: it resumes from this checkpoint when it restarts"
        elif requeued is None:
            what = "rank 0 requeues the job"
        else:
            what = (f"could not requeue SLURM job {job_id} ({detail}): resubmit the same command "
                    "(it resumes from this checkpoint), or requeue it with scontrol")
        super().__init__(f"requeue signal: checkpoint saved to {checkpoint}; {what}")


def scontrol_requeue(job_id: str | None, scontrol: str = "scontrol", timeout_s: float = 60) -> tuple[bool, str]:
    """``scontrol requeue <job_id>``: ``(succeeded, what went wrong)``."""
    if not job_id:
        return False, "SLURM_JOB_ID is not set"
    try:
        done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return False, f"{scontrol} not found on PATH"
    except subprocess.TimeoutExpired:
        return False, f"{scontrol} requeue did not answer within {timeout_s:.0f} s"
    if done.returncode != 0:
        return False, f"{scontrol} requeue {job_id} exited {done.returncode}: {' '.join(done.stderr.split())[:200]}"
    return True, ""


class RequeueOnSignal(L.Callback):
    """Save and requeue on ``signum`` at the end of the training step in which it arrived (see the module
    docstring). ``save(trainer) -> path`` writes the checkpoint (``RecoveryCheckpoint.save_now``)."""

    def __init__(self, signum: signal.Signals, save, job_id: str | None = None, scontrol: str = "scontrol"):
        self.signum, self.save, self.job_id, self.scontrol = signum, save, job_id, scontrol
        self.received = False
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.received = False
            self._previous = signal.signal(self.signum, self._note)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _note(self, signum: int, frame: Any) -> None:
        # Only a flag: saving here could catch the optimizer half-way or nest inside a save being written.
        self.received = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        received = self.received
        if trainer.world_size > 1:  # one rank may get the signal first: all stop at the same step
            if trainer.global_step % AGREE_EVERY_N_STEPS:
                return
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        path = self.save(trainer)
        requeued, detail = (None, "")
        if trainer.is_global_zero:
            requeued, detail = scontrol_requeue(self.job_id, self.scontrol)
        raise JobRequeued(path, self.job_id, requeued, detail)
