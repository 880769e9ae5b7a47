"""Sentence-pair data: what contrastive Matryoshka training and the STS evaluation read.

* :class:`ScoredPairs` -- pairs of sentences with a similarity score (STS Benchmark), the input of CoSENT
  training and of the STS evaluation; :func:`read_stsb` reads the STS Benchmark's ``sts-{train,dev,test}.csv``.
* :class:`TextPairsDataset` -- training and validation items of ``K >= 2`` texts each (anchor, positive[, hard
  negative]), ``{"texts": tuple[str, ...]}`` plus ``"score": float`` for scored pairs (``K = 2``).
* Readers (:data:`PAIR_FORMATS`), each checking the whole input before training, so a bad row is a one-line
  :class:`ConfigError` naming the file, line and field: :func:`read_snli`, :func:`read_stsb_pairs`,
  :func:`read_pair_file` (``tsv``, ``csv``, ``jsonl`` with configured column names), :func:`read_hf_pairs`
  (a Hugging Face ``datasets`` data set); :func:`load_pairs` reads one source of any format, split by split.
* :class:`PairCollate` -- tokenises the K columns of a batch in one tokenizer call, rows column-major.
* :class:`PairsDataModule` (``data.name=pairs``) -- separately configured ``train``, ``val`` and ``test`` sources.

SNLI as training items (:func:`read_snli`): hypotheses are grouped by premise (the same premise text, over all the
splits read). Each entailment hypothesis gives ``(premise, entailment)``; with hard negatives it becomes
``(premise, entailment, contradiction)``, the i-th entailment of a premise taking the (i mod C)-th of its C
contradictions (file order, so the triplets are the same on every run), and premises without a contradiction are
dropped (every item of a data set has the same K). Neutral pairs are not used. The shared SNLI dev + test files
(19,666 pairs, 6,641 premises) give 6,697 pairs, or 6,339 triplets (the 358 entailments of premises without a
contradiction dropped).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mrl.data.datamodules import ClassificationDataModule, TextDataModule, check_fraction, register_datamodule
from mrl.data.text import (TokenizeCollate, _checked_text, _delimited_records, _existing_file, _no_rows, _read_lines,
                           _shorten, checked_name_list, jsonl_records, load_hf_split, resolve_split_path)
from mrl.errors import ConfigError

ROOT_FIELD = "data.root"
FORMAT_FIELD = "data.format"
SPLITS_FIELD = "data.splits"
COLUMNS_FIELD = "data.options.columns"
SCORE_FIELD = "data.options.score_column"
SCORE_RANGE_FIELD = "data.options.score_range"

# Each format's reader options (the ``options`` of a source); anything else is refused by name.
PAIR_FORMATS: dict[str, tuple[str, ...]] = {
    "snli": ("hard_negatives", "encoding"),
    "stsb": ("encoding",),
    "tsv": ("columns", "score_column", "score_range", "has_header", "encoding"),
    "csv": ("columns", "score_column", "score_range", "has_header", "encoding"),
    "jsonl": ("columns", "score_column", "score_range", "encoding"),
    "hf": ("columns", "score_column", "score_range", "config", "cache_dir"),
}
SNLI_LABELS = ("entailment", "neutral", "contradiction")
SNLI_FILES = ("s1", "s2", "labels")  # line-aligned <name>.<split>: premise, hypothesis, label
DEFAULT_COLUMNS = ("anchor", "positive")

STSB_SPLIT_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "val": "sts-dev.csv",
                    "validation": "sts-dev.csv", "test": "sts-test.csv"}
STSB_SCORE_RANGE = (0.0, 5.0)


@dataclass
class ScoredPairs:
    """``len(first) == len(second) == len(scores)`` sentence pairs; ``scores [N]`` float64 (STS-B: 0 to 5,
    higher is more similar). ``source`` names the file, for messages."""

    first: list[str]
    second: list[str]
    scores: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if not len(self.first) == len(self.second) == len(self.scores):
            raise ValueError(f"{len(self.first)} first sentences, {len(self.second)} second ones and "
                             f"{len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.scores)


def stsb_file(root: str | Path, split: str) -> Path:
    """The STS Benchmark file of ``split`` (train | dev | test) under ``root``, or ``root`` itself if a file."""
    root = Path(root).expanduser()
    if root.is_file():
        return root
    if split not in STSB_SPLIT_FILES:
        raise ConfigError("data.split", f"STS Benchmark has no split {split!r}",
                          f"choose one of {sorted(STSB_SPLIT_FILES)}")
    return root / STSB_SPLIT_FILES[split]


def read_stsb(path: str | Path, encoding: str = "utf-8") -> ScoredPairs:
    """The STS Benchmark's tab-separated file (no header, no quoting): genre, file, years, id, score (0-5),
    sentence1, sentence2; columns past the seventh (some rows carry them) are ignored. A short row, a score
    that is not a number in [0, 5] or an empty sentence is a one-line :class:`ConfigError` naming the line."""
    path = _existing_file(path)
    first, second, scores = [], [], []
    for number, line in _read_lines(path, encoding):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ConfigError("data.root", f"{path} line {number} has {len(fields)} tab-separated fields, "
                              "expected 7 (genre, file, years, id, score, sentence1, sentence2)",
                              "point data.root at the STS Benchmark's sts-*.csv files")
        try:
            score = float(fields[4])
        except ValueError:
            score = float("nan")
        if not STSB_SCORE_RANGE[0] <= score <= STSB_SCORE_RANGE[1]:
            raise ConfigError("data.root", f"{path} line {number} has score {fields[4]!r}, not a number in "
                              f"[{STSB_SCORE_RANGE[0]:g}, {STSB_SCORE_RANGE[1]:g}]", "fix or remove the row")
        a, b = fields[5].strip(), fields[6].strip()
        if not a or not b:
            raise ConfigError("data.root", f"{path} line {number} has an empty sentence", "fix or remove the row")
        first.append(a)
        second.append(b)
        scores.append(score)
    if not scores:
        raise _no_rows(path)
    return ScoredPairs(first, second, np.array(scores), source=str(path))


# --------------------------------------------------------------------------------------------- items


class TextPairsDataset(Dataset):
    """``len(rows)`` items of ``num_columns`` (K >= 2) texts each: anchor, positive[, hard negative, ...].

    Items are ``{"texts": tuple[str, ...]}`` (K strings) plus, for scored pairs (``scored``; K = 2),
    ``"score": float``. ``scores`` is ``[N]`` float64 or None. ``source`` names the input, for messages.
    """

    def __init__(self, rows: Iterable[Sequence[str]], scores: Sequence[float] | np.ndarray | None = None,
                 source: str = ""):
        self.rows = [tuple(row) for row in rows]
        self.scores = None if scores is None else np.asarray(scores, dtype=np.float64)
        self.source = str(source)
        # Programming errors (the readers report bad rows), hence plain ValueError.
        if not self.rows:
            raise ValueError("no rows")
        self.num_columns = len(self.rows[0])
        if self.num_columns < 2 or any(len(row) != self.num_columns for row in self.rows):
            raise ValueError(f"every row needs the same number (>= 2) of texts, the first has {self.num_columns}")
        if self.scores is not None and (self.scores.shape != (len(self.rows),) or self.num_columns != 2):
            raise ValueError(f"{len(self.scores)} scores for {len(self.rows)} rows of {self.num_columns} texts; "
                             "scores go with pairs, one each")

    @property
    def scored(self) -> bool:
        return self.scores is not None

    @property
    def anchors(self) -> list[str]:
        return [row[0] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"texts": self.rows[index]}
        if self.scores is not None:
            item["score"] = float(self.scores[index])
        return item

    @classmethod
    def from_scored(cls, pairs: ScoredPairs) -> TextPairsDataset:
        return cls(zip(pairs.first, pairs.second), pairs.scores, source=pairs.source)

    @classmethod
    def concat(cls, parts: Sequence[TextPairsDataset]) -> TextPairsDataset:
        """The rows of ``parts`` in order (the splits of one source: same K, all scored or none)."""
        if len({(part.num_columns, part.scored) for part in parts}) != 1:
            raise ValueError("parts differ in their number of columns or in being scored")
        if len(parts) == 1:
            return parts[0]
        scores = np.concatenate([part.scores for part in parts]) if parts[0].scored else None
        return cls([row for part in parts for row in part.rows], scores, source=" + ".join(p.source for p in parts))

    def __repr__(self) -> str:
        kind = "scored pairs" if self.scored else f"items of {self.num_columns} texts"
        return f"{type(self).__name__}({len(self)} {kind}" + (f", from {self.source})" if self.source else ")")


# --------------------------------------------------------------------------------------------- readers


def _checked_columns(columns: Any, score_column: Any) -> list[str]:
    """The text column names (as strings: header names, JSON keys, or positions of a header-less file)."""
    names = checked_name_list(columns, COLUMNS_FIELD, "column names",
                              "e.g. [anchor, positive], [anchor, positive, negative] or [sentence1, sentence2]",
                              "list the anchor, positive[, negative] columns (names or positions)")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(COLUMNS_FIELD, f"is {names}: needs at least two distinct columns",
                          "list the anchor, positive[, negative] columns")
    if score_column is not None:
        if str(score_column) in names:
            raise ConfigError(SCORE_FIELD, f"{score_column!r} is also a text column", "name the score column")
        if len(names) != 2:
            raise ConfigError(COLUMNS_FIELD, f"has {len(names)} columns, but scored items are pairs",
                              "list the two sentence columns, e.g. [sentence1, sentence2]")
    return names


def _checked_score_range(score_range: Any) -> tuple[float, float] | None:
    if score_range is None:
        return None
    try:
        low, high = (float(bound) for bound in score_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low < high:
        raise ConfigError(SCORE_RANGE_FIELD, f"expected [low, high] with low < high, got {score_range!r}",
                          "e.g. [0, 5] for STS-B, or null for no check")
    return low, high


def _pair_score(value: Any, source: str | Path, line: str, column: str,
                score_range: tuple[float, float] | None) -> float:
    score = float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        score = float(value)
    elif isinstance(value, str):
        try:
            score = float(value.strip())
        except ValueError:
            pass
    if not math.isfinite(score):
        raise ConfigError(SCORE_FIELD, f"column {column!r} at {source} {line} holds {value!r}, not a number",
                          "fix or remove the row")
    if score_range is not None and not score_range[0] <= score <= score_range[1]:
        raise ConfigError(SCORE_FIELD, f"score {score:g} in column {column!r} at {source} {line} is outside the "
                          f"declared range [{score_range[0]:g}, {score_range[1]:g}]",
                          "fix the row, or the source's options.score_range")
    return score


def _pairs_from_records(records: Iterable[tuple[str, Mapping[str, Any]]], source: str | Path, columns: list[str],
                        score_column: str | None, score_range: tuple[float, float] | None) -> TextPairsDataset:
    """``(where, record)`` pairs (``where``: ``line 7``, ``row 7``) into a dataset, every field checked."""
    rows, scores = [], []
    for where, record in records:
        for field, column in [*((COLUMNS_FIELD, c) for c in columns), *([(SCORE_FIELD, score_column)]
                                                                         if score_column is not None else [])]:
            if column not in record:
                keys = _shorten([repr(key) for key in record])
                raise ConfigError(field, f"column {column!r} is missing at {source} {where}; the row has {keys}",
                                  "fix the row, or name the source's columns in its options")
        rows.append(tuple(_checked_text(record[c], source, where, c, COLUMNS_FIELD, "check the column names")
                          for c in columns))
        if score_column is not None:
            scores.append(_pair_score(record[score_column], source, where, score_column, score_range))
    if not rows:
        raise ConfigError(ROOT_FIELD, f"{source} has no data rows", "point the source at a non-empty file")
    return TextPairsDataset(rows, scores if score_column is not None else None, source=str(source))


def read_pair_file(path: str | Path, format: str = "tsv", *, columns: Sequence[str | int] = DEFAULT_COLUMNS,
                   score_column: str | int | None = None, score_range: Sequence[float] | None = None,
                   has_header: bool = True, encoding: str = "utf-8") -> TextPairsDataset:
    """Items from a ``tsv``, ``csv`` or ``jsonl`` file: the texts of ``columns`` (2 or more: anchor, positive[,
    negative]) and, with ``score_column``, a score per pair (checked against ``score_range`` when given).

    TSV fields are not quoted (a tab or newline cannot occur in one); CSV uses standard double quotes. With
    ``has_header`` (tsv/csv) columns are named by the first line, otherwise numbered from 0. JSON lines: one
    object per line, columns are its keys. A row with another field count, a missing column, an empty text or a
    score that is not a number (in range) is a :class:`ConfigError` naming the file, line and column.
    """
    if format not in ("tsv", "csv", "jsonl"):
        raise ConfigError(FORMAT_FIELD, f"{format!r} is not a pair file format", "choose tsv, csv or jsonl")
    names = _checked_columns(columns, score_column)
    score_name = None if score_column is None else str(score_column)
    limits = _checked_score_range(score_range)
    path = _existing_file(path)
    if format == "jsonl":
        return _pairs_from_records(((f"line {number}", record) for number, record in jsonl_records(
            path, encoding, '{"anchor": ..., "positive": ...}')), path, names, score_name, limits)
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if format == "tsv" else (",", csv.QUOTE_MINIMAL)
    records = _delimited_records(path, delimiter, quoting, encoding)
    if not records:
        raise _no_rows(path)
    if has_header:
        header, records = [name.strip() for name in records[0][1]], records[1:]
    else:
        header = [str(i) for i in range(len(records[0][1]))]
    where = "header" if has_header else "first row (no header: columns are numbered from 0)"
    for field, column in [*((COLUMNS_FIELD, c) for c in names), *([(SCORE_FIELD, score_name)] if score_name else [])]:
        if column not in header:
            raise ConfigError(field, f"column {column!r} is not in {path}; its {where} has columns "
                              f"{_shorten([repr(c) for c in header])}", "name the source's columns in its options")

    def keyed() -> Iterator[tuple[str, dict[str, str]]]:
        kind = "tab-separated" if format == "tsv" else "comma-separated"
        for number, fields in records:
            if len(fields) != len(header):
                raise ConfigError(FORMAT_FIELD, f"{path} line {number} has {len(fields)} {kind} fields, expected "
                                  f"{len(header)} as in its {'header' if has_header else 'first row'}",
                                  "fix the row, or check the source's format and has_header")
            yield f"line {number}", dict(zip(header, fields))

    return _pairs_from_records(keyed(), path, names, score_name, limits)


def read_stsb_pairs(path: str | Path, encoding: str = "utf-8") -> TextPairsDataset:
    """The STS Benchmark file ``path`` (:func:`read_stsb`: checked rows, scores 0-5) as scored pairs."""
    return TextPairsDataset.from_scored(read_stsb(path, encoding))


def read_hf_pairs(name: str, *, split: str, config: str | None = None,
                  columns: Sequence[str] = DEFAULT_COLUMNS, score_column: str | None = None,
                  score_range: Sequence[float] | None = None, cache_dir: str | None = None) -> TextPairsDataset:
    """Items from a Hugging Face data set: ``datasets.load_dataset(name, config, split=split)`` (network or a
    filled cache; a local folder of parquet/JSON files works offline), columns as in :func:`read_pair_file`.
    E.g. ``sentence-transformers/all-nli``, config ``triplet``, columns ``[anchor, positive, negative]``;
    ``sentence-transformers/stsb`` with ``[sentence1, sentence2]`` and score column ``score`` (0 to 1)."""
    names = _checked_columns(columns, score_column)
    limits = _checked_score_range(score_range)
    dataset, source = load_hf_split(name, split=split, config=config, cache_dir=cache_dir,
                                    example="sentence-transformers/all-nli")
    wanted = names + ([str(score_column)] if score_column is not None else [])
    present = list(dataset.column_names)
    for column in wanted:
        if column not in present:
            field = SCORE_FIELD if column == str(score_column) and score_column is not None else COLUMNS_FIELD
            raise ConfigError(field, f"column {column!r} is not in {source}; it has columns "
                              f"{_shorten([repr(c) for c in present])}", "name the source's columns in its options")
    values = [dataset[column] for column in wanted]  # whole columns at once: fast, unlike row by row
    # Row numbers are 1-based like file lines, so messages read the same across formats.
    records = ((f"row {number}", dict(zip(wanted, row))) for number, row in enumerate(zip(*values), start=1))
    return _pairs_from_records(records, source, names, None if score_column is None else str(score_column), limits)


def read_snli(root: str | Path, splits: str | Sequence[str] = ("dev", "test"), hard_negatives: bool = True,
              encoding: str = "utf-8") -> TextPairsDataset:
    """SNLI's line-aligned ``s1.<split>`` (premise), ``s2.<split>`` (hypothesis), ``labels.<split>`` files under
    ``root`` as ``(premise, entailment[, contradiction])`` items (see the module doc for the grouping by premise
    and the premises dropped with ``hard_negatives``). Files of one split with different line counts, an empty
    sentence or a label other than entailment, neutral, contradiction is a :class:`ConfigError` naming the file
    and line."""
    if not isinstance(hard_negatives, bool):
        raise ConfigError("data.options.hard_negatives", f"must be true or false, got {hard_negatives!r}")
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise ConfigError(ROOT_FIELD, f"{root} is not a folder", "point it at the folder of SNLI's s1.*, s2.*, "
                          "labels.* files")
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits:
        raise ConfigError(SPLITS_FIELD, "is empty", "name the SNLI splits to read, e.g. [dev, test]")
    groups: dict[str, dict[str, list[str]]] = {}  # premise -> label -> hypotheses, in first-seen order
    for split in splits:
        paths = [root / f"{name}.{split}" for name in SNLI_FILES]
        for path in paths:
            if not path.is_file():
                present = sorted(p.suffix[1:] for p in root.glob("s1.*"))
                raise ConfigError(ROOT_FIELD, f"SNLI split {split!r} expects {path}, which does not exist",
                                  f"the splits of {root} are {present or 'none'}")
        premises, hypotheses, labels = ([line for _, line in _read_lines(path, encoding)] for path in paths)
        if not len(premises) == len(hypotheses) == len(labels):
            raise ConfigError(ROOT_FIELD, f"SNLI files of split {split!r} differ in length: {paths[0]} has "
                              f"{len(premises)} lines, {paths[1]} {len(hypotheses)}, {paths[2]} {len(labels)}",
                              "line i of each file is one pair: use the three files of one split as released")
        for number, (premise, hypothesis, label) in enumerate(zip(premises, hypotheses, labels), start=1):
            label = label.strip()
            if label not in SNLI_LABELS:
                raise ConfigError(ROOT_FIELD, f"{paths[2]} line {number} has label {label!r}, not one of "
                                  f"{', '.join(SNLI_LABELS)}", "remove the pair (SNLI marks pairs without a gold "
                                  "label with '-')")
            premise, hypothesis = premise.strip(), hypothesis.strip()
            for path, text in ((paths[0], premise), (paths[1], hypothesis)):
                if not text:
                    raise ConfigError(ROOT_FIELD, f"{path} line {number} is an empty "
                                      f"{'premise' if path is paths[0] else 'hypothesis'}", "remove the pair")
            groups.setdefault(premise, {}).setdefault(label, []).append(hypothesis)
    rows = []
    for premise, by_label in groups.items():
        contradictions = by_label.get("contradiction", [])
        if hard_negatives and not contradictions:
            continue
        for i, entailment in enumerate(by_label.get("entailment", [])):
            rows.append((premise, entailment, contradictions[i % len(contradictions)]) if hard_negatives
                        else (premise, entailment))
    source = f"{root} SNLI {'+'.join(splits)}"
    if not rows:
        raise ConfigError(ROOT_FIELD, f"{source} has no premise with an entailment"
                          + (" and a contradiction" if hard_negatives else ""), "check the files")
    return TextPairsDataset(rows, source=source)


def load_pairs(format: str, root: str | Path, splits: str | Sequence[str] | None = None,
               **options: Any) -> TextPairsDataset:
    """One source of items: ``format`` (:data:`PAIR_FORMATS`), ``root`` (a file, a folder of split files, or for
    ``hf`` the data set's name), ``splits`` (read in order and concatenated; None: ``root`` is the file) and the
    format's reader ``options`` (None-valued ones dropped). Folder files: SNLI's ``s1.<split>``..., STS-B's
    ``sts-<split>.csv``, otherwise ``<split>.<format>``."""
    if format not in PAIR_FORMATS:
        raise ConfigError(FORMAT_FIELD, f"unknown pair format {format!r}", f"choose one of {', '.join(PAIR_FORMATS)}")
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(PAIR_FORMATS[format]))
    if unknown:
        raise ConfigError(f"data.options.{unknown[0]}", f"is not an option of pair format {format!r}",
                          f"options of {format}: {', '.join(PAIR_FORMATS[format])}")
    if root is None or not str(root).strip():
        raise ConfigError(ROOT_FIELD, "is not set", "give the data file or folder (hf: the data set's name)")
    names = [splits] if isinstance(splits, str) else list(splits or [])
    if format == "snli":
        return read_snli(root, names, **options)
    if not names:
        if format == "hf" or not Path(str(root)).expanduser().is_file():
            raise ConfigError(SPLITS_FIELD, f"is not set and {root} is not a file",
                              "name the splits to read, e.g. [train]")
        names = [None]
    elif format != "hf" and len(names) > 1 and Path(str(root)).expanduser().is_file():
        raise ConfigError(SPLITS_FIELD, f"names {names} but {root} is one file", "point root at a folder of split "
                          "files, or read one split")
    parts = []
    for split in names:
        if format == "hf":
            parts.append(read_hf_pairs(str(root), split=split, **options))
        elif format == "stsb":
            parts.append(read_stsb_pairs(stsb_file(root, split or "train"), **options))
        else:
            path = root if split is None else resolve_split_path(format, root, split)
            parts.append(read_pair_file(path, format, **options))
    return TextPairsDataset.concat(parts)


def anchor_holdout(anchors: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, held out)`` item indices: a seeded ``fraction`` of the items, taken as whole groups of one anchor
    text, so a held-out anchor (an SNLI premise has several items) is never trained on."""
    groups: dict[str, list[int]] = {}
    for index, anchor in enumerate(anchors):
        groups.setdefault(anchor, []).append(index)
    members = list(groups.values())
    target, held = math.ceil(fraction * len(anchors)), []
    for group in torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist():
        if len(held) >= target:
            break
        held.extend(members[group])
    if len(held) >= len(anchors):
        raise ConfigError("data.val_fraction", f"{fraction} of {len(anchors)} training items holds out all of them",
                          "choose a smaller fraction, or give a val source")
    kept = set(held)
    return [i for i in range(len(anchors)) if i not in kept], sorted(held)


# --------------------------------------------------------------------------------------------- batches


class PairCollate(TokenizeCollate):
    """DataLoader ``collate_fn`` of :class:`TextPairsDataset` items: all K columns of the B items tokenised in ONE
    tokenizer call (one padded tensor, so the encoder runs once per step), truncated to ``max_length`` and padded
    to the longest text of the batch.

    Returns ``input_ids [K*B, T]``, ``attention_mask [K*B, T]`` (and ``token_type_ids [K*B, T]`` when the
    tokenizer makes them), rows column-major (rows ``[0, B)`` the anchors, ``[B, 2B)`` the positives, ``[2B, 3B)``
    the hard negatives); ``num_columns`` K (a Python int) and, for scored pairs, ``score [B]`` float32. A class, so
    it pickles into loader workers.
    """

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not batch:
            raise ValueError("empty batch")
        k = len(batch[0]["texts"])
        if any(len(item["texts"]) != k for item in batch):
            raise ValueError(f"items of one batch differ in their number of texts (the first has {k})")
        texts = [item["texts"][column] for column in range(k) for item in batch]
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        out: dict[str, Any] = dict(encoded.items())
        out["num_columns"] = k
        if "score" in batch[0]:
            out["score"] = torch.tensor([float(item["score"]) for item in batch], dtype=torch.float32)
        return out


# --------------------------------------------------------------------------------------------- DataModule

SOURCE_KEYS = ("format", "root", "splits", "options")
ROLES = ("train", "val", "test")


def _checked_source(role: str, spec: Any) -> dict[str, Any] | None:
    """A source's config as ``{format, root, splits: list | None, options: dict}``; None for ``val: null``."""
    if spec is None and role == "val":
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"data.{role}", f"expected a source {{format, root, splits, options}}, got {spec!r}",
                          "e.g. {format: stsb, root: ../shared/data/text/stsbenchmark, splits: [dev]}")
    unknown = sorted(set(spec) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"data.{role}.{unknown[0]}", "is not a key of a pair source",
                          f"keys: {', '.join(SOURCE_KEYS)}")
    format = spec.get("format")
    if format not in PAIR_FORMATS:
        raise ConfigError(f"data.{role}.format", f"unknown pair format {format!r}",
                          f"choose one of {', '.join(PAIR_FORMATS)}")
    if not spec.get("root") or not str(spec["root"]).strip():
        raise ConfigError(f"data.{role}.root", "is not set", "give the data file or folder (hf: the data set's name)")
    splits = spec.get("splits")
    splits = [splits] if isinstance(splits, str) else splits
    if splits is not None and (not isinstance(splits, Sequence) or not all(isinstance(s, str) for s in splits)):
        raise ConfigError(f"data.{role}.splits", f"expected a list of split names, got {splits!r}", "e.g. [dev, test]")
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"data.{role}.options", f"expected a mapping of reader options, got {options!r}")
    return {"format": format, "root": str(spec["root"]), "splits": None if splits is None else list(splits),
            "options": {key: value for key, value in options.items() if value is not None}}


