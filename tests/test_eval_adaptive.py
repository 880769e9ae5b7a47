"""Adaptive retrieval, funnels, the cost model and adaptive classification against loop references."""

import csv
import math
import os

import numpy as np
import pytest

from mrl.errors import ConfigError
from mrl.evaluation import (
    IMAGENET1K_DATABASE_SIZE,
    IMAGENET4K_DATABASE_SIZE,
    adaptive_classification,
    adaptive_retrieval,
    cascade_decide,
    confidence_and_predictions,
    expected_size,
    exact_retrieval_mflops,
    fixed_size_accuracy,
    funnel_mflops,
    funnel_retrieval,
    oracle,
    plot_adaptive_classification,
    rerank,
    retrieval_mflops,
    search,
    select_threshold,
)

PAPER_DIR = "/work/shared/paper"


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def unit(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v]


def slow_rank(db, q, cand, dim):
    """Candidates of one query sorted by cosine similarity at ``dim`` (ties: lower database index first)."""
    qn = unit(q[:dim])
    sims = [sum(a * b for a, b in zip(qn, unit(db[c][:dim]))) for c in cand]
    order = sorted(range(len(cand)), key=lambda i: (-sims[i], cand[i]))
    return [cand[i] for i in order]


def slow_funnel(db, q, dims, sizes, k):
    out = []
    for qi in range(len(q)):
        ranked = slow_rank(db, q[qi], list(range(len(db))), dims[0])[: sizes[0]]
        for dim, keep in zip(dims[1:], list(sizes[1:]) + [k]):
            ranked = slow_rank(db, q[qi], ranked, dim)[:keep]
        out.append(ranked)
    return np.array(out)


# ------------------------------------------------------------------------------------------------
# adaptive retrieval and funnels
# ------------------------------------------------------------------------------------------------

def test_adaptive_full_dims_equals_exact(rng):
    db, q = rng.standard_normal((500, 32)), rng.standard_normal((20, 32))
    _, exact = search(db, q, 10)
    np.testing.assert_array_equal(adaptive_retrieval(db, q, 32, 32, 50, 10), exact)


def test_adaptive_shortlist_everything_equals_exact_at_rerank_dim(rng):
    db, q = rng.standard_normal((300, 32)), rng.standard_normal((15, 32))
    _, exact_16 = search(db[:, :16], q[:, :16], 10)
    np.testing.assert_array_equal(adaptive_retrieval(db, q, 4, 16, shortlist_k=300, k=10), exact_16)


def test_adaptive_and_funnel_match_loop_reference(rng):
    db, q = rng.standard_normal((120, 16)), rng.standard_normal((6, 16))
    got = adaptive_retrieval(db, q, shortlist_dim=4, rerank_dim=16, shortlist_k=30, k=5)
    np.testing.assert_array_equal(got, slow_funnel(db, q, [4, 16], [30], 5))
    dims, sizes = [2, 4, 8, 16], [60, 30, 12]
    got = funnel_retrieval(db, q, dims, sizes, k=5)
    np.testing.assert_array_equal(got, slow_funnel(db, q, dims, sizes, 5))
    scores, idx = funnel_retrieval(db, q, dims, sizes, k=5, return_scores=True)
    np.testing.assert_array_equal(idx, got)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_adaptive_and_funnel_with_duplicate_rows_break_ties_by_database_index(rng):
    base = rng.standard_normal((20, 16))
    db = np.concatenate([base, base, 2 * base])[rng.permutation(60)]  # every direction three times, scattered
    q = rng.standard_normal((6, 16))
    q[0] = base[3]
    np.testing.assert_array_equal(adaptive_retrieval(db, q, 4, 16, 30, 7), slow_funnel(db, q, [4, 16], [30], 7))
    np.testing.assert_array_equal(funnel_retrieval(db, q, [2, 8, 16], [40, 20], 7),
                                  slow_funnel(db, q, [2, 8, 16], [40, 20], 7))
    # the whole database shortlisted is exact search at D_r, ties included
    np.testing.assert_array_equal(adaptive_retrieval(db, q, 4, 16, 60, 7), search(db, q, 7)[1])


def test_adaptive_with_hnsw_shortlist(rng):
    db, q = rng.standard_normal((1500, 16)).astype(np.float32), rng.standard_normal((40, 16)).astype(np.float32)
    exact = adaptive_retrieval(db, q, 8, 16, 100, 10)
    approx = adaptive_retrieval(db, q, 8, 16, 100, 10, method="hnsw", hnsw_m=16, ef_search=200)
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist())])
    assert overlap >= 0.95


