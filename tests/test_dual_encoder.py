"""The image-text dual encoder: the Matryoshka symmetric InfoNCE against slow loops, gathering over 2 processes,
zero-shot and recall@k against slow references, bad inputs, and a tiny end-to-end run through the scripts."""

from __future__ import annotations

import json
import math
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import run_script, write_image_folder
from mrl.data.image_text import ImageTextDataModule, read_caption_file
from mrl.errors import ConfigError
from mrl.evaluation.image_text import class_embeddings, cross_modal_retrieval, zero_shot
from mrl.losses import SymmetricInfoNCE
from mrl.tasks import create_task
from mrl.tasks.dual_encoder import class_embeddings as torch_class_embeddings

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
SIZES, WEIGHTS = [4, 8, 16], [1.0, 0.5, 2.0]


def _task(**kwargs):
    return create_task("dual_encoder", SIZES, WEIGHTS, 16, **kwargs)


def _pairs(b: int = 6, width: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, width, generator=g), torch.randn(b, width, generator=g)


# ------------------------------------------------------------------------------------------------ loss


def test_multi_prefix_infonce_matches_a_slow_loop_over_sizes_and_pairs():
    image, text = _pairs()
    task = _task(temperature=0.1)
    per_size = task.loss(torch.stack([image, text]), {})
    scale = 10.0
    for g, m in enumerate(SIZES):
        total = 0.0
        for i in range(len(image)):
            a = image[i, :m] / image[i, :m].norm()
            cos_i2t = [float(a @ (text[j, :m] / text[j, :m].norm())) for j in range(len(text))]
            t = text[i, :m] / text[i, :m].norm()
            cos_t2i = [float(t @ (image[j, :m] / image[j, :m].norm())) for j in range(len(image))]
            for cos in (cos_i2t, cos_t2i):
                total += -(scale * cos[i] - math.log(sum(math.exp(scale * c) for c in cos))) / 2
        assert float(per_size[g].detach()) == pytest.approx(total / len(image), rel=1e-5)


def test_symmetric_loss_is_the_average_of_the_two_directions():
    image, text = _pairs(b=5, width=8, seed=3)
    targets, scale = torch.arange(5), torch.tensor(7.0)
    i2t = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    by_hand = (F.cross_entropy(i2t, targets) + F.cross_entropy(i2t.T, targets)) / 2
    loss = SymmetricInfoNCE()(image, text, text, image, targets, scale)
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-6)


def test_temperature_is_learnt_in_log_space_and_clamped():
    task = _task(temperature=0.07, max_logit_scale=100.0)
    assert float(task.scale()) == pytest.approx(1 / 0.07, rel=1e-5)
    image, text = _pairs()
    task.loss(torch.stack([image, text]), {}).sum().backward()
    assert task.logit_scale.grad is not None and task.logit_scale.requires_grad
    with torch.no_grad():
        task.logit_scale.fill_(math.log(1000.0))
    assert float(task.scale()) == pytest.approx(100.0)
    assert not _task(learn_temperature=False).logit_scale.requires_grad


# ------------------------------------------------------------------------------------------------ DDP gather


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 6, generator=g), torch.randn(8, 7, generator=g), torch.randn(6, 16, generator=g), \
        torch.randn(7, 16, generator=g)


def _loss_and_grads(x, y, wx, wy, local_loss: bool):
    wx, wy = wx.clone().requires_grad_(True), wy.clone().requires_grad_(True)
    task = _task(local_loss=local_loss)
    loss = (task.loss(torch.stack([x @ wx, y @ wy]), {}) * torch.tensor(WEIGHTS)).sum()
    loss.backward()
    return loss.detach(), wx.grad, wy.grad, task.logit_scale.grad