def _in_source(err: ConfigError, role: str) -> ConfigError:
    """``err`` with its field moved under the source (``data.root`` -> ``data.train.root``)."""
    field = f"data.{role}.{err.field[len('data.'):]}" if err.field.startswith("data.") else err.field
    return ConfigError(field, str(err)[len(err.field) + 2:])


@register_datamodule("pairs")
class PairsDataModule(TextDataModule):
    """Contrastive sentence-embedding data: ``train``, ``val`` and ``test`` sources, each
    ``{format, root, splits, options}`` read by :func:`load_pairs` (e.g. SNLI triplets to train on, STS-B dev to
    validate and STS-B test to test, scored). Batches: :class:`PairCollate`'s (``input_ids [K*B, T]``, ...).

    Validation: ``holdout`` (default) validates on the ``val`` source, or, with ``val: null``, on a seeded
    ``val_fraction`` of train taken as whole anchors (:func:`anchor_holdout`); ``none``; ``test`` (opt-in, warns).
    The tokenizer is the encoder's (``tokenizer``/``max_length``, as :class:`TextDataModule`); the seeded resumable
    training order and the DDP-sharded evaluation loaders are the base class's. No classes: ``class_names`` is
    empty and the items are unlabelled.
    """

    labelled = False

    def __init__(self, train: Mapping[str, Any] | None = None, test: Mapping[str, Any] | None = None,
                 val: Mapping[str, Any] | None = None, tokenizer: str | None = None, max_length: int | None = None,
                 val_fraction: float = 0.05, **kwargs: Any):
        # TextDataModule's constructor takes one labelled format; these sources share only its tokenising.
        ClassificationDataModule.__init__(self, **kwargs)
        for role, spec in (("train", train), ("test", test)):
            if spec is None:
                raise ConfigError(f"data.{role}", "is not set", "give a source {format, root, splits, options}")
        self.sources = {role: _checked_source(role, spec) for role, spec in zip(ROLES, (train, val, test))}
        self.holdout_from_train = self.validation == "holdout" and self.sources["val"] is None
        if self.holdout_from_train:
            check_fraction("data.val_fraction", val_fraction)
        self.val_fraction = val_fraction if self.holdout_from_train else 0.0
        self.tokenizer_name, self.max_length = tokenizer, max_length

    def _used_roles(self) -> list[str]:
        uses_val = self.validation == "holdout" and self.sources["val"] is not None
        return [role for role in ROLES if role != "val" or uses_val]

    def _load(self, role: str) -> TextPairsDataset:
        spec = self.sources[role]
        try:
            return load_pairs(spec["format"], spec["root"], spec["splits"], **spec["options"])
        except ConfigError as err:
            raise _in_source(err, role) from None

    def prepare_data(self) -> None:
        """Once per node (local rank 0), before :meth:`setup` on every rank: the one download of each Hugging Face
        source; local files need nothing."""
        for role in self._used_roles():
            if self.sources[role]["format"] == "hf":
                self._load(role)

    def _build(self) -> None:
        from mrl.encoders import TEXT_PREFIX
        from mrl.encoders.text import load_tokenizer

        if self.tokenizer_name is None or self.max_length is None:
            raise ConfigError("data.tokenizer", "is not set, so the texts cannot be tokenised",
                              "set data.tokenizer=${model.backbone.name} and data.max_length (the presets do)")
        self.collate_fn = PairCollate(load_tokenizer(self.tokenizer_name.removeprefix(TEXT_PREFIX)), self.max_length)
        train, test = self._load("train"), self._load("test")
        holdout: Dataset | None = None
        if self.holdout_from_train:
            fit, held = anchor_holdout(train.anchors, self.val_fraction, self.seed)
            self.train_set, holdout = Subset(train, fit), Subset(train, held)
        else:
            self.train_set = train
            if "val" in self._used_roles():
                holdout = self._load("val")
        self.train_eval_set, self.test_set = self.train_set, test
        self._assign_validation(holdout, test)

    def split_signature(self) -> dict[str, Any]:
        """The base's, plus what each used source reads (format, splits, options; not the root, which differs
        between machines, nor the cache folder)."""
        signature = ClassificationDataModule.split_signature(self)
        for role in ROLES:
            spec = self.sources[role] if role in self._used_roles() else None
            signature[role] = None if spec is None else {
                "format": spec["format"], "splits": spec["splits"],
                "options": {k: v for k, v in spec["options"].items() if k != "cache_dir"}}
        return signature
