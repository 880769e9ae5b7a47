"""SVD / Rand-LP / Rand-FS baselines and the linear probe, against slow references on small data."""

import numpy as np
import pytest

from mrl.errors import ConfigError
from mrl.evaluation import (
    evaluate_retrieval,
    linear_probe,
    low_rank,
    rand_fs_retrieval,
    rand_lp,
    random_coordinates,
    svd_classifier,
    svd_probe,
    svd_projection,
)

PROBE = {"steps": 50}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These probes are tiny: one thread avoids thread-sync overhead on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    """4 classes in 12 dims, class information in a few directions, plus noise."""
    rng = np.random.default_rng(11)
    d, c = 12, 4
    centres = rng.standard_normal((c, d)) * 1.2
    ytr, yte = np.repeat(np.arange(c), 60), np.repeat(np.arange(c), 25)
    xtr = centres[ytr] + rng.standard_normal((len(ytr), d)) + 2.0  # non-zero mean
    xte = centres[yte] + rng.standard_normal((len(yte), d)) + 2.0
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def slow_top1(x, y, w, b):
    right = 0
    for row, label in zip(x, y):
        logits = [sum(float(wi) * float(xi) for wi, xi in zip(w[k], row)) + float(b[k]) for k in range(len(w))]
        right += logits.index(max(logits)) == label
    return right / len(y)


# ------------------------------------------------------------------------------------------------
# linear probe
# ------------------------------------------------------------------------------------------------

def test_linear_probe_learns_and_reports_consistent_weights(data):
    xtr, ytr, xte, yte = data
    out = linear_probe(xtr, ytr, xte, yte, **PROBE)
    assert out["weight"].shape == (4, 12) and out["bias"].shape == (4,)
    assert out["top1"] > 0.7 and out["train_top1"] > 0.7
    # the returned weights act on the raw features and give the reported accuracy
    assert out["top1"] == pytest.approx(slow_top1(xte, yte, out["weight"], out["bias"]))
    again = linear_probe(xtr, ytr, xte, yte, **PROBE)
    np.testing.assert_array_equal(again["weight"], out["weight"])


def test_linear_probe_chunked_gradient_equals_full_batch(data):
    xtr, ytr, xte, yte = data
    full = linear_probe(xtr, ytr, xte, yte, steps=15)
    chunked = linear_probe(xtr, ytr, xte, yte, steps=15, chunk_size=37)
    np.testing.assert_allclose(chunked["weight"], full["weight"], rtol=1e-3, atol=1e-4)


def test_linear_probe_adam_is_deterministic(data):
    xtr, ytr, xte, yte = data
    a = linear_probe(xtr, ytr, xte, yte, optimizer="adam", steps=80, batch_size=32, lr=0.05, seed=5)
    b = linear_probe(xtr, ytr, xte, yte, optimizer="adam", steps=80, batch_size=32, lr=0.05, seed=5)
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert a["top1"] == b["top1"] > 0.6


def test_linear_probe_bad_input(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ConfigError, match=r"^train_y: has 239 labels but train_x has 240 rows"):
        linear_probe(xtr, ytr[:-1], xte, yte)
    with pytest.raises(ConfigError, match=r"^test_x: has width 8 but train_x has width 12"):
        linear_probe(xtr, ytr, xte[:, :8], yte)
    keep = ytr != 2  # class 2 has no training samples but is evaluated
    with pytest.raises(ConfigError, match=r"^train_y: has zero samples of class\(es\) 2 that occur in test_y"):
        linear_probe(xtr[keep], ytr[keep], xte, yte)
    with pytest.raises(ConfigError, match=r"^optimizer: unknown optimizer 'sgd'"):
        linear_probe(xtr, ytr, xte, yte, optimizer="sgd")
    with pytest.raises(ConfigError, match=r"^num_classes: is 3 but a label is 3"):
        linear_probe(xtr, ytr, xte, yte, num_classes=3)


# ------------------------------------------------------------------------------------------------
# SVD
# ------------------------------------------------------------------------------------------------

def test_svd_projection_matches_numpy_svd(data):
    xtr = data[0].astype(np.float64)
    for center in (False, True):
        x = xtr - xtr.mean(axis=0) if center else xtr
        _, s, vt = np.linalg.svd(x, full_matrices=False)  # slow reference: full SVD of the data
        p = svd_projection(xtr, 5, center=center)
        assert p.shape == (12, 5) and p.dtype == np.float32
        np.testing.assert_allclose(p.T @ p, np.eye(5), atol=1e-5)
        for j in range(5):  # same vectors up to sign
            ref = vt[j] * np.sign(vt[j][np.abs(vt[j]).argmax()])
            np.testing.assert_allclose(p[:, j], ref, atol=1e-4)
    # uncentred: the top direction follows the (large) mean, unlike PCA
    mean_dir = xtr.mean(axis=0) / np.linalg.norm(xtr.mean(axis=0))
    assert abs(svd_projection(xtr, 1)[:, 0] @ mean_dir) > 0.9
    assert abs(svd_projection(xtr, 1, center=True)[:, 0] @ mean_dir) < 0.9


