"""A SLURM stand-in for tests: ``srun``, ``sbatch``, ``sacct`` and ``scontrol`` executables that run jobs on this
machine and record every call, so sbatch templates, hydra-submitit-launcher and the requeue path run unmodified.

* ``srun [options] command...``: starts ``--ntasks`` (else ``SLURM_NTASKS``, else 1) copies of the command with
  the per-task variables SLURM sets (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``), ``--output`` /
  ``--error`` patterns expanded; exits with the largest exit status of its tasks.
* ``sbatch script``: reads the ``#SBATCH`` lines, gives the job an id, runs each array task (or the job) in
  the background with the job's variables and prints ``Submitted batch job <id>``; its state (RUNNING,
  COMPLETED, FAILED) is in the state folder, where ``sacct -j <id> --parsable2`` reads it.
* ``scontrol ...``: recorded; exits with ``$FAKE_SCONTROL_EXIT`` (default 0).

Every call is appended to ``<folder>/calls.jsonl`` as ``{"tool": ..., "argv": [...], "env": {SLURM_*}}``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

COMMON = r'''
import json, os, re, subprocess, sys, time
from pathlib import Path
FOLDER = Path(__file__).resolve().parent
def record(tool, argv):
    env = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
    with open(FOLDER / "calls.jsonl", "a") as f:
        f.write(json.dumps({"tool": tool, "argv": argv, "env": env}) + "\n")
'''

SRUN = COMMON + r'''
argv = sys.argv[1:]
record("srun", argv)
opts, i = {}, 0
while i < len(argv) and argv[i].startswith("-"):
    a = argv[i]
    if "=" in a:
        k, v = a.split("=", 1); opts[k] = v
    elif a in ("--output", "--error", "-o", "-e", "--ntasks", "-n", "--nodes", "-N", "--cpu-bind"):
        opts[a] = argv[i + 1]; i += 1
    else:
        opts[a] = ""
    i += 1
command = argv[i:]
n = int(opts.get("--ntasks") or opts.get("-n") or os.environ.get("SLURM_NTASKS", "1"))
job = os.environ.get("SLURM_JOB_ID", "0")
def expand(pattern, task):
    return (pattern.replace("%j", job).replace("%t", str(task)).replace("%A", os.environ.get("SLURM_ARRAY_JOB_ID", job))
            .replace("%a", os.environ.get("SLURM_ARRAY_TASK_ID", "0")))
procs = []
for task in range(n):
    env = {**os.environ, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
           "SLURM_NTASKS": str(n), "SLURM_STEP_NUM_TASKS": str(n)}
    out = expand(opts.get("--output", opts.get("-o", "")), task)
    err = expand(opts.get("--error", opts.get("-e", "")), task)
    stdout = open(out, "a") if out else None
    stderr = open(err, "a") if err else None
    procs.append(subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr))
codes = [p.wait() for p in procs]
sys.exit(max(codes, key=abs))
'''

SBATCH = COMMON + r'''
script = Path(sys.argv[-1])
record("sbatch", sys.argv[1:])
text = script.read_text()
opts = dict(m.groups() for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S*))?", text, re.M))
counter = FOLDER / "next_job_id"
job = int(counter.read_text()) if counter.exists() else 1000
array = opts.get("array")
tasks = range(int(array.split("%")[0].split("-")[0]), int(array.split("%")[0].split("-")[-1]) + 1) if array else [None]
counter.write_text(str(job + 1 + len(tasks)))
states = FOLDER / "states"
states.mkdir(exist_ok=True)
nodes = int(opts.get("nodes", "1"))
per_node = int(opts.get("ntasks-per-node", "1"))
for k, task in enumerate(tasks):
    key = f"{job}_{task}" if task is not None else str(job)
    env = {**os.environ, "SLURM_JOB_ID": str(job + k + 1 if task is not None else job),
           "SLURM_JOB_NAME": opts.get("job-name", "job"),
           "SLURM_NTASKS": str(nodes * per_node), "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NNODES": str(nodes),
           "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_SUBMIT_DIR": os.getcwd()}
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task))
    out = (opts.get("output", "slurm-%j.out").replace("%A", str(job)).replace("%a", str(task))
           .replace("%j", env["SLURM_JOB_ID"]))
    (states / key).write_text("RUNNING")
    # like a queued job, it starts a moment later (submitit moves its files into place after sbatch returns)
    runner = (f"sleep 1; mkdir -p {Path(out).parent}; bash {script} > {out} 2>&1; code=$?; "
              f"if [ $code = 0 ]; then echo COMPLETED > {states / key}; else echo FAILED > {states / key}; fi")
    subprocess.Popen(["bash", "-c", runner], env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # sbatch returns at once
print(f"Submitted batch job {job}")
'''

SACCT = COMMON + r'''
argv = sys.argv[1:]
record("sacct", argv)
wanted = [argv[i + 1] for i, a in enumerate(argv) if a == "-j"]
print("JobID|State|NodeList")
for state in sorted((FOLDER / "states").glob("*")) if (FOLDER / "states").is_dir() else []:
    if state.name.split("_")[0] in wanted:
        print(f"{state.name}|{state.read_text().strip()}|localhost")
'''

SCONTROL = COMMON + r'''
record("scontrol", sys.argv[1:])
sys.exit(int(os.environ.get("FAKE_SCONTROL_EXIT", "0")))
'''


def install(folder: Path) -> Path:
    """Write the fake ``srun``, ``sbatch``, ``sacct`` and ``scontrol`` into ``folder``; returns it (put it
    first on ``PATH``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("srun", SRUN), ("sbatch", SBATCH), ("sacct", SACCT), ("scontrol", SCONTROL)):
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def calls(folder: Path, tool: str | None = None) -> list[dict]:
    """The recorded calls, oldest first (of one ``tool``, if given)."""
    path = folder / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if tool is None or r["tool"] == tool]


def job_env(job_id: int | str, ntasks: int = 1, **extra: str) -> dict[str, str]:
    """The variables of a SLURM job step with ``ntasks`` tasks on this one node (add ``SLURM_PROCID`` per task)."""
    return {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_NAME": "mrl-train", "SLURM_NTASKS": str(ntasks),
            "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", **extra}


def without_slurm(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without any ``SLURM_*`` variable."""
    return {k: v for k, v in (env or os.environ).items() if not k.startswith("SLURM_")}


__all__ = ["calls", "install", "job_env", "without_slurm"]
