"""Evaluation sets of text embeddings, read into what embedding files store: texts to embed plus the relations
the evaluators score (STS pairs with scores; retrieval judgements), and the DataModule that embeds them.

* :func:`read_sts_set` -- STS Benchmark as its UNIQUE sentences, ``pairs [N, 2]`` int64 indices into them and
  ``scores [N]`` (each sentence is embedded once, however many pairs it is in).
* :func:`read_cranfield` -- the Cranfield 1400 collection (``cran.all.1400``, ``cran.qry``, ``cranqrel``).
* :func:`read_beir` -- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

Retrieval sets come as :class:`RetrievalSet`: corpus and query texts with their ids, and ``qrels [R, 3]`` int64
(query index, document index, gain). Every bad file is a one-line :class:`ConfigError` naming the file and line.

Cranfield relevance: ``cranqrel`` codes are Cleverdon's 1 (a complete answer) to 4 (minimum interest), and -1
(no interest). Like ir_datasets (whose Cranfield relevance is 4 for a complete answer ... 1 for minimum
interest), the gain is ``5 - code`` for codes 1..4, and -1 is kept as a judgement with gain 0 (judged, not
relevant). Query ids in ``cranqrel`` are the queries' positions 1..225 in ``cran.qry``, not its ``.I`` numbers.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mrl.data.datamodules import ClassificationDataModule, TextDataModule, register_datamodule
from mrl.data.pairs import read_stsb, stsb_file
from mrl.data.text import _read_lines
from mrl.errors import ConfigError

ROOT = "data.root"
CRANFIELD_FILES = ("cran.all.1400", "cran.qry", "cranqrel")
CRANFIELD_GAINS = {1: 4, 2: 3, 3: 2, 4: 1, -1: 0}  # Cleverdon's code -> gain (1 is the most relevant)
_FIELD_LINE = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


def _file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(ROOT, f"{path} does not exist", f"point data.root at a folder with {what}")
    return path


@dataclass
class StsSet:
    """``sentences`` (unique, in first-seen order), ``pairs [N, 2]`` int64 indices into them, ``scores [N]``."""

    sentences: list[str]
    pairs: np.ndarray
    scores: np.ndarray
    source: str = ""


def read_sts_set(root: str | Path, split: str = "test") -> StsSet:
    """The STS Benchmark ``split`` (train | dev | test) under ``root`` (or the file ``root``) as unique sentences
    and index pairs (via :func:`mrl.data.pairs.read_stsb`)."""
    pairs = read_stsb(stsb_file(root, split))
    index: dict[str, int] = {}
    rows = [[index.setdefault(a, len(index)), index.setdefault(b, len(index))] for a, b in zip(pairs.first,
                                                                                             pairs.second)]
    return StsSet(list(index), np.array(rows, dtype=np.int64).reshape(-1, 2), pairs.scores, pairs.source)


@dataclass
class RetrievalSet:
    """``corpus``/``queries`` texts with their ids (same order) and ``qrels [R, 3]`` int64 (query index,
    document index, gain; gain <= 0: judged not relevant)."""

    corpus: list[str]
    corpus_ids: list[str]
    queries: list[str]
    query_ids: list[str]
    qrels: np.ndarray
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def relevant_queries(self) -> np.ndarray:
        """Indices of the queries with at least one relevant document (the ones the metrics average over)."""
        return np.unique(self.qrels[self.qrels[:, 2] > 0, 0])


def _smart_records(path: Path) -> list[tuple[int, str, dict[str, list[str]]]]:
    """The SMART-format records of a Cranfield file: ``(line, id, {field letter: lines})`` per ``.I`` record
    (CRLF line ends; a field given twice is continued)."""
    records: list[tuple[int, str, dict[str, list[str]]]] = []
    current: list[str] | None = None
    for number, line in _read_lines(path, "utf-8"):
        match = _FIELD_LINE.match(line)
        if match and match.group(1) == "I":
            records.append((number, (match.group(2) or "").strip(), {}))
            current = None
        elif match and len(line.strip()) == 2:
            if not records:
                raise ConfigError(ROOT, f"{path} line {number}: field .{match.group(1)} before any .I record",
                                  "give the Cranfield collection's own file")
            current = records[-1][2].setdefault(match.group(1), [])
        elif current is not None:
            current.append(line.strip())
        elif line.strip():
            raise ConfigError(ROOT, f"{path} line {number}: text outside a field ({line[:40]!r})",
                              "give the Cranfield collection's own file")
    if not records:
        raise ConfigError(ROOT, f"{path} holds no .I records", "give the Cranfield collection's own file")
    return records


def _joined(lines: list[str]) -> str:
    return " ".join(part for part in lines if part)


def read_cranfield(root: str | Path) -> RetrievalSet:
    """The Cranfield 1400 collection under ``root``: documents as title + " " + abstract (``.T`` and ``.W``; two
    documents, 471 and 995, are empty in the collection and stay empty), the 225 queries in file order, and every
    judgement of ``cranqrel`` with gain ``5 - code`` (code -1: gain 0)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(ROOT, f"{root} is not a folder", f"point data.root at a folder with {list(CRANFIELD_FILES)}")
    docs_path, queries_path, qrels_path = (_file(root / name, "cran.all.1400, cran.qry and cranqrel")
                                           for name in CRANFIELD_FILES)
    corpus, corpus_ids = [], []
    for number, doc_id, fields in _smart_records(docs_path):
        if not doc_id.isdigit():
            raise ConfigError(ROOT, f"{docs_path} line {number}: document id {doc_id!r} is not a number")
        corpus_ids.append(doc_id)
        corpus.append(" ".join(t for t in (_joined(fields.get("T", [])), _joined(fields.get("W", []))) if t))
    doc_index = {int(d): i for i, d in enumerate(corpus_ids)}
    if len(doc_index) != len(corpus_ids):
        raise ConfigError(ROOT, f"{docs_path} repeats a document id", "give the Cranfield collection's own file")
    queries, query_ids = [], []
    for number, query_id, fields in _smart_records(queries_path):
        text = _joined(fields.get("W", []))
        if not text:
            raise ConfigError(ROOT, f"{queries_path} line {number}: query {query_id} has no text (.W)")
        queries.append(text)
        query_ids.append(query_id)
    rows = []
    for number, line in _read_lines(qrels_path, "utf-8"):
        if not line.strip():
            continue
        parts = line.split()
        try:
            query, doc, code = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(ROOT, f"{qrels_path} line {number}: expected 'query document code' (3 integers), got "
                              f"{line.strip()!r}") from None
        if not 1 <= query <= len(queries):
            raise ConfigError(ROOT, f"{qrels_path} line {number}: query {query} is not in {queries_path.name} "
                              f"(queries are numbered 1..{len(queries)} in file order)")
        if doc not in doc_index:
            raise ConfigError(ROOT, f"{qrels_path} line {number}: document {doc} is not in {docs_path.name}")
        if code not in CRANFIELD_GAINS:
            raise ConfigError(ROOT, f"{qrels_path} line {number}: relevance code {code} is not one of "
                              f"{sorted(CRANFIELD_GAINS)}")
        rows.append((query - 1, doc_index[doc], CRANFIELD_GAINS[code]))
    if not rows:
        raise ConfigError(ROOT, f"{qrels_path} holds no judgements")
    return _retrieval_set(corpus, corpus_ids, queries, query_ids, rows, qrels_path, str(root))


