"""``mrl.report`` / ``scripts/report.py``: a hand-made study folder in the real file formats (no training),
collected tables equal to their inputs, missing stages listed, commands and configs next to the numbers,
and the paper's reference CSVs read as published."""

from __future__ import annotations

import csv
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrl.errors import ConfigError
from mrl.report.inputs import read_csv
from mrl.report.study import collect, collect_study
from mrl.report.tables import PAPER_LABEL, load_paper_reference
from mrl.report.write import write_report

from conftest import PROJECT_ROOT

PAPER_DIR = PROJECT_ROOT / "results" / "paper_reference"
NESTING = [2, 4, 8]  # width 8; FF models: ff2 (trained, not evaluated), ff8 (evaluated, with baselines); ff4 absent

# the column layouts written by mrl.report.run_tables / mrl.evaluation.run
METRICS_COLS = ["dim", "top1", "top5"]
CLASSIFICATION_COLS = ["dim", "trained", "top1", "top5", "knn_top1", "logits_top1"]
RETRIEVAL_COLS = ["dim", "top1", "map@10", "precision@10", "recall@10", "hit@10", "map@25", "precision@25",
                  "recall@25", "hit@25", "index_seconds", "search_seconds"]
AC_COLS = ["cap", "accuracy", "accuracy_std", "expected_dim", "expected_dim_std", "fixed_accuracy",
           "oracle_accuracy", "oracle_expected_dim", "thresholds", "size_fractions"]
AR_COLS = ["kind", "D_s", "D_r", "K", "map@10", "top1", "mflops", "us_per_query", "speedup"]
BASELINE_COLS = ["dim", "svd_top1", "svd_classifier_top1", "rand_lp_top1", "rand_fs_top1", "rand_fs_map@10"]


def _write_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)


def _v(model: int, dim: int, metric: int) -> float:
    """A distinct, recognisable number per (model, size, metric)."""
    return round(10.0 * model + dim + metric / 100 + 0.003, 4)



MODEL_ID = {"mrl": 1, "mrle": 2, "ff2": 3, "ff8": 4, "ff4": 5}
EPOCHS = 3  # validated epochs in the fake csv/metrics.csv


def _metrics_log(path: Path, dims, value) -> None:
    """Lightning's CSVLogger ``metrics.csv`` as a run writes it: per epoch an LR row (no epoch), a training row
    and a validation row (``value(dim, epoch)`` in ``val/top1@<dim>``); the validation cells of the other rows
    empty, and a ``val/top1_mean`` column the report ignores."""
    val = [f"val/top1@{m}" for m in dims]
    rows = []
    for e in range(EPOCHS):
        vals = [value(m, e) for m in dims]
        rows += [["", 0.1, 10 * e, "", "", *[""] * len(dims), ""],
                 [e, "", 10 * e + 5, 2.0, "", *[""] * len(dims), ""],
                 [e, "", 10 * e + 9, "", 1.5, *vals, 99.0]]
    _write_csv(path, ["epoch", "lr-SGD", "step", "train/loss", "val/loss", *val, "val/top1_mean"], rows)


def _model(study: Path, name: str, head: str, dims: list[int], evaluated: bool, data: str = "cifar10",
           folder: str | None = None, seed: int = 42, offset: float = 0.0) -> None:
    """Model ``name``'s run directory, in ``study/<folder or name>``, trained with ``seed``: every number of its
    files is ``_v(...) + offset``."""
    d = study / (folder or name)
    i = MODEL_ID[name]

    def v(model: int, dim: int, metric: int) -> float:
        return _v(model, dim, metric) + offset

    hydra = d / ".hydra"
    hydra.mkdir(parents=True)
    overrides = ["+experiment=cifar10_resnet18_study", "data.root=/data/c10.tar.gz", "logger=csv",
                 f"model.head={head}"] + ([f"model.nesting_dims=[{dims[0]}]"] if head == "ff" else [])
    cfg = {"task_name": "train", "experiment_name": "cifar10_resnet18_study", "seed": seed, "ckpt_path": None,
           "test_checkpoint": "last",
           "data": {"name": data, "root": "/data/c10.tar.gz", "batch_size": 128},
           "model": {"backbone": {"name": "torchvision/resnet18", "small_input": False}, "head": head,
                     "nesting_dims": dims, "optimizer": {"name": "sgd", "lr": 0.1}},
           "trainer": {"max_epochs": 3, "precision": "32-true"},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (hydra / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"hydra": [f"hydra.run.dir={d}", "hydra.mode=RUN"],
                                 "task": overrides}}}))
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"")
    _write_csv(d / "metrics_by_dim.csv", METRICS_COLS, [[m, v(i, m, 1), v(i, m, 5)] for m in dims])
    _metrics_log(d / "csv" / "metrics.csv", dims, lambda m, e: v(i, m, 70 + e))
    if not evaluated:
        return
    ev = d / "eval"
    _write_csv(ev / "classification.csv", CLASSIFICATION_COLS,
               [[m, True, v(i, m, 11), v(i, m, 15), v(i, m, 21), v(i, m, 11)] for m in dims])
    _write_csv(ev / "retrieval.csv", RETRIEVAL_COLS,
               [[m, v(i, m, 31), v(i, m, 32), v(i, m, 33), v(i, m, 34), v(i, m, 35), v(i, m, 36),
                 v(i, m, 37), v(i, m, 38), v(i, m, 39), 0.001, 0.002] for m in dims])
    if head != "ff":
        _write_csv(ev / "adaptive_classification.csv", AC_COLS,
                   [[c, v(i, c, 41), 0.5, c * 0.75, 0.1, v(i, c, 42), v(i, c, 43), c * 0.5, "0.3", "1"]
                    for c in dims])
        _write_csv(ev / "adaptive_retrieval.csv", AR_COLS,
                   [["exact", 8, 8, "", v(i, 8, 51), v(i, 8, 52), 0.4, 100.0, 1.0],
                    ["adaptive (exact)", 2, 8, 50, v(i, 2, 51), v(i, 2, 52), 0.1, 50.0, 2.0],
                    ["funnel (exact)", 2, "4,8", "200,10", v(i, 2, 53), v(i, 2, 54), 0.125, 80.0, 1.25]])
    else:
        _write_csv(ev / "baselines.csv", BASELINE_COLS,
                   [[m, v(9, m, 61), v(9, m, 62), v(9, m, 63), v(9, m, 64), v(9, m, 65)] for m in NESTING])
    # scripts/cifar10_study.sh's layout: <model>/embeddings with its Hydra record in embeddings/hydra/.hydra;
    # ff8: a folder outside the study with .hydra inside
    emb = study.parent / "embeddings" / d.name if name == "ff8" else d / "embeddings"
    record = emb if name == "ff8" else emb / "hydra"
    (record / ".hydra").mkdir(parents=True)
    (record / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"ckpt_path={d}/checkpoints/last.ckpt", "data=cifar10", "data.root=/data/c10.tar.gz"]))
    (ev / "eval_config.yaml").write_text(yaml.safe_dump({"embeddings_dir": str(emb), "evaluators": ["retrieval"]}))
    (ev / "command.txt").write_text(f"python scripts/eval.py embeddings_dir={emb} output_dir={ev} tag={name}\n")


REPORT_TABLES = ("top1_by_size", "knn_top1_by_size", "map10_by_size", "retrieval_by_size", "adaptive_classification",
                 "adaptive_retrieval", "validation_curve")


def test_readme_lists_exactly_the_tables_and_plots_the_report_writes():
    """The Reports section of the README names the report's tables (each written as .csv/.md/.json/.png by
    test_write_report) and its other files."""
    import re

    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("### Reports"):text.index("## Layout")]
    listed = section[section.index("It writes into `<out>/`:"):section.index("(`.csv`, `.md`, `.json`, `.png`;")]
    assert tuple(re.findall(r"`(\w+)`", listed)) == REPORT_TABLES
    for name in ("commands.md", "configs/<model>.yaml", "summary.md", "findings.md"):
        assert f"`{name}`" in section


