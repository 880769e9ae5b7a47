"""mrl.evaluation.retrieval against slow, obviously-correct loop implementations on small data."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from mrl.errors import ConfigError
from mrl.evaluation import (
    class_counts,
    evaluate_retrieval,
    l2_normalize_prefix,
    labels_of,
    retrieval_metrics,
    search,
)
from mrl.evaluation.retrieval import _torch_exact_search


# ------------------------------------------------------------------------------------------------
# slow references
# ------------------------------------------------------------------------------------------------

def slow_normalize(x, dim):
    out = []
    for row in x:
        v = [float(a) for a in row[:dim]]
        n = sum(a * a for a in v) ** 0.5
        out.append([a / n if n > 0 else 0.0 for a in v])
    return np.array(out)


def slow_metrics(retrieved, qlabels, db_labels, ks):
    """The paper's definitions, one query and one position at a time."""
    per = {"top1": []}
    for k in ks:
        for name in ("map", "precision", "recall", "hit"):
            per[f"{name}@{k}"] = []
    for row, y in zip(retrieved, qlabels):
        relevant = sum(1 for lab in db_labels if lab == y)
        per["top1"].append(1.0 if row[0] == y else 0.0)
        for k in ks:
            hits_so_far, ap = 0, 0.0
            for i in range(k):
                if row[i] == y:
                    hits_so_far += 1
                    ap += hits_so_far / (i + 1)  # precision@(i+1) at a hit
            per[f"map@{k}"].append(ap / k)
            per[f"precision@{k}"].append(hits_so_far / k)
            per[f"recall@{k}"].append(hits_so_far / relevant if relevant else 0.0)
            per[f"hit@{k}"].append(1.0 if hits_so_far else 0.0)
    return {key: sum(v) / len(v) for key, v in per.items()}


def brute_force(db, q, k):
    """Top-k by inner product of normalised rows, via a full argsort (stable: ties by index)."""
    dbn, qn = slow_normalize(db, db.shape[1]), slow_normalize(q, q.shape[1])
    sims = qn @ dbn.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------

def test_l2_normalize_prefix(rng):
    x = rng.standard_normal((7, 12)).astype(np.float64)
    x[3] = 0.0  # zero row stays zero
    x[5, :4] = 0.0  # zero prefix, non-zero tail
    out = l2_normalize_prefix(x, 4)
    assert out.dtype == np.float32 and out.shape == (7, 4) and out.flags.c_contiguous
    np.testing.assert_allclose(out, slow_normalize(x, 4), rtol=1e-6, atol=1e-7)
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4, 6]], 1.0, rtol=1e-6)
    assert np.all(out[3] == 0) and np.all(out[5] == 0)
    assert l2_normalize_prefix(x).shape == (7, 12)


def test_l2_normalize_prefix_bad_input(rng):
    x = rng.standard_normal((4, 8))
    with pytest.raises(ConfigError, match=r"^dim: .*larger than the embedding width 8"):
        l2_normalize_prefix(x, 9)
    with pytest.raises(ConfigError, match=r"^dim: must be >= 1"):
        l2_normalize_prefix(x, 0)
    x[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"^embeddings: row 2 contains NaN"):
        l2_normalize_prefix(x, 4)
    with pytest.raises(ConfigError, match=r"^embeddings: expected a 2-D array"):
        l2_normalize_prefix(np.zeros(5), 2)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------

def test_metrics_match_loops_with_absent_class(rng):
    db_labels = rng.integers(0, 5, size=60)
    db_labels[db_labels == 4] = 3  # class 4 is absent from the database
    q_labels = rng.integers(0, 5, size=40)
    q_labels[:3] = 4  # ... but some queries have it (recall 0, still in the mean)
    retrieved = rng.choice(db_labels, size=(40, 30))  # many ties in label, repeated classes
    ks = (1, 5, 10, 30)
    expected = slow_metrics(retrieved, q_labels, list(db_labels), ks)
    for counts in (class_counts(db_labels), np.bincount(db_labels, minlength=3)):
        got = retrieval_metrics(retrieved, q_labels, counts, ks)
        assert set(got) == set(expected)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_metrics_by_hand():
    # one query of class 1, ranked labels 1 0 1 1 0; 3 class-1 items in the database
    # map@5 = (1/1 + 2/3 + 3/4) / 5 = 0.48333..; precision@5 = 3/5; recall@5 = 3/3; top1 = 1
    got = retrieval_metrics([[1, 0, 1, 1, 0]], [1], {0: 10, 1: 3}, ks=(2, 5))
    assert got["map@5"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 5)
    assert got["map@2"] == pytest.approx(1 / 2)
    assert got["precision@5"] == pytest.approx(0.6)
    assert got["recall@5"] == pytest.approx(1.0)
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["top1"] == 1.0 and got["hit@2"] == 1.0