def test_rerank_ties_and_padding():
    db = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = np.array([[1.0, 0.0]])
    # rows 0 and 1 tie (same direction): the lower database index first, whatever the candidates' order;
    # -1 is padding
    scores, idx = rerank(db, q, np.array([[3, 1, -1, 0, 2]]), dim=2, k=5)
    assert idx.tolist() == [[0, 1, 3, 2, -1]]
    assert scores[0, -1] == -np.inf
    np.testing.assert_allclose(scores[0, :4], [1, 1, 1 / math.sqrt(2), 0], atol=1e-6)


def test_adaptive_bad_input(rng):
    db, q = rng.standard_normal((50, 8)), rng.standard_normal((3, 8))
    with pytest.raises(ConfigError, match=r"^shortlist_k: is 51, larger than the database size 50"):
        adaptive_retrieval(db, q, 4, 8, 51, 10)
    with pytest.raises(ConfigError, match=r"^k: is 20, larger than shortlist_k=10"):
        adaptive_retrieval(db, q, 4, 8, 10, 20)
    with pytest.raises(ConfigError, match=r"^rerank_dim: is 16, larger than the embedding width 8"):
        adaptive_retrieval(db, q, 4, 16, 10, 5)
    with pytest.raises(ConfigError, match=r"^q_emb: has width 6 but db_emb has width 8"):
        adaptive_retrieval(db, q[:, :6], 4, 6, 10, 5)
    with pytest.raises(ConfigError, match=r"^shortlist_sizes: has 1 entries but dims \[2, 4, 8\] has 2"):
        funnel_retrieval(db, q, [2, 4, 8], [20], 5)
    with pytest.raises(ConfigError, match=r"^shortlist_sizes: is 30, larger than the previous shortlist"):
        funnel_retrieval(db, q, [2, 4, 8], [20, 30], 5)
    with pytest.raises(ConfigError, match=r"^k: is 11, larger than the last shortlist length 10"):
        funnel_retrieval(db, q, [2, 4, 8], [20, 10], 11)


# ------------------------------------------------------------------------------------------------
# cost model
# ------------------------------------------------------------------------------------------------

def test_cost_model_by_hand():
    n = IMAGENET1K_DATABASE_SIZE  # 1,281,167
    # exact 2048: 1,281,167 * 2048 = 2,623,830,016 FLOPs -> 2623.83 MFLOPs
    assert exact_retrieval_mflops(n, 2048) == pytest.approx(2623.830016)
    # D_s = 16, K = 200, D_r = 2048: 1,281,167*16 + 200*2048 = 20,498,672 + 409,600 = 20,908,272 -> 20.91
    assert retrieval_mflops(n, 16, [(200, 2048)]) == pytest.approx(20.908272)
    # the paper's "exact 2048" = 2048-dim shortlist of 200 reranked at 2048: 2,623,830,016 + 409,600
    assert retrieval_mflops(n, 2048, [(200, 2048)]) == pytest.approx(2624.239616)
    # D_s = 8, K = 200, D_r = 8: 10,249,336 + 1,600 = 10,250,936 -> 10.25
    assert retrieval_mflops(n, 8, [(200, 8)]) == pytest.approx(10.250936)
    # funnel 8 -> [16, 32] with [200, 100]: 10,249,336 + 200*16 + 100*32 = 10,255,736
    assert funnel_mflops(n, [8, 16, 32], [200, 100]) == pytest.approx(10.255736)
    # ImageNet-4K (N = 4,202,000): D_s = D_r = 2048: 8,605,696,000 + 409,600 -> 8606.11 (paper: 8606.11)
    assert round(retrieval_mflops(IMAGENET4K_DATABASE_SIZE, 2048, [(200, 2048)]), 2) == 8606.11
    # the paper's headline ratio for D_s=16, D_r=2048: 2624.24 / 20.91 = 125.5 (~128x = 2048/16)
    assert retrieval_mflops(n, 2048, [(200, 2048)]) / retrieval_mflops(n, 16, [(200, 2048)]) \
        == pytest.approx(125.51, abs=0.01)
    with pytest.raises(ConfigError, match=r"^rerank: expected \(K, D_r\) pairs"):
        retrieval_mflops(n, 16, [200])


