"""Classification at any size from a checkpoint's head, robustness-set class mapping, and the eval
orchestration (``mrl.evaluation.run.evaluate`` / ``scripts/eval.py``) end to end on digits."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.errors import ConfigError
from mrl.evaluation.classification import (classification_sweep, classifier_at, knn_accuracy, linear_accuracy,
                                           load_head, resolve_dims)
from mrl.evaluation.robustness import (RobustnessSet, imagenet_eval_transform, robustness_class_mask,
                                       shipped_wnids)
from mrl.heads import create_head

from conftest import CONFIG_DIR, PROJECT_ROOT, write_image_folder

DIMS = [4, 8, 16]


def _head(kind, dims=DIMS, classes=7):
    torch.manual_seed(0)
    return create_head(kind, dims, classes)


def _numpy_state(head):
    return {k: v.detach().numpy() for k, v in head.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# classifier_at
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mrl", "mrle"])
def test_classifier_at_trained_sizes_reproduces_the_head_logits(kind):
    head = _head(kind)
    z = torch.randn(11, DIMS[-1])
    with torch.no_grad():
        logits = head(z).numpy()  # [G, B, C]
    for g, m in enumerate(DIMS):
        W, b = classifier_at(head, m)
        assert W.shape == (7, m) and b.shape == (7,) and W.dtype == np.float32
        np.testing.assert_allclose(z[:, :m].numpy() @ W.T + b, logits[g], rtol=1e-5, atol=1e-5)


def test_mrle_serves_every_prefix_by_slicing_its_single_weight():
    head = _head("mrle")
    for dim in range(1, DIMS[-1] + 1):
        W, b = classifier_at(head, dim)
        np.testing.assert_array_equal(W, head.weight.detach().numpy()[:, :dim])
        np.testing.assert_array_equal(b, head.bias.detach().numpy())


def test_mrl_untrained_size_uses_the_next_larger_heads_slice():
    head = _head("mrl")
    state = _numpy_state(head)
    for dim in range(1, DIMS[-1] + 1):
        # slow reference: walk the sizes in order and take the first that is large enough
        g = [i for i, m in enumerate(DIMS) if m >= dim][0]
        fc = head.classifiers[g]
        W, b = classifier_at(head, dim)
        np.testing.assert_array_equal(W, fc.weight.detach().numpy()[:, :dim])
        np.testing.assert_array_equal(b, fc.bias.detach().numpy())
    assert np.array_equal(classifier_at(head, 5)[1], state["classifiers.1.bias"])  # 5 -> head 8
    assert np.array_equal(classifier_at(head, 9)[1], state["classifiers.2.bias"])  # 9 -> head 16
    with pytest.raises(ConfigError, match=r"^dims: size 17 is outside 1\.\.16"):
        classifier_at(head, 17)


def test_ff_is_evaluated_at_its_own_size_only():
    head = _head("ff", [8])
    W, b = classifier_at(head, 8)
    np.testing.assert_array_equal(W, head.classifier.weight.detach().numpy())
    with pytest.raises(ConfigError, match=r"^dims: an FF-k model is evaluated at its own size only"):
        classifier_at(head, 4)
    with pytest.raises(ConfigError, match="^dims: .*FF-k model is evaluated at its own size only"):
        resolve_dims("all", "ff", [8], 32)


def test_resolve_dims():
    assert resolve_dims("nesting", "mrl", DIMS, 16) == DIMS
    assert resolve_dims("all", "mrle", DIMS, 16) == list(range(1, 17))
    assert resolve_dims([16, 3, 3], "mrl", DIMS, 16) == [3, 16]
    with pytest.raises(ConfigError, match=r"^dims: size 32 is outside 1\.\.16, the embedding width"):
        resolve_dims([8, 32], "mrl", DIMS, 16)
    with pytest.raises(ConfigError, match="^dims: unknown value 'every'"):
        resolve_dims("every", "mrl", DIMS, 16)


# --------------------------------------------------------------------------------------------------
# accuracies
# --------------------------------------------------------------------------------------------------

def _slow_topk(emb, labels, W, b, allowed, k):
    hits = 0
    for x, y in zip(emb, labels):
        scores = {c: float(x[: W.shape[1]] @ W[c] + b[c]) for c in allowed}
        ranked = sorted(scores, key=lambda c: -scores[c])[:k]
        hits += y in ranked
    return 100.0 * hits / len(labels)


@pytest.mark.parametrize("mask", [None, [1, 3, 4, 8, 11, 12]])
def test_linear_accuracy_matches_a_loop_with_and_without_class_mask(mask):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 10)).astype(np.float32)
    labels = rng.integers(0, 15, 60)
    W, b = rng.normal(size=(15, 6)).astype(np.float32), rng.normal(size=15).astype(np.float32)
    got = linear_accuracy(emb, labels, W, b, ks=(1, 5), class_mask=mask)
    allowed = list(range(15)) if mask is None else mask
    assert got["top1"] == pytest.approx(_slow_topk(emb, labels, W, b, allowed, 1))
    assert got["top5"] == pytest.approx(_slow_topk(emb, labels, W, b, allowed, 5))
    if mask is not None:  # a label outside the mask is never correct
        outside = ~np.isin(labels, mask)
        assert outside.any()
        assert linear_accuracy(emb[outside], labels[outside], W, b, class_mask=mask)["top5"] == 0.0
    with pytest.raises(ConfigError, match="class_mask"):
        linear_accuracy(emb, labels, W, b, class_mask=[0, 15])


def test_knn_accuracy_matches_brute_force():
    rng = np.random.default_rng(1)
    db, q = rng.normal(size=(80, 12)), rng.normal(size=(30, 12))
    db_y, q_y = rng.integers(0, 4, 80), rng.integers(0, 4, 30)
    for dim in (1, 3, 12):
        a = db[:, :dim] / np.linalg.norm(db[:, :dim], axis=1, keepdims=True)
        c = q[:, :dim] / np.linalg.norm(q[:, :dim], axis=1, keepdims=True)
        expected = 100.0 * np.mean(db_y[(c @ a.T).argmax(1)] == q_y)
        assert knn_accuracy(db, db_y, q, q_y, dim) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="^dims: size 13 is outside"):
        knn_accuracy(db, db_y, q, q_y, 13)


# --------------------------------------------------------------------------------------------------
# checkpoints and embedding folders written by hand (fast, exactly known)
# --------------------------------------------------------------------------------------------------

def _write_checkpoint(path: Path, head, classes) -> Path:
    state = {f"task.head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    state["model.backbone.dummy"] = torch.zeros(1)
    meta = {"head": head.name, "nesting_dims": list(head.nesting_dims), "num_classes": len(classes),
            "class_names": list(classes), "width": head.nesting_dims[-1]}
    torch.save({"state_dict": state, "mrl": meta, "hyper_parameters": {"backbone": {"name": "mlp"}}}, path)
    return path


def _write_split(root: Path, split: str, emb, labels, head, ckpt: Path, classes) -> Path:
    folder = root / split
    folder.mkdir(parents=True)
    emb = np.asarray(emb, dtype=np.float32)
    with torch.no_grad():
        logits = head(torch.from_numpy(emb)).numpy()
    np.save(folder / "embeddings.npy", emb)
    np.save(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(folder / "logits.npy", logits)
    meta = {"split": split, "num_samples": len(emb), "width": emb.shape[1], "nesting_dims": list(head.nesting_dims),
            "num_classes": len(classes), "head": head.name, "dtype": "float32", "class_names": list(classes),
            "checkpoint": str(ckpt)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _synthetic(tmp_path: Path, kind: str, dims, width=16, classes=5, n_train=150, n_test=60, seed=0,
               ckpt_path: Path | None = None):
    """Clustered embeddings with a head whose weights are the class means (so accuracy is high); the
    checkpoint goes to ``ckpt_path`` (default ``<tmp_path>/<kind>.ckpt``)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, width)) * 2
    y_train, y_test = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    x_train = means[y_train] + rng.normal(size=(n_train, width))
    x_test = means[y_test] + rng.normal(size=(n_test, width))
    head = create_head(kind, dims, classes)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.from_numpy(means[:, : p.shape[1]]).float())
            else:
                p.copy_(torch.from_numpy(-0.5 * (means[:, :dims[-1]] ** 2).sum(1)).float())
    names = [f"class{i}" for i in range(classes)]
    ckpt = ckpt_path or tmp_path / f"{kind}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    _write_checkpoint(ckpt, head, names)
    root = tmp_path / f"emb_{kind}"
    _write_split(root, "train", x_train, y_train, head, ckpt, names)
    _write_split(root, "test", x_test, y_test, head, ckpt, names)
    return root, ckpt, head