def _retrieval_set(corpus, corpus_ids, queries, query_ids, rows, qrels_path: Path, source: str) -> RetrievalSet:
    qrels = np.array(rows, dtype=np.int64).reshape(-1, 3)
    keys = qrels[:, 0] * len(corpus) + qrels[:, 1]
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        key = int(unique[counts > 1][0])
        raise ConfigError(ROOT, f"{qrels_path} judges query {query_ids[key // len(corpus)]} and document "
                          f"{corpus_ids[key % len(corpus)]} more than once", "keep one judgement per pair")
    return RetrievalSet(corpus, corpus_ids, queries, query_ids, qrels, source)


def _jsonl(path: Path, text_keys: tuple[str, ...]) -> tuple[list[str], list[dict[str, Any]]]:
    ids, records = [], []
    for number, line in _read_lines(path, "utf-8"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(ROOT, f"{path} line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or "_id" not in record:
            raise ConfigError(ROOT, f"{path} line {number} has no '_id'", "BEIR records are {\"_id\": ..., ...}")
        for key in text_keys:
            if not isinstance(record.get(key, ""), str):
                raise ConfigError(ROOT, f"{path} line {number}: '{key}' is not a string")
        ids.append(str(record["_id"]))
        records.append(record)
    if not ids:
        raise ConfigError(ROOT, f"{path} is empty (no records)")
    if len(set(ids)) != len(ids):
        raise ConfigError(ROOT, f"{path} repeats an _id", "give each record its own _id")
    return ids, records


def read_beir(root: str | Path, split: str = "test") -> RetrievalSet:
    """A BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``; a document is title + " " + text),
    ``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id corpus-id score``, integer
    scores; score <= 0 is judged not relevant). As in BEIR, only the queries judged in ``split`` are kept."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(ROOT, f"{root} is not a folder", "point data.root at a BEIR folder")
    what = "corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
    corpus_path, queries_path, qrels_path = (_file(root / name, what) for name in
                                             ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"))
    corpus_ids, docs = _jsonl(corpus_path, ("title", "text"))
    corpus = [" ".join(t for t in (d.get("title", "").strip(), d.get("text", "").strip()) if t) for d in docs]
    all_query_ids, query_records = _jsonl(queries_path, ("text",))
    query_text = {q: r.get("text", "").strip() for q, r in zip(all_query_ids, query_records)}
    doc_index = {d: i for i, d in enumerate(corpus_ids)}
    judged: list[tuple[str, int, int]] = []
    with open(qrels_path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise ConfigError(ROOT, f"{qrels_path} line 1 is {header!r}, not the header query-id, corpus-id, score")
        for number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise ConfigError(ROOT, f"{qrels_path} line {number} has {len(row)} fields, expected 3")
            query, doc, score = row[0].strip(), row[1].strip(), row[2].strip()
            if query not in query_text:
                raise ConfigError(ROOT, f"{qrels_path} line {number}: query-id {query!r} is not in {queries_path.name}")
            if doc not in doc_index:
                raise ConfigError(ROOT, f"{qrels_path} line {number}: corpus-id {doc!r} is not in {corpus_path.name}")
            if not re.fullmatch(r"[+-]?\d+", score):
                raise ConfigError(ROOT, f"{qrels_path} line {number}: score {score!r} is not an integer")
            judged.append((query, doc_index[doc], int(score)))
    if not judged:
        raise ConfigError(ROOT, f"{qrels_path} holds no judgements")
    query_ids = list(dict.fromkeys(q for q, _, _ in judged))
    empty = [q for q in query_ids if not query_text[q]]
    if empty:
        raise ConfigError(ROOT, f"{queries_path}: query {empty[0]!r} has no text")
    query_index = {q: i for i, q in enumerate(query_ids)}
    rows = [(query_index[q], d, s) for q, d, s in judged]
    return _retrieval_set(corpus, corpus_ids, [query_text[q] for q in query_ids], query_ids, rows, qrels_path,
                          str(root))


# --------------------------------------------------------------------------------------------------
# the DataModule: texts to embed, with the relations embedding files store next to them
# --------------------------------------------------------------------------------------------------

class TextList(Dataset):
    """Unlabelled texts; items ``{"text", "label": -1}`` (-1: no class; a task that passes labels through gets a
    placeholder, and the embedding writer stores none for an unlabelled split)."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.texts[index], "label": -1}


TEXT_EVAL_SPLITS = {"stsb": ("train", "dev", "test"), "cranfield": ("corpus", "queries"),
                    "beir": ("corpus", "queries")}


@register_datamodule("text_eval")
class TextEvalDataModule(TextDataModule):
    """Evaluation sets of text embeddings (``format``: ``stsb``, ``cranfield`` or ``beir``), unlabelled, each
    split a list of texts tokenised by the checkpoint's encoder (:meth:`TextDataModule.use_encoder`).

    Splits: STS-B ``train``/``dev``/``test`` (each the split's unique sentences; relations ``pairs``, ``scores``);
    Cranfield and BEIR ``corpus`` and ``queries`` (relations of ``queries``: ``qrels`` into the ``corpus`` split).
    ``qrels_split``: which ``qrels/<split>.tsv`` of a BEIR folder judges the queries.
    """

    labelled = False

    def __init__(self, format: str, root: str | None = None, tokenizer: str | None = None,
                 max_length: int | None = None, qrels_split: str = "test", **kwargs: Any):
        # TextDataModule's own constructor reads labelled formats; these sets share only its tokenising.
        ClassificationDataModule.__init__(self, validation="none", **kwargs)
        if format not in TEXT_EVAL_SPLITS:
            raise ConfigError("data.format", f"unknown evaluation set format {format!r}",
                              f"choose one of {sorted(TEXT_EVAL_SPLITS)}")
        if not root:
            raise ConfigError(ROOT, "is not set", "give the folder of the evaluation set")
        self.format, self.root, self.tokenizer_name, self.max_length = format, str(root), tokenizer, max_length
        self.qrels_split, self.splits, self.options = qrels_split, {}, {}
        self._sets: dict[str, Any] = {}

    def use_encoder(self, encoder: dict[str, Any]) -> None:
        """The checkpoint's tokenizer; ``max_length`` may differ from the one it was trained with (documents are
        longer than training sentences; the encoder reads any length up to its position embeddings)."""
        mine = self.max_length
        self.max_length = None
        super().use_encoder(encoder)
        self.max_length = mine or self.max_length

    def setup(self, stage: str | None = None) -> None:
        if self.collate_fn is None:
            from mrl.data.text import TokenizeCollate
            from mrl.encoders import TEXT_PREFIX
            from mrl.encoders.text import load_tokenizer

            if self.tokenizer_name is None or self.max_length is None:
                raise ConfigError("data.tokenizer", "is not set, so the texts cannot be tokenised",
                                  "embed with a text checkpoint (scripts/embed.py fills it from the checkpoint)")
            name = self.tokenizer_name.removeprefix(TEXT_PREFIX)
            self.collate_fn = TokenizeCollate(load_tokenizer(name), self.max_length)

    def split_signature(self) -> dict[str, Any]:
        return {}  # read whole, never split: no checkpoint's train/test split to match

    def _read(self, split: str) -> Any:
        if split not in TEXT_EVAL_SPLITS[self.format]:
            raise ConfigError("splits", f"{self.format} has no split {split!r}",
                              f"choose from {list(TEXT_EVAL_SPLITS[self.format])}")
        key = split if self.format == "stsb" else "all"
        if key not in self._sets:
            self._sets[key] = (read_sts_set(self.root, split) if self.format == "stsb" else
                               read_cranfield(self.root) if self.format == "cranfield" else
                               read_beir(self.root, self.qrels_split))
        return self._sets[key]

    def split_dataset(self, split: str) -> Dataset:
        self.setup("test")
        data = self._read(split)
        return TextList(data.sentences if self.format == "stsb" else getattr(data, split))

    def split_relations(self, split: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)`` stored beside ``split``'s embeddings: STS ``pairs``/``scores``; for ``queries``
        ``qrels`` and meta ``corpus_split``; ``corpus``: none."""
        data = self._read(split)
        info: dict[str, Any] = {"eval_set": self.format, "source": data.source}
        if self.format == "stsb":
            return {"pairs": data.pairs, "scores": data.scores}, info
        if split == "queries":
            return {"qrels": data.qrels}, {**info, "corpus_split": "corpus"}
        return {}, info
