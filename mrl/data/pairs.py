"""Sentence-pair data: what contrastive Matryoshka training and the STS evaluation read.

* :class:`ScoredPairs` -- pairs of sentences with a similarity score (STS Benchmark), the input of CoSENT
  training and of the STS evaluation; :func:`read_stsb` reads the STS Benchmark's ``sts-{train,dev,test}.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrl.data.text import _existing_file, _no_rows, _read_lines
from mrl.errors import ConfigError

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
        raise ConfigError("data.split", f"STS Benchmark has no split {split!r}", f"choose one of {sorted(STSB_SPLIT_FILES)}")
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