def test_metrics_bad_input():
    with pytest.raises(ConfigError, match=r"^ks: is 11, larger than the 10 retrieved"):
        retrieval_metrics(np.zeros((3, 10), int), np.zeros(3, int), {0: 5}, ks=(5, 11))
    with pytest.raises(ConfigError, match=r"^query_labels: has 2 labels but retrieved_labels has 3 rows"):
        retrieval_metrics(np.zeros((3, 10), int), np.zeros(2, int), {0: 5}, ks=(5,))
    with pytest.raises(ConfigError, match=r"^database_class_counts: counts must be finite and >= 0"):
        retrieval_metrics(np.zeros((3, 10), int), np.zeros(3, int), {0: -1}, ks=(5,))


# ------------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------------

def test_exact_search_equals_brute_force(rng):
    db = rng.standard_normal((300, 24)) * rng.uniform(0.5, 2, size=(300, 1))  # unnormalised rows
    q = rng.standard_normal((25, 24))
    ref_scores, ref_idx = brute_force(db, q, 15)
    scores, idx = search(db, q, 15, method="exact")
    assert idx.dtype == np.int64 and idx.shape == (25, 15)
    np.testing.assert_array_equal(idx, ref_idx)  # continuous random data: no ties
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    t_scores, t_idx = _torch_exact_search(l2_normalize_prefix(db), l2_normalize_prefix(q), 15, "cpu")
    np.testing.assert_array_equal(t_idx, ref_idx)  # the GPU path's code, run on the CPU
    np.testing.assert_allclose(t_scores, ref_scores, atol=1e-5)


def slow_top_k_ties_by_index(db, q, k):
    """One query at a time: its cosine similarity to every database row in a loop, then a stable argsort of
    the negated similarities, so equal similarities keep increasing database index."""
    dbn, qn = slow_normalize(db, db.shape[1]), slow_normalize(q, q.shape[1])
    out = []
    for query in qn:
        sims = np.array([sum(float(a) * float(b) for a, b in zip(query, row)) for row in dbn])
        out.append(np.argsort(-sims, kind="stable")[:k])
    return np.array(out)


def _database_with_duplicates(rng):
    """Exact duplicates scattered over the database (copies, and copies scaled by 2, which normalise to the
    same bits), plus one direction held by 8 rows, so a tie at the cut-off runs past k + 1."""
    base = rng.standard_normal((25, 8))
    crowd = rng.standard_normal(8)
    db = np.concatenate([base, base, 2 * base, base[:5], np.tile(crowd, (8, 1))])
    db = db[rng.permutation(len(db))]
    return db, crowd


@pytest.mark.parametrize("n_queries", [7, 30])  # faiss ranks fewer than 20 queries without BLAS, more with it
def test_ties_are_broken_by_database_index_in_every_backend(rng, n_queries):
    db, crowd = _database_with_duplicates(rng)
    q = rng.standard_normal((n_queries, 8))
    q[0] = crowd  # its 8 best rows tie exactly
    q[1] = 4 * crowd
    backends = {
        "faiss exact": lambda k: search(db, q, k),
        "faiss hnsw": lambda k: search(db, q, k, method="hnsw", hnsw_m=8, ef_search=len(db), ef_construction=64),
        "torch (the cuda path, on the CPU)": lambda k: _torch_exact_search(l2_normalize_prefix(db),
                                                                           l2_normalize_prefix(q), k, "cpu"),
    }
    sims = slow_normalize(q, 8) @ slow_normalize(db, 8).T
    for k in (1, 2, 3, 5, 9, 60):
        expected = slow_top_k_ties_by_index(db, q, k)
        assert np.all(np.isin(expected[0, :min(k, 8)], np.flatnonzero((db == crowd).all(1))))
        for name, run in backends.items():
            scores, idx = run(k)
            np.testing.assert_array_equal(idx, expected, err_msg=f"{name}, k={k}")
            np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)


def test_ties_wider_than_the_search_fall_back_to_an_exhaustive_scan(rng):
    """A 1-dim prefix normalises to +1 or -1: half the database ties with every query. The searches stop
    deepening at k + 256 and rank the rest exhaustively: still the lowest tied indices, in every backend."""
    db = rng.standard_normal((3000, 1))
    q = rng.standard_normal((40, 1))
    expected = np.array([np.argsort(-(np.sign(x) * np.sign(db[:, 0])), kind="stable")[:10] for x in q[:, 0]])
    for name, (scores, idx) in {
        "faiss exact": search(db, q, 10),
        "faiss hnsw": search(db, q, 10, method="hnsw", hnsw_m=8, ef_construction=32),
        "torch": _torch_exact_search(l2_normalize_prefix(db), l2_normalize_prefix(q), 10, "cpu"),
    }.items():
        np.testing.assert_array_equal(idx, expected, err_msg=name)
        np.testing.assert_allclose(np.abs(scores), 1.0, atol=1e-6)


def test_hnsw_recall_against_exact(rng):
    db = rng.standard_normal((2000, 16)).astype(np.float32)
    q = rng.standard_normal((100, 16)).astype(np.float32)
    _, exact = search(db, q, 10)
    _, approx = search(db, q, 10, method="hnsw", hnsw_m=16, ef_search=64, ef_construction=64)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall >= 0.95


