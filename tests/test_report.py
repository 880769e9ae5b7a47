"""``mrl.study_report`` / ``scripts/report.py``: a hand-made study folder in the real file formats (no training),
collected tables equal to their inputs, missing stages listed, commands and configs next to the numbers,
and the paper's reference CSVs read as published."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrl.study_report import (PAPER_LABEL, collect_study, load_paper_reference, read_csv, write_report)

from conftest import PROJECT_ROOT

PAPER_DIR = PROJECT_ROOT / "results" / "paper_reference"
NESTING = [2, 4, 8]  # width 8; FF models: ff2 (trained, not evaluated), ff8 (evaluated, with baselines); ff4 absent

# the column layouts written by mrl.reporting / mrl.evaluation.run
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


MODEL_ID = {"mrl": 1, "mrle": 2, "ff2": 3, "ff8": 4}


def _model(study: Path, name: str, head: str, dims: list[int], evaluated: bool, data: str = "cifar10") -> None:
    d = study / name
    i = MODEL_ID[name]
    hydra = d / ".hydra"
    hydra.mkdir(parents=True)
    overrides = ["+experiment=cifar10_resnet18_study", "data.root=/data/c10.tar.gz", "logger=csv",
                 f"model.head={head}"] + ([f"model.nesting_dims=[{dims[0]}]"] if head == "ff" else [])
    cfg = {"task_name": "train", "experiment_name": "cifar10_resnet18_study", "seed": 42, "ckpt_path": None,
           "test_checkpoint": "last",
           "data": {"name": data, "root": "/data/c10.tar.gz", "batch_size": 128},
           "model": {"backbone": {"name": "torchvision/resnet18", "small_input": False}, "head": head,
                     "nesting_dims": dims, "optimizer": {"name": "sgd", "lr": 0.1}},
           "trainer": {"max_epochs": 3, "precision": "32-true"},
           "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    (hydra / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"hydra": [f"hydra.run.dir={study}/{name}", "hydra.mode=RUN"],
                                 "task": overrides}}}))
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"")
    _write_csv(d / "metrics_by_dim.csv", METRICS_COLS, [[m, _v(i, m, 1), _v(i, m, 5)] for m in dims])
    if not evaluated:
        return
    ev = d / "eval"
    _write_csv(ev / "classification.csv", CLASSIFICATION_COLS,
               [[m, True, _v(i, m, 11), _v(i, m, 15), _v(i, m, 21), _v(i, m, 11)] for m in dims])
    _write_csv(ev / "retrieval.csv", RETRIEVAL_COLS,
               [[m, _v(i, m, 31), _v(i, m, 32), _v(i, m, 33), _v(i, m, 34), _v(i, m, 35), _v(i, m, 36),
                 _v(i, m, 37), _v(i, m, 38), _v(i, m, 39), 0.001, 0.002] for m in dims])
    if head != "ff":
        _write_csv(ev / "adaptive_classification.csv", AC_COLS,
                   [[c, _v(i, c, 41), 0.5, c * 0.75, 0.1, _v(i, c, 42), _v(i, c, 43), c * 0.5, "0.3", "1"]
                    for c in dims])
        _write_csv(ev / "adaptive_retrieval.csv", AR_COLS,
                   [["exact", 8, 8, "", _v(i, 8, 51), _v(i, 8, 52), 0.4, 100.0, 1.0],
                    ["adaptive (exact)", 2, 8, 50, _v(i, 2, 51), _v(i, 2, 52), 0.1, 50.0, 2.0],
                    ["funnel (exact)", 2, "4,8", "200,10", _v(i, 2, 53), _v(i, 2, 54), 0.125, 80.0, 1.25]])
    else:
        _write_csv(ev / "baselines.csv", BASELINE_COLS,
                   [[m, _v(9, m, 61), _v(9, m, 62), _v(9, m, 63), _v(9, m, 64), _v(9, m, 65)] for m in NESTING])
    # scripts/cifar10_study.sh's layout: <model>/embeddings with its Hydra record in embeddings/hydra/.hydra;
    # ff8: a folder outside the study with .hydra inside
    emb = study.parent / "embeddings" / name if name == "ff8" else d / "embeddings"
    record = emb if name == "ff8" else emb / "hydra"
    (record / ".hydra").mkdir(parents=True)
    (record / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"ckpt_path={d}/checkpoints/last.ckpt", "data=cifar10", "data.root=/data/c10.tar.gz"]))
    (ev / "eval_config.yaml").write_text(yaml.safe_dump({"embeddings_dir": str(emb), "evaluators": ["retrieval"]}))
    (ev / "command.txt").write_text(f"python scripts/eval.py embeddings_dir={emb} output_dir={ev} tag={name}\n")


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
    from mrl.study_report import build_tables

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
    from mrl.study_report import build_tables

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
    for stem in ("top1_by_size", "knn_top1_by_size", "map10_by_size", "adaptive_classification",
                 "adaptive_retrieval"):
        for ext in ("csv", "md", "json", "png"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    assert (out / "retrieval_by_size.csv").is_file()
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


def test_findings_are_computed_from_the_tables(study):
    from mrl.study_report import build_tables, collect_study, findings_markdown

    text = findings_markdown(build_tables(collect_study(study)))
    row8 = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    cells = [c.strip() for c in row8.strip("|").split("|")]
    mrl, ff, svd = _v(1, 8, 1), _v(4, 8, 1), _v(9, 8, 61)  # MRL and FF-8 top-1, SVD probe at 8
    assert cells[3] == f"{mrl - ff:+.2f}" and cells[5] == f"{mrl - svd:+.2f}"
    assert cells[4] == f"{_v(2, 8, 1) - mrl:+.2f}"  # MRL-E - MRL
    # the fake adaptive rows score below exact search: no equal-mAP setting exists
    assert "* MRL: exact search at 8 dims" in text and "no setting reaches the exact map@10" in text


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
    assert "scripts/train.py" in (tmp_path / "report" / "commands.md").read_text()
