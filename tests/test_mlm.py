"""Masked language modelling with Matryoshka sizes (issue 10, part 5): the MRL-E loss against a hand computation on a
tiny vocabulary, BERT's masking (counts, 80/10/10, determinism, fixed held-out masks), exact accuracy counting, the
bad inputs (one line each, before training, nothing written) and the offline preset end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, SHARED_DATA, compose, run_script

from mrl.app.config_checks import check_train_config
from mrl.data.mlm import (
    IGNORE_INDEX,
    MaskedTexts,
    MLMCollate,
    MLMTextDataModule,
    Picked,
    Texts,
    Without,
    _pack,
    choose_masks,
    read_texts,
)
from mrl.errors import ConfigError
from mrl.tasks import create_task
from mrl.tasks.mlm import MaskedLMTask, TiedMLMHead, TokenStates, checkpoint_mlm_head

V, W = 11, 8  # the tiny vocabulary and width of the hand computations
TEXT = SHARED_DATA / "text"
HAS_TEXT = all((TEXT / name).is_dir() for name in ("sst2", "ag_news", "snli"))


def tiny_task(dims=(2, 4, 8), weights=(1.0, 0.5, 2.0), head="mrle") -> MaskedLMTask:
    torch.manual_seed(0)
    task = MaskedLMTask(list(dims), list(weights), W, head=head)
    task.head = TiedMLMHead(W, V)
    with torch.no_grad():
        for p in task.head.parameters():
            p.copy_(torch.randn_like(p))
    return task.double()


def tiny_batch() -> tuple[TokenStates, dict]:
    torch.manual_seed(1)
    hidden = torch.randn(2, 5, W, dtype=torch.float64, requires_grad=True)
    decoder = torch.randn(V, W, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[0, 3], labels[1, 0], labels[1, 4] = 7, 2, 10, 0
    return TokenStates(hidden, hidden.mean(1), decoder), {"input_ids": torch.zeros(2, 5, dtype=torch.long),
                                                          "mlm_labels": labels}


def hand_loss(task: MaskedLMTask, z: TokenStates, labels: torch.Tensor) -> list[float]:
    """Each size's mean cross-entropy over the masked tokens, with Python floats and explicit loops."""
    head = task.head
    dense, dense_b = head.dense.weight.tolist(), head.dense.bias.tolist()
    gamma, beta, out_b = head.norm.weight.tolist(), head.norm.bias.tolist(), head.bias.tolist()
    emb, hidden = z.decoder.tolist(), z.hidden.tolist()
    losses = []
    for m in task.nesting_dims:
        total, count = 0.0, 0
        for b in range(labels.shape[0]):
            for t in range(labels.shape[1]):
                target = int(labels[b, t])
                if target == IGNORE_INDEX:
                    continue
                h = hidden[b][t][:m]  # the first m coordinates only
                x = [sum(dense[i][j] * h[j] for j in range(m)) + dense_b[i] for i in range(m)]
                x = [0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x]  # BERT's gelu
                mean = sum(x) / m
                var = sum((v - mean) ** 2 for v in x) / m
                u = [(x[i] - mean) / math.sqrt(var + 1e-12) * gamma[i] + beta[i] for i in range(m)]
                logits = [sum(emb[v][i] * u[i] for i in range(m)) + out_b[v] for v in range(V)]
                top = max(logits)
                total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[target]
                count += 1
        losses.append(total / count)
    return losses


# --------------------------------------------------------------------------------------------- the loss


def test_mlm_mrl_loss_matches_a_hand_computation():
    task = tiny_task()
    z, batch = tiny_batch()
    outputs = task(z, batch)
    assert [tuple(o.shape) for o in outputs] == [(4, V)] * 3  # only the 4 masked tokens are scored
    per_size = task.loss(outputs, batch)
    expected = hand_loss(task, z, batch["mlm_labels"])
    assert per_size.tolist() == pytest.approx(expected, rel=1e-10)
    # the weighted sum the module trains on
    total = (per_size * torch.tensor(task.loss_weights, dtype=torch.float64)).sum()
    assert float(total.detach()) == pytest.approx(sum(w * v for w, v in zip(task.loss_weights, expected)), rel=1e-10)