def test_search_bad_input(rng):
    db, q = rng.standard_normal((20, 8)), rng.standard_normal((3, 8))
    with pytest.raises(ConfigError, match=r"^k: is 21, larger than the database size 20"):
        search(db, q, 21)
    with pytest.raises(ConfigError, match=r"^k: must be >= 1"):
        search(db, q, 0)
    with pytest.raises(ConfigError, match=r"^queries: have width 6 but the database has width 8"):
        search(db, q[:, :6], 5)
    with pytest.raises(ConfigError, match=r"^method: unknown search method 'ivf'"):
        search(db, q, 5, method="ivf")
    with pytest.raises(ConfigError, match=r"^database: is empty"):
        search(np.zeros((0, 8)), q, 1)


def test_cuda_request_without_gpu_falls_back(rng):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible; the fallback is not exercised")
    db, q = rng.standard_normal((50, 8)), rng.standard_normal((4, 8))
    with pytest.warns(UserWarning, match="cuda"):
        _, idx = search(db, q, 5, device="cuda")
    np.testing.assert_array_equal(idx, search(db, q, 5)[1])


# ------------------------------------------------------------------------------------------------
# evaluate_retrieval
# ------------------------------------------------------------------------------------------------

def test_evaluate_retrieval_matches_reference(rng):
    n_cls = 6
    centres = rng.standard_normal((n_cls, 16)) * np.linspace(3, 0.1, 16)  # class info in leading coords
    db_labels = rng.integers(0, n_cls, 400)
    db_labels[db_labels == 5] = 0  # class 5 absent from the database
    q_labels = rng.integers(0, n_cls, 30)
    db = centres[db_labels] + rng.standard_normal((400, 16))
    q = centres[q_labels] + rng.standard_normal((30, 16))
    ks = (1, 5, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = evaluate_retrieval(db, db_labels, q, q_labels, dims=[4, 16], ks=ks)
    assert [r["dim"] for r in rows] == [4, 16]
    for row in rows:
        _, idx = brute_force(db[:, :row["dim"]], q[:, :row["dim"]], 20)
        expected = slow_metrics(db_labels[idx], q_labels, list(db_labels), ks)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-12), (row["dim"], key)
        assert row["search_seconds"] >= 0 and row["index_seconds"] >= 0
    assert rows[1]["map@5"] > 0.3  # class structure is found


def test_labels_of_padding():
    db_labels = np.array([3, 4, 5])
    assert labels_of(np.array([[0, 2, -1]]), db_labels).tolist() == [[3, 5, 2]]


def test_evaluate_retrieval_bad_input(rng):
    db, q = rng.standard_normal((30, 8)), rng.standard_normal((5, 8))
    y_db, y_q = rng.integers(0, 3, 30), rng.integers(0, 3, 5)
    with pytest.raises(ConfigError, match=r"^db_labels: has 29 labels but db_emb has 30 rows"):
        evaluate_retrieval(db, y_db[:29], q, y_q, dims=[4])
    with pytest.raises(ConfigError, match=r"^q_labels: has 4 labels but q_emb has 5 rows"):
        evaluate_retrieval(db, y_db, q, y_q[:4], dims=[4])
    with pytest.raises(ConfigError, match=r"^dims: is 16, larger than the embedding width 8"):
        evaluate_retrieval(db, y_db, q, y_q, dims=[4, 16])
    with pytest.raises(ConfigError, match=r"^q_emb: has width 6 but db_emb has width 8"):
        evaluate_retrieval(db, y_db, q[:, :6], y_q, dims=[4])
    with pytest.raises(ConfigError, match=r"^ks: is 50, larger than the database size 30"):
        evaluate_retrieval(db, y_db, q, y_q, dims=[4])  # default ks (10, 25, 50, 100) > database size
    with pytest.raises(ConfigError, match=r"^db_emb: is empty"):
        evaluate_retrieval(np.zeros((0, 8)), np.zeros(0, int), q, y_q, dims=[4], ks=(1,))


def test_faiss_loader_info_lines_are_silenced():
    """faiss' loader logs which optional instruction-set build it found at INFO level; the project's import of
    faiss keeps those lines out of a log that shows INFO records (Hydra's does)."""
    show_info = "import logging; logging.basicConfig(level=logging.INFO); import numpy as np; "
    control = subprocess.run([sys.executable, "-c", show_info + "import faiss"], capture_output=True, text=True,
                             timeout=120)
    assert "faiss" in control.stderr.lower()  # what a plain import would log
    ours = subprocess.run([sys.executable, "-c", show_info + "from mrl.evaluation.retrieval import search; "
                           "print(search(np.eye(4), np.eye(4), 1)[1].ravel().tolist()); "
                           "logging.getLogger('mrl').info('INFO records are shown')"],
                          capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "[0, 1, 2, 3]"
    assert "INFO records are shown" in ours.stderr
    assert "faiss" not in ours.stderr.lower()