def test_load_head_reads_the_weights_and_refuses_another_head_type(tmp_path):
    head = _head("mrle")
    ckpt = _write_checkpoint(tmp_path / "m.ckpt", head, [f"c{i}" for i in range(7)])
    head_type, dims, loaded, meta = load_head(ckpt)
    assert head_type == "mrle" and dims == DIMS and meta["num_classes"] == 7
    assert type(loaded) is type(head) and not loaded.training
    assert set(loaded.state_dict()) == {"weight", "bias"} and loaded.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.weight, head.weight.detach(), rtol=0, atol=0)
    assert load_head(ckpt, expected_head="mrle").head_type == "mrle"
    with pytest.raises(ConfigError, match="^head: .* checkpoint of another head type than asked: it has head 'mrle', "
                                          "the config asks for 'mrl'"):
        load_head(ckpt, expected_head="mrl")
    with pytest.raises(ConfigError, match="^ckpt_path: .* does not exist"):
        load_head(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="not an mrl checkpoint"):
        load_head(tmp_path / "plain.ckpt")


def test_sweep_over_all_sizes_of_an_mrle_head_equals_per_size_slices(tmp_path):
    root, ckpt, head = _synthetic(tmp_path, "mrle", [4, 8, 16])
    from mrl.embeddings import load_split

    train, test = load_split(root / "train"), load_split(root / "test")
    rows = classification_sweep(train, test, load_head(ckpt), "all")
    assert [r["dim"] for r in rows] == list(range(1, 17))
    assert [r["trained"] for r in rows] == [d in (4, 8, 16) for d in range(1, 17)]
    for r in rows:
        W, b = head.classifier_at(r["dim"])
        expected = linear_accuracy(test.embeddings, test.labels, W.detach().numpy(), b.detach().numpy())
        assert r["top1"] == expected["top1"] and r["top5"] == expected["top5"]
        assert r["knn_top1"] == knn_accuracy(train.embeddings, train.labels, test.embeddings, test.labels, r["dim"])