@pytest.fixture()
def study(tmp_path) -> Path:
    root = tmp_path / "study"
    _model(root, "mrl", "mrl", NESTING, True)
    _model(root, "mrle", "mrle", NESTING, True)
    _model(root, "ff2", "ff", [2], False)   # trained, evaluation stage not run
    _model(root, "ff8", "ff", [8], True)    # full width: has baselines
    return root


def _col(table, column):
    return {r["dim"]: r.get(column) for r in table.rows}


def test_collected_tables_equal_inputs(study):
    from mrl.report.tables import build_tables

    s = collect_study(study)
    assert s.sizes == NESTING and s.width == 8
    t = build_tables(s)
    top1 = t["top1_by_size"]
    assert top1.columns == ["dim", "MRL", "MRL-E", "FF", "SVD", "SVD-classifier", "Rand-LP"]
    mrl_in = {r["dim"]: r["top1"] for r in read_csv(study / "mrl" / "metrics_by_dim.csv")}
    assert _col(top1, "MRL") == mrl_in
    assert _col(top1, "MRL-E") == {m: _v(2, m, 1) for m in NESTING}
    # FF at size k comes from ff<k>, at its own k only; ff4 does not exist
    assert _col(top1, "FF") == {2: _v(3, 2, 1), 4: None, 8: _v(4, 8, 1)}
    assert _col(top1, "SVD") == {m: _v(9, m, 61) for m in NESTING}
    assert _col(top1, "SVD-classifier") == {m: _v(9, m, 62) for m in NESTING}
    assert _col(top1, "Rand-LP") == {m: _v(9, m, 63) for m in NESTING}

    knn = t["knn_top1_by_size"]
    assert _col(knn, "MRL") == {m: _v(1, m, 21) for m in NESTING}
    assert _col(knn, "FF") == {2: None, 4: None, 8: _v(4, 8, 21)}  # ff2 not evaluated
    assert _col(knn, "Rand-FS") == {m: _v(9, m, 64) for m in NESTING}

    map10 = t["map10_by_size"]
    assert map10.columns == ["dim", "MRL", "MRL-E", "FF", "Rand-FS"]
    assert _col(map10, "MRL-E") == {m: _v(2, m, 32) for m in NESTING}
    assert _col(map10, "FF") == {2: None, 4: None, 8: _v(4, 8, 32)}
    assert _col(map10, "Rand-FS") == {m: _v(9, m, 65) for m in NESTING}

    full = t["retrieval_by_size"]
    mrl4 = next(r for r in full.rows if r["method"] == "MRL" and r["dim"] == 4)
    assert (mrl4["map@10"], mrl4["precision@10"], mrl4["recall@10"], mrl4["hit@10"], mrl4["top1"]) == \
        (_v(1, 4, 32), _v(1, 4, 33), _v(1, 4, 34), _v(1, 4, 35), _v(1, 4, 31))
    assert [(r["method"], r["dim"]) for r in full.rows if r["method"].startswith("FF")] == [("FF-8", 8)]

    ac = t["adaptive_classification"]
    assert {r["method"] for r in ac.rows} == {"MRL", "MRL-E"}
    r = next(r for r in ac.rows if r["method"] == "MRL-E" and r["cap"] == 4)
    assert (r["accuracy"], r["expected_dim"], r["fixed_accuracy"], r["oracle_accuracy"], r["oracle_expected_dim"]) \
        == (_v(2, 4, 41), 3.0, _v(2, 4, 42), _v(2, 4, 43), 2.0)

    ar = t["adaptive_retrieval"]
    assert len(ar.rows) == 6
    r = next(r for r in ar.rows if r["method"] == "MRL" and r["kind"] == "adaptive (exact)")
    assert (r["D_s"], r["D_r"], r["K"], r["map@10"], r["mflops"], r["us_per_query"], r["speedup"]) == \
        (2, 8, 50, _v(1, 2, 51), 0.1, 50.0, 2.0)
    assert r["mflops_speedup"] == pytest.approx(0.4 / 0.1)
    funnel = next(r for r in ar.rows if r["method"] == "MRL" and r["kind"].startswith("funnel"))
    assert (funnel["D_r"], funnel["K"]) == ("4,8", "200,10")


def test_missing_pieces_listed(study):
    s = collect_study(study)
    assert "ff4: model folder missing" in s.missing
    assert "ff2: eval/ missing (evaluation stage not run)" in s.missing
    assert not any(m.startswith(("mrl:", "mrle:", "ff8:")) for m in s.missing)
    (study / "mrle" / "eval" / "adaptive_retrieval.csv").unlink()
    (study / "ff8" / "eval" / "baselines.csv").unlink()
    (study / "mrl" / "metrics_by_dim.csv").unlink()
    s = collect_study(study)
    assert "mrle: eval/adaptive_retrieval.csv missing" in s.missing
    assert any(m.startswith("ff8: eval/baselines.csv missing") for m in s.missing)
    assert any(m.startswith("mrl: metrics_by_dim.csv missing") for m in s.missing)
    from mrl.report.tables import build_tables

    t = build_tables(s)
    # MRL top-1 falls back to the evaluation's linear top-1; the baseline columns are empty
    assert _col(t["top1_by_size"], "MRL") == {m: _v(1, m, 11) for m in NESTING}
    assert set(_col(t["top1_by_size"], "SVD").values()) == {None}
    assert {r["method"] for r in t["adaptive_retrieval"].rows} == {"MRL"}