def test_full_size_head_is_berts_tied_head():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLMPredictionHead

    task = tiny_task()
    z, _ = tiny_batch()
    bert = BertLMPredictionHead(BertConfig(hidden_size=W, vocab_size=V, hidden_act="gelu", layer_norm_eps=1e-12))
    bert = bert.double()
    with torch.no_grad():
        bert.transform.dense.load_state_dict(task.head.dense.state_dict())
        bert.transform.LayerNorm.load_state_dict(task.head.norm.state_dict())
        bert.decoder.weight.copy_(z.decoder)
        bert.decoder.bias.copy_(task.head.bias)
        h = z.hidden.reshape(-1, W)
        assert torch.allclose(task.head(h, z.decoder, W), bert(h), atol=1e-12)


def test_ff_head_trains_only_its_prefix():
    task = tiny_task(dims=(4,), weights=(1.0,), head="ff")
    z, batch = tiny_batch()
    task.loss(task(z, batch), batch).sum().backward()
    assert z.decoder.grad[:, 4:].abs().max() == 0 and z.decoder.grad[:, :4].abs().max() > 0
    assert z.hidden.grad[..., 4:].abs().max() == 0
    dense = task.head.dense.weight.grad
    assert dense[4:].abs().max() == 0 and dense[:, 4:].abs().max() == 0 and dense[:4, :4].abs().max() > 0
    assert task.head.norm.weight.grad[4:].abs().max() == 0


def test_a_batch_with_nothing_masked_has_zero_loss_with_a_gradient():
    task = tiny_task()
    z, batch = tiny_batch()
    batch["mlm_labels"][:] = IGNORE_INDEX
    per_size = task.loss(task(z, batch), batch)
    assert per_size.tolist() == [0.0, 0.0, 0.0] and per_size.requires_grad


def test_accuracy_counts_every_masked_token_once_over_batches_and_ranks():
    task = tiny_task(dims=(2, 8), weights=(1.0, 1.0))
    task.reset_metrics("test")
    labels_a = torch.full((1, 3), IGNORE_INDEX)
    labels_a[0, 1] = 3                                   # one masked token
    labels_b = torch.full((2, 3), IGNORE_INDEX)
    labels_b[0, 0], labels_b[1, 1], labels_b[1, 2] = 1, 2, 5  # three masked tokens
    def right(targets):
        return torch.nn.functional.one_hot(targets, V).double() * 5

    def wrong(targets):
        return torch.nn.functional.one_hot((targets + 1) % V, V).double() * 5

    # size 2: right on the first batch only (1 of 4); size 8: right everywhere but one token of batch b (3 of 4)
    targets_b = torch.tensor([1, 2, 5])
    out_b8 = right(targets_b)
    out_b8[2] = wrong(targets_b)[2]
    task.update_metrics("test", [right(torch.tensor([3])), right(torch.tensor([3]))],
                        {"input_ids": torch.zeros(1, 3), "mlm_labels": labels_a})
    task.update_metrics("test", [wrong(targets_b), out_b8], {"input_ids": torch.zeros(2, 3), "mlm_labels": labels_b})
    one = task.compute_metrics("test", lambda t: t)
    assert one["mlm_accuracy@2"] == pytest.approx(25.0)  # not the mean of the batches' 100% and 0%
    assert one["mlm_accuracy@8"] == pytest.approx(75.0)
    assert one["num_samples"] == 4 and one["num_texts"] == 3
    ce = torch.nn.functional.cross_entropy
    loss8 = (ce(right(torch.tensor([3])), torch.tensor([3]), reduction="sum") + ce(out_b8, targets_b, reduction="sum"))
    assert one["loss@8"] == pytest.approx(float(loss8) / 4)
    assert one["loss"] == pytest.approx(one["loss@2"] + one["loss@8"])
    two = task.compute_metrics("test", lambda t: t * 2)  # two ranks with the same counts: the same figures
    assert {k: v for k, v in two.items() if k not in ("num_samples", "num_texts")} == pytest.approx(
        {k: v for k, v in one.items() if k not in ("num_samples", "num_texts")})
    assert two["num_samples"] == 8


# --------------------------------------------------------------------------------------------- masking


