"""Evaluation of text embeddings per Matryoshka size: STS Spearman and graded text retrieval against slow references
(scipy, a loop, pytrec_eval, a hand-worked example), the evaluation-set readers on the real shared
files and on bad ones, and the path through scripts/embed.py and scripts/eval.py with pretrained MiniLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import SHARED_DATA, run_script
from mrl.data.text_eval import read_beir, read_cranfield, read_sts_set
from mrl.errors import ConfigError
from mrl.evaluation.sts import spearman_by_layer_and_size, spearman_by_size
from mrl.evaluation.text_retrieval import evaluate_text_retrieval, text_retrieval_metrics

STSB = SHARED_DATA / "text" / "stsbenchmark"
CRANFIELD = SHARED_DATA / "text" / "cranfield"


# ------------------------------------------------------------------------------------------------ STS

def _slow_spearman(first, second, scores, dims):
    out = []
    for m in dims:
        cos = []
        for a, b in zip(first, second):
            a, b = np.asarray(a[:m], dtype=np.float64), np.asarray(b[:m], dtype=np.float64)
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            cos.append(float(a @ b))
        out.append(spearmanr(cos, scores).statistic)
    return np.array(out)


def test_spearman_by_size_matches_scipy_on_a_loop():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
    second[:30] = first[:30] + 0.3 * second[:30]  # some correlation to find
    scores = np.round(rng.uniform(0, 5, 60), 1)  # ties in the gold scores, as STS-B has
    dims = [1, 2, 4, 8, 16]
    got = spearman_by_size(first.astype(np.float16), second.astype(np.float16), scores, dims)
    want = _slow_spearman(first.astype(np.float16), second.astype(np.float16), scores, dims)
    assert got.shape == (5,) and np.all(np.abs(got) <= 1)
    np.testing.assert_allclose(got, want, atol=1e-9)
    layered = spearman_by_layer_and_size(np.stack([first, 2 * first]), np.stack([second, second]), scores, dims)
    np.testing.assert_allclose(layered[0], spearman_by_size(first, second, scores, dims), atol=1e-12)
    np.testing.assert_allclose(layered[1], layered[0], atol=1e-12)  # cosine ignores the scale
    with pytest.raises(ConfigError, match="^scores: expected \\[60\\]"):
        spearman_by_size(first, second, scores[:5], dims)
    with pytest.raises(ConfigError, match="^dims: .*larger than the embedding width 16"):
        spearman_by_size(first, second, scores, [32])


# ------------------------------------------------------------------------------------------------ retrieval

def _slow_metrics(ranked, qrels, k_ndcg, k_recall, k_mrr):
    """Per query, by the textbook definitions; the mean over queries with a relevant document."""
    judged = {}
    for q, d, g in qrels:
        judged.setdefault(int(q), {})[int(d)] = float(g)
    ndcg, recall, mrr = [], [], []
    for q, docs in enumerate(ranked):
        gains = judged.get(q, {})
        relevant = [d for d, g in gains.items() if g > 0]
        if not relevant:
            continue
        dcg = sum(gains.get(int(d), 0.0) / math.log2(i + 2) for i, d in enumerate(docs[:k_ndcg]))
        ideal = sorted((g for g in gains.values() if g > 0), reverse=True)[:k_ndcg]
        ndcg.append(dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal)))
        recall.append(sum(gains.get(int(d), 0) > 0 for d in docs[:k_recall]) / len(relevant))
        ranks = [i + 1 for i, d in enumerate(docs[:k_mrr]) if gains.get(int(d), 0) > 0]
        mrr.append(1.0 / ranks[0] if ranks else 0.0)
    return {f"ndcg@{k_ndcg}": np.mean(ndcg), f"recall@{k_recall}": np.mean(recall), f"mrr@{k_mrr}": np.mean(mrr)}


def _random_judgements(rng, queries=12, docs=40, per_query=6):
    rows = []
    for q in range(queries - 1):  # the last query has no judgement: it does not count
        for d in rng.choice(docs, per_query, replace=False):
            rows.append((q, int(d), int(rng.integers(-1, 4))))  # gains 0 (and below) are judged not relevant
    return np.array(rows, dtype=np.int64)


def test_text_retrieval_metrics_match_a_slow_reference_and_a_hand_worked_example():
    rng = np.random.default_rng(1)
    qrels = _random_judgements(rng)
    ranked = np.stack([rng.permutation(40)[:20] for _ in range(12)])
    got = text_retrieval_metrics(ranked, qrels, 40, ndcg_ks=[10], recall_ks=[20], mrr_ks=[10])
    want = _slow_metrics(ranked, qrels, 10, 20, 10)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["num_queries"] == len({q for q, _, g in qrels if g > 0})
    # by hand: query 0 judges d2 (gain 3) and d5 (gain 1); ranking d7, d2, d9, d5
    hand = text_retrieval_metrics(np.array([[7, 2, 9, 5]]), np.array([[0, 2, 3], [0, 5, 1]]), 10,
                                  ndcg_ks=[4], recall_ks=[2], mrr_ks=[4])
    dcg, idcg = 3 / math.log2(3) + 1 / math.log2(5), 3 + 1 / math.log2(3)
    assert hand == pytest.approx({"ndcg@4": dcg / idcg, "recall@2": 0.5, "mrr@4": 0.5, "num_queries": 1})
    with pytest.raises(ConfigError, match="document index 40 is outside 0..39"):
        text_retrieval_metrics(ranked, np.array([[0, 40, 1]]), 40)
    with pytest.raises(ConfigError, match="no relevant judgement"):
        text_retrieval_metrics(ranked, np.array([[0, 3, 0]]), 40, recall_ks=[20])


def test_text_retrieval_metrics_equal_trec_eval():
    import pytrec_eval  # the dev extra installs it
    rng = np.random.default_rng(2)
    qrels = _random_judgements(rng)
    qrels = qrels[qrels[:, 2] >= 0]  # trec_eval reads negative judgements differently; ours never has them
    scores = rng.normal(size=(12, 40))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    got = text_retrieval_metrics(ranked, qrels, 40, ndcg_ks=[10], recall_ks=[20], mrr_ks=[10])
    judged = {}
    for q, d, g in qrels:
        judged.setdefault(f"q{q}", {})[f"d{d}"] = int(g)
    run = {f"q{q}": {f"d{d}": float(scores[q, d]) for d in ranked[q]} for q in range(12)}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.20", "recip_rank"}).evaluate(run)
    counted = [q for q in per_query if any(g > 0 for g in judged[q].values())]
    assert got["ndcg@10"] == pytest.approx(np.mean([per_query[q]["ndcg_cut_10"] for q in counted]), abs=1e-9)
    assert got["recall@20"] == pytest.approx(np.mean([per_query[q]["recall_20"] for q in counted]), abs=1e-9)
    # trec_eval's reciprocal rank has no cut-off: equal to ours where the first relevant document is in the top 10
    first = {q: per_query[q]["recip_rank"] for q in counted}
    assert got["mrr@10"] == pytest.approx(np.mean([r if r >= 0.1 else 0.0 for r in first.values()]), abs=1e-9)


def test_evaluate_text_retrieval_searches_each_prefix():
    rng = np.random.default_rng(3)
    corpus, queries = rng.normal(size=(50, 8)), rng.normal(size=(6, 8))
    qrels = np.array([[q, int(d), 1 + q % 3] for q in range(6) for d in rng.choice(50, 3, replace=False)])
    rows = evaluate_text_retrieval(corpus, queries, qrels, [2, 8], ndcg_ks=[5], recall_ks=[20], mrr_ks=[5])
    for row, m in zip(rows, (2, 8)):
        c = corpus[:, :m] / np.linalg.norm(corpus[:, :m], axis=1, keepdims=True)
        q = queries[:, :m] / np.linalg.norm(queries[:, :m], axis=1, keepdims=True)
        ranked = np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :20]
        want = _slow_metrics(ranked, qrels, 5, 20, 5)
        assert row["dim"] == m and {k: row[k] for k in want} == pytest.approx(want)


# ------------------------------------------------------------------------------------------------ readers

@pytest.mark.skipif(not STSB.is_dir(), reason="the shared STS Benchmark is not here")
def test_sts_set_is_unique_sentences_with_index_pairs():
    data = read_sts_set(STSB, "test")
    assert len(data.scores) == 1379 and data.pairs.shape == (1379, 2) and data.pairs.dtype == np.int64
    assert len(set(data.sentences)) == len(data.sentences) < 2 * 1379
    from mrl.data.pairs import read_stsb

    raw = read_stsb(STSB / "sts-test.csv")
    assert [data.sentences[i] for i in data.pairs[:, 0]] == raw.first
    assert [data.sentences[j] for j in data.pairs[:, 1]] == raw.second


@pytest.mark.skipif(not CRANFIELD.is_dir(), reason="the shared Cranfield collection is not here")
def test_cranfield_counts_and_gains():
    data = read_cranfield(CRANFIELD)
    assert len(data.corpus) == 1400 and len(data.queries) == 225 and data.qrels.shape == (1837, 3)
    assert data.corpus_ids[:2] == ["1", "2"] and data.query_ids[:3] == ["001", "002", "004"]
    assert data.corpus[0].startswith("experimental investigation of the aerodynamics of a wing in a slipstream .")
    assert "\r" not in data.corpus[0] and "\r" not in data.queries[0]
    assert sorted(np.unique(data.qrels[:, 2]).tolist()) == [0, 1, 2, 3, 4]  # 5 - code; code -1 -> 0
    # cranqrel's first line "1 184 2": query 1 (the first of cran.qry), document 184, code 2 -> gain 3
    assert data.qrels[0].tolist() == [0, 183, 3] and (data.qrels[:, 2] == 0).sum() == 225


def _write_beir(root: Path, qrels_lines: list[str], queries=None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"text of document {i}"} for i in range(6)]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    queries = queries or [{"_id": "q1", "text": "first question"}, {"_id": "q2", "text": "second question"},
                          {"_id": "q3", "text": "not judged"}]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")
    return root


def test_beir_folder_and_bad_files(tmp_path):
    root = _write_beir(tmp_path / "ok", ["q2\td3\t1", "q1\td0\t2", "q1\td4\t0"])
    data = read_beir(root)
    assert data.corpus[3] == "Title 3 text of document 3" and data.query_ids == ["q2", "q1"]  # judged ones, in order
    assert data.qrels.tolist() == [[0, 3, 1], [1, 0, 2], [1, 4, 0]]
    bad = {"missing query": (["q9\td0\t1"], "query-id 'q9' is not in queries.jsonl"),
           "missing doc": (["q1\td9\t1"], "corpus-id 'd9' is not in corpus.jsonl"),
           "score": (["q1\td0\thigh"], "score 'high' is not an integer"),
           "twice": (["q1\td0\t1", "q1\td0\t2"], "judges query q1 and document d0 more than once")}
    for name, (lines, message) in bad.items():
        with pytest.raises(ConfigError, match=f"^data.root: .*{message}"):
            read_beir(_write_beir(tmp_path / name.replace(" ", "_"), lines))
    with pytest.raises(ConfigError, match="qrels/dev.tsv does not exist"):
        read_beir(root, "dev")
    (root / "queries.jsonl").write_text('{"text": "no id"}\n')
    with pytest.raises(ConfigError, match="queries.jsonl line 1 has no '_id'"):
        read_beir(root)


@pytest.mark.skipif(not CRANFIELD.is_dir(), reason="the shared Cranfield collection is not here")
def test_bad_cranfield_files(tmp_path):
    def copy_with(qrels: str | None = None) -> Path:
        folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for name in ("cran.all.1400", "cran.qry"):
            (folder / name).write_bytes((CRANFIELD / name).read_bytes())
        if qrels is not None:
            (folder / "cranqrel").write_text(qrels)
        return folder

    with pytest.raises(ConfigError, match="cranqrel does not exist"):
        read_cranfield(copy_with())
    with pytest.raises(ConfigError, match="cranqrel line 2: query 226 is not in cran.qry"):
        read_cranfield(copy_with("1 184 2\r\n226 1 2\r\n"))
    with pytest.raises(ConfigError, match="cranqrel line 1: relevance code 5 is not one of"):
        read_cranfield(copy_with("1 184 5\r\n"))
    with pytest.raises(ConfigError, match="cranqrel line 1: document 1401 is not in cran.all.1400"):
        read_cranfield(copy_with("1 1401 1\r\n"))
    with pytest.raises(ConfigError, match="expected 'query document code'"):
        read_cranfield(copy_with("1 184\r\n"))


# ------------------------------------------------------------------------------------------------ end to end

def minilm_checkpoint(path: Path, max_length: int = 32) -> Path:
    """all-MiniLM-L6-v2 (offline) with an untrained 2-class MRL head, saved as scripts/train.py saves: its
    embeddings are the pretrained model's."""
    import lightning as L
    import torch

    from mrl.lightning import MatryoshkaModule

    torch.manual_seed(0)
    module = MatryoshkaModule(backbone={"name": "hf/minilm", "pretrained": True, "max_length": max_length},
                              num_classes=2, head="mrl", class_names=["a", "b"], nesting_dims=[24, 96, 384])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path



