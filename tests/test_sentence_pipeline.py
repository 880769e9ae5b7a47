"""Sentence embeddings end to end through the scripts: all-MiniLM-L6-v2 (offline) trained with the 2D Matryoshka
contrastive preset on a subset of the shared SNLI files (STS-B subsets validate and test), then embedded and scored
on STS-B (per layer and size) and on the first 300 Cranfield documents (nDCG, recall, MRR and adaptive retrieval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, run_script

SNLI, STSB, CRANFIELD = (SHARED_DATA / "text" / name for name in ("snli", "stsbenchmark", "cranfield"))
DIMS = [12, 24, 48, 96, 192, 384]



def subset(source: Path, target: Path, names: list[str], lines: slice) -> Path:
    """The same ``lines`` of each of ``names`` (aligned files stay aligned)."""
    target.mkdir(parents=True)
    for name in names:
        rows = (source / name).read_bytes().splitlines(keepends=True)
        (target / name).write_bytes(b"".join(rows[lines]))
    return target


def cranfield_subset(target: Path, num_docs: int) -> tuple[Path, int]:
    """The first ``num_docs`` documents of Cranfield, all 225 queries and the judgements of those documents; and
    how many queries have a relevant document among them (codes 1-4)."""
    target.mkdir()
    docs = (CRANFIELD / "cran.all.1400").read_text()
    (target / "cran.all.1400").write_text(docs[:docs.index(f"\n.I {num_docs + 1}\n") + 1])
    (target / "cran.qry").write_text((CRANFIELD / "cran.qry").read_text())
    kept = [line for line in (CRANFIELD / "cranqrel").read_text().splitlines() if line.strip()
            and int(line.split()[1]) <= num_docs]
    (target / "cranqrel").write_text("\n".join(kept) + "\n")
    return target, len({line.split()[0] for line in kept if 1 <= int(line.split()[2]) <= 4})


@pytest.mark.slow  # minutes of CPU: `make test-slow` (faster end-to-end tests of the same path stay in CI)
@pytest.mark.skipif(not all(p.is_dir() for p in (SNLI, STSB, CRANFIELD)), reason="the shared text data is not here")
def test_nli_minilm_2d_trains_embeds_and_scores_sts_and_cranfield(tmp_path):
    snli = subset(SNLI, tmp_path / "snli", [f"{f}.{s}" for f in ("s1", "s2", "labels") for s in ("dev", "test")],
                  slice(0, 150))
    sts = subset(STSB, tmp_path / "sts", ["sts-dev.csv", "sts-test.csv"], slice(None, None, 15))
    cranfield, num_queries = cranfield_subset(tmp_path / "cranfield", 300)
    run = tmp_path / "run"
    run_script("train.py", "+experiment=nli_minilm_matryoshka", f"data.train.root={snli}", f"data.val.root={sts}",
           f"data.test.root={sts}", "data.batch_size=16", "data.num_workers=0", "model.layers=[3]",
           "trainer.val_check_interval=1.0", "logger=csv", "callbacks.progress_bar=none", f"hydra.run.dir={run}")
    result = json.loads((run / "metrics_by_dim.json").read_text())
    rows = {r["dim"]: r["spearman"] for r in result["rows"]}
    assert list(rows) == DIMS and result["head"] == "mrl"
    assert rows[384] > 70  # pretrained MiniLM is about 82 on STS-B test; a few steps at 2e-5 keep it there

    emb = tmp_path / "emb"
    for data, splits in ((f"data=stsb data.root={sts}", "[test]"),
                         (f"data=cranfield data.root={cranfield}", "[corpus,queries]")):
        run_script("embed.py", f"ckpt_path={run}/checkpoints/last.ckpt", *data.split(), f"splits={splits}",
               "dtype=float32", "data.num_workers=0", f"output_dir={emb}", f"hydra.run.dir={tmp_path}/hydra_embed")
    out = tmp_path / "eval"
    run_script("eval.py", f"embeddings_dir={emb}", f"output_dir={out}", f"hydra.run.dir={out}/hydra",
           "evaluators=[sts,text_retrieval]", "text_retrieval.shortlist_ks=[200]")

    sts_rows = json.loads((out / "sts.json").read_text())["rows"]
    assert [r["dim"] for r in sts_rows] == DIMS
    # the last checkpoint tested by train.py and embedded by embed.py are the same model on the same pairs
    assert sts_rows[-1]["spearman"] == pytest.approx(rows[384], abs=1e-3)
    assert [r["size_fraction"] for r in sts_rows] == pytest.approx([m / 384 for m in DIMS])
    assert sts_rows[-1]["kept"] == pytest.approx(1.0)
    layer_rows = json.loads((out / "sts_layers.json").read_text())["rows"]
    assert sorted({r["layer"] for r in layer_rows}) == [3, 6] and len(layer_rows) == 2 * len(DIMS)
    last_layer = {r["dim"]: r["spearman"] for r in layer_rows if r["layer"] == 6}
    assert last_layer == pytest.approx({r["dim"]: r["spearman"] for r in sts_rows})

    retrieval = {r["dim"]: r for r in json.loads((out / "text_retrieval.json").read_text())["rows"]}
    assert list(retrieval) == DIMS and retrieval[384]["num_queries"] == num_queries
    assert retrieval[384]["ndcg@10"] > 25  # pretrained MiniLM: about 38 on the whole collection at 64 tokens
    assert retrieval[12]["ndcg@10"] < retrieval[384]["ndcg@10"]
    adaptive = json.loads((out / "text_retrieval_adaptive.json").read_text())["rows"]
    assert adaptive[0]["kind"] == "exact" and adaptive[0]["ndcg@10"] == pytest.approx(retrieval[384]["ndcg@10"])