@pytest.fixture(scope="module")
def tokenizer():
    from mrl.encoders.text import load_tokenizer

    return load_tokenizer("minilm")


def test_masking_counts_positions_and_replacements(tokenizer):
    collate = MLMCollate(tokenizer, 64, 0.15)
    special = set(tokenizer.all_special_ids)
    texts = ["the quick brown fox jumps over the lazy dog near the river bank today",
             "a short one", "matryoshka representations nest coarse to fine information in one vector"]
    kinds = {"mask": 0, "random": 0, "same": 0}
    for seed in range(300):
        batch = collate([{"text": t, "mask_seed": seed * 3 + i} for i, t in enumerate(texts)])
        plain = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        labels = batch["mlm_labels"]
        for row in range(len(texts)):
            pairs = zip(plain["input_ids"][row].tolist(), plain["attention_mask"][row].tolist())
            real = [i for i, (tok, a) in enumerate(pairs) if a and tok not in special]
            chosen = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
            assert len(chosen) == max(1, round(0.15 * len(real)))  # BERT's count per text
            assert set(chosen) <= set(real)                           # never a special or padding token
            assert labels[row, chosen].tolist() == plain["input_ids"][row, chosen].tolist()
            unchosen = [i for i in range(labels.shape[1]) if i not in chosen]
            assert torch.equal(batch["input_ids"][row, unchosen], plain["input_ids"][row, unchosen])
            for i in chosen:
                token = int(batch["input_ids"][row, i])
                kind = ("mask" if token == tokenizer.mask_token_id else
                        "same" if token == int(plain["input_ids"][row, i]) else "random")
                assert token not in special or token == tokenizer.mask_token_id
                kinds[kind] += 1
    total = sum(kinds.values())
    # 80 / 10 / 10 (a random draw can hit the original token: a hair above 10% unchanged)
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.02)
    assert kinds["same"] / total == pytest.approx(0.1, abs=0.02)


def test_a_texts_masks_depend_on_its_seed_alone(tokenizer):
    collate = MLMCollate(tokenizer, 64, 0.3)
    text = "masks must not depend on the batch a text lands in or on its padding"
    alone = collate([{"text": text, "mask_seed": 7}])
    padded = collate([{"text": "short", "mask_seed": 1}, {"text": text + " and a longer neighbour", "mask_seed": 2},
                      {"text": text, "mask_seed": 7}])
    n = alone["input_ids"].shape[1]
    assert torch.equal(padded["input_ids"][2, :n], alone["input_ids"][0])
    assert torch.equal(padded["mlm_labels"][2, :n], alone["mlm_labels"][0])
    assert (padded["mlm_labels"][2, n:] == IGNORE_INDEX).all()
    other = collate([{"text": text, "mask_seed": 8}])
    assert not torch.equal(other["mlm_labels"], alone["mlm_labels"])


def test_choose_masks_rounds_and_keeps_one():
    generator = torch.Generator().manual_seed(0)
    assert len(choose_masks(torch.arange(3), 0.15, generator)[0]) == 1  # max(1, round(0.45))
    assert len(choose_masks(torch.arange(20), 0.15, generator)[0]) == 3
    assert len(choose_masks(torch.arange(0), 0.15, generator)[0]) == 0


def test_training_seeds_follow_the_sample_seed_and_eval_seeds_are_fixed():
    from mrl.data.sampling import SeededAugmentation

    train = SeededAugmentation(MaskedTexts(["a", "b"]))
    assert train[(0, 123)] == train[(0, 123)] and train[(0, 123)] != train[(0, 124)]
    test = MaskedTexts(["a", "b"], eval_seed=5)
    torch.manual_seed(1)
    first = [test[i]["mask_seed"] for i in range(2)]
    torch.manual_seed(2)
    assert [test[i]["mask_seed"] for i in range(2)] == first and first[0] != first[1]


def test_index_views():
    base = list("abcdefgh")
    rest = Without(base, [5, 2])
    assert list(rest) == list("abdegh") and len(rest) == 6
    assert list(Picked(base, [6, 1])) == ["g", "b"]
    joined = Texts([["x", "y"], [], ["z"]])
    assert list(joined) == ["x", "y", "z"] and len(joined) == 3