def test_svd_probe_full_rank_equals_probe_on_full_embeddings(data):
    xtr, ytr, xte, yte = data
    full = linear_probe(xtr, ytr, xte, yte, **PROBE)
    svd_full = svd_probe(xtr, ytr, xte, yte, k=12, **PROBE)
    assert svd_full["top1"] == pytest.approx(full["top1"], abs=1.5 / len(yte))  # at most one sample apart
    assert svd_full["projection"].shape == (12, 12)
    low = svd_probe(xtr, ytr, xte, yte, k=1, **PROBE)
    assert low["top1"] < full["top1"]


def test_low_rank_and_svd_classifier(data):
    _, _, xte, yte = data
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((4, 12)), rng.standard_normal(4)
    # rank-1 by hand: sigma_1 * u_1 v_1^T
    u, s, vt = np.linalg.svd(w)
    np.testing.assert_allclose(low_rank(w, 1), s[0] * np.outer(u[:, 0], vt[0]), atol=1e-5)
    np.testing.assert_allclose(low_rank(w, 4), w, atol=1e-5)  # full rank is the matrix itself
    assert svd_classifier(w, xte, yte, 4, bias=b) == pytest.approx(slow_top1(xte, yte, w, b))
    w2 = low_rank(w, 2)
    assert svd_classifier(w, xte, yte, 2, bias=b) == pytest.approx(slow_top1(xte, yte, w2, b))
    with pytest.raises(ConfigError, match=r"^k: is 5, larger than min\(C, d\) = 4"):
        svd_classifier(w, xte, yte, 5)
    with pytest.raises(ConfigError, match=r"^test_emb: has width 8 but the classifier weight has width 12"):
        svd_classifier(w, xte[:, :8], yte, 2)
    with pytest.raises(ConfigError, match=r"^test_y: class ids must be in \[0, 4\)"):
        svd_classifier(w, xte, yte + 4, 2)


def test_svd_bad_input(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(ConfigError, match=r"^k: is 13, larger than the embedding width 12"):
        svd_projection(xtr, 13)
    with pytest.raises(ConfigError, match=r"^test_emb: has width 6 but train_emb has width 12"):
        svd_probe(xtr, ytr, xte[:, :6], yte, k=2)


# ------------------------------------------------------------------------------------------------
# random features
# ------------------------------------------------------------------------------------------------

def test_random_coordinates_seeded_and_nested():
    a = random_coordinates(64, 8, seed=1)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 8 and a.max() < 64
    np.testing.assert_array_equal(a, random_coordinates(64, 8, seed=1))
    assert set(a) < set(random_coordinates(64, 16, seed=1))  # nested for a fixed seed
    assert not np.array_equal(a, random_coordinates(64, 8, seed=2))
    with pytest.raises(ConfigError, match=r"^k: is 65, larger than the embedding width 64"):
        random_coordinates(64, 65)


def test_rand_lp_deterministic_under_seed(data):
    xtr, ytr, xte, yte = data
    a = rand_lp(xtr, ytr, xte, yte, k=4, seed=9, **PROBE)
    b = rand_lp(xtr, ytr, xte, yte, k=4, seed=9, **PROBE)
    np.testing.assert_array_equal(a["coordinates"], b["coordinates"])
    np.testing.assert_array_equal(a["weight"], b["weight"])
    assert a["top1"] == b["top1"]
    # it is a probe on exactly those coordinates
    direct = linear_probe(xtr[:, a["coordinates"]], ytr, xte[:, a["coordinates"]], yte, **PROBE)
    assert direct["top1"] == a["top1"]
    c = rand_lp(xtr, ytr, xte, yte, k=4, seed=10, **PROBE)
    assert not np.array_equal(a["coordinates"], c["coordinates"])


def test_rand_fs_retrieval_uses_random_coordinates(data):
    xtr, ytr, xte, yte = data
    rows = rand_fs_retrieval(xtr, ytr, xte, yte, dims=[3, 6], seed=4, ks=(1, 5))
    assert [r["dim"] for r in rows] == [3, 6]
    for row in rows:
        coords = random_coordinates(12, row["dim"], seed=4)
        np.testing.assert_array_equal(row["coordinates"], coords)
        ref = evaluate_retrieval(xtr[:, coords], ytr, xte[:, coords], yte, [row["dim"]], ks=(1, 5))[0]
        for key in ("top1", "map@5", "precision@5", "recall@5"):
            assert row[key] == ref[key]
    with pytest.raises(ConfigError, match=r"^dims: is 20, larger than the embedding width 12"):
        rand_fs_retrieval(xtr, ytr, xte, yte, dims=[20])