def _worker(rank: int, world: int, port: int, local_loss: bool, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, y, wx, wy = _problem()
        b = len(x) // world
        rows = slice(rank * b, (rank + 1) * b)
        values = list(_loss_and_grads(x[rows], y[rows], wx, wy, local_loss))
        for value in values:
            dist.all_reduce(value)                # DDP: the mean over ranks of the gradients
        out[rank] = [v / world for v in values]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("local_loss", [False, True])
def test_gather_on_two_processes_equals_one_process_on_the_whole_batch(local_loss):
    """Both towers' features gathered with gradient (and, with local_loss, each rank's rows against every column):
    the mean over 2 ranks of the losses and gradients (towers and temperature) equals one process's."""
    x, y, wx, wy = _problem()
    one = _loss_and_grads(x, y, wx, wy, local_loss)
    out = mp.Manager().dict()
    mp.start_processes(_worker, args=(2, _free_port(), local_loss, out), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        for mine, theirs in zip(out[rank], one):
            assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ evaluation


def _slow_class_embedding(prompts: np.ndarray, c: int, dim: int) -> np.ndarray:
    mean = np.zeros(dim)
    for t in range(prompts.shape[0]):
        v = prompts[t, c, :dim].astype(np.float64)
        mean += v / np.linalg.norm(v)
    return mean / np.linalg.norm(mean)


def test_zero_shot_against_a_slow_reference():
    rng = np.random.default_rng(0)
    prompts, images, labels = rng.normal(size=(3, 7, 12)), rng.normal(size=(40, 12)), rng.integers(0, 7, 40)
    rows = zero_shot(images, labels, prompts, [3, 12], ks=[1, 5])
    for row in rows:
        d = row["dim"]
        classes = np.stack([_slow_class_embedding(prompts, c, d) for c in range(7)])
        top1 = top5 = 0
        for x, y in zip(images, labels):
            scores = classes @ (x[:d] / np.linalg.norm(x[:d]))
            order = sorted(range(7), key=lambda c: -scores[c])
            top1 += order[0] == y
            top5 += y in order[:5]
        assert row["top1"] == pytest.approx(top1 / 40) and row["top5"] == pytest.approx(top5 / 40)
    # the task's class embeddings (validation) are the evaluator's
    for d in (3, 12):
        assert np.allclose(torch_class_embeddings(torch.tensor(prompts), d).numpy(), class_embeddings(prompts, d),
                           atol=1e-6)


def test_cross_modal_recall_against_a_slow_reference():
    rng = np.random.default_rng(1)
    n, width = 30, 10
    images, texts = rng.normal(size=(n, width)), rng.normal(size=(n, width))
    image_ids = np.repeat(np.arange(15), 2)            # two captions per image
    images = images[image_ids * 2]                     # rows of one image hold the same image embedding
    caption_ids = np.arange(n)
    caption_ids[5] = caption_ids[4]                    # rows 4 and 5: the same caption text
    texts[5] = texts[4]
    rows = cross_modal_retrieval(images, texts, image_ids, caption_ids, [4, 10], ks=[1, 5])
    for row in rows:
        d = row["dim"]
        unit = lambda v: v[:d] / np.linalg.norm(v[:d])  # noqa: E731
        img_rows = [int(np.flatnonzero(image_ids == i)[0]) for i in range(15)]
        cap_rows = [int(np.flatnonzero(caption_ids == c)[0]) for c in sorted(set(caption_ids))]
        pairs = {(int(i), int(c)) for i, c in zip(image_ids, caption_ids)}
        cap_id = [int(caption_ids[r]) for r in cap_rows]
        for k in (1, 5):
            hits = 0
            for i, r in enumerate(img_rows):
                s = [float(unit(images[r]) @ unit(texts[c])) for c in cap_rows]
                top = sorted(range(len(cap_rows)), key=lambda j: (-s[j], j))[:k]
                hits += any((i, cap_id[j]) in pairs for j in top)
            assert row[f"i2t_r@{k}"] == pytest.approx(hits / 15)
            hits = 0
            for j, c in enumerate(cap_rows):
                s = [float(unit(texts[c]) @ unit(images[r])) for r in img_rows]
                top = sorted(range(15), key=lambda i: (-s[i], i))[:k]
                hits += any((i, cap_id[j]) in pairs for i in top)
            assert row[f"t2i_r@{k}"] == pytest.approx(hits / len(cap_rows))
        assert row["num_images"] == 15 and row["num_captions"] == n - 1


def test_validation_metrics_per_size():
    task = _task(class_names=["cat", "dog", "emu"])
    image, text = _pairs(b=4)
    ids = torch.tensor([[1, 2, 0], [1, 3, 0], [1, 2, 0], [1, 4, 5]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long()}
    # an encoder stand-in for the class prompts: prompt p gets a fixed vector
    task.attach(type("Enc", (), {"encode_pair": None, "training": False, "eval": lambda s: s,
                                 "train": lambda s, m=True: s,
                                 "encode_texts": lambda s, texts: torch.randn(len(texts), 16,
                                                                              generator=torch.Generator().manual_seed(2))})())
    batch["label"] = torch.tensor([0, 1, 2, 0])
    task.reset_metrics("val")
    task.update_metrics("val", torch.stack([image, text]), batch)
    metrics = task.compute_metrics("val", lambda t: t)
    same = (ids[:, None] == ids[None]).all(-1)
    for m in SIZES:
        sim = F.normalize(image[:, :m], dim=-1) @ F.normalize(text[:, :m], dim=-1).T
        i2t = sum(bool(same[i, sim[i].argmax()]) for i in range(4)) / 4
        assert metrics[f"i2t_r1@{m}"] == pytest.approx(100 * i2t)
        assert f"zero_shot_top1@{m}" in metrics
    assert task.default_monitor == "val/zero_shot_top1@16" and metrics["num_samples"] == 4


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"temperature": 2.0}, "model.temperature"), ({"temperature": 0.001}, "model.temperature"),
    ({"max_logit_scale": 0.5}, "model.max_logit_scale"), ({"head": "mrle"}, "model.head"),
    ({"class_names": ["a", "b", "c"], "zero_shot_classes": ["a", "b"]}, "model.zero_shot_classes"),
    ({"class_names": ["a", "b"], "zero_shot_classes": ["b", "a"]}, "model.zero_shot_classes"),
    ({"monitor": "zero_shot"}, "model.monitor"), ({"templates": ["a photo"]}, "model.templates")])