def test_hf_source_packs_words(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from mrl.data import mlm

    rows = {"text": ["one two three four five", "six\n\nseven", "eight nine ten eleven"], "id": [1, 2, 3]}
    monkeypatch.setattr(mlm, "_load_hf", lambda name, split, config, cache_dir: (datasets.Dataset.from_dict(rows),
                                                                                name))
    packed = read_texts("hf", "fake/corpus", ["train"], text_column="text", pack_words=4)
    assert list(packed) == ["one two three four", "five six seven eight", "nine ten eleven"]
    assert list(read_texts("hf", "fake/corpus", ["train"])) == rows["text"]
    assert _pack({"t": ["a b", "c"]}, "t", 2) == {"text": ["a b", "c"]}
    with pytest.raises(ConfigError, match=r"^data\.options\.text_column: column 'body' is not in"):
        read_texts("hf", "fake/corpus", ["train"], text_column="body")


def write_lines(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts) + "\n")
    return path


def test_held_out_texts_and_masks_do_not_depend_on_the_run_seed(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", [f"sentence number {i} about topic {i % 7}" for i in range(120)]
                         + ["sentence number 3 about topic 3"])  # a repeat, read once
    extra = write_lines(tmp_path / "extra.txt", ["sentence number 5 about topic 5", "a text only in test"])
    batches = []
    for seed in (1, 2):
        dm = MLMTextDataModule(train=[{"format": "lines", "root": str(corpus)}],
                               test=[{"format": "lines", "root": str(extra)}], tokenizer="hf/minilm", max_length=16,
                               val_size=10, batch_size=4, seed=seed)
        dm.setup("fit")
        assert len(dm.test_set) == 2 and len(dm.val_set) == 10
        assert len(dm.train_set) == 120 - 1 - 10  # the test text is not trained on
        train_texts = set(dm.train_set.texts)
        assert "sentence number 5 about topic 5" not in train_texts
        assert not train_texts & {dm.val_set[i]["text"] for i in range(10)}
        batches.append((next(iter(dm.test_dataloader())), sorted(dm.val_set[i]["text"] for i in range(10)),
                        next(iter(dm.train_dataloader()))))
    (test1, val1, train1), (test2, val2, train2) = batches
    assert torch.equal(test1["input_ids"], test2["input_ids"]) and torch.equal(test1["mlm_labels"], test2["mlm_labels"])
    assert val1 == val2
    assert not torch.equal(train1["input_ids"], train2["input_ids"])  # training order and masks follow the seed


# --------------------------------------------------------------------------------------------- bad input


def preset(*overrides: str, out: Path):
    return compose(["+experiment=minilm_mlm_mrl", f"paths.data_dir={SHARED_DATA}", *overrides], out)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "true", "abc"])
def test_mask_probability_outside_the_open_unit_interval_is_refused(tmp_path, value):
    with pytest.raises(ConfigError) as err:
        check_train_config(preset(f"model.mask_probability={value}", out=tmp_path / "run"))
    message = str(err.value)
    assert message.startswith("model.mask_probability: must be ") and "\n" not in message
    assert message.endswith("set it to the share of tokens to mask, e.g. 0.15 (BERT's)")


