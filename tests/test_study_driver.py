"""The study drivers (scripts/cifar10_study.sh, the study part of benchmarks/gpu_session.sh) with a stand-in for
Python that only writes the files each step leaves: drivers running side by side split the models between them,
every model is trained, evaluated and collected exactly once, and committed models are skipped."""

from __future__ import annotations

import os
import stat
import subprocess
from collections import Counter
from pathlib import Path

from conftest import PROJECT_ROOT

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python: records each step in $CALLS and writes the files the driver checks for.
value() { local key=$1; shift; for a in "$@"; do [[ $a == "$key="* ]] && echo "${a#*=}"; done; }
case $1 in
  -c) echo "fake torch" ;;
  scripts/train.py) dir=$(value hydra.run.dir "$@"); sleep 0.3; mkdir -p "$dir"
                    echo "dim,top1" > "$dir/metrics_by_dim.csv"; echo "train $(basename "$dir")" >> "$CALLS" ;;
  scripts/embed.py) out=$(value output_dir "$@"); mkdir -p "$out/test"; echo "{}" > "$out/test/meta.json"
                    echo "embed $(basename "$(dirname "$out")")" >> "$CALLS" ;;
  scripts/eval.py)  out=$(value output_dir "$@"); sleep 0.6; mkdir -p "$out"; echo "size,top1" > "$out/retrieval.csv"
                    echo "eval $(basename "$(dirname "$out")")" >> "$CALLS" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""
MODELS = ["mrl", "mrle", "ff2", "ff4", "mrl-seed43"]
# what the claims are judged on first (MRL, MRL-E, FF at the full width and at the noise sizes, their seed
# replicas), the rest of the FF sweep last
CIFAR10_PLAN = (["mrl", "mrle", "ff512", "ff2", "ff8", "ff64"]
                + [f"{m}-seed{s}" for s in (43, 44) for m in ("mrl", "ff2", "ff8", "ff64", "ff512")]
                + ["ff1", "ff4", "ff16", "ff32", "ff128", "ff256"])


def fake_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho fake GPU\n")
    for exe in (python, smi):
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PY": str(python),
            "CALLS": str(tmp_path / "calls"),
            "CIFAR10": "/nonexistent/cifar10.tar.gz", "STUDY_DIR": str(tmp_path / "study"),
            "RESULTS_DIR": str(tmp_path / "results"), "MODELS": " ".join(MODELS), "COMMIT": "0"}


def calls(tmp_path: Path) -> Counter:
    return Counter((tmp_path / "calls").read_text().splitlines())


def assert_each_model_done_once(tmp_path: Path) -> None:
    assert calls(tmp_path) == Counter(f"{step} {m}" for m in MODELS for step in ("train", "embed", "eval"))
    for m in MODELS:
        run = tmp_path / "results" / "runs" / m
        assert (run / "DONE").is_file() and (run / "metrics_by_dim.csv").is_file()
        assert (run / "eval" / "retrieval.csv").is_file()


def test_two_drivers_side_by_side_split_the_models_and_a_rerun_skips_the_collected(tmp_path):
    env = fake_env(tmp_path)
    driver = [str(PROJECT_ROOT / "scripts" / "cifar10_study.sh")]
    env["STAGES"] = "train eval collect"
    procs = [subprocess.Popen(driver, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert_each_model_done_once(tmp_path)
    assert any("another process holds it" in log for log in logs)  # they did meet on a model
    rerun = subprocess.run(driver, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert calls(tmp_path) == Counter(f"{step} {m}" for m in MODELS for step in ("train", "embed", "eval"))
    assert rerun.stdout.count("(done)") == len(MODELS)
    # the plan is the whole study, not the subset these drivers worked on: the report's "Missing" counts on it
    plan = (tmp_path / "results" / "runs" / "plan.txt").read_text().split()
    assert plan == CIFAR10_PLAN and not list((tmp_path / "results" / "runs").glob(".plan.*"))


def test_with_commit_each_finished_model_and_the_plan_are_committed_once(tmp_path):
    repo = tmp_path / "repo"
    env = fake_env(tmp_path)
    env.update(STAGES="train eval collect", COMMIT="1", MODELS="mrl ff2", RESULTS_DIR=str(repo / "results" / "c10"),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.txt").write_text("a person's uncommitted work\n")
    driver = [str(PROJECT_ROOT / "scripts" / "cifar10_study.sh")]
    for _ in range(2):  # the rerun commits nothing new
        proc = subprocess.run(driver, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "--name-only"], capture_output=True,
                         text=True, check=True).stdout
    subjects = [line for line in log.splitlines() if line.startswith("Study ")]
    assert subjects == ["Study c10: ff2 (metrics, curves, evaluator tables, configs, commands)",
                        "Study c10: mrl (metrics, curves, evaluator tables, configs, commands)",
                        "Study c10: plan (22 models)"]
    assert "notes.txt" not in log  # exactly the collected folders and the plan, nothing else of the checkout
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                            check=True).stdout
    assert status.strip() == "?? notes.txt"


def test_the_gpu_session_study_trains_in_one_process_and_evaluates_beside_it(tmp_path):
    env = fake_env(tmp_path)
    env.update(PARTS="study", BUDGET_S="100", EVAL_DRIVERS="2", STUDY_MODELS=" ".join(MODELS),
               OUT=str(tmp_path / "out"))
    proc = subprocess.run([str(PROJECT_ROOT / "benchmarks" / "gpu_session.sh")], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert_each_model_done_once(tmp_path)
    trainer_log = (tmp_path / "out" / "study_trainer.log").read_text()
    assert [line.split()[1] for line in trainer_log.splitlines() if line.startswith("train ")] == MODELS
    evaluator_lines = [line for i in (1, 2)
                       for line in (tmp_path / "out" / f"study_evaluator{i}.log").read_text().splitlines()]
    evaluated = [line.split()[1] for line in evaluator_lines if line.startswith("evaluate ")]
    assert sorted(evaluated) == sorted(MODELS)
    listing = subprocess.run(["tar", "tzf", str(tmp_path / "out" / "cifar10_gpu_runs.tar.gz")], capture_output=True,
                             text=True, check=True).stdout.split()
    assert {f"runs/{m}/DONE" for m in MODELS} <= set(listing)
    assert "=== collected: " + " ".join(sorted(MODELS)) in proc.stdout