# --------------------------------------------------------------------------------------------------
# robustness sets
# --------------------------------------------------------------------------------------------------

def _imagenet_like_classes():
    a, r = shipped_wnids("imagenet-a"), shipped_wnids("imagenet-r")
    names = set(a) | set(r)
    i = 0
    while len(names) < 1000:  # fillers that sort among real wnids
        names.add(f"n0{i:08d}")
        i += 1
    return sorted(names)


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_shipped_wnid_lists(name):
    wnids = shipped_wnids(name)
    assert len(wnids) == 200 and len(set(wnids)) == 200
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    text = (Path(__file__).resolve().parents[1] / "mrl" / "evaluation" / "data" /
            f"{name.replace('-', '_')}_wnids.txt").read_text()
    assert text.startswith("#") and "Hendrycks" in text.splitlines()[0]
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'mrl = ["evaluation/data/*.txt"]' in pyproject


def test_imagenet_a_and_r_share_classes_but_differ():
    a, r = set(shipped_wnids("imagenet-a")), set(shipped_wnids("imagenet-r"))
    assert 0 < len(a & r) < 200
    assert "n01498041" in a and "n01443537" in r  # stingray (A's first), goldfish (R's first)


def test_robustness_mapping_on_a_fake_imagenet_r_folder(tmp_path):
    classes = _imagenet_like_classes()
    r = shipped_wnids("imagenet-r")
    picked = [r[5], r[0], r[150]]
    root = write_image_folder(tmp_path / "imagenet-r", classes=picked, per_class=2, size=12, splits=("",))
    data = RobustnessSet(root, "imagenet_r", classes, image_size=8)
    folder_sorted = sorted(picked)
    assert data.folder_class_names == folder_sorted
    assert data.folder_to_checkpoint.tolist() == [classes.index(w) for w in folder_sorted]
    assert data.class_mask.tolist() == sorted(classes.index(w) for w in r) and len(data.class_mask) == 200
    x, y = data[0]
    assert tuple(x.shape) == (3, 8, 8) and y == classes.index(folder_sorted[0])
    assert sorted(set(data.targets)) == sorted(classes.index(w) for w in picked)
    # labels in the 1000-class space are what linear_accuracy with the mask expects
    mask, mapping = robustness_class_mask("imagenet-r", classes, folder_sorted)
    assert np.array_equal(mask, data.class_mask) and np.array_equal(mapping, data.folder_to_checkpoint)

    bad = write_image_folder(tmp_path / "bad", classes=[r[0], "n99999999"], per_class=1, size=12, splits=("",))
    with pytest.raises(ConfigError, match="^root: 1 class folder.* not among its 200 classes"):
        RobustnessSet(bad, "imagenet-r", classes)
    with pytest.raises(ConfigError, match="^ckpt_path: 200 of imagenet-a's 200 classes are not among the checkpoint"):
        robustness_class_mask("imagenet-a", [f"c{i}" for i in range(10)], [shipped_wnids("imagenet-a")[0]])
    with pytest.raises(ConfigError, match="^dataset: unknown robustness set"):
        robustness_class_mask("imagenet-c", classes, folder_sorted)


def test_robustness_full_class_sets():
    classes = _imagenet_like_classes()
    mask, mapping = robustness_class_mask("imagenet-v2", classes, sorted(["0", "10", "999", "2"]))
    assert mask is None and mapping.tolist() == [0, 10, 2, 999]  # V2's folders are class indices
    mask, mapping = robustness_class_mask("imagenet-sketch", classes, [classes[3], classes[700]])
    assert mask is None and mapping.tolist() == [3, 700]
    with pytest.raises(ConfigError, match="not among the checkpoint's classes"):
        robustness_class_mask("imagenet-sketch", classes, ["n99999999"])
    t = imagenet_eval_transform(224)
    assert [type(s).__name__ for s in t.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]


# --------------------------------------------------------------------------------------------------
# evaluate(): baselines and errors on hand-made folders
# --------------------------------------------------------------------------------------------------