def test_other_bad_settings_are_refused_before_any_data(tmp_path):
    cases = {("data.mask_probability=0.3",): r"^data\.mask_probability: is 0\.3 but model\.mask_probability is 0\.15",
             ("data=sst2",): r"^data\.name: is 'text', but the mlm task trains on masked plain text"}
    for overrides, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            check_train_config(preset(*overrides, out=tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^model\.head: is 'mrl', but a masked LM's output layer is the input "):
        create_task("mlm", [8], [1.0], 8, head="mrl")
    with pytest.raises(ConfigError, match=r"^model\.nesting_dims: has 2 sizes for head=ff"):
        create_task("mlm", [4, 8], [1.0, 1.0], 8, head="ff")
    with pytest.raises(ConfigError, match=r"^data\.mask_probability: must be in \(0, 1\), got 1\.0"):
        MLMTextDataModule(train={"format": "lines", "root": "x"}, mask_probability=1.0)


def maskless_minilm(root: Path) -> Path:
    """A copy of the packaged MiniLM whose tokenizer declares no mask token."""
    from mrl.encoders.text import resolve_text_model

    shutil.copytree(resolve_text_model("minilm"), root)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((root / name).read_text())
        config["mask_token"] = None
        (root / name).write_text(json.dumps(config))
    return root


def test_tokenizer_without_a_mask_token_is_refused(tmp_path):
    from mrl.encoders.text import load_tokenizer

    model = maskless_minilm(tmp_path / "nomask")
    with pytest.raises(ConfigError, match=r"^model\.backbone\.name: the tokenizer of '.*nomask' has no mask token"):
        MLMCollate(load_tokenizer(str(model)), 32)


def train_refused(run: Path, *overrides: str) -> str:
    proc = subprocess.run([sys.executable, "scripts/train.py", "+experiment=minilm_mlm_mrl",
                           f"paths.data_dir={SHARED_DATA}", "logger=csv", f"hydra.run.dir={run}", *overrides],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    # nothing half-written: no checkpoint, no table
    assert not (run / "checkpoints").exists() and not list(run.rglob("metrics_by_dim*"))
    return errors[0]


@pytest.mark.skipif(not HAS_TEXT, reason="the shared text data is not here")
def test_train_script_refuses_bad_mlm_input_in_one_line(tmp_path):
    line = train_refused(tmp_path / "p", "model.mask_probability=1.5")
    assert line == ("error: model.mask_probability: must be in (0, 1), got 1.5; set it to the share of tokens to "
                    "mask, e.g. 0.15 (BERT's)")
    assert [p.name for p in (tmp_path / "p").iterdir()] == [".hydra"]  # refused before anything but Hydra's record
    model = maskless_minilm(tmp_path / "nomask")
    line = train_refused(tmp_path / "t", f"model.backbone.name=hf/{model}")
    assert line.startswith(f"error: model.backbone.name: the tokenizer of '{model}' has no mask token")


# --------------------------------------------------------------------------------------------- head init


def test_head_starts_from_a_checkpoints_mlm_head(tmp_path):
    from safetensors.torch import save_file

    tensors = {"cls.predictions.transform.dense.weight": torch.randn(W, W),
               "cls.predictions.transform.dense.bias": torch.randn(W),
               "cls.predictions.transform.LayerNorm.gamma": torch.randn(W),   # the old names of some checkpoints
               "cls.predictions.transform.LayerNorm.beta": torch.randn(W),
               "cls.predictions.bias": torch.randn(V), "bert.embeddings.word_embeddings.weight": torch.randn(V, W)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    head = checkpoint_mlm_head(str(tmp_path))
    assert torch.equal(head["norm.weight"], tensors["cls.predictions.transform.LayerNorm.gamma"])
    assert torch.equal(head["bias"], tensors["cls.predictions.bias"])
    assert set(head) == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    from mrl.encoders.text import resolve_text_model

    assert checkpoint_mlm_head(resolve_text_model("minilm")) is None  # a plain BertModel: BERT's init


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.skipif(not HAS_TEXT, reason="the shared text data is not here")
def test_offline_preset_trains_mrle_and_ff_and_scores_the_same_masked_tokens(tmp_path):
    small = ["data.val_size=16", "data.test_size=48", "data.batch_size=8", "data.num_workers=0",
             "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "logger=csv",
             "callbacks.progress_bar=none"]
    results = {}
    for name, overrides in (("mrle", []), ("ff48", ["model.head=ff", "model.nesting_dims=[48]"])):
        run = tmp_path / name
        run_script("train.py", "+experiment=minilm_mlm_mrl", f"paths.data_dir={SHARED_DATA}", *small, *overrides,
                   f"hydra.run.dir={run}")
        results[name] = json.loads((run / "metrics_by_dim.json").read_text())
    mrle, ff = results["mrle"], results["ff48"]
    assert mrle["head"] == "mrle" and [r["dim"] for r in mrle["rows"]] == [12, 24, 48, 96, 192, 384]
    assert ff["head"] == "ff" and [r["dim"] for r in ff["rows"]] == [48]
    for result in (mrle, ff):
        for row in result["rows"]:
            assert 0.0 <= row["mlm_accuracy"] <= 100.0 and row["loss"] > 0
    # the same held-out texts, masked the same way, for both models
    assert mrle["num_samples"] == ff["num_samples"] > 48


def test_text_encoder_gives_token_states_and_its_tied_embeddings():
    from mrl.encoders.text import TextEncoder

    encoder = TextEncoder("minilm", max_length=16).eval()
    batch = encoder.tokenize(["a sentence", "and a longer second sentence"])
    with torch.no_grad():
        hidden, mask = encoder.token_states(batch)
        assert hidden.shape == (2, batch["input_ids"].shape[1], 384) and torch.equal(mask, batch["attention_mask"])
        assert torch.allclose(encoder.pool(hidden, mask), encoder(batch), atol=1e-6)
    assert encoder.input_embeddings is encoder.model.get_input_embeddings().weight
    assert tuple(encoder.input_embeddings.shape) == (30522, 384)


def fake_run(runs: Path, name: str, accuracy: dict[int, float], tokens: int = 400, test_size: int = 100) -> None:
    folder = runs / name
    (folder / ".hydra").mkdir(parents=True)
    head = "mrle" if name == "mrle" else "ff"
    rows = [{"dim": m, "mlm_accuracy": a, "loss": 5.0 - a / 50} for m, a in accuracy.items()]
    (folder / "metrics_by_dim.json").write_text(json.dumps({"head": head, "rows": rows, "num_samples": tokens,
                                                            "num_texts": test_size}))
    (folder / ".hydra" / "config.yaml").write_text(
        f"seed: 42\ndata: {{test_size: {test_size}, split_seed: 0, eval_mask_seed: 0, mask_probability: 0.15, "
        "batch_size: 32}\nmodel: {backbone: {name: hf/minilm, max_length: 32}}\ntrainer: {limit_train_batches: 200}\n")
    (folder / "train.log").write_text("epoch 1/1  step 200  train/loss 3.2  123.0 s\n")
    (folder / "command.txt").write_text(f"python scripts/train.py +experiment=minilm_mlm_mrl ({name})\n")
    (folder / "DONE").write_text("done\n")


def test_report_tables_the_runs_beside_the_papers_numbers(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    fake_run(runs, "mrle", {12: 20.0, 24: 25.0, 48: 30.0, 96: 33.0, 192: 35.0, 384: 40.0})
    fake_run(runs, "ff12", {12: 22.5})
    fake_run(runs, "ff384", {384: 39.0})
    paper = tmp_path / "paper.csv"
    paper.write_text("Representation Size,BERT-FF,BERT-NRL\n12,0.60,0.59\n384,0.65,0.648\n768,0.655,0.65\n")
    proc = run_script("mlm_report.py", "--runs", str(runs), "--out", str(out), "--paper", str(paper))
    assert "3 model(s)" in proc.stdout
    rows = {r["dim"]: r for r in json.loads((out / "mlm_accuracy_by_size.json").read_text())["rows"]}
    assert sorted(rows) == [12, 24, 48, 96, 192, 384, 768]
    assert rows[12]["ours_mrle"] == 20.0 and rows[12]["ours_ff"] == 22.5 and rows[12]["ours_mrle_minus_ff"] == -2.5
    assert rows[24]["ours_ff"] is None and rows[24]["paper_mrl"] is None
    assert rows[768]["ours_mrle"] is None and rows[768]["paper_mrl"] == pytest.approx(65.0)
    assert rows[12]["paper_ff"] == pytest.approx(60.0) and rows[12]["ours_mrle_kept"] == pytest.approx(0.5)
    assert (out / "mlm_accuracy_by_size.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "paper BERT-Base MRL" in readme and "At 12 dims: MRL-E 20.00% vs FF-12 22.50%" in readme
    # runs scored on other tokens are refused, before anything is written
    fake_run(runs, "ff48", {48: 31.0}, tokens=401)
    proc = run_script("mlm_report.py", "--runs", str(runs), "--out", str(tmp_path / "out2"), "--paper", str(paper),
                      check=False)
    assert proc.returncode == 2 and "ff48 scored 401 masked tokens, mrle 400" in proc.stderr
    assert not (tmp_path / "out2").exists()