@pytest.mark.parametrize("name,n,cols", [
    ("imagenet1k_rn50_adaptive_retrieval.csv", IMAGENET1K_DATABASE_SIZE, ("Shortlist dim", "Reranking dim", "MFLOPS")),
    ("imagenet4k_rn50_adaptive_retrieval.csv", IMAGENET4K_DATABASE_SIZE, ("Ds", "Dr", "MFLOPS")),
])
def test_cost_model_reproduces_paper_tables(name, n, cols):
    path = os.path.join(PAPER_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 45
    for r in rows:
        ds, dr, mflops = int(r[cols[0]]), int(r[cols[1]]), float(r[cols[2]])
        assert round(retrieval_mflops(n, ds, [(200, dr)]), 2) == pytest.approx(mflops, abs=1e-9), r


def test_cost_model_reproduces_paper_exact_table():
    path = os.path.join(PAPER_DIR, "imagenet1k_rn50_exact_retrieval_cost.csv")
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    with open(path) as f:
        flops = [float(r["FLOPS"]) for r in csv.DictReader(f)]
    dims = [64, 128, 256, 512, 1024, 2048]
    n = IMAGENET1K_DATABASE_SIZE
    assert [round(retrieval_mflops(n, d, [(200, d)]), 2) for d in dims] == flops
    # plain N*d is off by exactly the 200*d rerank term (0.41 at 2048)
    assert round(exact_retrieval_mflops(n, 2048), 2) == 2623.83


# ------------------------------------------------------------------------------------------------
# adaptive classification
# ------------------------------------------------------------------------------------------------

def probs_row(p, cls, num_classes=4):
    """A probability row with max p on class ``cls`` (p > 1/num_classes)."""
    row = np.full(num_classes, (1 - p) / (num_classes - 1))
    row[cls] = p
    return row


def test_select_threshold_known_answer():
    # small size: right when confidence >= 0.8; wrong at 0.5 and 0.6 where the large size is right;
    # right at 0.4 where the large size is wrong -> moving the 0.4 sample up costs one, moving 0.5 and
    # 0.6 up gains two: best accuracy 7/8 for t in [0.6, 0.8); smallest grid value is 0.60
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.99])
    small_ok = np.array([1, 1, 1, 1, 0, 0, 1, 1], bool)
    large_ok = np.array([1, 1, 1, 1, 1, 1, 0, 1], bool)
    assert select_threshold(conf, small_ok, large_ok) == pytest.approx(0.60)
    # with a grid that does not contain 0.6, the smallest best grid value is taken
    assert select_threshold(conf, small_ok, large_ok, grid=[0.0, 0.55, 0.65, 0.7, 0.9]) == pytest.approx(0.65)
    # everything right at the small size -> t = 0 (nothing moves up)
    assert select_threshold(conf, np.ones(8, bool), large_ok) == 0.0


def test_cascade_decide_and_expected_size_by_hand():
    sizes = [8, 16, 32]
    conf = np.array([
        [0.9, 0.5, 0.4, 0.3, 0.5],  # size 8, threshold 0.5: sample 0 stops (0.9 > 0.5); 0.5 is not > 0.5
        [0.1, 0.8, 0.9, 0.6, 0.7],  # size 16, threshold 0.7: samples 1, 2 stop; 0.7 is not > 0.7
        [0.0, 0.0, 0.0, 0.0, 0.0],  # size 32 always decides
    ])
    decided = cascade_decide(conf, [0.5, 0.7])
    assert decided.tolist() == [0, 1, 1, 2, 2]
    # (8 + 16 + 16 + 32 + 32) / 5 = 20.8
    assert expected_size(decided, sizes) == pytest.approx(20.8)
    assert cascade_decide(conf[:2], [0.5]).tolist() == [0, 1, 1, 1, 1]  # cap at 16


def test_oracle_by_hand():
    correct = np.array([
        [1, 0, 0, 0, 1],
        [0, 1, 0, 0, 1],
        [0, 1, 1, 0, 0],
    ], bool)
    # any correct: 4 of 5; sizes: 8, 16, 32, 32 (none correct -> largest), 8 -> 96 / 5 = 19.2
    acc, dim = oracle(correct, [8, 16, 32])
    assert acc == pytest.approx(0.8) and dim == pytest.approx(19.2)
    # cap at 16: correct 3 of 5; sizes 8, 16, 16, 16, 8 -> 64 / 5 = 12.8
    acc, dim = oracle(correct[:2], [8, 16])
    assert acc == pytest.approx(0.6) and dim == pytest.approx(12.8)