def test_embeddings_without_logits_are_evaluated_by_what_does_not_need_them(tmp_path):
    """Logits are optional in embedding files (a model without a classifier writes none): retrieval and the
    classifier-based evaluators run on the embeddings, and an evaluator that reads the stored logits (the
    adaptive cascade, by its declared needs) is refused before anything is written."""
    from mrl.evaluation.run import REGISTRY, evaluate

    root, ckpt, head = _synthetic(tmp_path, "mrl", [4, 8, 16])
    with_logits = evaluate({"embeddings_dir": str(root), "output_dir": str(tmp_path / "a"),
                            "evaluators": ["classification", "retrieval"], "retrieval": {"ks": [10]}})
    for split in ("train", "test"):
        (root / split / "logits.npy").unlink()
    without = evaluate({"embeddings_dir": str(root), "output_dir": str(tmp_path / "b"),
                        "evaluators": ["classification", "retrieval"], "retrieval": {"ks": [10]}})
    untimed = [[{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in t["retrieval"]]
               for t in (with_logits, without)]
    assert untimed[0] == untimed[1]
    assert [{k: v for k, v in r.items() if k != "logits_top1"} for r in with_logits["classification"]] \
        == without["classification"]  # only the stored-logits check column is gone
    assert {name for name, e in REGISTRY.items() if "logits" in e.needs} == {"adaptive_classification"}
    with pytest.raises(ConfigError, match=r"^evaluators: \['adaptive_classification'\] read the per-size logits"):
        evaluate({"embeddings_dir": str(root), "output_dir": str(tmp_path / "c"),
                  "evaluators": ["retrieval", "adaptive_classification"]})
    assert not (tmp_path / "c").exists()


def test_baselines_on_an_ff_full_model(tmp_path):
    from mrl.evaluation.run import evaluate

    root, ckpt, head = _synthetic(tmp_path, "ff", [16])
    out = tmp_path / "out"
    tables = evaluate({"embeddings_dir": str(root), "output_dir": str(out), "head": "ff",
                       "evaluators": ["classification", "retrieval", "baselines"],
                       "retrieval": {"ks": [10]}, "baselines": {"dims": [2, 8, 16], "probe_steps": 10}})
    base = {r["dim"]: r for r in tables["baselines"]}
    full = tables["classification"][0]
    assert full["dim"] == 16
    assert base[16]["svd_classifier_top1"] == pytest.approx(full["top1"])  # rank >= min(C, d): the classifier
    assert base[16]["rand_fs_top1"] == pytest.approx(tables["retrieval"][0]["top1"])  # all coordinates
    assert base[16]["rand_fs_map@10"] == pytest.approx(tables["retrieval"][0]["map@10"])
    for col in ("svd_top1", "svd_classifier_top1", "rand_lp_top1", "rand_fs_top1"):
        assert all(0 <= r[col] <= 100 for r in tables["baselines"])
    assert base[16]["svd_top1"] > 60 and base[16]["rand_lp_top1"] > 60  # separable clusters
    for ext in ("csv", "md", "json", "png"):
        assert (out / f"baselines.{ext}").is_file()


def test_evaluate_refuses_bad_settings_in_one_line(tmp_path):
    from mrl.evaluation.run import evaluate

    root, ckpt, _ = _synthetic(tmp_path, "mrl", [4, 16])
    base = {"embeddings_dir": str(root), "output_dir": str(tmp_path / "o")}
    cases = [
        ({"evaluators": ["baselines"]}, "^evaluators: baselines need an FF model at full width"),
        ({"head": "mrle"}, "^head: .*another head type than asked"),
        ({"dims": [4, 64]}, r"^dims: size 64 is outside 1\.\.16"),
        ({"evaluators": ["clasification"]}, r"^evaluators: unknown evaluator\(s\) \['clasification'\]"),
        ({"retrieval": {"k": 3}}, r"^retrieval\.k: is not a setting of this evaluator"),
        ({"retrieval": {"ks": [10, 1000]}, "evaluators": ["retrieval"]}, r"^retrieval\.ks: is 1000, larger than"),
        ({"embeddings_dir": str(tmp_path / "none")}, "^embeddings_dir: .* does not exist"),
        ({"adaptive_classification": {"caps": [5]}, "evaluators": ["adaptive_classification"]},
         r"^adaptive_classification\.caps: \[5\] are not trained sizes"),
    ]
    for extra, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            evaluate({**base, **extra})
        assert "\n" not in str(info.value)
    (tmp_path / "x").mkdir()
    _synthetic(tmp_path / "x", "mrl", [8, 16])  # another checkpoint: other sizes
    with pytest.raises(ConfigError, match="^ckpt_path: .* is not the checkpoint the embeddings were made with"):
        evaluate({**base, "ckpt_path": str(tmp_path / "x" / "mrl.ckpt")})


def test_every_setting_of_every_evaluator_is_checked_before_anything_is_written(tmp_path):
    from mrl.evaluation.run import evaluate

    root, _, _ = _synthetic(tmp_path, "mrl", [4, 16])  # 5 classes, 150 database rows, width 16
    out = tmp_path / "o"
    base = {"embeddings_dir": str(root), "output_dir": str(out), "adaptive_classification": {"n_splits": 2},
            "evaluators": ["classification", "adaptive_classification", "retrieval", "adaptive_retrieval"],
            "retrieval": {"ks": [10]}, "adaptive_retrieval": {"shortlist_ks": [20, 50]}}

    def run(section=None, settings=None, **top):
        cfg = {**base, **top}
        if section:
            cfg[section] = {**base.get(section, {}), **settings}
        return evaluate(cfg)

    cases = [  # the last evaluator's settings first: the earlier evaluators would have written by then
        ("adaptive_retrieval", {"funnels": [{"dims": [4, 32], "shortlist_sizes": [50]}]},
         r"^adaptive_retrieval\.funnels\[0\]\.dims: is 32, larger than the embedding width 16"),
        ("adaptive_retrieval", {"funnels": [{"dims": [4, 8, 16], "shortlist_sizes": [50, 5]}]},
         r"^adaptive_retrieval\.funnels\[0\]\.k: is 10, larger than the last shortlist length 5"),
        ("adaptive_retrieval", {"repeats": 0}, r"^adaptive_retrieval\.repeats: must be >= 1, got 0"),
        ("adaptive_retrieval", {"method": "ivf"}, r"^adaptive_retrieval\.method: unknown search method 'ivf'"),
        ("adaptive_retrieval", {"k": -3}, r"^adaptive_retrieval\.k: must be >= 1, got -3"),
        ("adaptive_retrieval", {"ef_search": 0}, r"^adaptive_retrieval\.ef_search: must be >= 1, got 0"),
        ("adaptive_retrieval", {"shortlist_dims": [4, 64]},
         r"^adaptive_retrieval\.shortlist_dims: size 64 is larger than the embedding width 16"),
        ("adaptive_retrieval", {"shortlist_ks": [200]}, r"^adaptive_retrieval\.shortlist_ks: K=200 must lie between"),
        ("retrieval", {"method": "flat"}, r"^retrieval\.method: unknown search method 'flat'"),
        ("retrieval", {"device": "gpu"}, r"^retrieval\.device: unknown device 'gpu'"),
        ("retrieval", {"ks": [10, -1]}, r"^retrieval\.ks: must be >= 1, got -1"),
        ("retrieval", {"hnsw_m": 1}, r"^retrieval\.hnsw_m: must be >= 2, got 1"),
        ("adaptive_classification", {"holdout_fraction": 1.5},
         r"^adaptive_classification\.holdout_fraction: must be a number in \(0, 1\)"),
        ("adaptive_classification", {"n_splits": 0}, r"^adaptive_classification\.n_splits: must be an int >= 1"),
        ("adaptive_classification", {"grid_points": 1}, r"^adaptive_classification\.grid_points: must be >= 2"),
        ("adaptive_classification", {"seed": -1}, r"^adaptive_classification\.seed: must be >= 0"),
        ("classification", {"ks": [1, 6]}, r"^classification\.ks: is 6, larger than the 5 classes"),
        ("classification", {"knn": "yes"}, r"^classification\.knn: must be true or false, got 'yes'"),
    ]
    for section, settings, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as info:
            run(section, settings)
        assert "\n" not in str(info.value)
        assert not out.exists(), f"{section} {settings} left {sorted(p.name for p in out.iterdir())}"
    with pytest.raises(ConfigError, match=r"^evaluators: unknown evaluator\(s\) \['retreival'\]"):
        run(evaluators=["classification", "retreival"])
    with pytest.raises(ConfigError, match=r"^dims: size 17 is outside 1\.\.16"):
        run(dims=[4, 17])
    assert not out.exists()
    run()  # the same settings without the bad one write every table
    assert sorted(p.name for p in out.glob("*.csv")) == ["adaptive_classification.csv", "adaptive_retrieval.csv",
                                                          "classification.csv", "retrieval.csv"]

    ff_root, _, _ = _synthetic(tmp_path / "ff", "ff", [16])
    ff_base = {"embeddings_dir": str(ff_root), "output_dir": str(out / "ff"), "retrieval": {"ks": [10]},
               "evaluators": ["classification", "retrieval", "baselines"]}
    for settings, pattern in [({"probe_optimizer": "sgd"}, r"^baselines\.probe_optimizer: unknown optimizer 'sgd'"),
                              ({"probe_steps": 0}, r"^baselines\.probe_steps: must be >= 1"),
                              ({"weight_decay": -1}, r"^baselines\.weight_decay: must be a number >= 0"),
                              ({"dims": [2, 32]}, r"^baselines\.dims: size 32 is larger than the embedding width 16"),
                              ({"ks": [500]}, r"^baselines\.ks: is 500, larger than the database size 150"),
                              ({"methods": ["pca"]}, r"^baselines\.methods: unknown method\(s\) \['pca'\]"),
                              ({"center": "no"}, r"^baselines\.center: must be true or false")]:
        with pytest.raises(ConfigError, match=pattern):
            evaluate({**ff_base, "baselines": settings})
        assert not (out / "ff").exists()
    for sets, pattern in [({"imagenet-c": str(ff_root / "test")}, r"^robustness\.dataset: unknown robustness set"),
                          ({"imagenet-v2": str(tmp_path / "none")}, r"^embeddings: .*none is not a complete")]:
        with pytest.raises(ConfigError, match=pattern):
            evaluate({**ff_base, "evaluators": ["classification", "robustness"], "robustness": sets})
        assert not (out / "ff").exists()


def test_a_corrupt_meta_json_is_a_one_line_error_naming_the_file(tmp_path):
    from mrl.evaluation.run import evaluate

    root, _, _ = _synthetic(tmp_path, "mrl", [4, 16])
    meta_path = root / "test" / "meta.json"
    meta = json.loads(meta_path.read_text())
    cfg = {"embeddings_dir": str(root), "output_dir": str(tmp_path / "o"), "evaluators": ["classification"]}
    for text, pattern in [("{not json", r"test/meta\.json is not valid JSON \(Expecting property name"),
                          (json.dumps([1, 2]), r"test/meta\.json holds a JSON list, not an object"),
                          (json.dumps({k: v for k, v in meta.items() if k != "nesting_dims"}),
                           r"test/meta\.json lacks \['nesting_dims'\]"),
                          (json.dumps({**meta, "num_classes": "five"}), r"test/meta\.json has head 'mrl'"),
                          (json.dumps({**meta, "num_classes": 6}), r"logits\.npy has 2 sizes and 5 classes but")]:
        meta_path.write_text(text)
        with pytest.raises(ConfigError, match="^embeddings: " + str(root).replace("\\", "/") + ".*" + pattern) as info:
            evaluate(cfg)
        assert "\n" not in str(info.value)
    meta_path.write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "eval.py"), f"embeddings_dir={root}",
                           f"output_dir={tmp_path / 'o'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: embeddings: {meta_path} is not valid JSON "
                                                f"('utf-8' codec can't decode byte 0x89 in position 0: invalid start "
                                                f"byte); re-run scripts/embed.py for this split"]
    assert not (tmp_path / "o").exists()


