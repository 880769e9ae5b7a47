"""Text classification data: checked readers for a few file formats, and a tokenising collate function.

Every reader returns a :class:`TextClassificationDataset` (``texts``, ``labels``, ``class_names``) and checks
the whole file while reading, so a bad row is a one-line :class:`ConfigError` naming the file and line before
any training starts. Formats (``TEXT_FORMATS``):

* ``trec``    -- TREC question classification, lines ``COARSE:fine question`` (latin-1), coarse or fine labels;
* ``sst2``    -- SST-2 sentiment, lines ``sentence<TAB>label`` with labels 0 (negative) and 1 (positive);
* ``ag_news`` -- AG News CSV ``"class","title","description"``, classes 1..4 named in ``classes.txt``;
* ``tsv``, ``csv``, ``jsonl`` -- generic files with a text column and a label column;
* ``hf``      -- a Hugging Face ``datasets`` dataset by name (needs ``pip install datasets`` and network/cache).

:func:`load_text_splits` reads several splits and hands the first split's class list to the others, so class
indices mean the same thing in train and test. :class:`TokenizeCollate` tokenises a batch inside the DataLoader
worker, padding only to the longest text of that batch.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mrl.errors import ConfigError

ROOT_FIELD = "data.root"
FORMAT_FIELD = "data.format"
TEXT_FIELD = "data.text_column"
LABEL_FIELD = "data.label_column"
CLASS_NAMES_FIELD = "data.class_names"
MAX_LENGTH_FIELD = "data.max_length"

TREC_LABEL_LEVELS = ("coarse", "fine")
SST2_CLASSES = ("negative", "positive")
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")

# Dataset folders hold one file per split; generic formats read ``<root>/<split>.<format>`` from a folder.
SPLIT_FILES: dict[str, dict[str, str]] = {
    "trec": {"train": "train_5500.label", "test": "TREC_10.label"},
    "sst2": {"train": "sentiment-train", "dev": "sentiment-dev", "val": "sentiment-dev",
             "validation": "sentiment-dev", "test": "sentiment-test"},
    "ag_news": {"train": "train.csv", "test": "test.csv"},
}

_INTEGER = re.compile(r"[+-]?\d+")
# ``COARSE:fine question``; the fine part never contains spaces, the question may be anything non-empty.
_TREC_LINE = re.compile(r"(?P<coarse>[^\s:]+):(?P<fine>\S+)(?:\s+(?P<text>.*))?")


class TextClassificationDataset(Dataset):
    """Texts with integer class labels; items are ``{"text": str, "label": int}``.

    ``class_names[i]`` names label ``i``. ``source`` (a path or dataset name) only serves messages and repr.
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int], class_names: Sequence[str],
                 source: str | Path | None = None):
        self.texts = list(texts)
        self.labels = [int(label) for label in labels]
        self.class_names = [str(name) for name in class_names]
        self.source = None if source is None else str(source)
        # These are programming errors (readers already reported bad rows), hence plain ValueError.
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"duplicate class names in {self.class_names}")
        bad = [label for label in self.labels if not 0 <= label < len(self.class_names)]
        if bad:
            raise ValueError(f"label {bad[0]} is outside 0..{len(self.class_names) - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.texts[index], "label": self.labels[index]}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        """Number of rows per class name, in class-index order (classes with no rows count 0)."""
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return dict(zip(self.class_names, counts))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} rows, {self.num_classes} classes"
                + (f", from {self.source})" if self.source else ")"))


# --------------------------------------------------------------------------------------------- helpers


def _checked_class_names(class_names: Sequence[str] | None) -> list[str] | None:
    """``class_names`` as a list of distinct non-empty strings, or None when not given."""
    if class_names is None:
        return None
    names = checked_name_list(class_names, CLASS_NAMES_FIELD, "class names", "e.g. [negative, positive]",
                              "list one name per class")
    if not names:
        raise ConfigError(CLASS_NAMES_FIELD, "is an empty list", "list one name per class, or leave it unset")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(CLASS_NAMES_FIELD, f"has duplicate names {duplicates}", "list each class once")
    return names


def checked_name_list(value: Any, field: str, what: str, example: str, fix: str) -> list[str]:
    """``value`` (config field ``field``, a list of ``what``) as a list of stripped non-empty strings; integers
    (column positions) become strings. Anything else stops with one line naming the field, ``example`` and ``fix``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(field, f"expected a list of {what}, got {value!r}", f"write it as a list, {example}")
    names = []
    for name in value:
        if isinstance(name, bool) or not isinstance(name, (str, int)) or not str(name).strip():
            raise ConfigError(field, f"{what} must be non-empty strings, got {name!r}", fix)
        names.append(str(name).strip())
    return names


def _shorten(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_integer(raw: str | int) -> bool:
    return isinstance(raw, int) or bool(_INTEGER.fullmatch(raw))


def _build_dataset(rows: list[tuple[str, str | int, int]], source: str | Path,
                   class_names: Sequence[str] | None) -> TextClassificationDataset:
    """Turn ``(text, raw_label, line)`` rows into a dataset, mapping raw labels to class indices.

    Without ``class_names`` the class list comes from the labels: integer labels are indices 0..C-1 (named
    ``"0"``..), string labels become sorted class names. With ``class_names`` (given by the user or by the train
    split) labels that all equal class names map by name, otherwise integer labels are indices into the list.
    A label outside the label set is a :class:`ConfigError` naming the label, file and line.
    """
    if not rows:
        raise ConfigError(ROOT_FIELD, f"{source} has no data rows", "point data.root at a non-empty file")
    names = _checked_class_names(class_names)
    all_integers = all(_is_integer(raw) for _, raw, _ in rows)

    if names is None:
        if all_integers:
            values = [int(raw) for _, raw, _ in rows]
            negative = next(((raw, line) for (_, raw, line), v in zip(rows, values) if v < 0), None)
            if negative:
                raise ConfigError(LABEL_FIELD, f"label {negative[0]} at {source} line {negative[1]} is negative",
                                  "integer labels are class indices 0..C-1")
            missing = sorted(set(range(max(values) + 1)) - set(values))
            if missing:
                raise ConfigError(
                    LABEL_FIELD, f"integer labels in {source} are class indices 0..{max(values)} but "
                    + (f"index {missing[0]} never occurs" if len(missing) == 1
                       else f"indices {_shorten([str(m) for m in missing])} never occur"),
                    "renumber the labels from 0, or give data.class_names (integer labels index into it)")
            names = [str(i) for i in range(max(values) + 1)]
            by_name = False
        else:
            names = sorted({str(raw) for _, raw, _ in rows})
            by_name = True
        if len(names) < 2:
            raise ConfigError(LABEL_FIELD, f"{source} has a single class ({names[0]!r})",
                              "a classifier needs at least two classes: check data.label_column")
    else:
        name_set = set(names)
        by_name = all(str(raw) in name_set for _, raw, _ in rows) or not all_integers

    index_of = {name: i for i, name in enumerate(names)}
    texts, labels = [], []
    for text, raw, line in rows:
        label = index_of.get(str(raw)) if by_name else int(raw)
        if label is None or not 0 <= label < len(names):
            raise ConfigError(
                LABEL_FIELD, f"label {str(raw)!r} at {source} line {line} is not in the label set "
                f"({_shorten(names)}, or indices 0..{len(names) - 1})",
                "fix the row, or the class list (data.class_names or the train split's labels)")
        texts.append(text)
        labels.append(label)
    return TextClassificationDataset(texts, labels, names, source=source)


def _checked_text(text: Any, source: str | Path, line: int | str, column: str | int, field: str = TEXT_FIELD,
                  fix: str = "check data.text_column") -> str:
    """A row's text, stripped; a value that is not a string, or is empty, stops with one line naming the config
    ``field``, ``source``, ``line`` (a number, or a place such as ``"row 3"``) and ``column``."""
    where = f"line {line}" if isinstance(line, int) else line
    if not isinstance(text, str):
        raise ConfigError(field, f"text column {column!r} at {source} {where} holds {type(text).__name__} {text!r}, "
                          "not a string", fix)
    text = text.strip()
    if not text:
        raise ConfigError(field, f"empty text in column {column!r} at {source} {where}", "remove or fill the row")
    return text


def _checked_raw_label(label: Any, source: str | Path, line: int, column: str | int) -> str | int:
    if isinstance(label, str):
        label = label.strip()
        if label:
            return label
    elif isinstance(label, int) and not isinstance(label, bool):
        return label
    raise ConfigError(LABEL_FIELD, f"label column {column!r} at {source} line {line} holds {label!r}, "
                      "not a class name or integer", "fix the row, or check data.label_column")


def _existing_file(path: str | Path) -> Path:
    if path is None or str(path).strip() == "":
        raise ConfigError(ROOT_FIELD, "is not set", "point it at the data file or folder")
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(ROOT_FIELD, f"{path} does not exist", "point data.root at the data file or folder")
    if not path.is_file():
        raise ConfigError(ROOT_FIELD, f"{path} is not a file", "point data.root at the data file")
    return path


def _read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` pairs without line ends; undecodable bytes are a :class:`ConfigError`."""
    # utf-8-sig drops a byte-order mark (Excel writes one) and otherwise reads plain UTF-8.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with open(path, encoding=codec, newline="") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        # The decoder's position is within a buffered chunk; find the line by decoding line by line instead.
        bad_line = next((number for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1)
                         if not _decodes(raw, codec)), None)
        where = f" line {bad_line}" if bad_line else ""
        raise ConfigError(ROOT_FIELD, f"{path}{where} is not valid {encoding} text ({exc.reason})",
                          "re-save the file as UTF-8, or set data.encoding") from None
    except LookupError:
        raise ConfigError("data.encoding", f"unknown encoding {encoding!r}", "use e.g. utf-8 or latin-1") from None


def _decodes(raw: bytes, codec: str) -> bool:
    try:
        raw.decode(codec)
        return True
    except UnicodeDecodeError:
        return False


def _no_rows(path: Path) -> ConfigError:
    return ConfigError(ROOT_FIELD, f"{path} is empty (no data rows)", "point data.root at a file with data")


def _delimited_records(path: Path, delimiter: str, quoting: int, encoding: str) -> list[tuple[int, list[str]]]:
    """Non-blank records of a tsv/csv file, each with the line it starts on."""
    # csv.reader takes an iterator of lines; recording each physical line number lets a record report the
    # line where it starts even when a quoted field spans several lines.
    line_numbers: list[int] = []

    def raw_lines() -> Iterator[str]:
        for number, line in _read_lines(path, encoding):
            line_numbers.append(number)
            yield line + "\n"

    records, consumed = [], 0
    try:
        for fields in csv.reader(raw_lines(), delimiter=delimiter, quoting=quoting):
            start = line_numbers[consumed] if consumed < len(line_numbers) else len(line_numbers)
            consumed = len(line_numbers)
            if fields and not (len(fields) == 1 and not fields[0].strip()):  # blank lines are not rows
                records.append((start, fields))
    except csv.Error as exc:
        kind = "tab-separated" if delimiter == "\t" else "comma-separated"
        raise ConfigError(FORMAT_FIELD, f"{path} line {len(line_numbers)} is not valid {kind} text ({exc})",
                          "check data.format matches the file") from None
    return records


# --------------------------------------------------------------------------------------------- readers


def read_trec(path: str | Path, *, label_level: str = "coarse", class_names: Sequence[str] | None = None,
              encoding: str = "latin-1") -> TextClassificationDataset:
    """TREC question classification: lines ``COARSE:fine question`` (latin-1, as the original files are).

    ``label_level="coarse"`` gives the 6 coarse classes (ABBR, DESC, ENTY, HUM, LOC, NUM), ``"fine"`` the
    ``COARSE:fine`` labels (50 in the train file). Class names are sorted; pass the train split's
    ``class_names`` when reading the test split so a label unseen in train is an error.
    """
    if label_level not in TREC_LABEL_LEVELS:
        raise ConfigError("data.label_level", f"unknown TREC label level {label_level!r}",
                          f"choose one of {list(TREC_LABEL_LEVELS)}")
    path = _existing_file(path)
    rows = []
    for number, line in _read_lines(path, encoding):
        if not line.strip():
            continue
        match = _TREC_LINE.fullmatch(line.strip())
        if match is None:
            raise ConfigError(FORMAT_FIELD, f"{path} line {number} is not a TREC line 'COARSE:fine question': "
                              f"{line[:60]!r}", "check data.format and data.root")
        if not (match["text"] or "").strip():
            raise ConfigError(TEXT_FIELD, f"empty question at {path} line {number}", "remove or fill the row")
        label = match["coarse"] if label_level == "coarse" else f"{match['coarse']}:{match['fine']}"
        rows.append((match["text"].strip(), label, number))
    if not rows:
        raise _no_rows(path)
    return _build_dataset(rows, path, class_names)


def _read_delimited(path: str | Path, delimiter: str, *, text_column: str | int | None,
                    label_column: str | int | None, has_header: bool, class_names: Sequence[str] | None,
                    encoding: str, quoting: int) -> TextClassificationDataset:
    """Shared reader of tsv and csv files; see :func:`read_tsv`."""
    path = _existing_file(path)
    kind = "tab-separated" if delimiter == "\t" else "comma-separated"
    records = _delimited_records(path, delimiter, quoting, encoding)
    if not records:
        raise _no_rows(path)
    if has_header:
        columns = [name.strip() for name in records[0][1]]
        records = records[1:]
        text_column = "text" if text_column is None else str(text_column)
        label_column = "label" if label_column is None else str(label_column)
    else:
        # Without a header columns are named by position; the default is ``text<sep>label``.
        columns = [str(i) for i in range(len(records[0][1]))]
        text_column = "0" if text_column is None else str(text_column)
        label_column = "1" if label_column is None else str(label_column)
    if not records:
        raise _no_rows(path)
    where = "header" if has_header else "first row (no header: columns are numbered)"
    for field, column in ((TEXT_FIELD, text_column), (LABEL_FIELD, label_column)):
        if column not in columns:
            raise ConfigError(field, f"column {column!r} is not in {path}; its {where} has columns "
                              f"{_shorten([repr(c) for c in columns])}", f"set {field} to one of them")
    text_index, label_index = columns.index(text_column), columns.index(label_column)

    rows = []
    for number, fields in records:
        if len(fields) != len(columns):
            raise ConfigError(FORMAT_FIELD, f"{path} line {number} has {len(fields)} {kind} fields, expected "
                              f"{len(columns)} as in its {'header' if has_header else 'first row'}",
                              "fix the row, or check data.format (tsv or csv) and data.has_header")
        text = _checked_text(fields[text_index], path, number, text_column)
        rows.append((text, _checked_raw_label(fields[label_index], path, number, label_column), number))
    return _build_dataset(rows, path, class_names)


def read_tsv(path: str | Path, *, text_column: str | int | None = None, label_column: str | int | None = None,
             has_header: bool = True, class_names: Sequence[str] | None = None,
             encoding: str = "utf-8") -> TextClassificationDataset:
    """A tab-separated file with a text column and a label column.

    With a header, columns are named by it (defaults ``text`` and ``label``); without one they are numbered
    from 0 (defaults 0 and 1, i.e. ``text<TAB>label``). Fields are not quoted: TSV text often holds unbalanced
    quote characters, and a tab or newline cannot occur inside a field anyway. Labels are class names
    (sorted into the class list) or class indices 0..C-1; ``class_names`` fixes the label set and order.
    """
    return _read_delimited(path, "\t", text_column=text_column, label_column=label_column, has_header=has_header,
                           class_names=class_names, encoding=encoding, quoting=csv.QUOTE_NONE)


def read_csv(path: str | Path, *, text_column: str | int | None = None, label_column: str | int | None = None,
             has_header: bool = True, class_names: Sequence[str] | None = None,
             encoding: str = "utf-8") -> TextClassificationDataset:
    """A comma-separated file (standard double-quote quoting, fields may span lines); see :func:`read_tsv`."""
    return _read_delimited(path, ",", text_column=text_column, label_column=label_column, has_header=has_header,
                           class_names=class_names, encoding=encoding, quoting=csv.QUOTE_MINIMAL)


def jsonl_records(path: Path, encoding: str, example: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file; a line that is not a JSON object stops
    with one line naming the file, the line and the ``example`` object expected."""
    for number, line in _read_lines(path, encoding):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(FORMAT_FIELD, f"{path} line {number} is not valid JSON ({exc.msg})",
                              "each line must be one JSON object; check data.format") from None
        if not isinstance(record, dict):
            raise ConfigError(FORMAT_FIELD, f"{path} line {number} is a JSON {type(record).__name__}, not an object",
                              f"each line must be one JSON object like {example}")
        yield number, record


def read_jsonl(path: str | Path, *, text_column: str = "text", label_column: str = "label",
               class_names: Sequence[str] | None = None, encoding: str = "utf-8") -> TextClassificationDataset:
    """JSON lines: one object per line holding a text string and a label (a class name or an index 0..C-1)."""
    path = _existing_file(path)
    rows = []
    for number, record in jsonl_records(path, encoding, '{"text": ..., "label": ...}'):
        for field, column in ((TEXT_FIELD, text_column), (LABEL_FIELD, label_column)):
            if column not in record:
                keys = _shorten([repr(key) for key in sorted(map(str, record))])
                raise ConfigError(field, f"key {column!r} is missing at {path} line {number}; the row has keys {keys}",
                                  f"set {field} to one of them")
        text = _checked_text(record[text_column], path, number, text_column)
        rows.append((text, _checked_raw_label(record[label_column], path, number, label_column), number))
    if not rows:
        raise _no_rows(path)
    return _build_dataset(rows, path, class_names)


def read_sst2(path: str | Path, *, class_names: Sequence[str] | None = None,
              encoding: str = "utf-8") -> TextClassificationDataset:
    """SST-2 sentiment: lines ``sentence<TAB>label`` with label 0 (negative) or 1 (positive), no header."""
    return read_tsv(path, text_column=0, label_column=1, has_header=False,
                    class_names=SST2_CLASSES if class_names is None else class_names, encoding=encoding)


def _ag_news_class_names(path: Path) -> list[str]:
    classes_file = path.parent / "classes.txt"
    if classes_file.is_file():
        names = [line.strip() for _, line in _read_lines(classes_file, "utf-8") if line.strip()]
        if names:
            return names
    return list(AG_NEWS_CLASSES)


def read_ag_news(path: str | Path, *, class_names: Sequence[str] | None = None,
                 encoding: str = "utf-8") -> TextClassificationDataset:
    """AG News CSV without a header: ``"class","title","description"``, class ids 1..C.

    The text is ``title + " " + description``. Class ids name ``classes.txt`` lines when that file sits next to
    the CSV (otherwise World, Sports, Business, Sci/Tech); ``class_names`` overrides both.
    """
    path = _existing_file(path)
    names = _checked_class_names(class_names) or _ag_news_class_names(path)
    rows = []
    records = _delimited_records(path, ",", csv.QUOTE_MINIMAL, encoding)
    if not records:
        raise _no_rows(path)
    for number, fields in records:
        if len(fields) != 3:
            raise ConfigError(FORMAT_FIELD, f"{path} line {number} has {len(fields)} comma-separated fields, "
                              "expected 3 (class, title, description)", "check data.format and data.root")
        class_id, title, description = fields
        text = _checked_text(f"{title.strip()} {description.strip()}", path, number, "title+description")
        if not _INTEGER.fullmatch(class_id.strip()) or not 1 <= int(class_id) <= len(names):
            raise ConfigError(LABEL_FIELD, f"class id {class_id!r} at {path} line {number} is not in "
                              f"1..{len(names)} ({_shorten(names)})", "fix the row, or the class list")
        rows.append((text, names[int(class_id) - 1], number))
    return _build_dataset(rows, path, names)


def load_hf_split(name: str, *, split: str, config: str | None = None, cache_dir: str | None = None,
                  example: str = "ag_news") -> tuple[Any, str]:
    """``datasets.load_dataset(name, config, split=split)`` and how messages name it (``name/config [split]``);
    every failure (the package missing, offline, an unknown name, config or split) a one-line :class:`ConfigError`
    on ``data.format`` or ``data.root``."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(FORMAT_FIELD, "format 'hf' needs the Hugging Face datasets package, which is not "
                          "installed", "pip install datasets") from None
    if not name or not str(name).strip():
        raise ConfigError(ROOT_FIELD, "is not set", f"give the Hugging Face data set's name, e.g. {example}")
    source = f"{name}" + (f"/{config}" if config else "") + f" [{split}]"
    try:
        dataset = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown name/config/split: all surface as different exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(ROOT_FIELD, f"could not load Hugging Face dataset {source}: {reason}",
                          "check the name, config and split, and network access (or HF_DATASETS_OFFLINE with a "
                          "filled cache)") from None
    return dataset, source


def read_hf(name: str, *, split: str, config: str | None = None, text_column: str = "text",
            label_column: str = "label", class_names: Sequence[str] | None = None,
            cache_dir: str | None = None) -> TextClassificationDataset:
    """A Hugging Face dataset: ``datasets.load_dataset(name, config, split=split)``.

    Needs the ``datasets`` package and network access or a filled cache. A ``ClassLabel`` label column gives
    the class names; otherwise labels are handled as in the generic formats.
    """
    dataset, source = load_hf_split(name, split=split, config=config, cache_dir=cache_dir)
    columns = list(dataset.column_names)
    for field, column in ((TEXT_FIELD, text_column), (LABEL_FIELD, label_column)):
        if column not in columns:
            raise ConfigError(field, f"column {column!r} is not in {source}; it has columns "
                              f"{_shorten([repr(c) for c in columns])}", f"set {field} to one of them")
    label_feature = getattr(dataset, "features", {}).get(label_column)
    feature_names = getattr(label_feature, "names", None)
    if class_names is None and feature_names:
        class_names = list(feature_names)
    rows = []
    # Row numbers are 1-based like file lines, so messages read the same across formats.
    for number, (text, label) in enumerate(zip(dataset[text_column], dataset[label_column]), start=1):
        text = _checked_text(text, source, number, text_column)
        if isinstance(label, int) and label < 0:
            raise ConfigError(LABEL_FIELD, f"label {label} at {source} row {number} is negative",
                              "this split has no labels (e.g. GLUE test splits): use a labelled split")
        rows.append((text, _checked_raw_label(label, source, number, label_column), number))
    return _build_dataset(rows, source, class_names)


TEXT_FORMATS: dict[str, Callable[..., TextClassificationDataset]] = {
    "trec": read_trec,
    "sst2": read_sst2,
    "ag_news": read_ag_news,
    "tsv": read_tsv,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "hf": read_hf,
}


# --------------------------------------------------------------------------------------------- splits


def resolve_split_path(format: str, path: str | Path, split: str) -> Path:
    """The file holding ``split``: ``path`` itself when it is a file, else the split's file inside the folder.

    Dataset folders use their own file names (``SPLIT_FILES``, e.g. trec test -> ``TREC_10.label``); generic
    formats look for ``<split>.<format>`` (``train.csv``, ...).
    """
    if path is None or str(path).strip() == "":
        raise ConfigError(ROOT_FIELD, "is not set", "point it at the data file or folder")
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(ROOT_FIELD, f"{path} does not exist", "point data.root at the data file or folder")
    if path.is_file():
        return path
    split_files = SPLIT_FILES.get(format, {split: f"{split}.{format}"})
    if split not in split_files:
        raise ConfigError(FORMAT_FIELD, f"format {format!r} has no split {split!r}",
                          f"splits of {format}: {', '.join(split_files)}")
    file = path / split_files[split]
    if not file.is_file():
        present = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        fix = (f"put {file.name} in that folder, or point data.root at the {split} file" if format != "ag_news"
               else "the shared AG News copy has only the test split: add the full AG News train.csv to that "
                    "folder, or use only the test split")
        raise ConfigError(ROOT_FIELD, f"{format} split {split!r} expects {file}, which does not exist (the folder "
                          f"holds {_shorten(present) or 'nothing'})", fix)
    return file


def load_text_split(format: str, path: str | Path, split: str, *, class_names: Sequence[str] | None = None,
                    **options: Any) -> TextClassificationDataset:
    """Read one split of a text classification data set.

    ``path`` is a file, or a folder holding one file per split (see :func:`resolve_split_path`); for
    ``format="hf"`` it is the Hugging Face dataset name and ``split`` is passed to ``load_dataset``.
    ``class_names`` fixes the label set (pass the train split's when reading other splits). ``options`` are the
    reader's keyword arguments (``label_level``, ``text_column``, ``label_column``, ``has_header``,
    ``encoding``, ``config``, ...); options set to None are dropped so a caller can pass its whole config.
    """
    if format not in TEXT_FORMATS:
        raise ConfigError(FORMAT_FIELD, f"unknown text format {format!r}",
                          f"choose one of {', '.join(TEXT_FORMATS)}")
    reader = TEXT_FORMATS[format]
    options = {key: value for key, value in options.items() if value is not None}
    accepted = [name for name, p in inspect.signature(reader).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("split", "class_names")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}", f"is not an option of text format {format!r}",
                          f"options of {format}: {', '.join(accepted) or 'none'}")
    if format == "hf":
        return reader(path, split=split, class_names=class_names, **options)
    return reader(resolve_split_path(format, path, split), class_names=class_names, **options)


def load_text_splits(format: str, path: str | Path | Mapping[str, str | Path],
                     splits: Sequence[str] = ("train", "test"), *, class_names: Sequence[str] | None = None,
                     **options: Any) -> dict[str, TextClassificationDataset]:
    """Read several splits; the first one (normally train) fixes the class list for the others.

    ``path`` is one file-or-folder for all splits, or a mapping ``{split: path}``. A label of a later split that
    the first split does not have is a :class:`ConfigError`, so class indices agree across splits.
    """
    if not splits:
        raise ValueError("no splits to load")
    if not isinstance(path, Mapping) and len(splits) > 1 and format != "hf" and Path(str(path)).is_file():
        raise ConfigError(ROOT_FIELD, f"{path} is one file but splits {list(splits)} were asked for",
                          "point data.root at a folder with one file per split")
    loaded: dict[str, TextClassificationDataset] = {}
    shared = class_names
    for split in splits:
        if isinstance(path, Mapping):
            if split not in path:
                raise ConfigError(ROOT_FIELD, f"no path for split {split!r} (paths given for {list(path)})",
                                  f"add a {split} entry")
            split_path = path[split]
        else:
            split_path = path
        dataset = load_text_split(format, split_path, split, class_names=shared, **options)
        shared = dataset.class_names if shared is None else shared
        loaded[split] = dataset
    return loaded


class TokenizeCollate:
    """DataLoader ``collate_fn``: tokenise a list of ``{"text", "label"}`` items in the loader worker.

    Pads to the longest text of the batch (not to ``max_length``), so short batches stay short, and truncates
    longer texts to ``max_length`` tokens. Returns the tokenizer outputs (``input_ids``, ``attention_mask``,
    ``token_type_ids`` where the tokenizer makes them) plus ``"label"``, an int64 tensor [B]. A class rather
    than a closure, so it pickles into worker processes (Hugging Face tokenizers pickle).
    """

    def __init__(self, tokenizer: Callable[..., Mapping[str, torch.Tensor]], max_length: int):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(MAX_LENGTH_FIELD, f"must be an integer >= 2 (room for the special tokens), got "
                              f"{max_length!r}", "set it to e.g. 128")
        model_max = getattr(tokenizer, "model_max_length", None)
        # Tokenizers without a limit report a huge sentinel (about 1e30); only a real limit is checked.
        if isinstance(model_max, int) and model_max < 1_000_000 and max_length > model_max:
            raise ConfigError(MAX_LENGTH_FIELD, f"{max_length} is longer than the tokenizer's model limit of "
                              f"{model_max} tokens", f"set it to at most {model_max}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not batch:
            raise ValueError("empty batch")
        texts = [item["text"] for item in batch]
        labels = torch.tensor([int(item["label"]) for item in batch], dtype=torch.int64)
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        out = {key: value for key, value in encoded.items()}
        out["label"] = labels
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.tokenizer).__name__}, max_length={self.max_length})"
