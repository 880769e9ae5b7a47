"""W&B runs that compare across sizes, read back from the offline run files, and scripts/compare.py over local
run folders, a W&B group (a stand-in for ``wandb.Api``) and its push to W&B (offline)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from mrl.report.compare import collect_wandb, push_comparison
from mrl.errors import ConfigError
from mrl.report.study import collect_runs
from mrl.report.tables import comparison_table
from wandb_records import offline_run

ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "WANDB_MODE": "offline",
       "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
DIGITS_DIMS = [8, 16, 32, 64, 128, 256]


def train(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "scripts/train.py", "callbacks.progress_bar=none", *args], cwd=PROJECT_ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """MRL (seeds 42, 43), MRL-E and FF-8 on digits, 2 epochs each, logged to W&B offline."""
    root = tmp_path_factory.mktemp("runs")
    folders = {"mrl": [], "mrl-seed43": ["seed=43"], "mrle": ["model.head=mrle"],
               "ff8": ["model.head=ff", "model.nesting_dims=[8]"]}
    for name, args in folders.items():
        train("trainer.max_epochs=2", *args, f"hydra.run.dir={root / ('job-' + name)}")
    return {name: root / f"job-{name}" for name in folders}


def test_a_run_logs_per_size_summaries_with_its_group_and_tags(runs):
    run = runs["mrl"]
    (folder,) = (run / "wandb").glob("offline-run-*")
    logged = offline_run(folder)
    assert logged["group"] == "digits_mlp"
    assert {"head=mrl", "backbone=mlp", "data=digits", "dims=8-256x6"} <= set(logged["tags"])
    epochs = [r for r in rows(run / "csv" / "metrics.csv") if r.get("val/top1@8")]
    assert len(epochs) == 2
    test = {int(r["dim"]): float(r["top1"]) for r in rows(run / "metrics_by_dim.csv")}
    for m in DIGITS_DIMS:
        assert logged["metrics"][f"val/top1@{m}"] == {"max", "last"}
        values = [float(r[f"val/top1@{m}"]) for r in epochs]
        summary = logged["summary"][f"val/top1@{m}"]
        assert summary["max"] == pytest.approx(max(values), abs=1e-4)
        assert summary["last"] == pytest.approx(values[-1], abs=1e-4)
        assert logged["summary"][f"test/top1@{m}"] == pytest.approx(test[m], abs=1e-4)
    # the per-size table and a line plot per metric (a plot's data is the table <plot>_table), one row per size
    assert logged["tables"] == {"test/metrics_by_dim": 6, "test/top1_by_dim_table": 6, "test/top5_by_dim_table": 6}


def test_compare_local_runs_by_their_records(runs, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "scripts/compare.py", "--runs", *map(str, runs.values()), "--out",
                           str(out)], cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = {int(r["dim"]): r for r in rows(out / "comparison.csv")}
    assert sorted(table) == DIGITS_DIMS
    mrl = [{int(r["dim"]): float(r["top1"]) for r in rows(runs[n] / "metrics_by_dim.csv")}
           for n in ("mrl", "mrl-seed43")]
    mrle = {int(r["dim"]): float(r["top1"]) for r in rows(runs["mrle"] / "metrics_by_dim.csv")}
    for m in DIGITS_DIMS:  # the two MRL seeds averaged, with their spread; MRL-E alone
        a, b = mrl[0][m], mrl[1][m]
        assert float(table[m]["top-1 MRL"]) == pytest.approx((a + b) / 2)
        assert float(table[m]["top-1 MRL_std"]) == pytest.approx(abs(a - b) / 2 ** 0.5)
        assert table[m]["top-1 MRL_n"] == "2"
        assert float(table[m]["top-1 MRL-E"]) == pytest.approx(mrle[m])
    ff8 = float(rows(runs["ff8"] / "metrics_by_dim.csv")[0]["top1"])
    assert float(table[8]["top-1 FF"]) == pytest.approx(ff8) and table[16]["top-1 FF"] == ""
    assert (out / "comparison.png").stat().st_size > 10_000
    assert "| dim | top-1 MRL | top-1 MRL-E | top-1 FF |" in (out / "comparison.md").read_text()


def test_two_runs_of_one_model_and_seed_are_refused(runs, tmp_path):
    with pytest.raises(ConfigError, match="is MRL trained with seed 42, like"):
        collect_runs([runs["mrl"], runs["mrl"]])


class FakeRun:
    """What ``wandb.Api().runs(...)`` yields, from a local run: config and summary as W&B stores them."""

    def __init__(self, folder: Path):
        self.name, self.id = folder.name, folder.name.replace("job-", "")
        self.config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        self.summary = {f"test/top1@{r['dim']}": float(r["top1"]) for r in rows(folder / "metrics_by_dim.csv")}


class FakeApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters):
        self.calls.append((path, filters))
        return self._runs


def test_compare_a_wandb_group_matches_the_local_comparison_and_pushes_a_panel(runs, tmp_path, monkeypatch):
    api = FakeApi([FakeRun(folder) for folder in runs.values()])
    online = comparison_table(collect_wandb("digits_mlp", "mrl", "me", api=api))
    local = comparison_table(collect_runs(list(runs.values())))
    assert api.calls == [("me/mrl", {"group": "digits_mlp"})]
    assert online.columns == local.columns
    for a, b in zip(online.rows, local.rows):
        assert {k: v for k, v in a.items() if v is not None} == pytest.approx({k: v for k, v in b.items()
                                                                                if v is not None})

    monkeypatch.setenv("WANDB_MODE", "offline")
    push_comparison(online, "mrl", "digits_mlp", mode="offline", directory=tmp_path)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = offline_run(folder)
    assert logged["group"] == "digits_mlp" and logged["name"] == "digits_mlp:compare"
    assert logged["tables"] == {"comparison/table": 6, "comparison/top-1_table": 6 + 6 + 1}  # MRL, MRL-E; FF at 8


def test_a_group_without_training_runs_is_one_line():
    with pytest.raises(ConfigError, match=r"--wandb-group: 'nothing' has no training runs in mrl"):
        collect_wandb("nothing", "mrl", api=FakeApi([]))


def test_evaluation_adds_its_tables_to_the_training_runs_wandb_run(runs, tmp_path):
    """scripts/eval.py continues the W&B run of the checkpoint's training (same id), which a W&B group comparison
    then reads mAP@10 from."""
    run = runs["mrl"]
    ckpt = run / "checkpoints" / "last.ckpt"
    embed = subprocess.run([sys.executable, "scripts/embed.py", f"ckpt_path={ckpt}", "dtype=float32",
                            f"output_dir={tmp_path / 'emb'}", f"hydra.run.dir={tmp_path / 'emb_hydra'}"],
                           cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert embed.returncode == 0, embed.stderr[-3000:]
    before = set((run / "wandb").glob("offline-run-*"))
    evaluate = subprocess.run([sys.executable, "scripts/eval.py", f"embeddings_dir={tmp_path / 'emb'}",
                               "evaluators=[classification,retrieval]", f"output_dir={tmp_path / 'eval'}",
                               f"hydra.run.dir={tmp_path / 'eval_hydra'}"], cwd=PROJECT_ROOT, env=ENV,
                              capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    (new,) = set((run / "wandb").glob("offline-run-*")) - before
    (training,) = before
    logged, trained = offline_run(new), offline_run(training)
    assert logged["id"] == trained["id"]  # the same W&B run, continued
    retrieval = {int(r["dim"]): float(r["map@10"]) for r in rows(tmp_path / "eval" / "retrieval.csv")}
    for m in DIGITS_DIMS:
        assert logged["summary"][f"eval/retrieval/map@10@{m}"] == pytest.approx(retrieval[m], abs=1e-4)
    assert logged["tables"]["eval/retrieval/metrics_by_dim"] == 6 and "eval/classification/metrics_by_dim" in \
        logged["tables"]

    class Run(FakeRun):  # the group's view after the evaluation: the training's and the evaluation's summaries
        def __init__(self, folder):
            super().__init__(folder)
            self.summary.update({k: v for k, v in logged["summary"].items() if k.startswith("eval/")})

    table = comparison_table(collect_wandb("digits_mlp", "mrl", api=FakeApi([Run(run)])))
    assert [r["mAP@10 MRL"] for r in table.rows] == pytest.approx([retrieval[m] for m in DIGITS_DIMS])


def test_an_online_run_whose_wandb_server_is_dead_stops_before_training_in_one_line(tmp_path):
    """mode=online with a server that does not answer: one line naming the fix after init_timeout, exit 2, no
    training; never a hang."""
    env = {**ENV, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE")
    args = ["callbacks.progress_bar=none", "logger.wandb.mode=online", "logger.wandb.init_timeout=3",
            f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "scripts/train.py", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: logger.wandb.mode: is online but W&B did not start (") and "mode=offline" in line
    assert not (tmp_path / "checkpoints").exists()


def test_wandb_runs_wait_a_bounded_time_for_the_upload(tmp_path):
    """W&B's own default waits for ever at the end of a run whose server went away mid-run; ours waits
    logger.wandb.finish_timeout seconds, then leaves the records in the run folder for `wandb sync`."""
    from mrl.loggers import create_loggers

    loggers = create_loggers({"wandb": {"mode": "offline", "init_timeout": 30, "finish_timeout": 7}}, tmp_path,
                             "run", "group", [])
    wandb_logger = loggers[-1]
    settings = wandb_logger._wandb_init["settings"]
    assert settings.finish_timeout == 7 and settings.init_timeout == 30
    assert wandb_logger.experiment.settings.finish_timeout == 7
    wandb_logger.experiment.finish()
    assert any((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    from mrl.app.config_checks import check_train_config

    with pytest.raises(ConfigError, match=r"^logger.wandb.finish_timeout: must be .*, got -1"):
        check_train_config({"logger": {"wandb": {"finish_timeout": -1}}})