@pytest.fixture()
def logged_evaluation(tmp_path, caplog, monkeypatch):
    """An evaluation of a checkpoint in ``<run>/checkpoints/`` with its log records, plot titles and point
    labels recorded."""
    from matplotlib.axes import Axes

    from mrl.evaluation.run import evaluate

    run_dir = tmp_path / "cifar_mrl_run7"
    root, _, _ = _synthetic(tmp_path, "mrl", [4, 16], ckpt_path=run_dir / "checkpoints" / "last.ckpt")
    titles, labels = [], []
    for method, texts in (("set_title", titles), ("annotate", labels)):
        original = getattr(Axes, method)

        def spy(self, text, *args, _original=original, _texts=texts, **kwargs):
            _texts.append(text)
            return _original(self, text, *args, **kwargs)

        monkeypatch.setattr(Axes, method, spy)
    caplog.set_level(logging.INFO, logger="mrl.evaluation.run")
    tables = evaluate({"embeddings_dir": str(root), "output_dir": str(tmp_path / "out"), "dims": [4, 8, 16],
                       "evaluators": ["classification", "adaptive_classification", "retrieval", "adaptive_retrieval"],
                       "retrieval": {"ks": [10]}, "adaptive_classification": {"n_splits": 2},
                       "adaptive_retrieval": {"shortlist_dims": [4, 8], "shortlist_ks": [20, 50],
                                              "funnels": [{"dims": [4, 8, 16], "shortlist_sizes": [60, 20]}]}})
    return tables, [r.getMessage() for r in caplog.records], titles, labels, tmp_path / "out"


