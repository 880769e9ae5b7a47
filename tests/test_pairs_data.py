"""Contrastive pair data (mrl.data.pairs): the SNLI and STS-B readers on the real shared files, generic
tsv/csv/jsonl and Hugging Face sources, every bad input, PairCollate against tokenising each column alone, and the
pairs DataModule's loaders (seeded, resumable training order; scored validation and test batches).

Expected counts on the real files come from plain loops over the raw lines here, not from the reader under test.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SHARED_DATA, compose
from mrl.data import create_datamodule
from mrl.data.pairs import (PairCollate, PairsDataModule, TextPairsDataset, anchor_holdout, load_pairs,
                            read_hf_pairs, read_pair_file, read_snli, read_stsb_pairs)
from mrl.errors import ConfigError

SNLI = SHARED_DATA / "text" / "snli"
STSB = SHARED_DATA / "text" / "stsbenchmark"
needs_text_data = pytest.mark.skipif(not SNLI.is_dir() or not STSB.is_dir(),
                                     reason=f"shared SNLI / STS-B not found under {SHARED_DATA}")


def snli_groups(splits=("dev", "test")) -> dict[str, dict[str, list[str]]]:
    """premise -> label -> hypotheses, by a plain loop over the three line-aligned files."""
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for split in splits:
        with open(SNLI / f"s1.{split}") as s1, open(SNLI / f"s2.{split}") as s2, open(SNLI / f"labels.{split}") as lab:
            for premise, hypothesis, label in zip(s1, s2, lab):
                groups[premise.strip()][label.strip()].append(hypothesis.strip())
    return groups


# --------------------------------------------------------------------------------------------- real files


@needs_text_data
def test_snli_pairs_and_triplets_from_dev_and_test_match_a_plain_count():
    labels = [line.strip() for split in ("dev", "test") for line in open(SNLI / f"labels.{split}")]
    groups = snli_groups()
    with_contradiction = {p for p, by_label in groups.items() if by_label["contradiction"]}
    premises = [line.strip() for split in ("dev", "test") for line in open(SNLI / f"s1.{split}")]
    expected_triplets = sum(1 for p, label in zip(premises, labels)
                            if label == "entailment" and p in with_contradiction)

    pairs = read_snli(SNLI, ["dev", "test"], hard_negatives=False)
    assert pairs.num_columns == 2 and not pairs.scored
    assert len(pairs) == labels.count("entailment") == 6697
    triplets = read_snli(SNLI, ["dev", "test"])
    assert triplets.num_columns == 3 and len(triplets) == expected_triplets == 6339
    for premise, entailment, contradiction in triplets.rows:  # every column is what it claims to be
        assert entailment in groups[premise]["entailment"] and contradiction in groups[premise]["contradiction"]
    # each entailment of a premise is used once, in file order; contradictions cycle over the premise's own
    first = next(p for p, g in groups.items() if len(g["entailment"]) == 2 and len(g["contradiction"]) == 1)
    rows = [row for row in triplets.rows if row[0] == first]
    assert [r[1] for r in rows] == groups[first]["entailment"]
    assert {r[2] for r in rows} == set(groups[first]["contradiction"])
    first_pair = {"texts": (premises[1], groups[premises[1]]["entailment"][0])}
    assert read_snli(SNLI, "dev", hard_negatives=False)[0] == first_pair


@needs_text_data
@pytest.mark.parametrize("split, count", [("train", 5749), ("dev", 1500), ("test", 1379)])
def test_stsb_scored_pairs_match_the_raw_lines(split, count):
    with open(STSB / f"sts-{split}.csv", encoding="utf-8") as handle:
        lines = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    data = load_pairs("stsb", STSB, [split])
    assert len(data) == len(lines) == count and data.scored and data.num_columns == 2
    assert data[0] == {"texts": (lines[0][5].strip(), lines[0][6].strip()), "score": float(lines[0][4])}
    assert data.scores.dtype.name == "float64" and data.scores.min() >= 0 and data.scores.max() <= 5
    assert len(read_stsb_pairs(STSB / f"sts-{split}.csv")) == count


# --------------------------------------------------------------------------------------------- generic files


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_csv_jsonl_triplets_and_scored_pairs(tmp_path):
    tsv = write(tmp_path / "t.tsv", "anchor\tpositive\tnegative\na cat\ta feline\ta dog\nrain\twet weather\tsun\n")
    data = read_pair_file(tsv, "tsv", columns=["anchor", "positive", "negative"])
    assert data.rows == [("a cat", "a feline", "a dog"), ("rain", "wet weather", "sun")] and not data.scored
    csv_file = write(tmp_path / "s.csv", 'score,sentence1,sentence2\n4.5,"A man, walking","A man walks"\n0,x,y\n')
    scored = read_pair_file(csv_file, "csv", columns=["sentence1", "sentence2"], score_column="score",
                            score_range=[0, 5])
    assert scored[0] == {"texts": ("A man, walking", "A man walks"), "score": 4.5}
    assert scored.scores.tolist() == [4.5, 0]
    headless = write(tmp_path / "h.tsv", "q1\td1\nq2\td2\n")
    assert read_pair_file(headless, "tsv", columns=[0, 1], has_header=False).rows == [("q1", "d1"), ("q2", "d2")]
    jsonl = write(tmp_path / "j.jsonl", json.dumps({"anchor": "a", "positive": "b", "extra": 1}) + "\n\n"
                  + json.dumps({"anchor": "c", "positive": "d"}) + "\n")
    assert read_pair_file(jsonl, "jsonl").rows == [("a", "b"), ("c", "d")]


def test_folder_sources_read_split_files_and_concatenate(tmp_path):
    for split, rows in (("train", [("a", "b")]), ("extra", [("c", "d"), ("e", "f")])):
        write(tmp_path / f"{split}.jsonl", "".join(json.dumps({"q": q, "d": d}) + "\n" for q, d in rows))
    data = load_pairs("jsonl", tmp_path, ["train", "extra"], columns=["q", "d"])
    assert data.rows == [("a", "b"), ("c", "d"), ("e", "f")]
    assert load_pairs("jsonl", tmp_path / "train.jsonl", columns=["q", "d"]).rows == [("a", "b")]


SNLI_OK = {"s1": "p one\np one\np two\n", "s2": "h ent\nh con\nh two\n",
           "labels": "entailment\ncontradiction\nneutral\n"}


def snli_folder(root: Path, **changes: str) -> Path:
    root.mkdir(exist_ok=True)
    for name, text in {**SNLI_OK, **changes}.items():
        write(root / f"{name}.dev", text)
    return root


BAD_INPUTS = [  # (format, file name, content, options, field, words the message must hold)
    ("tsv", "x.tsv", "anchor\tpositive\na\tb\n", {"columns": ["anchor", "answer"]}, "data.options.columns",
     ["'answer'", "x.tsv"]),
    ("jsonl", "x.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', {}, "data.options.columns",
     ["'positive'", "line 2"]),
    ("tsv", "x.tsv", "anchor\tpositive\na\t  \n", {}, "data.options.columns", ["empty text", "'positive'", "line 2"]),
    ("csv", "x.csv", "s1,s2,score\na,b,high\n", {"columns": ["s1", "s2"], "score_column": "score"},
     "data.options.score_column", ["'high'", "line 2", "not a number"]),
    ("csv", "x.csv", "s1,s2,score\na,b,1\nc,d,6.5\n", {"columns": ["s1", "s2"], "score_column": "score",
                                                        "score_range": [0, 5]},
     "data.options.score_column", ["6.5", "line 3", "[0, 5]"]),
    ("tsv", "x.tsv", "anchor\tpositive\na\tb\tc\n", {}, "data.format", ["line 2", "3 tab-separated fields"]),
    ("jsonl", "x.jsonl", "[1, 2]\n", {}, "data.format", ["line 1", "not an object"]),
    ("tsv", "x.tsv", "a\tb\n", {"columns": ["a"]}, "data.options.columns", ["at least two"]),
    ("tsv", "x.tsv", "a\tb\tc\n", {"columns": ["a", "b", "c"], "score_column": "s"}, "data.options.columns",
     ["scored items are pairs"]),
    ("tsv", "x.tsv", "a\tb\n", {"label_column": "x"}, "data.options.label_column", ["not an option"]),
    ("stsb", "sts-dev.csv", "g\tf\ty\t1\t2.5\tone\n", {}, "data.root", ["line 1", "expected 7"]),
]


@pytest.mark.parametrize("format, name, content, options, field, words", BAD_INPUTS,
                         ids=[f"{b[0]}-{b[4].split('.')[-1]}-{i}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_pair_files_are_one_line_errors(tmp_path, format, name, content, options, field, words):
    path = write(tmp_path / name, content)
    with pytest.raises(ConfigError) as err:
        load_pairs(format, path, **options)
    assert err.value.field == field and "\n" not in str(err.value)
    assert all(word in str(err.value) for word in words), str(err.value)


@pytest.mark.parametrize("changes, words", [
    ({"s2": "h ent\nh con\n"}, ["differ in length", "s1.dev has 3 lines", "s2.dev 2", "labels.dev 3"]),
    ({"labels": "entailment\n-\nneutral\n"}, ["labels.dev line 2", "label '-'", "entailment, neutral, contradiction"]),
    ({"s1": "p one\n \np two\n"}, ["s1.dev line 2", "empty premise"]),
    ({"s2": "h ent\nh con\n\t\n"}, ["s2.dev line 3", "empty hypothesis"]),
])
def test_bad_snli_files_are_one_line_errors(tmp_path, changes, words):
    root = snli_folder(tmp_path / "snli", **changes)
    with pytest.raises(ConfigError) as err:
        read_snli(root, ["dev"])
    assert err.value.field == "data.root" and "\n" not in str(err.value)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_snli_missing_split_and_a_premise_without_contradiction(tmp_path):
    root = snli_folder(tmp_path / "snli")
    assert read_snli(root, ["dev"]).rows == [("p one", "h ent", "h con")]
    with pytest.raises(ConfigError, match=r"^data.root: SNLI split 'train' expects .*s1.train.* \['dev'\]"):
        read_snli(root, ["train"])
    lonely = snli_folder(tmp_path / "lonely", labels="entailment\nneutral\nneutral\n")
    assert read_snli(lonely, "dev", hard_negatives=False).rows == [("p one", "h ent")]
    with pytest.raises(ConfigError, match="no premise with an entailment and a contradiction"):
        read_snli(lonely, "dev")
    with pytest.raises(ConfigError, match="^data.splits: is not set"):
        load_pairs("tsv", tmp_path)
    with pytest.raises(ConfigError, match="^data.format: unknown pair format 'parquet'"):
        load_pairs("parquet", tmp_path)


# --------------------------------------------------------------------------------------------- Hugging Face


def test_hf_pairs_with_the_real_datasets_library_on_local_parquet(tmp_path, monkeypatch):
    """The real ``datasets.load_dataset``, offline, on local folders shaped like sentence-transformers/all-nli
    (triplet) and sentence-transformers/stsb (scored 0-1), as the configs read them."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    nli, stsb, cache = tmp_path / "all-nli", tmp_path / "stsb", str(tmp_path / "cache")
    nli.mkdir(), stsb.mkdir()
    triplets = {"anchor": ["a man sleeps", "kids play"], "positive": ["a person rests", "children play"],
                "negative": ["a man runs", "adults work"]}
    datasets.Dataset.from_dict(triplets).to_parquet(str(nli / "train.parquet"))
    scored = {"sentence1": ["x", "y"], "sentence2": ["x!", "z"], "score": [0.9, 0.1]}
    datasets.Dataset.from_dict(scored).to_parquet(str(stsb / "validation.parquet"))
    data = read_hf_pairs(str(nli), split="train", columns=["anchor", "positive", "negative"], cache_dir=cache)
    assert data.rows == list(zip(*triplets.values())) and data.num_columns == 3
    val = load_pairs("hf", str(stsb), ["validation"], columns=["sentence1", "sentence2"], score_column="score",
                     score_range=[0, 1], cache_dir=cache)
    assert val[0] == {"texts": ("x", "x!"), "score": 0.9}
    with pytest.raises(ConfigError, match=r"^data.options.score_column: column 'label' is not in .*'score'"):
        read_hf_pairs(str(stsb), split="validation", columns=["sentence1", "sentence2"], score_column="label",
                      cache_dir=cache)
    with pytest.raises(ConfigError, match=r"^data.options.score_column: score 0.9 .* outside .*\[0, 0.5\]"):
        read_hf_pairs(str(stsb), split="validation", columns=["sentence1", "sentence2"], score_column="score",
                      score_range=[0, 0.5], cache_dir=cache)
    with pytest.raises(ConfigError, match=r"^data.root: could not load Hugging Face dataset .* \[test\]"):
        read_hf_pairs(str(nli), split="test", cache_dir=cache)

    dm = PairsDataModule(train={"format": "hf", "root": str(nli), "splits": "train",
                                "options": {"columns": ["anchor", "positive", "negative"], "cache_dir": cache}},
                         test={"format": "hf", "root": str(stsb), "splits": ["validation"],
                               "options": {"columns": ["sentence1", "sentence2"], "score_column": "score",
                                           "cache_dir": cache}},
                         validation="none", tokenizer="hf/minilm", max_length=16, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.rows == data.rows
    assert next(iter(dm.test_dataloader()))["score"].tolist() == pytest.approx([0.9, 0.1])
    assert "cache_dir" not in dm.split_signature()["train"]["options"] and dm.split_signature()["val"] is None


# --------------------------------------------------------------------------------------------- collate


@pytest.fixture(scope="module")
def tokenizer():
    from mrl.encoders.text import load_tokenizer

    return load_tokenizer("minilm")


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


@pytest.mark.parametrize("scored", [False, True])
def test_collate_is_one_call_column_major_and_equals_each_column_alone(tokenizer, scored):
    rows = [("a short anchor", "its positive sentence here", "a hard negative"),
            ("a much longer anchor sentence with many more words in it than the others", "yes", "no way at all"),
            ("third", "positive three", "negative three, with a comma")]
    data = TextPairsDataset([r[:2] for r in rows], [4.5, 0.5, 2.0]) if scored else TextPairsDataset(rows)
    collate = PairCollate(tokenizer, max_length=12)
    batch = collate([data[i] for i in range(len(data))])
    k, b = data.num_columns, len(data)
    assert batch["num_columns"] == k and isinstance(batch["num_columns"], int)
    assert batch["input_ids"].shape[0] == k * b and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["input_ids"].shape[1] == 12  # the long anchor is truncated to max_length, the batch padded to it
    for column in range(k):
        alone = tokenizer([row[column] for row in data.rows], truncation=True, max_length=12, padding=True,
                          return_tensors="pt")
        for item in range(b):
            row = column * b + item  # column-major: anchors, then positives, then negatives
            assert unpadded(batch["input_ids"][row], batch["attention_mask"][row]) == \
                unpadded(alone["input_ids"][item], alone["attention_mask"][item])
    if scored:
        assert batch["score"].dtype == torch.float32 and batch["score"].tolist() == [4.5, 0.5, 2.0]
    else:
        assert "score" not in batch


def test_collate_pickles_and_runs_in_a_loader_worker(tokenizer):
    collate = PairCollate(tokenizer, max_length=16)
    clone = pickle.loads(pickle.dumps(collate))
    data = TextPairsDataset([("a", "b"), ("c d", "e"), ("f", "g h i")], [1.0, 2.0, 3.0])
    batches = list(DataLoader(data, batch_size=3, collate_fn=clone, num_workers=1))
    direct = collate([data[i] for i in range(3)])
    assert len(batches) == 1 and torch.equal(batches[0]["input_ids"], direct["input_ids"])
    assert batches[0]["num_columns"] == 2 and batches[0]["score"].dtype == torch.float32
    with pytest.raises(ConfigError, match="^data.max_length"):
        PairCollate(tokenizer, max_length=1)


# --------------------------------------------------------------------------------------------- DataModule


def jsonl_source(folder: Path, n: int, name: str = "train") -> dict:
    folder.mkdir(exist_ok=True)
    write(folder / f"{name}.jsonl", "".join(json.dumps({"anchor": f"anchor {i // 2}", "positive": f"positive {i}"})
                                           + "\n" for i in range(n)))
    return {"format": "jsonl", "root": str(folder), "splits": [name]}


def stsb_source(split: str) -> dict:
    return {"format": "stsb", "root": str(STSB), "splits": [split]}


def make_dm(tmp_path, **overrides) -> PairsDataModule:
    settings = dict(train=jsonl_source(tmp_path / "pairs", 40), val=None, test=stsb_source("test"),
                    tokenizer="hf/minilm", max_length=16, batch_size=4, seed=3, validation="none")
    dm = create_datamodule("pairs", **{**settings, **overrides})
    dm.setup("fit")
    return dm


def anchors_of(batch, tokenizer) -> list[str]:
    b = batch["input_ids"].shape[0] // batch["num_columns"]
    return tokenizer.batch_decode(batch["input_ids"][:b], skip_special_tokens=True)


@needs_text_data
def test_training_order_is_seeded_and_resumes_mid_epoch(tmp_path, tokenizer):
    full = [anchors_of(b, tokenizer) for b in make_dm(tmp_path).train_dataloader()]
    assert len(full) == 10 and sorted(a for b in full for a in b) == sorted(f"anchor {i // 2}" for i in range(40))
    assert [anchors_of(b, tokenizer) for b in make_dm(tmp_path).train_dataloader()] == full
    assert [anchors_of(b, tokenizer) for b in make_dm(tmp_path, seed=4).train_dataloader()] != full
    resumed = make_dm(tmp_path)
    resumed.load_state_dict({"epoch": 0, "samples_done": 3 * 4})  # what a checkpoint after 3 batches holds
    assert [anchors_of(b, tokenizer) for b in resumed.train_dataloader()] == full[3:]


@needs_text_data
def test_val_and_test_batches_are_scored_and_shard_without_duplicates(tmp_path, monkeypatch):
    dm = make_dm(tmp_path, val=stsb_source("dev"), validation="holdout", batch_size=64)
    assert dm.val_fraction == 0.0 and dm.num_classes == 0 and dm.class_names == []
    assert len(dm.val_set) == 1500 and len(dm.test_set) == 1379 and len(dm.train_set) == 40
    batch = next(iter(dm.val_dataloader()))
    assert batch["num_columns"] == 2 and batch["score"].dtype == torch.float32 and batch["input_ids"].shape[0] == 128
    sizes = []
    for rank in range(2):  # under DDP each rank gets its share of the test pairs, every pair once
        monkeypatch.setattr("mrl.data.datamodules.distributed_rank_and_size", lambda rank=rank: (rank, 2))
        sizes.append(sum(len(b["score"]) for b in dm.test_dataloader()))
    assert sum(sizes) == 1379 and abs(sizes[0] - sizes[1]) <= 1
    signature = dm.split_signature()
    assert signature["train"] == {"format": "jsonl", "splits": ["train"], "options": {}}
    assert signature["val"]["format"] == "stsb" and signature["test"]["splits"] == ["test"]


@needs_text_data
def test_holdout_of_train_takes_whole_anchors_seeded(tmp_path):
    dm = make_dm(tmp_path, validation="holdout", val_fraction=0.25)
    train_anchors = {dm.train_set[i]["texts"][0] for i in range(len(dm.train_set))}
    val_anchors = {dm.val_set[i]["texts"][0] for i in range(len(dm.val_set))}
    assert len(dm.val_set) == 10 and len(dm.train_set) == 30 and not train_anchors & val_anchors
    assert dm.split_signature()["val_fraction"] == 0.25
    again = make_dm(tmp_path, validation="holdout", val_fraction=0.25)
    assert [again.val_set[i] for i in range(10)] == [dm.val_set[i] for i in range(10)]
    fit, held = anchor_holdout(["a", "a", "b", "c"], 0.5, seed=0)
    assert sorted(fit + held) == [0, 1, 2, 3] and len(held) >= 2 and ({0, 1} <= set(held) or not {0, 1} & set(held))
    with pytest.raises(ConfigError, match="^data.val_fraction: 0.9 of 2 training items holds out all"):
        anchor_holdout(["a", "a"], 0.9, seed=0)


@needs_text_data
def test_datamodule_errors_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match="^data.test: is not set"):
        PairsDataModule(train=stsb_source("train"))
    with pytest.raises(ConfigError, match="^data.val.split: is not a key of a pair source"):
        PairsDataModule(train=stsb_source("train"), test=stsb_source("test"), val={**stsb_source("dev"), "split": "x"})
    with pytest.raises(ConfigError, match="^data.train.format: unknown pair format 'trec'"):
        PairsDataModule(train={"format": "trec", "root": "x"}, test=stsb_source("test"))
    with pytest.raises(ConfigError, match="^data.val_fraction: must be in"):
        PairsDataModule(train=stsb_source("train"), test=stsb_source("test"), val_fraction=0)
    bad = jsonl_source(tmp_path / "bad", 2)
    write(tmp_path / "bad" / "train.jsonl", '{"anchor": "a", "positive": ""}\n')
    with pytest.raises(ConfigError, match=r"^data.train.options.columns: empty text in column 'positive' at .* line 1"):
        make_dm(tmp_path, train=bad)
    with pytest.raises(ConfigError, match="^data.test.split: STS Benchmark has no split 'holdout'"):
        make_dm(tmp_path, test=stsb_source("holdout"))
    with pytest.raises(ConfigError, match="^data.tokenizer: is not set"):
        make_dm(tmp_path, tokenizer=None)


@needs_text_data
@pytest.mark.parametrize("data, k, scored", [("snli", 3, False), ("stsb_pairs", 2, True)])
def test_configs_compose_into_a_working_datamodule(tmp_path, data, k, scored):
    from omegaconf import OmegaConf, open_dict

    cfg = compose([f"data={data}", "model=minilm", "data.num_workers=0"], tmp_path)
    with open_dict(cfg):
        cfg.paths.data_dir = str(SHARED_DATA)  # compose points it into tmp_path
    dm = create_datamodule(**OmegaConf.to_container(cfg.data, resolve=True))
    dm.setup("fit")
    assert dm.train_set.num_columns == k and dm.train_set.scored == scored
    assert len(dm.train_set) == {"snli": 6339, "stsb_pairs": 5749}[data] and len(dm.val_set) == 1500
    assert dm.tokenizer_name == "hf/minilm" and dm.max_length == cfg.model.backbone.max_length