@pytest.mark.skipif(not STSB.is_dir(), reason="the shared STS Benchmark is not here")
def test_embed_and_evaluate_sts_and_beir_with_minilm(tmp_path):
    ckpt = minilm_checkpoint(tmp_path / "minilm.ckpt")
    sts = tmp_path / "sts"
    sts.mkdir()
    lines = (STSB / "sts-test.csv").read_bytes().splitlines(keepends=True)
    (sts / "sts-test.csv").write_bytes(b"".join(lines[::14]))  # 99 pairs over the whole score range
    beir = _write_beir(tmp_path / "beir", ["q1\td1\t2", "q1\td2\t1", "q2\td3\t1", "q2\td5\t0"])
    emb = tmp_path / "emb"
    for data, splits in ((f"data=stsb data.root={sts}", "[test]"), (f"data=beir data.root={beir}", "[corpus,queries]")):
        proc = run_script("embed.py", f"ckpt_path={ckpt}", *data.split(), f"splits={splits}", "dtype=float32",
                      "data.num_workers=0", f"output_dir={emb}", f"hydra.run.dir={tmp_path}/hydra_embed")
        assert proc.returncode == 0, proc.stderr[-3000:]

    from mrl.embeddings import load_split

    test = load_split(emb / "test")
    assert test.labels is None and not (emb / "test" / "labels.npy").exists() and test.meta["labelled"] is False
    assert test.relations["pairs"].shape == (99, 2) and test.logits.shape[1] == len(test.embeddings)
    queries = load_split(emb / "queries")
    assert queries.relations["qrels"].tolist() == [[0, 1, 2], [0, 2, 1], [1, 3, 1], [1, 5, 0]]
    assert queries.meta["corpus_split"] == "corpus" and len(load_split(emb / "corpus").embeddings) == 6

    out = tmp_path / "eval"
    proc = run_script("eval.py", f"embeddings_dir={emb}", f"output_dir={out}", f"hydra.run.dir={out}/hydra",
                  "evaluators=[sts,text_retrieval]", "dims=[12,24,96,384]", "text_retrieval.ndcg_ks=[3]",
                  "text_retrieval.recall_ks=[4]", "text_retrieval.mrr_ks=[3]", "text_retrieval.shortlist_ks=[5]",
                  "text_retrieval.shortlist_dims=[12,24]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "sts.json").read_text())["rows"]
    assert [r["dim"] for r in rows] == [12, 24, 96, 384]
    assert rows[-1]["kept"] == pytest.approx(1.0) and rows[0]["size_fraction"] == pytest.approx(12 / 384)
    assert rows[-1]["spearman"] > 70  # pretrained MiniLM: about 82 on the whole test split
    ret = json.loads((out / "text_retrieval.json").read_text())["rows"]
    assert set(ret[0]) >= {"dim", "ndcg@3", "recall@4", "mrr@3", "kept", "size_fraction", "num_queries"}
    assert ret[-1]["num_queries"] == 2 and ret[-1]["kept"] == pytest.approx(1.0)
    adaptive = json.loads((out / "text_retrieval_adaptive.json").read_text())["rows"]
    assert [r["kind"] for r in adaptive] == ["exact"] + ["adaptive (exact)"] * 2
    assert adaptive[0]["ndcg@3"] == pytest.approx(ret[-1]["ndcg@3"])  # exact search at the full width
    assert all(r["us_per_query"] > 0 and 0 < r["cost_fraction"] <= 1 for r in adaptive)
    assert all((out / f"{name}.{ext}").is_file() for name in ("sts", "text_retrieval", "text_retrieval_adaptive")
               for ext in ("csv", "md", "json", "png"))

    # settings are checked before anything is written; a labelled evaluator on an unlabelled test split is refused
    from mrl.evaluation.run import evaluate

    with pytest.raises(ConfigError, match="^text_retrieval.ndcg_ks: is 10, larger than the corpus size 6"):
        evaluate(embeddings_dir=emb, output_dir=tmp_path / "bad", evaluators=["text_retrieval"], wandb="disabled")
    with pytest.raises(ConfigError, match="^text_retrieval.shortlist_ks: K=50 must lie between"):
        evaluate(embeddings_dir=emb, output_dir=tmp_path / "bad", evaluators=["text_retrieval"], wandb="disabled",
                 text_retrieval={"ndcg_ks": [3], "recall_ks": [4], "mrr_ks": [3], "shortlist_ks": [50]})
    with pytest.raises(ConfigError, match="has none \\(an unlabelled evaluation set\\)"):
        evaluate(embeddings_dir=emb, output_dir=tmp_path / "bad", evaluators=["sts", "retrieval"], wandb="disabled")
    with pytest.raises(ConfigError, match="^sts.split: .*queries holds no sentence pairs"):
        evaluate(embeddings_dir=emb, output_dir=tmp_path / "bad", evaluators=["sts"], sts={"split": "queries"},
                 wandb="disabled")
    assert not (tmp_path / "bad").exists()


def test_layer_embeddings_and_pairs_are_stored_and_evaluated_per_layer(tmp_path):
    """A 2D Matryoshka model's predict gives layer_embeddings [L, B, width]: the writer stores them beside the
    embeddings with the pairs and scores, load_split checks them, and the sts evaluator scores every (layer, size)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mrl.embeddings import embed_split, load_split
    from mrl.evaluation.run import evaluate
    from mrl.lightning import MatryoshkaModule

    torch.manual_seed(0)
    module = MatryoshkaModule(backbone={"name": "mlp", "in_chans": 1, "image_size": 4, "width": 16}, num_classes=3,
                              head="mrl", class_names=["a", "b", "c"], nesting_dims=[4, 8, 16]).eval()
    task_meta, second_layer = module.task.metadata, torch.randn(16, 16)
    module.task.metadata = lambda: {**task_meta(), "layers": [1, 2]}
    module.task.predict = lambda z, batch: {"embeddings": z, "labels": batch["label"], "logits": module.task.head(z),
                                            "layer_embeddings": torch.stack([z @ second_layer, z])}
    x = torch.randn(30, 1, 4, 4)
    rng = np.random.default_rng(0)
    pairs, scores = rng.integers(0, 30, (40, 2)), rng.uniform(0, 5, 40)
    path = embed_split(module, DataLoader(TensorDataset(x, torch.zeros(30, dtype=torch.int64)), batch_size=8),
                       tmp_path / "emb", "test", dtype="float32", labelled=False,
                       relations={"pairs": pairs, "scores": scores})
    split = load_split(path)
    assert split.layers == [1, 2] and split.layer_embeddings.shape == (2, 30, 16) and split.labels is None
    with torch.no_grad():
        z = module.embed(x).numpy()
    np.testing.assert_allclose(split.layer_embeddings[1], z, rtol=1e-5, atol=1e-6)  # batched vs whole matmul
    tables = evaluate(embeddings_dir=tmp_path / "emb", output_dir=tmp_path / "eval", evaluators=["sts"],
                      wandb="disabled")
    by_layer = json.loads((tmp_path / "eval" / "sts_layers.json").read_text())["rows"]
    assert [(r["layer"], r["dim"]) for r in by_layer] == [(layer, m) for layer in (1, 2) for m in (4, 8, 16)]
    want = spearman_by_size(z[pairs[:, 0]], z[pairs[:, 1]], scores, [4, 8, 16])
    assert [r["spearman"] for r in tables["sts"]] == pytest.approx(100 * want)
    assert [r["spearman"] for r in by_layer[3:]] == pytest.approx(100 * want) and by_layer[-1]["kept"] == 1.0
    np.save(path / "pairs.npy", np.array([[0, 30]]))
    with pytest.raises(ConfigError, match="1 pairs .* for 40 scores and 30 sentences"):
        load_split(path)