def test_auto_nesting_read_from_results(study):
    # nesting_dims: auto in the config: the trained sizes come from the MRL model's result files
    cfg = yaml.safe_load((study / "mrl" / ".hydra" / "config.yaml").read_text())
    cfg["model"]["nesting_dims"] = "auto"
    (study / "mrl" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    s = collect_study(study)
    assert s.nesting == NESTING and s.sizes == NESTING
    assert "ff4: model folder missing" in s.missing


def test_write_report(study, tmp_path):
    out = tmp_path / "out"
    rep = write_report(collect_study(study), out, title="fake study", paper_dir=PAPER_DIR)
    for stem in REPORT_TABLES:
        for ext in ("csv", "md", "json", "png"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    # the CSV written holds the collected numbers
    written = read_csv(out / "top1_by_size.csv")
    assert [r["dim"] for r in written] == NESTING
    assert {r["dim"]: r["FF"] for r in written} == {2: _v(3, 2, 1), 4: None, 8: _v(4, 8, 1)}
    assert {r["dim"]: r["MRL"] for r in written} == _col(rep.tables["top1_by_size"], "MRL")

    commands = (out / "commands.md").read_text()
    for name in ("mrl", "mrle", "ff2", "ff8"):
        overrides = yaml.safe_load((study / name / ".hydra" / "overrides.yaml").read_text())
        cmd = shlex.join(["python", "scripts/train.py", *overrides, f"hydra.run.dir={study}/{name}"])
        assert cmd in commands
        assert f"configs/{name}.yaml" in commands
        assert (out / "configs" / f"{name}.yaml").read_bytes() == \
            (study / name / ".hydra" / "config.yaml").read_bytes()
    assert "hydra.mode" not in commands
    for name in ("mrl", "mrle", "ff8"):
        assert (study / name / "eval" / "command.txt").read_text().strip() in commands
        assert f"python scripts/embed.py ckpt_path={study}/{name}/checkpoints/last.ckpt data=cifar10" in commands
        assert (out / "configs" / f"{name}_eval.yaml").is_file()
    assert not (out / "configs" / "ff2_eval.yaml").exists()

    summary = (out / "summary.md").read_text()
    assert summary.startswith("# fake study")
    assert "| epochs | 3 |" in summary and "| backbone | torchvision/resnet18 |" in summary
    assert "| nesting sizes (MRL, MRL-E) | 2, 4, 8 |" in summary
    assert "* ff4: model folder missing" in summary
    assert "![Linear top-1 by size](top1_by_size.png)" in summary
    assert "![Validation top-1 per epoch](validation_curve.png)" in summary
    assert "| MRL | 42 | mrl |" in summary and "| FF-8 | 42 | ff8 |" in summary  # the seeds present
    # not ImageNet: the paper is cited for context, not overlaid
    assert "For context only" in summary and "overlaid" in summary


def test_empty_and_partial_study_do_not_crash(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes").mkdir()
    rep = write_report(collect_study(empty), tmp_path / "out", paper_dir=None)
    assert rep.tables["top1_by_size"].rows == []
    assert "(no data yet)" in (tmp_path / "out" / "top1_by_size.md").read_text()
    assert not (tmp_path / "out" / "top1_by_size.png").exists()
    assert "notes/: not a model folder" in (tmp_path / "out" / "summary.md").read_text()

    partial = tmp_path / "partial"
    (partial / "mrl" / ".hydra").mkdir(parents=True)  # a run that has only just started
    (partial / "mrl" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.head=mrl"]))
    s = collect_study(partial)
    write_report(s, tmp_path / "out2", paper_dir=None)
    assert "mrl: .hydra/config.yaml missing" in s.missing
    assert "python scripts/train.py model.head=mrl" in (tmp_path / "out2" / "commands.md").read_text()
    with pytest.raises(FileNotFoundError):
        collect_study(tmp_path / "nope")


def test_paper_reference_loader():
    paper = load_paper_reference(PAPER_DIR)

    def raw(name):
        with (PAPER_DIR / name).open(newline="") as f:
            return list(csv.reader(f))

    rows = raw("imagenet1k_rn50_top1_linear.csv")
    header = rows[0]
    last = next(r for r in rows[1:] if float(r[0]) == 2048)
    mrl_2048 = float(last[header.index("R50-NRL")])
    top1 = {r["dim"]: r for r in paper["top1_linear"]}
    assert top1[2048]["MRL"] == mrl_2048
    assert top1[2048]["FF"] == float(last[header.index("R50-FF")])
    assert top1[2048]["SVD"] is None  # empty in the file
    assert sorted(top1) == sorted(int(float(r[0])) for r in rows[1:])

    rows = raw("imagenet1k_rn50_map10.csv")
    h = rows[0]
    first = rows[1]
    m = paper["map10"][0]
    assert (m["dim"], m["MRL-E"], m["Rand-FS"]) == (int(first[0]), float(first[h.index("R50-NRL-E")]),
                                                     float(first[h.index("R50-Rand")]))
    rows = raw("imagenet1k_rn50_1nn_top1.csv")
    assert paper["knn_top1"][-1]["MRL"] == float(rows[-1][rows[0].index("R50-NRL")])

    rows = raw("imagenet1k_rn50_adaptive_classification.csv")
    h = rows[0]
    assert [(r["expected_dim"], r["accuracy"]) for r in paper["adaptive_classification"]] == \
        [(float(r[h.index("ED")]), float(r[h.index("MH_CASC")])) for r in rows[1:] if r[h.index("ED")]]
    assert [(r["dim"], r["accuracy"]) for r in paper["fixed_classification"]] == \
        [(int(r[h.index("D")]), float(r[h.index("MH")])) for r in rows[1:] if r[h.index("D")]]

    rows = raw("imagenet1k_rn50_adaptive_retrieval.csv")
    h = rows[0]
    assert len(paper["adaptive_retrieval"]) == len(rows) - 1
    r0 = paper["adaptive_retrieval"][0]
    assert (r0["D_s"], r0["D_r"], r0["mflops"], r0["map@10"]) == \
        (int(rows[1][h.index("Shortlist dim")]), int(rows[1][h.index("Reranking dim")]),
         float(rows[1][h.index("MFLOPS")]), float(rows[1][h.index("MAP@10")]))
    assert len(paper["exact_retrieval_cost"]) == len(raw("imagenet1k_rn50_exact_retrieval_cost.csv")) - 1


def test_paper_reference_is_an_unchanged_copy():
    shared = PROJECT_ROOT.parent / "shared" / "paper"
    if not shared.is_dir():
        pytest.skip("no /work/shared/paper here")
    for f in shared.glob("*.csv"):
        assert (PAPER_DIR / f.name).read_bytes() == f.read_bytes(), f.name
    assert "RAIVNLab/MRL" in (PAPER_DIR / "README.md").read_text()


def test_imagenet_study_overlays_paper(tmp_path, monkeypatch):
    root = tmp_path / "inet"
    _model(root, "mrl", "mrl", NESTING, True, data="imagenet")
    s = collect_study(root)
    assert s.is_imagenet
    labels = []
    from matplotlib.axes import Axes

    orig = Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    write_report(s, tmp_path / "out", paper_dir=PAPER_DIR)
    assert f"MRL, {PAPER_LABEL}" in labels and f"FF, {PAPER_LABEL}" in labels
    assert f"MRL adaptive, {PAPER_LABEL}" in labels
    assert "draw the paper's published curves dashed" in (tmp_path / "out" / "summary.md").read_text()
    labels.clear()
    write_report(s, tmp_path / "out", paper_dir=PAPER_DIR, imagenet=False)
    assert not any(label and PAPER_LABEL in label for label in labels)


def test_script(study, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "report.py"), "--study-dir", str(study),
                           "--out", str(out), "--title", "CLI study"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ff4: model folder missing" in proc.stdout
    assert (out / "summary.md").read_text().startswith("# CLI study")
    assert "--title 'CLI study'" in (out / "summary.md").read_text()
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "report.py"), "--study-dir",
                           str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def _report(*args):
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "report.py"), *args], capture_output=True,
                          text=True, timeout=120)


def _spy(monkeypatch, cls, method):
    """Record ``(instance, args, kwargs)`` of every call of ``cls.method``."""
    calls, original = [], getattr(cls, method)

    def spy(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)
    return calls


