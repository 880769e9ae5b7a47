"""SLURM without a cluster: the sbatch templates, hydra-submitit-launcher and the requeue path run against the
fake ``srun``/``sbatch``/``sacct``/``scontrol`` of ``fake_slurm``, with SLURM's environment variables, and
every command they issue is checked."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fake_slurm
from conftest import PROJECT_ROOT, assert_same_training_log, wait_for
from mrl.errors import ConfigError
from mrl.slurm import check_allocation, slurm_job_id, slurm_or

QUIET = ["logger=csv", "callbacks.progress_bar=none"]
STEPS_PER_EPOCH = 19  # digits: 1,257 training images in batches of 64


def job_number() -> int:
    """A job id whose derived DDP port (Lightning: 15000 + its last 4 digits) is unlikely to be in use."""
    return random.randint(10_000, 99_999)


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without SLURM, fake SLURM tools first on PATH, outputs under ``tmp_path``."""
    bin_dir = fake_slurm.install(tmp_path / "fake_slurm")
    python = tmp_path / "python_bin" / "python"  # the templates run `python`: this interpreter, as on a node
    python.parent.mkdir(exist_ok=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would lose the virtualenv
    python.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(python.parent), os.environ["PATH"]])
    return {**fake_slurm.without_slurm(), "PATH": path,
            "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "MRL_ROOT_DIR": str(tmp_path / "root"), **extra}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- the job's identity ----------------------------------------------------------------------------------

def test_the_job_id_names_array_tasks_and_jobs():
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "123"}) == "123"
    # an array task has its own SLURM_JOB_ID, but is requeued (and known) as <array job>_<task>
    assert slurm_job_id({"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "7"}) == "123_7"


def test_the_run_directory_is_keyed_by_the_job_and_stable_across_a_requeue(monkeypatch):
    from hydra import compose, initialize_config_dir

    import mrl.app  # noqa: F401  (the configs' ${mrl.*} resolvers, as the scripts register them)

    def run_dir(**env: str) -> str:
        for key in [k for k in os.environ if k.startswith("SLURM_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
            return str(compose("train", return_hydra_config=True).hydra.run.dir)

    assert run_dir(SLURM_JOB_ID="4242").endswith("/runs/digits_mlp/slurm-4242")
    assert run_dir(SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="3").endswith("/slurm-4242")  # a requeue: same folder
    assert run_dir(SLURM_JOB_ID="9", SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID="5").endswith("/slurm-4242_5")
    assert re.search(r"/runs/digits_mlp/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$", run_dir())  # outside SLURM: the time
    assert slurm_or("fallback") == "fallback"


def test_devices_and_nodes_must_match_the_allocation():
    env = fake_slurm.job_env(1, ntasks=4, SLURM_NNODES="2")
    check_allocation(4, 2, env)
    check_allocation("auto", 2, env)  # not a count: Lightning checks it against SLURM itself
    with pytest.raises(ConfigError, match=r"trainer.devices: is 8 but the SLURM job runs 4 tasks per node; set "
                                          r"trainer.devices=4"):
        check_allocation(8, 2, env)
    with pytest.raises(ConfigError, match=r"trainer.num_nodes: is 1 but the SLURM job has 2 nodes"):
        check_allocation(4, 1, env)
    check_allocation(8, 1, {})  # outside srun nothing is checked


def test_a_mismatched_allocation_stops_the_run_before_training(tmp_path):
    env = environment(tmp_path, **fake_slurm.job_env(job_number(), ntasks=2))
    proc = subprocess.run([sys.executable, "scripts/train.py", *QUIET, "trainer.accelerator=cpu", "trainer.devices=3"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: trainer.devices: is 3 but the SLURM job runs 2 tasks per node; set trainer.devices=2, or submit with "
        "--ntasks-per-node=3 (one task per GPU)")


# --- the sbatch templates --------------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["train.sbatch",
                                      pytest.param("train_multinode.sbatch", marks=pytest.mark.slow)])  # same path
def test_sbatch_template_runs_one_task_per_device_in_one_run_directory(tmp_path, template):
    job = job_number()
    env = environment(tmp_path, **fake_slurm.job_env(job, ntasks=2), SLURM_SUBMIT_DIR=str(PROJECT_ROOT))
    env.pop("SLURM_PROCID")  # srun sets it per task
    overrides = [*QUIET, "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2",
                 "trainer.precision=32-true", "++trainer.sync_batchnorm=false", "trainer.max_epochs=1",
                 "+trainer.env.GLOO_SOCKET_IFNAME=lo"]
    proc = subprocess.run(["bash", f"SLURM/{template}", *overrides], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (srun,) = fake_slurm.calls(tmp_path / "fake_slurm", "srun")
    command = srun["argv"][srun["argv"].index("python"):]
    extra = ["trainer=ddp_multinode"] if template == "train_multinode.sbatch" else []
    assert command == ["python", "-u", "scripts/train.py", *extra, *overrides]
    run = tmp_path / "root" / "logs" / "train" / "runs" / "digits_mlp" / f"slurm-{job}"
    announced = re.findall(r"^outputs: (.+)$", proc.stdout, re.M)
    assert announced == [str(run.resolve())] * 2  # each rank chose this folder
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics_by_dim.csv").is_file()
    ckpt = load(run / "checkpoints" / "last.ckpt")
    # data.batch_size is per process: each of the 2 ranks reads about half of the 1,257 images, 9 batches of 64
    assert ckpt["global_step"] == (1257 // 2) // 64 == 9
    rows = (run / "metrics_by_dim.json").read_text()
    assert '"num_samples": 270' in rows  # the test split counted once over both ranks


# --- pre-emption: save, requeue, resume -------------------------------------------------------------------

REQUEUE_ARGS = [*QUIET, "trainer.max_epochs=4", "callbacks.checkpoint.every_n_train_steps=6", "test_checkpoint=last"]


def start_job(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"log-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "scripts/train.py", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, log


def test_the_requeue_signal_saves_requeues_and_the_restarted_job_resumes_exactly(tmp_path):
    reference = subprocess.run([sys.executable, "scripts/train.py", *REQUEUE_ARGS,
                                f"hydra.run.dir={tmp_path / 'reference'}"], cwd=PROJECT_ROOT,
                               env=environment(tmp_path), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    job = job_number()
    env = environment(tmp_path, **fake_slurm.job_env(job))
    run = tmp_path / "root" / "logs" / "train" / "runs" / "digits_mlp" / f"slurm-{job}"
    proc, log = start_job(tmp_path, env, *REQUEUE_ARGS, "logger=default")
    wait_for(lambda: any((run / "checkpoints").glob("epoch001-step*.ckpt")), proc)
    proc.send_signal(signal.SIGUSR2)
    code = proc.wait(timeout=300)
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert f"requeued SLURM job {job}: it resumes from this checkpoint when it restarts" in text
    assert [c["argv"] for c in fake_slurm.calls(tmp_path / "fake_slurm", "scontrol")] == [["requeue", str(job)]]
    saved = Path(text.split("checkpoint saved to ")[1].split(";")[0].strip())
    step = load(saved)["global_step"]
    assert step % STEPS_PER_EPOCH and load(run / "checkpoints" / "last.ckpt")["global_step"] == step
    assert not (run / "metrics_by_dim.csv").exists()  # nothing tested

    # SLURM restarts the job: same id, same command, no new argument
    restarted = subprocess.run([sys.executable, "scripts/train.py", *REQUEUE_ARGS, "logger=default"],
                               cwd=PROJECT_ROOT, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                               text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert re.search(rf"resume=auto: resuming from \S*/slurm-{job}/checkpoints/", restarted.stdout)
    final, ref = load(run / "checkpoints" / "last.ckpt"), load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == ref["global_step"] == 4 * STEPS_PER_EPOCH
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=1e-6)
    assert (run / "metrics_by_dim.json").read_text().split('"rows"')[1] == \
        (tmp_path / "reference" / "metrics_by_dim.json").read_text().split('"rows"')[1]
    assert_same_training_log(run, tmp_path / "reference")  # the curve goes on across the requeue
    # the restarted job continued the same W&B run: both offline runs carry one id
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1


def test_a_failed_requeue_says_so_and_keeps_the_checkpoint(tmp_path):
    job = job_number()
    env = environment(tmp_path, **fake_slurm.job_env(job), FAKE_SCONTROL_EXIT="1")
    run = tmp_path / "root" / "logs" / "train" / "runs" / "digits_mlp" / f"slurm-{job}"
    proc, log = start_job(tmp_path, env, *REQUEUE_ARGS)
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)
    proc.send_signal(signal.SIGUSR2)
    code = proc.wait(timeout=300)
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert f"could not requeue SLURM job {job} (scontrol requeue {job} exited 1" in text
    assert "resubmit the same command (it resumes from this checkpoint)" in text
    saved = Path(text.split("checkpoint saved to ")[1].split(";")[0].strip())
    assert load(saved)["global_step"] > 0


def test_the_signal_during_a_checkpoint_save_is_handled_after_it(make_cfg, tmp_path, monkeypatch):
    """The signal lands while a checkpoint is half-written: the save completes, and the requeue happens at the
    end of the next step (Lightning's own handler would save from inside the handler, nested in that save)."""
    from mrl.slurm import JobRequeued
    from mrl.app.train import train

    bin_dir = fake_slurm.install(tmp_path / "fake_slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in fake_slurm.job_env(job_number()).items():
        monkeypatch.setenv(key, value)
    real_save, sent = torch.save, []

    def save_then_signal(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not sent and str(f).endswith(".tmp-" + str(os.getpid())):  # the temporary file, before its rename
            sent.append(obj["global_step"])
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(torch, "save", save_then_signal)
    cfg = make_cfg("trainer.max_epochs=3", "callbacks.checkpoint.every_n_train_steps=5", "test_checkpoint=last")
    with pytest.raises(JobRequeued, match="requeued SLURM job") as caught:
        train(cfg)
    assert sent == [5]
    # the save in progress completed; then, at the end of that step, the requeue checkpoint (of the same step)
    assert caught.value.requeued is True and load(caught.value.checkpoint)["global_step"] == 5
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert load(checkpoints / "last.ckpt")["global_step"] == 5
    assert [c["argv"] for c in fake_slurm.calls(bin_dir, "scontrol")] == [["requeue", os.environ["SLURM_JOB_ID"]]]


# --- hydra-submitit-launcher -----------------------------------------------------------------------------

def test_a_multirun_with_the_slurm_launcher_submits_one_job_array(tmp_path):
    env = environment(tmp_path)
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "scripts/train.py", "-m", *QUIET, "model.head=ff",
                           "model.nesting_dims=[8],[16]", "trainer.max_epochs=1", "hydra/launcher=slurm",
                           "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
                           "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=2",
                           f"hydra.sweep.dir={sweep}"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sbatch,) = fake_slurm.calls(tmp_path / "fake_slurm", "sbatch")
    script = Path(sbatch["argv"][-1]).read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=debug", "#SBATCH --signal=USR2@120",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --ntasks-per-node=1"):
        assert line in script.splitlines(), script
    sruns = fake_slurm.calls(tmp_path / "fake_slurm", "srun")
    assert sorted(c["env"]["SLURM_ARRAY_TASK_ID"] for c in sruns) == ["0", "1"]
    for dims in (8, 16):
        job_dir = sweep / f"model.head=ff,model.nesting_dims=_{dims}_,trainer.max_epochs=1"
        assert (job_dir / "metrics_by_dim.csv").read_text().splitlines()[1].startswith(f"{dims},")


def test_the_slurm_launcher_without_a_partition_is_refused_before_submitting(tmp_path):
    env = environment(tmp_path)
    proc = subprocess.run([sys.executable, "scripts/train.py", "-m", "trainer.max_epochs=1", "hydra/launcher=slurm",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.partition: is not set, so SLURM cannot place the jobs; pass "
        "hydra.launcher.partition=<a GPU partition> (sinfo lists them)")
    assert not fake_slurm.calls(tmp_path / "fake_slurm", "sbatch")


# --- bad input ----------------------------------------------------------------------------------------------

def test_a_restarted_job_whose_run_directory_is_gone_says_so_and_starts_afresh(tmp_path, monkeypatch, capsys):
    from mrl.app.train import _default_resume

    for key, value in fake_slurm.job_env(777, SLURM_RESTART_COUNT="2").items():
        monkeypatch.setenv(key, value)
    assert _default_resume(None, tmp_path / "deleted") == "auto"
    assert capsys.readouterr().out.strip() == (
        f"warning: restart 2 of SLURM job 777 finds no checkpoint in {tmp_path / 'deleted' / 'checkpoints'} (the run "
        "directory was deleted or moved, or the job stopped before its first save): training starts from scratch")
    assert _default_resume("never", tmp_path) == "never"  # an explicit choice stands
    monkeypatch.delenv("SLURM_JOB_ID")
    assert _default_resume(None, tmp_path) is None  # outside SLURM: no resume unless asked


def test_resuming_a_checkpoint_of_another_experiment_is_refused(make_cfg):
    from mrl.app.train import train

    first = train(make_cfg("trainer.max_epochs=1", "test=false", "logger=csv", out="first"))
    cfg = make_cfg("trainer.max_epochs=2", "logger=csv", "experiment_name=another",
                   f"ckpt_path={first['last_model_path']}", out="second")
    with pytest.raises(ConfigError, match=r"ckpt_path: checkpoint belongs to experiment 'digits_mlp', this run is "
                                          r"'another'; resume it with \+experiment=digits_mlp"):
        train(cfg)