def test_progress_is_logged_for_each_evaluator_and_size(logged_evaluation):
    _, messages, _, _, out = logged_evaluation
    names = ["classification", "adaptive_classification", "retrieval", "adaptive_retrieval"]
    for i, name in enumerate(names, 1):
        assert f"{name} ({i}/4): MRL, cifar_mrl_run7" in messages
        assert any(m.startswith(f"{name}: done in ") and m.endswith(str(out / f"{name}.md")) for m in messages)
    for name in ("classification", "retrieval"):
        steps = [m for m in messages if m.startswith(f"{name}: size ")]
        assert [m.split(" done ")[0] for m in steps] == [f"{name}: size {d}" for d in (4, 8, 16)]
        assert [m.split("(")[1].split(",")[0] for m in steps] == ["1/3", "2/3", "3/3"]
    steps = [m.split(" done ")[0] for m in messages if m.startswith("adaptive_retrieval: ") and " done (" in m]
    assert steps == ["adaptive_retrieval: exact search at 16", "adaptive_retrieval: shortlist size D_s=4",
                     "adaptive_retrieval: shortlist size D_s=8", "adaptive_retrieval: funnel [4, 8, 16]"]


def test_plots_name_the_run_and_label_each_adaptive_retrieval_setting(logged_evaluation):
    tables, _, titles, labels, out = logged_evaluation
    assert len(titles) == 4 and all(t.endswith("MRL, cifar_mrl_run7") for t in titles)  # the run, not "last.ckpt"
    for name in tables:
        assert (out / f"{name}.png").stat().st_size > 0
    expected = ["exact d=16"]
    expected += [f"Ds={ds} K={k} Dr=16" for ds in (4, 8) for k in (20, 50)]
    expected.append("Ds=4 K=60,20 Dr=8,16")
    assert sorted(labels) == sorted(expected)
    assert [(r["kind"], r["D_s"], r["K"]) for r in tables["adaptive_retrieval"]][-1] == ("funnel (exact)", 4, "60,20")