def test_report_on_a_single_run_directory(tmp_path):
    runs = tmp_path / "runs"
    _model(runs, "mrle", "mrle", NESTING, True, folder="2024-05-01_12-00-00")  # named by Hydra's default
    run = runs / "2024-05-01_12-00-00"
    out = tmp_path / "out"
    proc = _report("--dir", str(run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"run {run} (MRL-E) -> {out}/summary.md")
    top1 = {r["dim"]: r for r in read_csv(out / "top1_by_size.csv")}
    assert {d: r["MRL-E"] for d, r in top1.items()} == {m: _v(2, m, 1) for m in NESTING}
    assert all(r["MRL"] is None and r["FF"] is None for r in top1.values())
    assert {(r["method"], r["kind"]) for r in read_csv(out / "adaptive_retrieval.csv")} == \
        {("MRL-E", "exact"), ("MRL-E", "adaptive (exact)"), ("MRL-E", "funnel (exact)")}
    for stem in REPORT_TABLES:
        assert (out / f"{stem}.png").stat().st_size > 0, stem
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# 2024-05-01_12-00-00\n")
    assert f"Run directory: `{run}`, model mrle (MRL-E)" in summary
    assert "model folder missing" not in summary and "baselines.csv missing" not in summary
    assert "* nothing: every model and evaluator table is present" in summary
    commands = (out / "commands.md").read_text()
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert shlex.join(["python", "scripts/train.py", *overrides, f"hydra.run.dir={run}"]) in commands
    assert f"python scripts/embed.py ckpt_path={run}/checkpoints/last.ckpt data=cifar10 data.root=/data/c10.tar.gz\n" \
        in commands
    assert (run / "eval" / "command.txt").read_text().strip() in commands
    assert (out / "configs" / "mrle.yaml").read_bytes() == (run / ".hydra" / "config.yaml").read_bytes()

    # an FF run: its size read from its config, baselines beside it
    _model(runs, "ff8", "ff", [8], True, folder="ff_run")
    s = collect(runs / "ff_run")
    assert s.single_run and list(s.models) == ["ff8"] and s.sizes == NESTING
    from mrl.report.tables import build_tables

    t = build_tables(s)
    assert _col(t["top1_by_size"], "FF") == {2: None, 4: None, 8: _v(4, 8, 1)}
    assert _col(t["top1_by_size"], "SVD") == {m: _v(9, m, 61) for m in NESTING}
    assert not collect(tmp_path / "runs").single_run  # the folder above: a study (of folders not named as models)


def test_plot_titles_name_the_study_or_the_run(study, tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    titles = _spy(monkeypatch, Axes, "set_title")
    suptitles = _spy(monkeypatch, Figure, "suptitle")

    def plot_titles():
        # one per plot: the panels of retrieval_by_size are titled by their metric, its figure by the study
        found = [a[0] for _, a, _ in titles if not a[0].endswith("(%)")] + [a[0] for _, a, _ in suptitles]
        titles.clear()
        suptitles.clear()
        return found

    write_report(collect(study), tmp_path / "a", paper_dir=None)
    found = plot_titles()
    assert len(found) == len(REPORT_TABLES)  # one plot per table
    assert all(t.endswith(", study") for t in found), found  # the folder's name, not "Study study"
    assert (tmp_path / "a" / "summary.md").read_text().startswith("# study\n")
    write_report(collect(study), tmp_path / "b", paper_dir=None, title="CIFAR-10, ResNet-18")
    assert all(t.endswith(", CIFAR-10, ResNet-18") for t in plot_titles())
    write_report(collect(study / "mrle"), tmp_path / "c", paper_dir=None)
    found = plot_titles()
    assert found and all(t.endswith(", mrle") for t in found)


def test_adaptive_retrieval_points_are_labelled_by_their_setting(study, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    labels = _spy(monkeypatch, Axes, "annotate")
    write_report(collect(study), tmp_path / "out", paper_dir=None)
    # the fixture's rows: exact search at 8; shortlist 50 on 2 dims reranked on 8; funnel 2 -> 4 -> 8 keeping 200, 10
    per_model = ["exact d=8", "Ds=2 K=50 Dr=8", "Ds=2 K=200,10 Dr=4,8"]
    assert sorted(args[0] for _, args, _ in labels) == sorted(per_model * 2)  # MRL and MRL-E
    assert all(args[1] for _, args, _ in labels)  # placed at a point


def test_retrieval_by_size_plot_draws_the_table(study, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from mrl.report.plots import plot_retrieval_by_size
    from mrl.report.tables import build_tables

    lines = _spy(monkeypatch, Axes, "plot")
    titles = _spy(monkeypatch, Axes, "set_title")
    table = build_tables(collect(study))["retrieval_by_size"]
    assert plot_retrieval_by_size(table, tmp_path / "r.png", "t").stat().st_size > 0
    panel = {id(ax): args[0] for ax, args, _ in titles}
    drawn = {(panel[id(ax)], kwargs["label"]): (list(args[0]), list(args[1])) for ax, args, kwargs in lines}
    assert sorted({p for p, _ in drawn}) == ["hit@10 (%)", "mAP@10 (%)", "precision@10 (%)", "recall@10 (%)",
                                             "top1 (%)"]
    assert drawn[("mAP@10 (%)", "MRL")] == (NESTING, [_v(1, m, 32) for m in NESTING])
    assert drawn[("recall@10 (%)", "MRL-E")] == (NESTING, [_v(2, m, 34) for m in NESTING])
    assert drawn[("top1 (%)", "FF")] == ([8], [_v(4, 8, 31)])  # ff2 is not evaluated
    assert drawn[("mAP@10 (%)", "Rand-FS")] == (NESTING, [_v(9, m, 65) for m in NESTING])
    assert ("precision@10 (%)", "Rand-FS") not in drawn  # not evaluated for Rand-FS


def test_commands_note_an_unrecorded_embed_command(study, tmp_path):
    import shutil

    shutil.rmtree(study / "mrle" / "embeddings")
    write_report(collect(study), tmp_path / "out", paper_dir=None)
    commands = (tmp_path / "out" / "commands.md").read_text()
    mrl, mrle = commands.split("## mrl (MRL, seed 42)")[1].split("## mrle (MRL-E, seed 42)")
    assert "python scripts/embed.py" in mrl and "Embed: not recorded" not in mrl
    mrle = mrle.split("## ff")[0]
    assert "python scripts/embed.py" not in mrle and "Embed: not recorded" in mrle


def test_the_embed_command_is_read_from_the_models_own_folder_before_eval_configs_path(study, tmp_path):
    import shutil

    # a study made on another machine: eval_config.yaml names where the embeddings were there, and that path
    # holds another run's record here; the committed copy in the model's folder is the one that made this model
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".hydra").mkdir(parents=True)
    (elsewhere / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["ckpt_path=/other/last.ckpt"]))
    (study / "mrl" / "eval" / "eval_config.yaml").write_text(
        yaml.safe_dump({"embeddings_dir": str(elsewhere), "evaluators": ["retrieval"]}))

    def mrl_commands(out: str) -> str:
        write_report(collect(study), tmp_path / out, paper_dir=None)
        text = (tmp_path / out / "commands.md").read_text()
        return text.split("## mrl (MRL, seed 42)")[1].split("## mrle (MRL-E, seed 42)")[0]

    own = mrl_commands("a")
    assert f"python scripts/embed.py ckpt_path={study}/mrl/checkpoints/last.ckpt data=cifar10" in own
    assert f"Embed (from `{study}/mrl/embeddings/hydra/.hydra/overrides.yaml`)" in own and "/other/" not in own
    shutil.rmtree(study / "mrl" / "embeddings")  # no committed copy: the record at embeddings_dir is what there is
    assert "python scripts/embed.py ckpt_path=/other/last.ckpt\n" in mrl_commands("b")


def test_an_input_that_does_not_parse_is_a_one_line_error_naming_it(study, tmp_path):
    def rewrite(rel, text):
        path = study / rel
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    retrieval = (study / "mrl" / "eval" / "retrieval.csv").read_text()
    classification = (study / "mrle" / "eval" / "classification.csv").read_text()
    cases = [
        ("mrl/eval/retrieval.csv", retrieval + "16," + ",".join(["1.0"] * 11) + ",9\n",
         "line 5 has 13 fields, the header has 12"),
        ("mrl/metrics_by_dim.csv", b"\x89PNG\r\n\x1a\n\x00\x00",
         "is not a CSV table ('utf-8' codec can't decode byte 0x89 in position 0: invalid start byte)"),
        ("ff8/eval/baselines.csv", "size,svd_top1\n2,50.0\n", "has no column dim (its columns: size, svd_top1)"),
        ("mrle/eval/classification.csv", classification.replace("\n4,", "\nfour,"),
         "column dim holds 'four', not an integer"),
        ("mrle/eval/adaptive_classification.csv", "", "has no header row"),
        ("mrl/.hydra/config.yaml", "model: [1, 2\n", "is not valid YAML (while parsing a flow sequence"),
        ("mrl/.hydra/overrides.yaml", "a: 1\n", "holds a dict, not Hydra's list of overrides"),
        ("mrl/csv/metrics.csv", "epoch,step,val/top1@8\n0,9,\n0,10,abc\n",
         "column val/top1@8 holds 'abc', not a number"),
        ("mrl/csv/metrics.csv", "epoch,step,val/top1@8\n,9,50.5\n",
         "a row with val/top1@8 = 50.5 has epoch None, not an integer"),
    ]
    for rel, text, problem in cases:
        original = (study / rel).read_bytes()
        path = rewrite(rel, text)
        with pytest.raises(ConfigError) as info:
            collect(study)
        message = str(info.value)
        assert message.startswith(f"{path}: {problem}") and "\n" not in message, message
        assert message.endswith("; re-run the stage that wrote it, or move it aside to leave it out of the report")
        path.write_bytes(original)
    rewrite("mrl/eval/retrieval.csv", retrieval + "16,1.0\n")
    out = tmp_path / "out"
    proc = _report("--dir", str(study), "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {study}/mrl/eval/retrieval.csv: line 5 has 2 fields, the header has "
                                        "12; re-run the stage that wrote it, or move it aside to leave it out of the "
                                        "report"]
    assert not out.exists()
    # a run directory's embeddings meta.json, read to tell which head the run trained
    meta = study / "mrl" / "embeddings" / "test" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text('{"head": "mrl", "nesting_dims": [2, 4, 8]')
    proc = _report("--dir", str(study / "mrl"), "--out", str(out))
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.splitlines() == [f"error: embeddings: {meta} is not valid JSON (Expecting ',' delimiter: "
                                        "line 1 column 42 (char 41)); re-run scripts/embed.py for this split"]


def _section_rows(text: str, heading: str) -> dict[int, list[str]]:
    """The cells of a findings comparison table under ``### heading``, by size."""
    section = text.split(f"### {heading}\n")[1].split("\n#")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| dim")]
    return {int(r[0]): r[1:] for r in rows}


def test_findings_are_computed_from_the_tables(study):
    from mrl.report.findings import findings_markdown
    from mrl.report.study import collect_study
    from mrl.report.tables import build_tables

    text = findings_markdown(build_tables(collect_study(study)))
    mrl, ff, svd = _v(1, 8, 1), _v(4, 8, 1), _v(9, 8, 61)  # MRL and FF-8 top-1, SVD probe at 8
    # one seed of every model: the differences are shown, none is called one
    assert _section_rows(text, "MRL vs FF-k, linear top-1")[8] == [
        f"{mrl:.2f}", f"{ff:.2f}", f"{mrl - ff:+.2f}", "– (MRL: one seed only; FF: one seed only)",
        "no spread measured"]
    assert _section_rows(text, "MRL vs SVD, linear top-1")[8][2] == f"{mrl - svd:+.2f}"
    assert _section_rows(text, "MRL-E vs MRL, linear top-1")[8][2] == f"{_v(2, 8, 1) - mrl:+.2f}"
    assert "MRL >= FF (higher or within noise) at 0 of 0 sizes with a measured spread" in text
    # the fake adaptive rows score below exact search: no equal-mAP setting exists
    assert "* MRL: exact search at 8 dims" in text and "no setting reaches the exact map@10" in text


# --------------------------------------------------------------------------------------------------
# seed replicas: means and spreads, verdicts against the spread, the validation curve
# --------------------------------------------------------------------------------------------------

OFFSETS = {42: 0.0, 43: 0.37, 44: -0.21}  # a replica's numbers: the seed-42 ones + its seed's offset


def _replica(name: str, seed: int) -> str:
    """scripts/cifar10_study.sh's folder name: seed 42 without a suffix."""
    return name if seed == 42 else f"{name}-seed{seed}"


def _over_seeds(value) -> tuple[float, float]:
    """Mean and sample std of ``value + offset`` over the seeds of OFFSETS, computed here."""
    xs = [value + o for o in OFFSETS.values()]
    return statistics.mean(xs), statistics.stdev(xs)


@pytest.fixture()
def seeds_study(tmp_path) -> Path:
    """MRL and FF-8 (with baselines) trained with seeds 42, 43, 44; MRL-E and FF-2 with seed 42 only."""
    root = tmp_path / "seeds"
    for seed, offset in OFFSETS.items():
        _model(root, "mrl", "mrl", NESTING, True, folder=_replica("mrl", seed), seed=seed, offset=offset)
        _model(root, "ff8", "ff", [8], True, folder=_replica("ff8", seed), seed=seed, offset=offset)
    _model(root, "mrle", "mrle", NESTING, True)
    _model(root, "ff2", "ff", [2], True)
    return root


def test_seed_replicas_are_averaged_in_every_table(seeds_study, tmp_path):
    from mrl.report.tables import build_tables

    s = collect_study(seeds_study)
    assert s.seeds() == {"MRL": [42, 43, 44], "MRL-E": [42], "FF-2": [42], "FF-8": [42, 43, 44]}
    assert not any("recipe differs" in n for n in s.notes)  # the seed is the replicas' own
    assert "ff4: model folder missing" in s.missing and not any("mrl-seed" in m for m in s.missing)
    t = build_tables(s)

    top1 = t["top1_by_size"]
    assert top1.columns == ["dim", "MRL", "MRL-E", "FF", "SVD", "SVD-classifier", "Rand-LP"]
    for row in top1.rows:
        d = row["dim"]
        mean, std = _over_seeds(_v(1, d, 1))
        assert (row["MRL"], row["MRL_std"], row["MRL_n"]) == (pytest.approx(mean), pytest.approx(std), 3)
        assert (row["MRL-E"], row["MRL-E_std"], row["MRL-E_n"]) == (_v(2, d, 1), None, 1)
        mean, std = _over_seeds(_v(9, d, 61))  # each ff8 replica has its baselines
        assert (row["SVD"], row["SVD_std"], row["SVD_n"]) == (pytest.approx(mean), pytest.approx(std), 3)
    mean8, std8 = _over_seeds(_v(4, 8, 1))
    assert {r["dim"]: (r.get("FF"), r.get("FF_n")) for r in top1.rows} == \
        {2: (_v(3, 2, 1), 1), 4: (None, None), 8: (pytest.approx(mean8), 3)}
    # every replica file is a source
    for seed in OFFSETS:
        assert f"MRL, seed {seed}: `{seeds_study / _replica('mrl', seed) / 'metrics_by_dim.csv'}` (top1)" \
            in top1.sources
        assert f"SVD, seed {seed}: `{seeds_study / _replica('ff8', seed) / 'eval' / 'baselines.csv'}` " \
               "(svd_top1)" in top1.sources

    full = t["retrieval_by_size"]
    assert [(r["method"], r["dim"]) for r in full.rows if r["method"].startswith("FF")] == [("FF-2", 2), ("FF-8", 8)]
    mrl4 = next(r for r in full.rows if r["method"] == "MRL" and r["dim"] == 4)
    mean, std = _over_seeds(_v(1, 4, 34))
    assert (mrl4["recall@10"], mrl4["recall@10_std"], mrl4["recall@10_n"]) == (pytest.approx(mean),
                                                                               pytest.approx(std), 3)
    rand = next(r for r in full.rows if r["method"] == "Rand-FS" and r["dim"] == 2)
    assert (rand["map@10"], rand["map@10_n"], rand.get("precision@10")) == (pytest.approx(_over_seeds(_v(9, 2, 65))[0]),
                                                                        3, None)

    ac = t["adaptive_classification"]
    assert len(ac.rows) == 2 * len(NESTING)
    r = next(r for r in ac.rows if r["method"] == "MRL" and r["cap"] == 4)
    mean, std = _over_seeds(_v(1, 4, 41))
    # accuracy_std keeps its meaning (the spread over one run's splits: 0.5 in every replica); across seeds: _seed_std
    assert (r["accuracy"], r["accuracy_seed_std"], r["accuracy_n"], r["accuracy_std"]) == \
        (pytest.approx(mean), pytest.approx(std), 3, 0.5)
    assert (r["expected_dim"], r["expected_dim_seed_std"], r["expected_dim_std"]) == (3.0, 0.0, 0.1)

    ar = t["adaptive_retrieval"]
    assert len(ar.rows) == 6  # 3 settings x (MRL, MRL-E): the replicas' rows merged
    r = next(r for r in ar.rows if r["method"] == "MRL" and r["kind"] == "funnel (exact)")
    mean, std = _over_seeds(_v(1, 2, 53))
    assert (r["D_r"], r["K"], r["map@10"], r["map@10_std"], r["map@10_n"], r["mflops"]) == \
        ("4,8", "200,10", pytest.approx(mean), pytest.approx(std), 3, 0.125)
    assert r["mflops_speedup"] == pytest.approx(0.4 / 0.125)

    # the written files: the mean in the old column, <column>_std and <column>_n beside it; Markdown mean ± std (n)
    out = tmp_path / "out"
    write_report(s, out, paper_dir=None)
    with (out / "top1_by_size.csv").open() as f:
        assert next(csv.reader(f))[:7] == ["dim", "MRL", "MRL_std", "MRL_n", "MRL-E", "MRL-E_std", "MRL-E_n"]
    written = {r["dim"]: r for r in read_csv(out / "top1_by_size.csv")}
    mean, std = _over_seeds(_v(1, 8, 1))
    assert (written[8]["MRL"], written[8]["MRL_std"], written[8]["MRL_n"]) == (pytest.approx(mean),
                                                                               pytest.approx(std), 3)
    assert (written[8]["MRL-E_std"], written[8]["MRL-E_n"]) == (None, 1)  # empty for one seed
    assert "accuracy_seed_std" in read_csv(out / "adaptive_classification.csv")[0]
    js = json.loads((out / "top1_by_size.json").read_text())
    assert js["columns"][:4] == ["dim", "MRL", "MRL_std", "MRL_n"] and js["rows"][-1]["MRL_n"] == 3
    md = (out / "top1_by_size.md").read_text()
    row8 = next(line for line in md.splitlines() if line.startswith("| 8 |"))
    cells = [c.strip() for c in row8.strip("|").split("|")]
    assert cells[1] == f"{mean:.2f} ± {std:.2f} (3)"
    assert cells[2] == f"{_v(2, 8, 1):.2f}"  # MRL-E: one seed, the plain value
    assert cells[3] == f"{mean8:.2f} ± {std8:.2f} (3)"
    assert "mean ± std (n): the mean over the n seeds" in md


def test_a_plan_names_the_missing_models_seed_replicas_included(seeds_study):
    (seeds_study / "plan.txt").write_text("# the study's models\nmrl\nmrl-seed43\nmrl-seed44\nmrl-seed45\n\n"
                                          "ff2\nff8  # full width\nff8-seed43\n")
    s = collect_study(seeds_study)
    assert [m for m in s.missing if "model folder missing" in m] == ["mrl-seed45: model folder missing"]
    assert "mrle/: not in plan.txt, reported all the same" in s.notes
    assert "ff8-seed44/: not in plan.txt, reported all the same" in s.notes
    assert s.seeds()["FF-8"] == [42, 43, 44]  # a folder beyond the plan is still reported

    (seeds_study / "plan.txt").write_text("mrl\nff 8\n")
    with pytest.raises(ConfigError, match=r"plan.txt:2: 'ff 8' is not a model folder name; write mrl, mrle or ff<k>"):
        collect_study(seeds_study)


def test_summary_commands_and_plots_show_every_replica(seeds_study, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from mrl.report.plots import plot_by_size
    from mrl.report.tables import build_tables

    s = collect_study(seeds_study)
    out = tmp_path / "out"
    write_report(s, out, paper_dir=None)
    summary = (out / "summary.md").read_text()
    assert "| MRL | 42, 43, 44 | mrl, mrl-seed43, mrl-seed44 |" in summary
    assert "| MRL-E | 42 | mrle |" in summary and "| FF-8 | 42, 43, 44 | ff8, ff8-seed43, ff8-seed44 |" in summary
    commands = (out / "commands.md").read_text()
    for name in ("mrl", "ff8"):
        for seed in OFFSETS:
            folder = _replica(name, seed)
            assert f"## {folder} ({'MRL' if name == 'mrl' else 'FF-8'}, seed {seed})" in commands
            assert f"hydra.run.dir={seeds_study / folder}" in commands
            assert (out / "configs" / f"{folder}.yaml").is_file()
    findings = (out / "findings.md").read_text()
    assert "## Seeds per model\n\n* MRL: 42, 43, 44\n* MRL-E: 42\n* FF-2: 42\n* FF-8: 42, 43, 44\n" in findings

    # error bars (±1 std) on the means over several seeds; a single-seed line drawn as before
    bars = _spy(monkeypatch, Axes, "errorbar")
    lines = _spy(monkeypatch, Axes, "plot")
    table = build_tables(s)["top1_by_size"]
    plot_by_size(table, tmp_path / "p.png", "top-1", "t")
    drawn = {kw["label"]: (list(a[0]), list(a[1]), list(kw["yerr"])) for _, a, kw in bars}
    assert sorted(drawn) == ["FF", "MRL", "Rand-LP", "SVD", "SVD-classifier"]
    assert drawn["MRL"] == (NESTING, table.column("MRL"), table.column("MRL_std"))
    std8 = _over_seeds(_v(4, 8, 1))[1]
    assert drawn["FF"][0] == [2, 8] and drawn["FF"][2] == [0.0, pytest.approx(std8)]  # FF-2: one seed, no bar
    assert [kw["label"] for _, _, kw in lines] == ["MRL-E"]


def _hand_study(tmp_path) -> Path:
    """MRL (seeds 42, 43, 44), FF-8 (the same seeds), FF-2, FF-4 and MRL-E (seed 42), their top-1 written by hand."""
    root = tmp_path / "hand"
    top1 = {"mrl": {2: 60.0, 4: 65.0, 8: 70.0}, "mrl-seed43": {2: 61.0, 4: 66.0, 8: 71.0},
            "mrl-seed44": {2: 62.0, 4: 67.0, 8: 72.0},          # mean 61, 66, 71; std 1 at every size
            "ff8": {8: 67.5}, "ff8-seed43": {8: 68.5}, "ff8-seed44": {8: 69.5},  # mean 68.5, std 1
            "ff2": {2: 59.5}, "ff4": {4: 68.5},                   # one seed: they borrow FF-8's std, 1
            "mrle": {2: 50.0, 4: 60.0, 8: 75.0}}                  # one seed at every size: MRL's spread
    for folder, values in top1.items():
        name, _, seed = folder.partition("-seed")
        head = "ff" if name.startswith("ff") else name
        _model(root, name, head, list(values), False, folder=folder, seed=int(seed or 42))
        _write_csv(root / folder / "metrics_by_dim.csv", METRICS_COLS, [[d, v, 99.0] for d, v in values.items()])
    return root


def test_findings_call_a_difference_only_beyond_the_spread(tmp_path):
    from mrl.report.findings import findings_markdown
    from mrl.report.tables import build_tables

    text = findings_markdown(build_tables(collect_study(_hand_study(tmp_path))))
    assert "`higher` or `lower` only when |difference| exceeds the spread" in text
    rows = _section_rows(text, "MRL vs FF-k, linear top-1")
    # 8: 71 - 68.5 = +2.5 against 1 + 1 = 2: higher
    assert rows[8] == ["71.00 ± 1.00 (3)", "68.50 ± 1.00 (3)", "+2.50", "2.00", "higher"]
    # 2: 61 - 59.5 = +1.5 against 1 + 1 (FF-2 has one seed: FF's std at the nearest size with several, 8): within
    assert rows[2] == ["61.00 ± 1.00 (3)", "59.50", "+1.50", "2.00 (FF: std of size 8, borrowed)", "within noise"]
    # 4: 66 - 68.5 = -2.5 against 2: lower
    assert rows[4] == ["66.00 ± 1.00 (3)", "68.50", "-2.50", "2.00 (FF: std of size 8, borrowed)", "lower"]
    assert "MRL >= FF (higher or within noise) at 2 of 3 sizes with a measured spread (higher at 1, within noise " \
           "at 1, lower at 1); no spread measured at 0 of 3 sizes." in text
    # MRL-E has one seed at every size: it is taken to be as noisy as MRL (std 1), so the spread is 1 + 1
    rows = _section_rows(text, "MRL-E vs MRL, linear top-1")
    assert rows[8] == ["75.00", "71.00 ± 1.00 (3)", "+4.00", "2.00 (MRL-E: one seed, MRL's std assumed)", "higher"]
    assert rows[2] == ["50.00", "61.00 ± 1.00 (3)", "-11.00", "2.00 (MRL-E: one seed, MRL's std assumed)", "lower"]
    assert "MRL-E >= MRL (higher or within noise) at 1 of 3 sizes with a measured spread (higher at 1, within " \
           "noise at 0, lower at 2); no spread measured at 0 of 3 sizes." in text


def test_a_borrowed_spread_comes_from_the_nearest_size_in_log2():
    from mrl.report.findings import _spread_at
    from mrl.report.tables import Table

    rows = [{"dim": 2, "FF": 1.0, "FF_std": 0.3, "FF_n": 2}, {"dim": 4, "FF": 1.0, "FF_std": None, "FF_n": 1},
            {"dim": 8, "FF": 1.0, "FF_std": 0.9, "FF_n": 3}, {"dim": 64, "FF": 1.0, "FF_std": None, "FF_n": 1}]
    table = Table("t", "t", ["dim", "FF"], rows, spread=["FF"])
    assert _spread_at(table, "FF", 8) == (0.9, None)   # measured there
    assert _spread_at(table, "FF", 1) == (0.3, 2)
    assert _spread_at(table, "FF", 4) == (0.9, 8)      # 2 and 8 equally near: the larger std
    assert _spread_at(table, "FF", 64) == (0.9, 8)
    assert _spread_at(Table("t", "t", ["dim", "FF"], rows[1:2], spread=["FF"]), "FF", 4) == (None, None)


def test_seed_of_a_replica_and_two_folders_of_one_seed(tmp_path):
    root = tmp_path / "s"
    _model(root, "mrl", "mrl", NESTING, False)
    _model(root, "mrl", "mrl", NESTING, False, folder="mrl-seed43", seed=44)  # its config says 44
    s = collect_study(root)
    assert s.seeds()["MRL"] == [42, 44]
    assert "mrl-seed43/: its config's seed is 44, not 43 as the folder name says; counted as seed 44" in s.notes
    (root / "mrl-seed43" / ".hydra" / "config.yaml").unlink()  # no config: the folder's suffix
    assert collect_study(root).seeds()["MRL"] == [42, 43]
    run = collect(root / "mrl-seed43")  # a replica on its own: a single run
    assert run.single_run and run.seeds() == {"MRL": [43]}

    _model(root, "mrl", "mrl", NESTING, False, folder="mrl-seed45", seed=42)
    with pytest.raises(ConfigError) as info:
        collect_study(root)
    assert str(info.value) == f"{root}: folders mrl/ and mrl-seed45/ are both MRL trained with seed 42 (the " \
                              "config's seed, else the folder's -seed<s>, else 42); move one of them out of the " \
                              "study folder"
    out = tmp_path / "out"
    proc = _report("--dir", str(root), "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "mrl-seed45/" in proc.stderr
    assert not out.exists()


METRICS_LOG = """epoch,lr-SGD,step,train/loss,val/loss,val/top1@2,val/top1@4,val/top1@8,val/top1_mean
,0.1,0,,,,,,
0,,5,2.1,,,,,
0,,9,,1.9,{0}
,0.1,10,,,,,,
1,,15,1.8,,,,,
1,,19,,1.7,{1}
1,,19,,1.6,{2}
,0.1,20,,,,,,
2,,25,1.5,,,,,
2,,29,,1.4,{3}
"""


def test_validation_curve(tmp_path):
    from mrl.report.findings import findings_markdown
    from mrl.report.tables import build_tables

    root = tmp_path / "s"
    # val/top1@2, @4, @8 and the mean (ignored) per epoch; epoch 1 validated twice (a resumed run): the last counts
    logs = {42: ["30,40,45,99", "50,55,58,99", "51,56,60,99", "55,61,66,99"],
            43: ["32,41,47,99", "52,57,62,99", "52,57,62,99", "56,62,68,99"]}
    for seed, vals in logs.items():
        _model(root, "mrl", "mrl", NESTING, False, folder=_replica("mrl", seed), seed=seed)
        (root / _replica("mrl", seed) / "csv" / "metrics.csv").write_text(METRICS_LOG.format(*vals))
    _model(root, "ff8", "ff", [8], False)  # trained with data.validation=none: no val columns
    (root / "ff8" / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,5,2.0\n0,9,1.5\n")
    _model(root, "ff2", "ff", [2], False)  # no csv/metrics.csv
    (root / "ff2" / "csv" / "metrics.csv").unlink()
    s = collect_study(root)
    assert "ff2: csv/metrics.csv missing (no validation curve)" in s.missing
    assert any(n.startswith("ff8: no validation curve (csv/metrics.csv has no val/top1@<d> values") for n in s.notes)

    tables = build_tables(s)
    curve = tables["validation_curve"]
    assert curve.columns == ["epoch", "MRL", "MRL@2", "MRL@4", "MRL@8"]  # MRL's smallest, middle and largest size
    expected = {0: {2: (30, 32), 4: (40, 41), 8: (45, 47)}, 1: {2: (51, 52), 4: (56, 57), 8: (60, 62)},
                2: {2: (55, 56), 4: (61, 62), 8: (66, 68)}}
    assert [r["epoch"] for r in curve.rows] == [0, 1, 2]
    for r in curve.rows:
        for d, xs in expected[r["epoch"]].items():
            assert (r[f"MRL@{d}"], r[f"MRL@{d}_std"], r[f"MRL@{d}_n"]) == \
                (pytest.approx(statistics.mean(xs)), pytest.approx(statistics.stdev(xs)), 2)
        assert r["MRL"] == r["MRL@8"]  # the full width
    assert "No validation curve: ff2 (no csv/metrics.csv), ff8 (no val/top1@<d> values)." in curve.notes
    assert curve.markdown().splitlines()[6] == "| 2 | 67.00 ± 1.41 (2) | 55.50 ± 0.71 (2) | 61.50 ± 0.71 (2) | " \
                                               "67.00 ± 1.41 (2) |"

    text = findings_markdown(tables)
    # the last epoch (2): 67 ± 1.41; over the last 2 epochs: 67 - 46 (epoch 0)
    assert "| MRL | 2 | 67.00 ± 1.41 (2) | +21.00 (epoch 0: 46.00) |" in text
    out = tmp_path / "out"
    write_report(s, out, paper_dir=None)
    assert read_csv(out / "validation_curve.csv")[1]["MRL"] == 61.0
    assert (out / "validation_curve.png").stat().st_size > 0
    assert "![Validation top-1 per epoch](validation_curve.png)" in (out / "summary.md").read_text()


def test_epochs_missing_from_a_curve_are_named(tmp_path):
    """A curve without some epochs' values (a run resumed before csv/metrics.csv was continued across resumes
    lost the rows before its checkpoint): the table's notes say which epochs, as ranges; whole curves say nothing."""
    from mrl.report.tables import build_tables

    root = tmp_path / "s"
    for seed in (42, 43):
        _model(root, "mrl", "mrl", NESTING, False, folder=_replica("mrl", seed), seed=seed)
    # seed 43: only epochs 2 and 5 validated (of 0-5), seed 42: epochs 0-2 (METRICS_LOG)
    (root / "mrl" / "csv" / "metrics.csv").write_text(METRICS_LOG.format(*["1,2,3,9"] * 4))
    header, *_ = METRICS_LOG.splitlines()
    (root / "mrl-seed43" / "csv" / "metrics.csv").write_text(f"{header}\n2,,29,,1.5,4,5,6,9\n5,,59,,1.4,7,8,9,9\n")
    curve = build_tables(collect_study(root))["validation_curve"]
    gaps = [n for n in curve.notes if n.startswith("Epochs without a validation value")]
    assert gaps == ["Epochs without a validation value in a model's curve (a cell there is the mean of the other "
                    "seeds): mrl-seed43 (0-1, 3-4)."]
    assert [(r["epoch"], r["MRL_n"]) for r in curve.rows] == [(0, 1), (1, 1), (2, 2), (5, 1)]


@pytest.mark.slow  # ~55 s; in CI: test_script on a written study, and each script's own end-to-end test
def test_digits_end_to_end_through_the_scripts(tmp_path):
    """train -> embed -> eval -> report, each through its script, as scripts/cifar10_study.sh chains them."""
    import os

    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "study" / "mrl"

    def script(*args):
        proc = subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]

    script("scripts/train.py", "logger=csv", "trainer.max_epochs=3", "callbacks.progress_bar=none",
           "test_checkpoint=last", f"hydra.run.dir={run}")
    script("scripts/embed.py", f"ckpt_path={run}/checkpoints/last.ckpt", f"output_dir={run}/embeddings",
           f"hydra.run.dir={run}/embeddings/hydra")
    script("scripts/eval.py", f"embeddings_dir={run}/embeddings", f"output_dir={run}/eval",
           "evaluators=[classification,adaptive_classification,retrieval,adaptive_retrieval]",
           f"hydra.run.dir={run}/eval/hydra")
    script("scripts/report.py", "--study-dir", str(tmp_path / "study"), "--out", str(tmp_path / "report"))

    trained = {r["dim"]: r["top1"] for r in read_csv(run / "metrics_by_dim.csv")}
    reported = {r["dim"]: r["MRL"] for r in read_csv(tmp_path / "report" / "top1_by_size.csv")}
    assert reported == trained and trained[256] >= 90.0
    evaluated = {r["dim"]: r["top1"] for r in read_csv(run / "eval" / "classification.csv")}
    assert all(abs(evaluated[m] - trained[m]) <= 0.4 for m in trained)  # float16 embeddings: a tie may flip
    findings = (tmp_path / "report" / "findings.md").read_text()
    assert "* MRL: full size 256 alone" in findings
    # each command as it was run, rebuilt from the records the scripts leave (embed: embeddings/hydra/.hydra)
    commands = (tmp_path / "report" / "commands.md").read_text()
    assert "python scripts/train.py logger=csv trainer.max_epochs=3 callbacks.progress_bar=none " \
           f"test_checkpoint=last hydra.run.dir={run}\n" in commands
    assert f"python scripts/embed.py ckpt_path={run}/checkpoints/last.ckpt output_dir={run}/embeddings " \
           f"hydra.run.dir={run}/embeddings/hydra\n" in commands
    assert (run / "eval" / "command.txt").read_text() in commands
    # the run directory on its own: the same numbers
    script("scripts/report.py", "--dir", str(run), "--out", str(tmp_path / "run_report"))
    assert {r["dim"]: r["MRL"] for r in read_csv(tmp_path / "run_report" / "top1_by_size.csv")} == trained
    assert (tmp_path / "run_report" / "commands.md").read_text().split("\n", 1)[1] == commands.split("\n", 1)[1]


def _image_text_model(study: Path, name: str, head: str, dims: list[int], seed: int = 42) -> None:
    """A dual-encoder run directory as scripts/align_study.sh leaves it: zero-shot top-1 in metrics_by_dim.csv and
    eval/zero_shot.csv (``_v(model, dim, 1)``), rsum in eval/cross_modal_retrieval.csv (``_v(model, dim, 2)``)."""
    d, i = study / name, MODEL_ID[name]
    (d / ".hydra").mkdir(parents=True)
    cfg = {"experiment_name": "cifar10_align_minilm", "seed": seed,
           "data": {"name": "image_text", "root": "/data/c10.tar.gz"},
           "model": {"task": "dual_encoder", "backbone": {"name": "dual"}, "head": head, "nesting_dims": dims}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+experiment=cifar10_align_minilm",
                                                                 f"model.head={head}"]))
    _write_csv(d / "metrics_by_dim.csv", ["dim", "i2t_r1", "t2i_r1", "zero_shot_top1"],
               [[m, 1.0, 2.0, _v(i, m, 1)] for m in dims])
    _write_csv(d / "csv" / "metrics.csv", ["epoch", "step", *[f"val/zero_shot_top1@{m}" for m in dims]],
               [[e, 10 * e, *[_v(i, m, 70 + e) for m in dims]] for e in range(EPOCHS)])
    _write_csv(d / "eval" / "zero_shot.csv", ["dim", "top1", "top5"], [[m, _v(i, m, 1), 99.0] for m in dims])
    _write_csv(d / "eval" / "cross_modal_retrieval.csv", ["dim", "i2t_r@1", "rsum"],
               [[m, 5.0, _v(i, m, 2)] for m in dims])


def test_image_text_study_gets_zero_shot_and_cross_modal_tables_and_findings(tmp_path):
    from mrl.report.study import collect
    from mrl.report.write import write_report

    root = tmp_path / "align"
    _image_text_model(root, "mrl", "mrl", [2, 4, 8])
    _image_text_model(root, "ff2", "ff", [2])
    _image_text_model(root, "ff8", "ff", [8])
    study = collect(root)
    assert study.is_image_text and study.missing == []   # no classification evaluator is expected of it
    report = write_report(study, tmp_path / "out")
    assert set(report.tables) == {"zero_shot_by_size", "cross_modal_rsum_by_size", "validation_curve"}
    zs = {r["dim"]: r for r in report.tables["zero_shot_by_size"].rows}
    assert [zs[m]["MRL"] for m in (2, 4, 8)] == [_v(1, m, 1) for m in (2, 4, 8)]
    assert zs[2]["FF"] == _v(3, 2, 1) and zs[8]["FF"] == _v(4, 8, 1) and "FF" not in zs[4]
    xm = {r["dim"]: r for r in report.tables["cross_modal_rsum_by_size"].rows}
    assert xm[8]["MRL"] == _v(1, 8, 2) and xm[8]["FF"] == _v(4, 8, 2)
    assert report.tables["validation_curve"].rows, "val/zero_shot_top1@<d> is the dual encoder's validation curve"
    findings = (tmp_path / "out" / "findings.md").read_text()
    rows = _section_rows(findings, "MRL vs FF-k, zero-shot top-1")
    assert float(rows[8][2]) == pytest.approx(_v(1, 8, 1) - _v(4, 8, 1), abs=0.006)
    assert "linear top-1" not in findings
    assert (tmp_path / "out" / "zero_shot_by_size.png").is_file()
    assert not (tmp_path / "out" / "top1_by_size.csv").exists()


def test_a_control_study_is_compared_per_method_and_size(tmp_path):
    """``--control``: the control's MRL (one seed) and FF-8 against this study's (three seeds, std 1), each
    difference judged against this study's spread taken for both sides."""
    main = _hand_study(tmp_path)
    control = tmp_path / "control"
    for folder, values in {"mrl": {2: 63.0, 4: 66.5, 8: 74.0}, "ff8": {8: 69.0}}.items():
        _model(control, folder, "ff" if folder.startswith("ff") else folder, list(values), False)
        _write_csv(control / folder / "metrics_by_dim.csv", METRICS_COLS, [[d, v, 99.0] for d, v in values.items()])
    out = tmp_path / "out"
    proc = _report("--dir", str(main), "--out", str(out), "--no-paper", "--control", str(control),
                   "--control-label", "24 epochs")
    assert proc.returncode == 0, proc.stderr
    text = (out / "findings.md").read_text()
    assert "## Control: 24 epochs" in text
    rows = _section_rows(text, "MRL, Linear-classifier top-1 (%) by representation size")
    assumed = "2.00 (MRL (24 epochs): one seed, MRL (this study)'s std assumed)"
    assert rows[8] == ["74.00", "71.00 ± 1.00 (3)", "+3.00", assumed, "higher"]   # 74 - 71 against 1 + 1
    assert rows[4] == ["66.50", "66.00 ± 1.00 (3)", "+0.50", assumed, "within noise"]
    assert rows[2] == ["63.00", "61.00 ± 1.00 (3)", "+2.00", assumed, "within noise"]  # not beyond 2
    rows = _section_rows(text, "FF, Linear-classifier top-1 (%) by representation size")
    assert list(rows) == [8] and rows[8][:3] == ["69.00", "68.50 ± 1.00 (3)", "+0.50"]
    assert "MRL-E (24 epochs)" not in text  # the control did not train it

    assert _report("--dir", str(main), "--out", str(tmp_path / "o2"), "--no-paper", "--control",
                   str(control / "mrl")).stderr.splitlines() == [
        f"error: --control: {control / 'mrl'} is one run, not a study folder; give the folder holding the control's "
        "run directories (mrl, ff<k>, ...)"]
    assert not (tmp_path / "o2").exists()


def test_a_setting_missing_from_older_configs_is_not_called_a_recipe_change(study):
    """A key only newer runs' configs have (the framework added it later) is noted as such; a value that really
    differs is a recipe difference, with the models that lack it shown as not set;
    a memory layout is how it ran, not a recipe."""
    def edit(folder, change):
        path = study / folder / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        change(cfg)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    folders = sorted(p.name for p in study.iterdir() if (p / ".hydra" / "config.yaml").is_file())
    for folder in folders[1:]:
        edit(folder, lambda cfg: cfg["model"].update(compile=False))
    edit(folders[1], lambda cfg: cfg["trainer"].update(max_epochs=5))
    for folder in folders:
        edit(folder, lambda cfg, f=folder: cfg["model"].update(channels_last=f == folders[2]))
    notes = collect_study(study).notes
    assert f"model.compile is not in the configs of {folders[0]} (made before the setting existed); the others " \
           "have False" in notes
    differs = [n for n in notes if n.startswith("recipe differs")]
    assert differs == ["recipe differs across models: trainer.max_epochs = " + ", ".join(
        f"{f}: {5 if f == folders[1] else 3}" for f in folders)]
    # a memory layout is how the recipe ran, not another recipe: noted, grouped by value
    assert "executed differently (the same recipe, rounding aside): model.channels_last = " + "; ".join(
        [f"False for {', '.join(f for f in folders if f != folders[2])}", f"True for {folders[2]}"]) in notes
