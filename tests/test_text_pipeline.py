"""Text end to end through the scripts, as the study driver chains them: all-MiniLM-L6-v2 (offline) fine-tuned on a
subset of the real TREC files with MRL, then embedded, evaluated and reported, unchanged from the image path."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, run_script

TREC = SHARED_DATA / "text" / "trec"
DIMS = [12, 24, 48, 96, 192, 384]



@pytest.mark.slow  # minutes of CPU: `make test-slow` (faster end-to-end tests of the same path stay in CI)
@pytest.mark.skipif(not TREC.is_dir(), reason="the shared TREC files are not here")
def test_trec_minilm_trains_embeds_evaluates_and_reports(tmp_path):
    data = tmp_path / "trec"
    data.mkdir()
    for name, every in (("train_5500.label", 10), ("TREC_10.label", 5)):  # every k-th line: all 6 classes, latin-1
        lines = (TREC / name).read_bytes().splitlines(keepends=True)
        (data / name).write_bytes(b"".join(lines[::every]))
    run = tmp_path / "runs" / "trec_minilm_mrl"
    run_script("train.py", "+experiment=trec_minilm", f"data.root={data}", "data.num_workers=0",
               "trainer.max_epochs=2", "logger=csv", "callbacks.progress_bar=none", f"hydra.run.dir={run}")
    rows = json.loads((run / "metrics_by_dim.json").read_text())["rows"]
    assert [r["dim"] for r in rows] == DIMS
    assert rows[-1]["top1"] > 40.0  # 6 classes, the largest a quarter of the test lines: it learnt
    run_script("embed.py", f"ckpt_path={run}/checkpoints/last.ckpt", "data=trec", f"data.root={data}",
               "dtype=float32", f"output_dir={run}/embeddings", f"hydra.run.dir={run}/embeddings/hydra")
    meta = json.loads((run / "embeddings" / "test" / "meta.json").read_text())
    assert meta["num_samples"] == 100 and meta["width"] == 384 and meta["head"] == "mrl"
    run_script("eval.py", f"embeddings_dir={run}/embeddings", f"output_dir={run}/eval",
               f"hydra.run.dir={run}/eval/hydra", "evaluators=[classification,adaptive_classification,retrieval]")
    classification = json.loads((run / "eval" / "classification.json").read_text())
    linear = {r["dim"]: r["top1"] for r in classification["rows"]}
    assert list(linear) == DIMS and linear[384] == pytest.approx(rows[-1]["top1"], abs=1e-6)  # same checkpoint
    assert (run / "eval" / "retrieval.csv").is_file() and (run / "eval" / "adaptive_classification.csv").is_file()
    run_script("report.py", "--dir", str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--title", "TREC")
    assert (tmp_path / "report" / "summary.md").is_file()
