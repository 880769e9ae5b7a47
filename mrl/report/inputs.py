"""The files a study's report reads: CSV tables (numbers parsed, checked against their expected columns),
Hydra YAML records and Lightning's CSV log (the validation curve). A file that does not parse is a one-line
:class:`~mrl.errors.ConfigError` naming it."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrl.errors import ConfigError

REWRITE = "re-run the stage that wrote it, or move it aside to leave it out of the report"
# Lightning's CSVLogger column of the validation top-1 at one size (val/top1_mean and the like do not match)
VAL_COLUMN = re.compile(r"^val/(?:zero_shot_)?top1@(\d+)$")


def _value(text: str) -> Any:
    """A CSV cell: int, float, ``None`` for an empty cell, else the string unchanged."""
    s = text.strip()
    if s == "":
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def read_csv(path: str | Path, required: Sequence[str] = (), integer: Sequence[str] = (),
             numeric: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a CSV file as dicts, numbers parsed (``""`` -> ``None``).

    A file that does not parse is a :class:`ConfigError` whose field is the file: not UTF-8 text, no header,
    a row with more or fewer fields than the header, a ``required`` column absent, or a cell of an ``integer``
    (``numeric``) column that is not an integer (a number)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise ConfigError(str(path), "has no header row", REWRITE)
            rows = []
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise ConfigError(str(path), f"line {reader.line_num} has {len(cells)} fields, the header has "
                                      f"{len(header)}", REWRITE)
                rows.append({h: _value(c) for h, c in zip(header, cells)})
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(str(path), f"is not a CSV table ({err})", REWRITE) from None
    absent = [c for c in required if c not in header]
    if absent:
        raise ConfigError(str(path), f"has no column {', '.join(absent)} (its columns: {', '.join(header)})", REWRITE)
    for column, kind, ok in [(c, "an integer", int) for c in integer] + [(c, "a number", (int, float))
                                                                           for c in numeric]:
        bad = [r[column] for r in rows if isinstance(r[column], bool) or not isinstance(r[column], ok)]
        if bad:
            raise ConfigError(str(path), f"column {column} holds {bad[0]!r}, not {kind}", REWRITE)
    return rows


def _load_yaml(path: Path) -> Any:
    """A YAML file as plain containers, interpolations left as written; one that does not parse is a
    :class:`ConfigError` naming it."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as err:
        raise ConfigError(str(path), f"is not valid YAML ({' '.join(str(err).split())})", REWRITE) from None


def _load_overrides(path: Path) -> list[str]:
    """The command-line overrides Hydra recorded in ``.hydra/overrides.yaml``: a list."""
    overrides = _load_yaml(path)
    if not isinstance(overrides, list):
        raise ConfigError(str(path), f"holds a {type(overrides).__name__}, not Hydra's list of overrides", REWRITE)
    return [str(o) for o in overrides]


def _get(cfg: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, Mapping):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: cfg}


def read_val_curve(path: str | Path) -> dict[int, dict[int, float]]:
    """The validation top-1 per size and epoch in Lightning's ``csv/metrics.csv``: ``{size: {epoch: top-1}}``
    from the rows whose ``val/top1@<size>`` cell is filled (the training-step rows leave it empty), keyed by
    their ``epoch`` cell; empty when nothing was validated (``data.validation=none``, or not yet). An epoch
    validated twice (a resumed run) keeps its last row, the one the run went on from. A filled cell that is not
    a number, or its row's epoch not an integer, is a :class:`ConfigError` naming the file."""
    rows = read_csv(path)
    columns = {int(m.group(1)): c for c in (rows[0] if rows else {}) for m in [VAL_COLUMN.match(c)] if m}
    curve: dict[int, dict[int, float]] = {}
    for size, column in sorted(columns.items()):
        for r in rows:
            v = r[column]
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(str(path), f"column {column} holds {v!r}, not a number", REWRITE)
            if not isinstance(r.get("epoch"), int):
                raise ConfigError(str(path), f"a row with {column} = {v} has epoch {r.get('epoch')!r}, not an "
                                  "integer", REWRITE)
            curve.setdefault(size, {})[r["epoch"]] = v
    return curve