def test_confidence_from_logits():
    logits = np.array([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    conf, pred = confidence_and_predictions(logits)
    e = np.exp([2.0, 0.0, 1.0])
    assert conf[0, 0] == pytest.approx(e[0] / e.sum()) and conf[0, 1] == pytest.approx(1 / 3)
    assert pred[0].tolist() == [0, 0]
    conf_p, _ = confidence_and_predictions(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), from_logits=False)
    np.testing.assert_allclose(conf_p, conf)


def test_adaptive_classification_hand_made():
    # 100 "easy" samples: size 8 right with confidence 0.9; 100 "hard": size 8 wrong with confidence
    # 0.3, size 16 right. Any threshold in [0.3, 0.9) is best; the smallest grid value is 0.30.
    n_easy = n_hard = 100
    labels = np.zeros(n_easy + n_hard, dtype=np.int64)
    small = [probs_row(0.9, 0) for _ in range(n_easy)] + [probs_row(0.3, 1) for _ in range(n_hard)]
    large = [probs_row(0.7, 0) for _ in range(n_easy + n_hard)]
    scores = np.stack([np.array(small), np.array(large)])
    rows = adaptive_classification(scores, labels, [8, 16], holdout_fraction=0.5, n_splits=5,
                                   from_logits=False)
    assert [r["cap"] for r in rows] == [8, 16]
    cap8, cap16 = rows
    assert cap8["thresholds"] == [] and cap8["expected_dim"] == 8.0
    assert cap16["thresholds"] == [pytest.approx(0.30)]
    assert cap16["accuracy"] == 1.0 and cap16["oracle_accuracy"] == 1.0
    # every easy sample decides at 8, every hard one at 16: the cascade *is* the oracle here
    assert cap16["expected_dim"] == pytest.approx(cap16["oracle_expected_dim"])
    assert 8 < cap16["expected_dim"] < 16
    # expected size = 8 * (easy share) + 16 * (hard share) of the test part, and accuracy at cap 8
    # is the easy share
    easy_share = cap8["accuracy"]
    assert cap16["expected_dim"] == pytest.approx(8 * easy_share + 16 * (1 - easy_share))
    assert cap16["size_fractions"] == [pytest.approx(easy_share), pytest.approx(1 - easy_share)]


def slow_protocol(scores, labels, sizes, holdout_fraction, n_splits, grid, seed):
    """The protocol with python loops (same split generator as documented)."""
    g, n, c = scores.shape
    conf = [[0.0] * n for _ in range(g)]
    pred = [[0] * n for _ in range(g)]
    for i in range(g):
        for s in range(n):
            row = [float(v) for v in scores[i, s]]
            m = max(row)
            z = sum(math.exp(v - m) for v in row)
            conf[i][s] = 1.0 / z
            pred[i][s] = row.index(m)
    rng = np.random.default_rng(seed)
    n_hold = int(round(holdout_fraction * n))
    results = {j: {"acc": [], "dim": [], "oacc": [], "odim": [], "thr": []} for j in range(g)}
    for _ in range(n_splits):
        perm = rng.permutation(n).tolist()
        hold, test = perm[:n_hold], perm[n_hold:]
        thr = []
        for i in range(g - 1):
            best_t, best = None, -1
            for t in grid:
                right = 0
                for s in hold:
                    p = pred[i][s] if conf[i][s] > t else pred[i + 1][s]
                    right += p == labels[s]
                if right > best:  # strict: keeps the smallest t among the best
                    best, best_t = right, t
            thr.append(best_t)
        for j in range(g):
            right, total_dim, oright, odim = 0, 0, 0, 0
            for s in test:
                d = j
                for i in range(j):
                    if conf[i][s] > thr[i]:
                        d = i
                        break
                right += pred[d][s] == labels[s]
                total_dim += sizes[d]
                ok = [i for i in range(j + 1) if pred[i][s] == labels[s]]
                oright += bool(ok)
                odim += sizes[ok[0]] if ok else sizes[j]
            r = results[j]
            r["acc"].append(right / len(test))
            r["dim"].append(total_dim / len(test))
            r["oacc"].append(oright / len(test))
            r["odim"].append(odim / len(test))
            r["thr"].append(thr[:j])
    return results


def test_adaptive_classification_matches_loop_reference(rng):
    g, n, c = 3, 80, 4
    labels = rng.integers(0, c, n)
    # bigger sizes are more often right; logits scaled so confidences spread over (0, 1)
    scores = rng.standard_normal((g, n, c)) * 1.5
    for i in range(g):
        scores[i, np.arange(n), labels] += 0.8 * (i + 1)
    grid = np.linspace(0, 1, 21)
    rows = adaptive_classification(scores, labels, [8, 16, 32], holdout_fraction=0.25, n_splits=4, grid=grid,
                                   seed=3)
    ref = slow_protocol(scores, labels, [8, 16, 32], 0.25, 4, list(grid), 3)
    for j, row in enumerate(rows):
        r = ref[j]
        assert row["accuracy"] == pytest.approx(np.mean(r["acc"]), abs=1e-12)
        assert row["accuracy_std"] == pytest.approx(np.std(r["acc"]), abs=1e-12)
        assert row["expected_dim"] == pytest.approx(np.mean(r["dim"]), abs=1e-12)
        assert row["oracle_accuracy"] == pytest.approx(np.mean(r["oacc"]), abs=1e-12)
        assert row["oracle_expected_dim"] == pytest.approx(np.mean(r["odim"]), abs=1e-12)
        np.testing.assert_allclose(row["thresholds"], np.mean(r["thr"], axis=0) if j else [], atol=1e-12)
        assert sum(row["size_fractions"]) == pytest.approx(1.0)


def test_fixed_size_accuracy_and_plot(tmp_path, rng):
    labels = rng.integers(0, 5, 60)
    scores = rng.standard_normal((3, 60, 5))
    scores[2, np.arange(60), labels] += 10  # the largest size is always right
    fixed = fixed_size_accuracy(scores, labels, [8, 16, 32])
    assert fixed[2] == {"dim": 32, "accuracy": 1.0}
    assert fixed[0]["accuracy"] == pytest.approx(np.mean(scores[0].argmax(1) == labels))
    rows = adaptive_classification(scores, labels, [8, 16, 32], n_splits=2)
    path = plot_adaptive_classification(rows, fixed, str(tmp_path / "ac.png"), oracle=True)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    plot_adaptive_classification(rows, [(8, 0.5), (16, 0.6)], str(tmp_path / "ac2.png"))
    assert (tmp_path / "ac2.png").stat().st_size > 0


def test_adaptive_classification_bad_input(rng):
    scores, labels = rng.standard_normal((2, 10, 3)), rng.integers(0, 3, 10)
    with pytest.raises(ConfigError, match=r"^labels: has 9 labels but scores has 10 samples"):
        adaptive_classification(scores, labels[:9], [8, 16])
    with pytest.raises(ConfigError, match=r"^sizes: has 3 sizes but scores has 2"):
        adaptive_classification(scores, labels, [8, 16, 32])
    with pytest.raises(ConfigError, match=r"^sizes: must be strictly increasing"):
        adaptive_classification(scores, labels, [16, 8])
    with pytest.raises(ConfigError, match=r"^holdout_fraction: 0.01 of 10 samples leaves an empty held-out part"):
        adaptive_classification(scores, labels, [8, 16], holdout_fraction=0.01)
    with pytest.raises(ConfigError, match=r"^holdout_fraction: must be a number in \(0, 1\)"):
        adaptive_classification(scores, labels, [8, 16], holdout_fraction=1.0)
    with pytest.raises(ConfigError, match=r"^labels: class ids must be in \[0, 3\)"):
        adaptive_classification(scores, labels + 5, [8, 16])
    with pytest.raises(ConfigError, match=r"^scores: expected \[num_sizes, num_samples, num_classes\]"):
        adaptive_classification(scores[0], labels, [8])
    with pytest.raises(ConfigError, match=r"^grid: is empty"):
        adaptive_classification(scores, labels, [8, 16], grid=[])
    with pytest.raises(ConfigError, match=r"^thresholds: has 2 values for a cascade of 2 sizes"):
        cascade_decide(np.zeros((2, 4)), [0.5, 0.5])
    with pytest.raises(ConfigError, match=r"^scores: probabilities must lie in \[0, 1\]"):
        confidence_and_predictions(scores, from_logits=False)