def test_bad_task_settings_are_one_line_errors(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: ") as err:
        _task(**kwargs)
    assert "\n" not in str(err.value)


def test_tower_projection_widths_that_disagree():
    from mrl.encoders import create_encoder

    with pytest.raises(ConfigError, match=r"^model.backbone.image.projection_dim: is 64 but the text tower projects "
                                          r"to 32"):
        create_encoder("dual", dim=32, image={"name": "convnet", "projection_dim": 64},
                       text={"name": "hf/minilm", "projection_dim": 32})


def test_config_errors_before_training(make_cfg, tmp_path):
    from mrl.app.train import train

    base = ["+experiment=cifar10_align_minilm", "data.root=/nonexistent.tar.gz"]
    for extra, field in ((["model.nesting_dims=[8,256]"], "model.nesting_dims: size 256 is wider than the shared "
                                                          "embedding width model.backbone.dim=128"),
                         (["model.temperature=5"], "model.temperature: is 5"),
                         (["model.max_logit_scale=5000"], "model.max_logit_scale: is 5000")):
        with pytest.raises(ConfigError, match=f"^{field}"):
            train(make_cfg(*base, *extra, out="bad"))
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def _caption_file(tmp_path, rows):
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=3, splits=("x",), size=8)
    path = tmp_path / "train.tsv"
    path.write_text("path\tcaption\n" + "\n".join(rows) + "\n")
    return path


def test_caption_files_with_missing_images_or_empty_captions(tmp_path):
    path = _caption_file(tmp_path, ["imgs/x/a/0.png\ta red thing", "imgs/x/a/1.png\t ", "imgs/x/a/9.png\tgone",
                                    "imgs/x/a/2.png\tthe last"])
    with pytest.warns(UserWarning, match=r"skipping 2 of 4 pairs in .*: 1 missing or unreadable image\(s\) and 1 "
                                         r"empty caption\(s\)"):
        paths, captions = read_caption_file(path, "tsv")
    assert captions == ["a red thing", "the last"] and paths[0] == str(tmp_path / "imgs/x/a/0.png")
    with pytest.raises(ConfigError, match=r"^data.bad_pairs: is error and .* has 1 missing or unreadable image\(s\) "
                                          r"and 1 empty caption\(s\) \(line 4: missing or unreadable image"):
        read_caption_file(path, "tsv", bad_pairs="error")


def test_caption_data_module_holds_out_whole_images_and_batches_pairs(tmp_path):
    path = _caption_file(tmp_path, [f"imgs/x/a/{i % 3}.png\tcaption {i}" for i in range(9)])
    dm = ImageTextDataModule(format="tsv", train=str(path), test=str(path), tokenizer="hf/minilm", max_length=16,
                             image_size=8, batch_size=4, val_fraction=0.34, seed=1)
    dm.setup("fit")
    train_images = {dm.train_set.dataset.paths[i] for i in dm.train_set.indices}
    val_images = {p for p in (dm.val_set.dataset.dataset.paths[i] for i in dm.val_set.dataset.indices)}
    assert train_images and val_images and not train_images & val_images
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[1:] == (3, 8, 8) and batch["input_ids"].shape[0] == batch["image"].shape[0]
    assert "label" not in batch and not dm.labelled
    relations, _ = dm.split_relations("test")
    assert relations["image_ids"].tolist() == [0, 1, 2] * 3 and relations["caption_ids"].tolist() == list(range(9))