# --------------------------------------------------------------------------------------------------
# end to end on digits: train, embed, evaluate
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from conftest import compose
    from mrl.data import create_datamodule
    from mrl.embeddings import embed_checkpoint
    from mrl.app.train import train

    from omegaconf import OmegaConf

    tmp = tmp_path_factory.mktemp("digits_eval")
    cfg = compose(["logger=csv", "trainer.max_epochs=2", "callbacks.progress_bar=none"], tmp / "run")
    data = OmegaConf.to_container(cfg.data, resolve=True)  # the training run's split (its seed), not another
    out = train(cfg)
    written = embed_checkpoint(out["best_model_path"], create_datamodule(**data), tmp / "emb")
    return out, written["train"].parent, tmp


def _compose_eval(overrides, output_dir):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra_compose(config_name="eval", return_hydra_config=True, overrides=overrides)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def test_evaluate_end_to_end_on_digits(digits_run):
    from mrl.evaluation.run import evaluate

    run, emb_dir, tmp = digits_run
    out = tmp / "eval"
    dims = [4, 8, 12, 16, 100, 256]
    cfg = _compose_eval([f"embeddings_dir={emb_dir}", f"dims=[{','.join(map(str, dims))}]", "head=mrl",
                         "adaptive_classification.n_splits=3", "adaptive_retrieval.shortlist_dims=[8,32,256]",
                         "adaptive_retrieval.shortlist_ks=[20,50]"], out)
    tables = evaluate(cfg, command="python scripts/eval.py embeddings_dir=...")
    assert set(tables) == {"classification", "adaptive_classification", "retrieval", "adaptive_retrieval"}
    for name in tables:
        for ext in ("csv", "md", "json", "png"):
            assert (out / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    assert "adaptive_retrieval:" in (out / "eval_config.yaml").read_text()
    assert (out / "command.txt").read_text().startswith("python scripts/eval.py")
    assert not list(out.glob(".*tmp*"))

    cls = {r["dim"]: r for r in tables["classification"]}
    assert list(cls) == dims
    # the full-size linear accuracy is the training run's test top-1 (float16 embeddings may flip a tie)
    assert cls[256]["top1"] == pytest.approx(run["test"]["top1@256"], abs=0.75)
    for m in (8, 16, 256):  # and the stored logits agree with the recomputed ones at trained sizes
        assert cls[m]["trained"] and cls[m]["top1"] == pytest.approx(cls[m]["logits_top1"], abs=0.75)
        assert cls[m]["top1"] == pytest.approx(run["test"][f"top1@{m}"], abs=0.75)
    assert not cls[12]["trained"]
    ret = {r["dim"]: r for r in tables["retrieval"]}
    from mrl.embeddings import load_split
    from mrl.evaluation.retrieval import l2_normalize_prefix

    train, test = load_split(emb_dir / "train"), load_split(emb_dir / "test")
    for d in dims:
        # 1-NN of the classification sweep = top-1 of the retrieval evaluator, even where equally near neighbours
        # disagree (tiny prefixes of ReLU features are often all zero, so everything ties): both take the lowest
        # database index among them, and so does this slow reference
        scores = l2_normalize_prefix(test.embeddings, d) @ l2_normalize_prefix(train.embeddings, d).T
        first_best = np.array([np.flatnonzero(row == row.max())[0] for row in scores])
        expected = 100.0 * np.mean(train.labels[first_best] == test.labels)
        assert ret[d]["top1"] == pytest.approx(cls[d]["knn_top1"])
        assert ret[d]["top1"] == pytest.approx(expected, abs=100.0 / len(test.labels) + 1e-9)
        assert 0 <= ret[d]["map@10"] <= 100
    assert ret[256]["top1"] == pytest.approx(cls[256]["knn_top1"])
    ar = tables["adaptive_retrieval"]
    exact = ar[0]
    assert exact["kind"] == "exact" and exact["top1"] == pytest.approx(ret[256]["top1"])
    assert exact["map@10"] == pytest.approx(ret[256]["map@10"])
    grid = [(r["D_s"], r["D_r"], r["K"]) for r in ar if r["kind"].startswith("adaptive")]
    assert grid == [(8, 256, 20), (8, 256, 50), (32, 256, 20), (32, 256, 50), (256, 256, 20), (256, 256, 50)]
    for same in ar[-3:-1]:  # D_s = D_r = width: exact search at the full width
        assert (same["map@10"], same["top1"]) == pytest.approx((exact["map@10"], exact["top1"]))
    n = 1257
    assert ar[1]["mflops"] == pytest.approx((n * 8 + 20 * 256) / 1e6)
    assert exact["mflops"] == pytest.approx(n * 256 / 1e6)
    funnel = [r for r in ar if r["kind"].startswith("funnel")]
    assert len(funnel) == 1 and funnel[0]["D_r"] == "16,32,64,128,256" and funnel[0]["K"] == "200,100,50,25,10"
    assert all(r["us_per_query"] > 0 for r in ar)
    ac = tables["adaptive_classification"]
    assert [r["cap"] for r in ac] == [8, 16, 32, 64, 128, 256]
    assert ac[-1]["fixed_accuracy"] == pytest.approx(cls[256]["logits_top1"])
    assert all(r["expected_dim"] <= r["cap"] for r in ac)
    with (out / "classification.csv").open() as f:
        assert [int(r["dim"]) for r in csv.DictReader(f)] == dims


def test_eval_script_writes_tables_and_fails_in_one_line(digits_run, tmp_path):
    _, emb_dir, _ = digits_run
    script = str(PROJECT_ROOT / "scripts" / "eval.py")
    out = tmp_path / "script_out"
    ok = subprocess.run([sys.executable, script, f"embeddings_dir={emb_dir}", f"output_dir={out}",
                         "evaluators=[classification,retrieval]", "retrieval.ks=[10]", "classification.knn=false",
                         f"hydra.run.dir={tmp_path / 'hydra'}"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (out / "classification.md").is_file() and (out / "retrieval.csv").is_file()
    log = (tmp_path / "hydra" / "eval.log").read_text()
    for name in ("classification", "retrieval"):  # progress, on the console and in Hydra's eval.log
        for i, size in enumerate([8, 16, 32, 64, 128, 256], 1):
            assert f"{name}: size {size} done ({i}/6, " in ok.stdout and f"{name}: size {size} done ({i}/6, " in log
        assert f"{name}: done in " in ok.stdout and f"{name}: done in " in log
    assert "scripts/eval.py" in (out / "command.txt").read_text()
    assert "embeddings_dir:" in (out / "eval_config.yaml").read_text()
    bad = subprocess.run([sys.executable, script, f"embeddings_dir={emb_dir}", f"output_dir={out}", "head=mrle"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: head: ") and "another head type than asked" in lines[-1]


def test_robustness_set_embedded_and_evaluated_with_the_200_class_mask(tmp_path):
    import lightning
    from torch.utils.data import DataLoader, TensorDataset

    from mrl.embeddings import embed_split, load_split
    from mrl.evaluation.robustness import embed_robustness_set
    from mrl.evaluation.run import evaluate
    from mrl.checkpoint import CHECKPOINT_KEY
    from mrl.lightning import MatryoshkaModule

    classes = _imagenet_like_classes()
    torch.manual_seed(0)
    module = MatryoshkaModule(backbone={"name": "mlp", "in_chans": 3, "image_size": 8, "width": 32},
                              num_classes=1000, head="mrl", class_names=classes).eval()
    ckpt = tmp_path / "in1k.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__,
                CHECKPOINT_KEY: {"head": "mrl", "nesting_dims": module.nesting_dims, "num_classes": 1000,
                                 "class_names": classes, "width": 32}}, ckpt)
    r = shipped_wnids("imagenet-r")
    picked = [r[0], r[1], r[7], r[199]]
    folder = write_image_folder(tmp_path / "imagenet-r", classes=picked, per_class=3, size=10, splits=("",))
    emb_root = tmp_path / "emb"
    path = embed_robustness_set(ckpt, folder, "imagenet-r", emb_root, batch_size=5, num_workers=0, dtype="float32")
    split = load_split(path)
    assert path.name == "imagenet-r" and split.meta["robustness_set"] == "imagenet-r"
    assert sorted(set(split.labels.tolist())) == sorted(classes.index(w) for w in picked)
    meta = {"checkpoint": str(ckpt.resolve())}  # a standard test split of the same checkpoint
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 8, 8), torch.arange(6)), batch_size=3)
    embed_split(module, loader, emb_root, "test", dtype="float32", meta=meta)

    rows = evaluate({"embeddings_dir": str(emb_root), "output_dir": str(tmp_path / "out"),
                     "evaluators": ["robustness"], "robustness": {"imagenet-r": str(path)}})["robustness"]
    assert [row["dim"] for row in rows] == module.nesting_dims
    data = RobustnessSet(folder, "imagenet-r", classes, image_size=8)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = np.array(data.targets)
    with torch.no_grad():
        logits = module(x).numpy()[:, :, data.class_mask]  # [G, N, 200]
    for g, row in enumerate(rows):
        expected = 100.0 * np.mean(data.class_mask[logits[g].argmax(1)] == y)
        assert row["dataset"] == "imagenet-r" and row["top1"] == pytest.approx(expected)
    assert (tmp_path / "out" / "robustness.md").is_file()
    assert (tmp_path / "out" / "robustness.png").stat().st_size > 0