def test_class_templates_are_drawn_per_sample_and_seeded(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("sea_lion", "cat"), per_class=6, splits=("train", "test"),
                              size=8)
    dm = ImageTextDataModule(format="imagefolder", root=str(root), tokenizer="hf/minilm", max_length=16,
                             image_size=8, batch_size=4, val_fraction=0.25, seed=3, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    test = dm.test_set
    assert [test.caption(i) for i in range(12)] == [test.caption(i) for i in range(12)]   # fixed for evaluation
    from mrl.data.sampling import seeded

    base = dm.train_set.dataset
    sea_lion = base.labels.index(dm.class_names.index("sea_lion"))

    def drawn(seed):
        with seeded(seed):
            return [base.caption(sea_lion) for _ in range(8)]
    assert drawn(1) == drawn(1) and len(set(drawn(1) + drawn(2))) > 1
    assert all("sea lion" in c for c in drawn(1))


# ------------------------------------------------------------------------------------------------ end to end


def test_tiny_end_to_end_run_through_train_embed_eval(tmp_path):
    root = write_image_folder(tmp_path / "folder", classes=("cat", "dog", "emu"), per_class=8,
                              splits=("train", "test"), size=16)
    common = ["data.root=" + str(root), "data.image_size=16", "data.num_workers=0", f"paths.cache_dir={tmp_path}/c",
              "data.val_fraction=0.25", "data.max_per_class=null", "data.max_test_per_class=null"]
    run = tmp_path / "run"
    run_script("train.py", "+experiment=cifar10_align_minilm", *common, "data.batch_size=6", "trainer.max_epochs=1",
               "model.backbone.image.channels=[8,16]", "model.nesting_dims=[4,8,16]", "model.backbone.dim=16",
               "logger=csv", f"hydra.run.dir={run}")
    metrics = json.loads((run / "metrics_by_dim.json").read_text())
    assert "test" in json.dumps(metrics) and (run / "checkpoints").is_dir()
    ckpt = sorted((run / "checkpoints").glob("best-*.ckpt"))[0]
    run_script("embed.py", f"ckpt_path={ckpt}", "data=image_text", *common, "splits=[test]", "dtype=float32",
               f"output_dir={tmp_path}/emb", f"hydra.run.dir={tmp_path}/embrun")
    split = tmp_path / "emb" / "test"
    assert np.load(split / "text_embeddings.npy").shape == (24, 16)
    assert np.load(split / "class_prompt_embeddings.npy").shape == (5, 3, 16)
    run_script("eval.py", f"embeddings_dir={tmp_path}/emb", "evaluators=[zero_shot,cross_modal_retrieval]",
               "zero_shot.ks=[1,3]", "cross_modal_retrieval.ks=[1,5]", "cross_modal_retrieval.shortlist_ks=[5,10]",
               f"output_dir={tmp_path}/eval", f"hydra.run.dir={tmp_path}/evalrun")
    zs = json.loads((tmp_path / "eval" / "zero_shot.json").read_text())["rows"]
    assert [r["dim"] for r in zs] == [4, 8, 16] and {"kept", "size_fraction"} <= set(zs[0])
    # train.py's test zero-shot top-1 at the full size equals the evaluator's on the same test split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test_metrics = json.loads((run / "metrics_by_dim.json").read_text())
    rows = {r["dim"]: r for r in test_metrics["test"]["rows"]} if "rows" in test_metrics.get("test", {}) else None
    if rows:
        assert rows[16]["zero_shot_top1"] == pytest.approx(zs[-1]["top1"], abs=1e-6)
    xm = json.loads((tmp_path / "eval" / "cross_modal_retrieval.json").read_text())["rows"]
    assert {"i2t_r@1", "t2i_r@5", "rsum", "kept"} <= set(xm[0])
    assert (tmp_path / "eval" / "cross_modal_retrieval_adaptive.md").is_file()


# ------------------------------------------------------------------------------------------------ shards


def _shard_pairs_slowly(split_dir) -> dict[int, tuple[bytes, str | None, int | None]]:
    """Every sample of a split's tar files read with tarfile: key -> (image bytes, caption, class)."""
    import tarfile

    samples: dict[int, dict] = {}
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(int(key), {})[ext] = tar.extractfile(member).read()
    return {k: (next(v for e, v in s.items() if e.startswith("img.")), s["txt"].decode() if "txt" in s else None,
                int(s["cls"]) if "cls" in s else None) for k, s in samples.items()}


def test_caption_files_to_shards_stream_pairs_with_their_ids(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=5, splits=("x",), size=8)
    rows = [f"imgs/x/a/{i % 5}.png\tcaption {i % 7}" for i in range(12)]  # images and captions repeat
    (tmp_path / "train.tsv").write_text("path\tcaption\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.tsv").write_text("\n".join(rows[:8]) + "\n")
    out = tmp_path / "shards"
    proc = run_script("make_shards.py", "--src", str(tmp_path), "--out", str(out), "--captions", "tsv",
                      "--samples-per-shard", "3", "--holdout-fraction", "0.2", "--seed", "1")
    assert "captioned pairs" in proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["captions"] and meta["classes"] == [] and meta["splits"]["test"]["num_samples"] == 8
    assert sum(meta["splits"][s]["num_samples"] for s in ("train", "holdout")) == 12
    dm = ImageTextDataModule(format="webdataset", root=str(out), tokenizer="hf/minilm", max_length=16, image_size=8,
                             batch_size=2, num_workers=0, seed=0)
    dm.setup("fit")
    assert not dm.labelled and dm.templates is None
    # no held-out image is trained on
    train, held = _shard_pairs_slowly(out / "train"), _shard_pairs_slowly(out / "holdout")
    assert held and not {v[0] for v in train.values()} & {v[0] for v in held.values()}
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["input_ids"].shape[0] == 2 and "label" not in batch
    # ids by sample index equal those of a slow read of the tar files: same image bytes / same caption text
    relations, extra = dm.split_relations("test")
    test = _shard_pairs_slowly(out / "test")
    images = [test[k][0] for k in sorted(test)]
    captions = [test[k][1] for k in sorted(test)]
    assert sorted(captions) == sorted(r.split("\t")[1] for r in rows[:8])
    assert relations["image_ids"].tolist() == [len(set(images[:images.index(b)])) for b in images]
    assert relations["caption_ids"].tolist() == [len(set(captions[:captions.index(c)])) for c in captions]
    assert extra == {"captions": "caption file"}
    streamed = list(dm.split_dataset("test"))
    assert sorted(item["index"] for item in streamed) == list(range(8))
    assert all(item["text"] == test[item["index"]][1] for item in streamed)


def test_image_folder_shards_get_template_captions_fixed_for_evaluation(tmp_path):
    from mrl.data.shards import convert_image_folder

    src = write_image_folder(tmp_path / "f", classes=("sea_lion", "cat"), per_class=4, splits=("train", "test"),
                             size=8)
    convert_image_folder(src, tmp_path / "shards", samples_per_shard=3, holdout_fraction=0.25, seed=2)
    dm = ImageTextDataModule(format="webdataset", root=str(tmp_path / "shards"), tokenizer="hf/minilm",
                             max_length=16, image_size=8, batch_size=2, num_workers=0, seed=5)
    dm.setup("fit")
    assert dm.labelled and dm.class_names == ["cat", "sea_lion"]
    first, again = list(dm.split_dataset("test")), list(dm.split_dataset("test"))
    assert [i["text"] for i in first] == [i["text"] for i in again]
    slow = _shard_pairs_slowly(tmp_path / "shards" / "test")
    for item in first:
        assert item["label"] == slow[item["index"]][2]
        assert dm.class_names[item["label"]].replace("_", " ") in item["text"]
    relations, extra = dm.split_relations("test")
    by_index = {item["index"]: item["text"] for item in first}
    texts = [by_index[i] for i in range(len(first))]
    assert relations["caption_ids"].tolist() == [len(set(texts[:texts.index(t)])) for t in texts]
    assert extra == {"captions": "class templates"}
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch["label"].shape == (2,) and train_batch["image"].shape == (2, 3, 8, 8)


def test_shard_folders_without_pairs_or_splits_are_one_line_errors(tmp_path):
    from mrl.data.shards import convert_image_folder

    src = write_image_folder(tmp_path / "f", classes=("a", "b"), per_class=3, splits=("train", "test"), size=8)
    convert_image_folder(src, tmp_path / "shards", samples_per_shard=3)
    dm = ImageTextDataModule(format="webdataset", root=str(tmp_path / "shards"), tokenizer="hf/minilm",
                             max_length=16, image_size=8, num_workers=0)
    with pytest.raises(ConfigError, match=r"^data.root: .* has no holdout split .*--holdout-fraction"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"^data.max_per_class: subsets are not drawn from streamed shards"):
        ImageTextDataModule(format="webdataset", root=str(tmp_path / "shards"), max_per_class=3)
    with pytest.raises(ConfigError, match=r"^data.root: is not set; give a shard folder"):
        ImageTextDataModule(format="webdataset")


@pytest.mark.slow  # ~45 s; in CI: the tiny end-to-end run on image folders and the shard streams' own tests
def test_dual_encoder_on_shards_trains_embeds_and_evaluates_as_the_image_folder_does(tmp_path):
    """Train on shards of a tiny ImageFolder, embed and evaluate its test split from the shards: the rows equal the
    checkpoint's embeddings of the folder's test images computed here directly (in another row order), and the
    zero-shot table equals zero-shot top-1 recomputed from those."""
    from mrl import load_model
    from mrl.data.datamodules import TRANSFORMS
    from mrl.data.image_folder import load_rgb

    root = write_image_folder(tmp_path / "folder", classes=("cat", "dog", "emu"), per_class=6,
                              splits=("train", "test"), size=16)
    shards = tmp_path / "shards"
    run_script("make_shards.py", "--src", str(root), "--out", str(shards), "--samples-per-shard", "4",
               "--holdout-fraction", "0.25")
    common = ["data.format=webdataset", f"data.root={shards}", "data.shuffle_buffer=8", "data.image_size=16",
              "data.num_workers=0", "data.max_per_class=null", "data.max_test_per_class=null"]
    run = tmp_path / "run"
    run_script("train.py", "+experiment=cifar10_align_minilm", *common, "data.batch_size=4", "trainer.max_epochs=1",
               "model.backbone.image.channels=[8,16]", "model.nesting_dims=[4,8,16]", "model.backbone.dim=16",
               "logger=csv", f"hydra.run.dir={run}")
    ckpt = run / "checkpoints" / "last.ckpt"
    run_script("embed.py", f"ckpt_path={ckpt}", "data=image_text", *common, "splits=[test]", "dtype=float32",
               f"output_dir={tmp_path}/emb", f"hydra.run.dir={tmp_path}/embrun")
    run_script("eval.py", f"embeddings_dir={tmp_path}/emb", "evaluators=[zero_shot,cross_modal_retrieval]",
               "zero_shot.ks=[1,3]", "cross_modal_retrieval.ks=[1,5]", "cross_modal_retrieval.shortlist_ks=[5,10]",
               f"output_dir={tmp_path}/eval", f"hydra.run.dir={tmp_path}/evalrun")
    split = tmp_path / "emb" / "test"
    emb, labels = np.load(split / "embeddings.npy"), np.load(split / "labels.npy")
    assert emb.shape == (18, 16) and np.load(split / "text_embeddings.npy").shape == (18, 16)

    module, _ = load_model(ckpt)
    module.eval()
    transform = TRANSFORMS["cifar"](16)[1]
    paths = sorted((root / "test").glob("*/*.png"))
    with torch.no_grad():
        direct = module.embed({"image": torch.stack([transform(load_rgb(p)) for p in paths])}).numpy()
    direct_labels = np.array([module.class_names.index(p.parent.name) for p in paths])

    def sorted_rows(x, y):
        order = np.lexsort(x.T[::-1])
        return x[order], y[order]

    (a, la), (b, lb) = sorted_rows(emb, labels), sorted_rows(direct, direct_labels)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(la, lb)
    prompts = np.load(split / "class_prompt_embeddings.npy")
    zs = json.loads((tmp_path / "eval" / "zero_shot.json").read_text())["rows"]
    for row in zs:
        classes = class_embeddings(prompts, row["dim"])
        z = direct[:, :row["dim"]] / np.linalg.norm(direct[:, :row["dim"]], axis=1, keepdims=True)
        assert row["top1"] == pytest.approx(100.0 * np.mean((z @ classes.T).argmax(1) == direct_labels), abs=1e-9)
    assert (tmp_path / "eval" / "cross_modal_retrieval.md").is_file()
