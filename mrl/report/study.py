"""Collect a study (MRL, MRL-E and FF-k models trained with one recipe) into comparison tables and plots:
the library behind ``scripts/report.py``.

A study directory holds one Hydra run directory per model, named ``mrl``, ``mrle`` and ``ff<k>`` (FF-k:
the fixed-feature baseline trained at size k), and seed replicas of them named ``<model>-seed<s>``
(``mrl-seed43``, ``ff8-seed44``), as ``scripts/cifar10_study.sh`` lays it out; a single run directory is
reported on its own (:func:`collect` tells which it was given). Each run directory has ``metrics_by_dim.csv``
(training's test top-1/top-5 per size), ``.hydra/{config,overrides,hydra}.yaml``, ``csv/metrics.csv``
(Lightning's log, read for the validation curve) and, after the evaluation stage, ``eval/`` with the tables
of :mod:`mrl.evaluation.run` (``classification``, ``retrieval``, ``adaptive_classification``,
``adaptive_retrieval``, and for the full-width FF model ``baselines``). Every number in the report is read
from those files (percentages, as written there); a missing model or table is listed in
:attr:`Study.missing` and left empty, since the study runs in stages. A file that is there but does not
parse is a one-line :class:`~mrl.errors.ConfigError` naming it, raised before anything is written.

The replicas of one model are its seeds (the config's ``seed``, else the folder's suffix; no suffix: seed
42): every table cell is the mean over them, with the sample standard deviation and the count beside it
(:func:`_put`), and :func:`findings_markdown` calls a difference of means a difference only when it exceeds
the spread of the two sides.

::

    from mrl.report.study import collect, write_report
    study = collect("logs/cifar10_24ep")          # or one run: collect("logs/cifar10_24ep/mrl")
    write_report(study, "results/cifar10_24ep", title="CIFAR-10, ResNet-18, 24 epochs")

:func:`load_paper_reference` reads the paper's published ImageNet-1K ResNet-50 numbers
(``results/paper_reference``); an ImageNet study's plots draw them dashed beside ours.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.errors import ConfigError
from mrl.embeddings import read_meta
from mrl.heads import HEADS, model_label
from mrl.report.run_tables import atomic_write_text, new_figure, new_panels, save_figure

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PAPER_DIR = PROJECT_ROOT / "results" / "paper_reference"
PAPER_LABEL = "paper (ResNet-50, ImageNet-1K)"
# the tables read from a run directory: (required columns, integer columns, other numeric columns)
METRICS_COLUMNS = (("dim",), ("dim",), ())
# a training run's headline test metric: top-1 of its classifiers, or zero-shot top-1 of a dual encoder
HEADLINE_COLUMNS = ("top1", "zero_shot_top1")
EVALUATOR_COLUMNS = {
    "classification": (("dim", "top1"), ("dim",), ()),
    "retrieval": (("dim", "top1"), ("dim",), ()),
    "adaptive_classification": (("cap", "accuracy", "expected_dim", "fixed_accuracy", "oracle_accuracy",
                                 "oracle_expected_dim"), ("cap",),
                                ("accuracy", "expected_dim", "fixed_accuracy", "oracle_accuracy",
                                 "oracle_expected_dim")),
    "adaptive_retrieval": (("kind", "D_s", "mflops"), ("D_s",), ("mflops",)),
    "baselines": (("dim",), ("dim",), ()),
    "zero_shot": (("dim", "top1"), ("dim",), ("top1",)),
    "cross_modal_retrieval": (("dim", "rsum"), ("dim",), ("rsum",)),
}
# what a run directory holds and a study folder does not
RUN_MARKERS = (".hydra", "metrics_by_dim.csv", "checkpoints", "embeddings", "eval")
REWRITE = "re-run the stage that wrote it, or move it aside to leave it out of the report"
MODEL_NAME = re.compile(r"^(?:(mrl)|(mrle)|ff(\d+))(?:-seed(\d+))?$")
# the seed of a folder without a -seed<s> suffix and without a config: configs/train.yaml's, the study's first seed
DEFAULT_SEED = 42
# config keys that legitimately differ between the models of a study (not reported as recipe differences)
PER_MODEL_KEYS = ("model.head", "model.nesting_dims", "ckpt_path", "hydra", "seed")
# Lightning's CSVLogger column of the validation top-1 at one size (val/top1_mean and the like do not match)
VAL_COLUMN = re.compile(r"^val/(?:zero_shot_)?top1@(\d+)$")


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------------

@dataclass
class Model:
    """One model folder of a study: a model (``mrl``, ``mrle``, ``ff<k>``) trained with one seed."""

    name: str                              # folder name: mrl, mrle, ff<k>; a seed replica: mrl-seed43, ff8-seed44
    kind: str                              # mrl | mrle | ff
    k: int | None                          # FF-k's size
    path: Path
    seed: int = DEFAULT_SEED               # the config's seed, else the folder's -seed<s>, else DEFAULT_SEED
    config: dict[str, Any] | None = None   # .hydra/config.yaml (unresolved)
    overrides: list[str] | None = None     # .hydra/overrides.yaml
    hydra_overrides: list[str] = field(default_factory=list)  # hydra.* overrides from .hydra/hydra.yaml
    metrics: list[dict[str, Any]] | None = None               # metrics_by_dim.csv
    val_curve: dict[int, dict[int, float]] | None = None      # csv/metrics.csv: {size: {epoch: validation top-1}}
    eval: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # evaluator -> rows of eval/<name>.csv
    eval_command: str | None = None        # eval/command.txt
    eval_config: dict[str, Any] | None = None  # eval/eval_config.yaml
    embed_command: str | None = None       # reconstructed from the embeddings folder's Hydra record
    embed_source: str | None = None

    @property
    def base(self) -> str:
        """The model this folder is a seed replica of: ``mrl``, ``mrle`` or ``ff<k>``."""
        return self.kind if self.k is None else f"ff{self.k}"

    @property
    def label(self) -> str:
        return model_label(self.kind, [self.k])

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def train_command(self) -> str | None:
        if self.overrides is None:
            return None
        return shlex.join(["python", "scripts/train.py", *self.overrides, *self.hydra_overrides])


def _grouped(models: Iterable[Model]) -> list[list[Model]]:
    """The folders grouped by model (MRL, MRL-E, then FF by k), each group its seed replicas by seed."""
    groups: dict[str, list[Model]] = {}
    for m in sorted(models, key=lambda m: ({"mrl": 0, "mrle": 1}.get(m.kind, 2), m.k or 0, m.seed)):
        groups.setdefault(m.base, []).append(m)
    return list(groups.values())


@dataclass
class Study:
    root: Path
    models: dict[str, Model]         # folder name -> model folder (seed replicas included)
    sizes: list[int]                 # rows of the by-size tables: the study's nesting sizes (+ FF and baseline sizes)
    width: int | None                # full embedding width (the largest size)
    config: dict[str, Any] | None    # the reference config (mrl's, else the first found)
    config_from: str | None
    missing: list[str]               # what is absent (a stage not run yet, a failed run)
    notes: list[str]                 # other remarks (recipe differences across models, ...)
    nesting: list[int] = field(default_factory=list)  # MRL's trained sizes (config, else its result files)
    single_run: bool = False         # root is one run directory, not a study folder

    @property
    def name(self) -> str:
        """The study's (or run's) folder name, what its plots and summary are titled by default."""
        return self.root.resolve().name

    @property
    def is_imagenet(self) -> bool:
        return str(_get(self.config, "data.name", "")).lower() == "imagenet"

    @property
    def is_image_text(self) -> bool:
        """A study of dual encoders (``model.task=dual_encoder``): zero-shot and cross-modal tables."""
        return _get(self.config, "model.task") == "dual_encoder"

    def groups(self) -> list[list[Model]]:
        """Every model's seed replicas (:func:`_grouped`): MRL, MRL-E, then FF by k."""
        return _grouped(self.models.values())

    def replicas(self, base: str) -> list[Model]:
        """The seed replicas of model ``base`` (``mrl``, ``ff8``), by seed; empty when it is absent."""
        return next((g for g in self.groups() if g[0].base == base), [])

    def ff_groups(self) -> list[list[Model]]:
        return [g for g in self.groups() if g[0].kind == "ff"]

    def seeds(self) -> dict[str, list[int]]:
        """``{model label: its seeds}`` in :meth:`groups` order."""
        return {g[0].label: [m.seed for m in g] for g in self.groups()}

    def baselines_models(self) -> list[Model]:
        """The seed replicas whose ``eval/baselines.csv`` feed SVD / Rand-LP / Rand-FS: FF-<width>'s that have
        one, else those of the largest FF model that has one."""
        have = [[m for m in g if "baselines" in m.eval] for g in self.ff_groups()]
        have = [g for g in have if g]
        if not have:
            return []
        return next((g for g in have if g[0].k == self.width), have[-1])


def _model_from_dir(path: Path) -> Model | None:
    match = MODEL_NAME.match(path.name)
    if not match:
        return None
    kind = "mrl" if match.group(1) else "mrle" if match.group(2) else "ff"
    return Model(path.name, kind, int(match.group(3)) if kind == "ff" else None, path,
                 int(match.group(4)) if match.group(4) else DEFAULT_SEED)


def _resolve_path(p: str, study_root: Path) -> Path:
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    for base in (PROJECT_ROOT, study_root.parent, study_root):
        if (base / path).exists():
            return base / path
    return path


def _embed_record(model: Model, study_root: Path) -> None:
    """Find the embeddings folder (``<model>/embeddings`` or ``<model>/embed``, else ``eval_config.yaml``'s
    ``embeddings_dir``) and reconstruct its ``scripts/embed.py`` command from its ``command.txt`` or its
    Hydra record (``.hydra/`` in the folder or in a subfolder, e.g. ``embeddings/hydra/.hydra/`` when
    ``hydra.run.dir`` pointed there). The model's own folder first: a study's committed copy reads the same on
    every machine, while ``embeddings_dir`` names where the embeddings were on the machine that made them."""
    candidates = [model.path / "embeddings", model.path / "embed"]
    emb = _get(model.eval_config, "embeddings_dir")
    if emb:
        candidates.append(_resolve_path(str(emb), study_root))
    for d in candidates:
        if (d / "command.txt").is_file():
            model.embed_command = (d / "command.txt").read_text().strip()
            model.embed_source = str(d / "command.txt")
            return
        runs = [d] + (sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else [])
        for run in runs:
            if (run / ".hydra" / "overrides.yaml").is_file():
                overrides = _load_overrides(run / ".hydra" / "overrides.yaml")
                hydra_ov = _hydra_overrides(run)
                model.embed_command = shlex.join(["python", "scripts/embed.py", *overrides, *hydra_ov])
                model.embed_source = str(run / ".hydra" / "overrides.yaml")
                return


def _hydra_overrides(run_dir: Path) -> list[str]:
    """``hydra.*`` command-line overrides (``hydra.run.dir=...``) from ``.hydra/hydra.yaml``, minus
    ``hydra.mode``, which Hydra adds itself."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return []
    ov = _get(_load_yaml(path), "hydra.overrides.hydra") or []
    return [str(o) for o in ov if not str(o).startswith("hydra.mode=")]


def _load_model(model: Model, study_root: Path, missing: list[str], notes: list[str]) -> None:
    hydra = model.path / ".hydra"
    if (hydra / "config.yaml").is_file():
        model.config = _load_yaml(hydra / "config.yaml")
        seed = _get(model.config, "seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            model.seed = seed
    else:
        missing.append(f"{model.name}: .hydra/config.yaml missing")
    if (hydra / "overrides.yaml").is_file():
        model.overrides = _load_overrides(hydra / "overrides.yaml")
        model.hydra_overrides = _hydra_overrides(model.path)
    else:
        missing.append(f"{model.name}: .hydra/overrides.yaml missing (training command unknown)")
    if (model.path / "metrics_by_dim.csv").is_file():
        model.metrics = read_csv(model.path / "metrics_by_dim.csv", *METRICS_COLUMNS)
        header = list(model.metrics[0]) if model.metrics else []
        if not any(c in header for c in HEADLINE_COLUMNS):
            raise ConfigError(str(model.path / "metrics_by_dim.csv"), f"has no column {' or '.join(HEADLINE_COLUMNS)} "
                              f"(its columns: {', '.join(header)})", REWRITE)
    else:
        state = "a checkpoints/last.ckpt exists" if (model.path / "checkpoints" / "last.ckpt").is_file() \
            else "no checkpoints/last.ckpt yet"
        missing.append(f"{model.name}: metrics_by_dim.csv missing: training unfinished or failed ({state})")
    if (model.path / "csv" / "metrics.csv").is_file():
        model.val_curve = read_val_curve(model.path / "csv" / "metrics.csv")
        if not model.val_curve:
            notes.append(f"{model.name}: no validation curve (csv/metrics.csv has no val/top1@<d> values: trained "
                         "with data.validation=none, or not validated yet)")
    else:
        missing.append(f"{model.name}: csv/metrics.csv missing (no validation curve)")
    for name, columns in EVALUATOR_COLUMNS.items():
        if (model.eval_dir / f"{name}.csv").is_file():
            model.eval[name] = read_csv(model.eval_dir / f"{name}.csv", *columns)
    if (model.eval_dir / "command.txt").is_file():
        model.eval_command = (model.eval_dir / "command.txt").read_text().strip()
    if (model.eval_dir / "eval_config.yaml").is_file():
        model.eval_config = _load_yaml(model.eval_dir / "eval_config.yaml")
    _embed_record(model, study_root)
    if model.kind == "ff" and model.config is not None:
        dims = _get(model.config, "model.nesting_dims")
        if isinstance(dims, list) and dims != [model.k]:
            missing.append(f"{model.name}: its config trains sizes {dims}, not [{model.k}] as the folder name says; "
                           f"its FF column entry is skipped")
            model.metrics = None
            model.eval = {k: v for k, v in model.eval.items() if k == "baselines"}


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def _study_nesting(models: Mapping[str, Model]) -> list[int]:
    """MRL's (else MRL-E's) trained sizes: ``model.nesting_dims`` of its config when it is a list, else (``auto``,
    an interpolation) the sizes of its ``metrics_by_dim.csv`` or of ``eval/eval_config.yaml``'s resolved record;
    the first seed replica that records them."""
    for m in (m for g in _grouped(models.values()) for m in g if m.kind in ("mrl", "mrle")):
        for candidate in (_get(m.config, "model.nesting_dims"),
                          [r["dim"] for r in m.metrics or [] if isinstance(r.get("dim"), int)],
                          _get(m.eval_config, "resolved.nesting_dims")):
            dims = _int_list(candidate)
            if dims:
                return dims
    return []


def _check_seeds(root: Path, models: Mapping[str, Model], notes: list[str]) -> None:
    """Two folders of one model with the same seed are a :class:`ConfigError` (one run would count twice in
    the mean); a ``-seed<s>`` suffix that the config's seed contradicts is noted (the config wins)."""
    seen: dict[tuple[str, int], Model] = {}
    for m in sorted(models.values(), key=lambda m: m.name):
        first = seen.setdefault((m.base, m.seed), m)
        if first is not m:
            raise ConfigError(str(root), f"folders {first.name}/ and {m.name}/ are both {m.label} trained with seed "
                              f"{m.seed} (the config's seed, else the folder's -seed<s>, else {DEFAULT_SEED})",
                              "move one of them out of the study folder")
        suffix = MODEL_NAME.match(m.name).group(4)
        if suffix is not None and int(suffix) != m.seed:
            notes.append(f"{m.name}/: its config's seed is {m.seed}, not {int(suffix)} as the folder name says; "
                         f"counted as seed {m.seed}")


def collect_study(study_dir: str | Path) -> Study:
    """Read every model folder of ``study_dir`` (seed replicas included); absent models and tables go to
    ``Study.missing``; two folders of one model and seed are a :class:`ConfigError`."""
    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"study directory {root} does not exist")
    missing: list[str] = []
    notes: list[str] = []
    models: dict[str, Model] = {}
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        model = _model_from_dir(path)
        if model is None:
            if not path.name.startswith("."):
                notes.append(f"{path.name}/: not a model folder (expected mrl, mrle or ff<k>, or <model>-seed<s>), "
                             "ignored")
            continue
        models[model.name] = model
    for model in models.values():
        _load_model(model, root, missing, notes)
    _check_seeds(root, models, notes)
    return _summarise(root, models, missing, notes, single_run=False, plan=read_plan(root))


PLAN_FILE = "plan.txt"


def read_plan(study_dir: Path) -> list[str] | None:
    """The models a study plans (``<study_dir>/plan.txt``, one folder name per line, as the study drivers write
    it; blank lines and ``#`` comments skipped), or None without the file. A line that is not a model folder
    name is a :class:`ConfigError`."""
    path = study_dir / PLAN_FILE
    if not path.is_file():
        return None
    plan: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not MODEL_NAME.match(name):
            raise ConfigError(f"{path}:{number}", f"{name!r} is not a model folder name",
                              "write mrl, mrle or ff<k>, optionally with -seed<s> (e.g. ff8-seed43), one per line")
        if name not in plan:
            plan.append(name)
    return plan


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is one training run directory (it holds a run's own files: ``.hydra/``,
    ``metrics_by_dim.csv``, ``checkpoints/``, ``embeddings/`` or ``eval/``) rather than a study folder."""
    return any((Path(path) / name).exists() for name in RUN_MARKERS)


def _run_identity(root: Path) -> tuple[str, int | None]:
    """``(head, FF size or None)`` of a run directory from its records: the training config, the evaluation's
    resolved config, the embeddings' ``meta.json`` or FF-k's one-row ``metrics_by_dim.csv``; else its folder
    name (``mrl``, ``mrle``, ``ff<k>``)."""
    def load(path: Path, reader) -> Any:
        return reader(path) if path.is_file() else None

    config = load(root / ".hydra" / "config.yaml", _load_yaml)
    resolved = _get(load(root / "eval" / "eval_config.yaml", _load_yaml), "resolved")
    meta = load(root / "embeddings" / "test" / "meta.json", read_meta)
    metrics = load(root / "metrics_by_dim.csv", lambda p: read_csv(p, *METRICS_COLUMNS))
    head = next((h for h in (_get(config, "model.head"), _get(resolved, "head"), _get(meta, "head"))
                 if h in HEADS), None)
    named = _model_from_dir(root)
    if head is None and named is not None:
        return named.kind, named.k
    if head is None:
        raise ConfigError(str(root), "is a run directory whose head is not recorded (no model.head in "
                          ".hydra/config.yaml, eval/eval_config.yaml or embeddings/test/meta.json)",
                          "point the report at a folder written by scripts/train.py, or at a study folder")
    if head != "ff":
        return head, None
    for sizes in (_get(config, "model.nesting_dims"), [_get(config, "model.ff_dim")], _get(resolved, "nesting_dims"),
                  _get(meta, "nesting_dims"), [r["dim"] for r in metrics or []]):
        if _int_list(sizes) and len(sizes) == 1:
            return head, sizes[0]
    raise ConfigError(str(root), "is an FF run whose size k is not recorded", "name its folder ff<k>")


def collect_run(run_dir: str | Path) -> Study:
    """Read one run directory (its training, embedding and evaluation records) as a study of one model."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    kind, k = _run_identity(root)
    named = _model_from_dir(root)  # a replica's folder name carries its seed, the fallback for a missing config
    model = Model(kind if k is None else f"ff{k}", kind, k, root, named.seed if named else DEFAULT_SEED)
    missing: list[str] = []
    notes: list[str] = []
    _load_model(model, root, missing, notes)
    return _summarise(root, {model.name: model}, missing, notes, single_run=True)


def add_replica(models: dict[str, Model], model: Model, field: str, fix: str) -> None:
    """Name ``model`` like a study folder's (``mrl``, ``ff8``, ``mrl-seed43``) and add it to ``models``; a second
    run of one model and seed is a :class:`ConfigError` on ``field`` (it would count twice in the mean)."""
    model.name = model.base if model.seed == DEFAULT_SEED else f"{model.base}-seed{model.seed}"
    if model.name in models:
        raise ConfigError(field, f"is {model.label} trained with seed {model.seed}, like "
                          f"{models[model.name].path}", fix)
    models[model.name] = model


def collect_runs(run_dirs: Sequence[str | Path]) -> Study:
    """Any run directories (the jobs of a multirun, named by their overrides; runs of several experiments) as one
    study: each is identified by its records (head, FF size, seed), not by its folder name, and named like a study
    folder's model (``mrl``, ``ff8``, ``mrl-seed43``). Two runs of one model and seed are a :class:`ConfigError`."""
    if not run_dirs:
        raise ConfigError("--runs", "names no run directory", "give the run directories to compare")
    models: dict[str, Model] = {}
    missing: list[str] = []
    notes: list[str] = []
    for run_dir in run_dirs:
        root = Path(run_dir)
        if not is_run_dir(root):
            raise ConfigError(str(root), "is not a run directory (no .hydra/, metrics_by_dim.csv, checkpoints/, "
                              "embeddings/ or eval/)", "give folders written by scripts/train.py")
        kind, k = _run_identity(root)
        model = Model(root.name, kind, k, root)
        _load_model(model, root, missing, notes)
        add_replica(models, model, str(root), "compare one run per model and seed")
    common = Path(os.path.commonpath([str(Path(d).resolve()) for d in run_dirs]))
    return _summarise(common, models, missing, notes, single_run=False)


def collect(path: str | Path) -> Study:
    """A single run directory (:func:`is_run_dir`) or a study folder, whichever ``path`` is."""
    return collect_run(path) if is_run_dir(path) else collect_study(path)


def _summarise(root: Path, models: dict[str, Model], missing: list[str], notes: list[str],
               single_run: bool, plan: list[str] | None = None) -> Study:
    """The study's sizes, reference config and what is missing, from its loaded models (a run directory: one
    model, and no other models or baselines expected). ``plan`` (:func:`read_plan`) names the models expected;
    without it, what a complete study of the kind has."""
    ref = next((m for g in _grouped(models.values()) for m in g if m.config), None)
    config = ref.config if ref else None
    nesting = _study_nesting(models)
    sizes = {int(d) for d in nesting} | {m.k for m in models.values() if m.kind == "ff"}
    width = max(sizes) if sizes else None
    for m in models.values():
        if m.kind == "ff" and "baselines" in m.eval:
            sizes |= {int(r["dim"]) for r in m.eval["baselines"] if r.get("dim") is not None}
    sizes_sorted = sorted(sizes)

    # what a complete study has: an image-text study (model.task=dual_encoder) MRL and FF at the full width at
    # least, evaluated by zero_shot and cross_modal_retrieval; a classification study every model and evaluator
    image_text = _get(config, "model.task") == "dual_encoder"
    if plan is not None:
        missing[:0] = [f"{name}: model folder missing" for name in plan if name not in models]
        notes += [f"{name}/: not in {PLAN_FILE}, reported all the same" for name in models if name not in plan]
    else:
        expected = [] if single_run else ["mrl", f"ff{width}"] if image_text else \
            ["mrl", "mrle"] + [f"ff{d}" for d in sorted(int(d) for d in nesting)]
        present = {m.base for m in models.values()}
        missing[:0] = [f"{name}: model folder missing" for name in expected if name not in present]
    for m in models.values():
        if not m.eval_dir.is_dir():
            missing.append(f"{m.name}: eval/ missing (evaluation stage not run)")
            continue
        wanted = ["zero_shot", "cross_modal_retrieval"] if image_text else ["classification", "retrieval"] + (
            ["adaptive_classification", "adaptive_retrieval"] if m.kind in ("mrl", "mrle") else [])
        for name in wanted:
            if name not in m.eval:
                missing.append(f"{m.name}: eval/{name}.csv missing")
    if not single_run and not image_text and width is not None \
            and not any("baselines" in m.eval for m in models.values()):
        missing.append(f"ff{width}: eval/baselines.csv missing (SVD, Rand-LP and Rand-FS columns left empty)")

    # the recipe should be the same for every model: list the settings that differ
    flat = {m.name: _flatten(m.config) for m in models.values() if m.config}
    keys = sorted({k for f in flat.values() for k in f})
    for key in keys:
        if any(key == p or key.startswith(p + ".") for p in PER_MODEL_KEYS):
            continue
        given = {name: f[key] for name, f in flat.items() if key in f}
        absent = [name for name in flat if name not in given]
        distinct = {json.dumps(v, sort_keys=True, default=str) for v in given.values()}
        if absent and len(distinct) == 1:  # runs made before the framework had the setting: not a recipe change
            notes.append(f"{key} is not in the configs of {', '.join(absent)} (made before the setting existed); "
                         f"the others have {next(iter(given.values()))}")
        elif len(distinct) > 1:
            notes.append(f"recipe differs across models: {key} = " +
                         ", ".join(f"{n}: {given.get(n, '(not set)')}" for n in flat))
    study = Study(root, models, sizes_sorted, width, config, ref.name if ref else None, missing, notes, nesting,
                  single_run)
    b = study.baselines_models()
    if b and b[0].k != width:
        notes.append(f"baselines read from {b[0].base} (ff{width} has no eval/baselines.csv)")
    return study


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------

TEXT_COLUMNS = ("method", "kind")
# columns that are not percentages: 4 significant digits in Markdown (CSV/JSON keep every digit)
COST_COLUMNS = ("expected_dim", "expected_dim_std", "oracle_expected_dim", "mflops", "mflops_speedup",
                "us_per_query", "speedup")


@dataclass
class Table:
    name: str                      # file stem
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    raw_markdown: bool = False     # Markdown shows the values as read (reference tables), not rounded
    spread: list[str] = field(default_factory=list)  # columns holding means over seeds (:func:`_put`)
    std: str = "_std"              # suffix of a spread column's std column (its count: <column>_n)

    @property
    def file_columns(self) -> list[str]:
        """The CSV/JSON columns: :attr:`columns`, each spread column followed by its std and count."""
        return [x for c in self.columns for x in ((c, c + self.std, c + "_n") if c in self.spread else (c,))]

    def std_column(self, column: str) -> str | None:
        return column + self.std if column in self.spread else None

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]

    def value(self, key_column: str, key: Any, column: str) -> Any:
        return next((r.get(column) for r in self.rows if r.get(key_column) == key), None)

    def seed_count(self, row: Mapping[str, Any], column: str) -> int:
        """How many seeds ``row[column]`` is the mean of (0: no value, or not a mean over seeds)."""
        n = row.get(column + "_n") if column in self.spread else None
        return n if isinstance(n, int) else 0

    def cell(self, row: Mapping[str, Any], column: str) -> str:
        """``row[column]`` as Markdown shows it: ``mean ± std (n)`` for a mean over several seeds, else the
        value alone."""
        text = _fmt(row.get(column), column, self.raw_markdown)
        n = self.seed_count(row, column)
        if n < 2:
            return text
        std = row.get(column + self.std)
        # a cost's std to 2 significant digits (its mean has 4), a percentage's to 2 decimals like its mean
        return text + f" ± {f'{std:.2g}' if column in COST_COLUMNS else _fmt(std, column)} ({n})"

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.file_columns, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in self.file_columns})
        return buf.getvalue()

    def markdown(self, heading: str = "###") -> str:
        lines = [f"{heading} {self.title}", ""]
        if not self.rows:
            lines.append("(no data yet)")
        else:
            lines += ["| " + " | ".join(self.columns) + " |",
                      "|" + "|".join(":---" if c in TEXT_COLUMNS else "---:" for c in self.columns) + "|"]
            for r in self.rows:
                lines.append("| " + " | ".join(self.cell(r, c) for c in self.columns) + " |")
        notes = list(self.notes)
        if any(self.seed_count(r, c) > 1 for r in self.rows for c in self.spread):
            notes.append(f"mean ± std (n): the mean over the n seeds of a model, and their sample standard deviation "
                         f"(the CSV and JSON: <column>, <column>{self.std}, <column>_n).")
        if notes:
            lines += [""] + [f"* {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def json_text(self) -> str:
        rows = [{c: r.get(c) for c in self.file_columns} for r in self.rows]
        return json.dumps({"title": self.title, "columns": self.file_columns, "rows": rows, "notes": self.notes,
                           "sources": self.sources}, indent=2, default=_json_default)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _fmt(v: Any, column: str = "", raw: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not raw:
        return f"{v:.4g}" if column in COST_COLUMNS else f"{v:.2f}"
    return str(v)


def _put(row: dict[str, Any], column: str, values: Sequence[Any], std: str | None = "_std") -> None:
    """One cell from the values of a model's seeds (``None``, a seed without that number, left out):
    ``row[column]`` their mean (a float; the value itself for one seed), ``row[column + std]`` their sample
    standard deviation (ddof 1; ``None`` for one seed) and ``row[column + "_n"]`` their count; all ``None`` when
    no seed has a number. ``std=None``: the mean alone (a number that does not vary by seed, or a within-run
    spread)."""
    xs = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    row[column] = None if not xs else xs[0] if len(xs) == 1 else float(statistics.mean(xs))
    if std is not None:
        row[column + std] = statistics.stdev(xs) if len(xs) > 1 else None
        row[column + "_n"] = len(xs) or None


def _aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], spread: Sequence[str],
               std: str = "_std") -> list[dict[str, Any]]:
    """Rows read from each seed of each model -> one row per distinct ``keys`` (first-seen order): every other
    column through :func:`_put`, with std and count for the ``spread`` columns, the mean alone for the rest."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key))
        for c in dict.fromkeys(c for r in group for c in r if c not in keys):
            _put(row, c, [r.get(c) for r in group], std if c in spread else None)
        out.append(row)
    return out


def _rel(path: Path, study: Study) -> str:
    """A file of the study as the user named the study folder (relative paths stay relative)."""
    return str(path)


def _row_at(rows: Sequence[Mapping[str, Any]] | None, dim: int) -> Mapping[str, Any] | None:
    if not rows:
        return None
    return next((r for r in rows if r.get("dim") is not None and int(r["dim"]) == dim), None)


def _top1_source(model: Model) -> tuple[list[dict[str, Any]] | None, str]:
    if model.metrics is not None:
        return model.metrics, "metrics_by_dim.csv"
    if "classification" in model.eval:
        return model.eval["classification"], "eval/classification.csv"
    return None, ""


def _by_size(study: Study, name: str, title: str, columns: Sequence[tuple[str, str]], per_model, baseline_cols,
             notes: Sequence[str]) -> Table:
    """Rows = study sizes; MRL / MRL-E columns read at every size, FF at its own k, baselines from
    the FF-<width> model; each cell the mean over the model's seeds (:func:`_put`).
    ``per_model(model) -> (rows, source, column)``."""
    cells: dict[tuple[int, str], list[Any]] = {}
    sources: list[str] = []

    def read(label: str, m: Model, src_rows, src: str, col: str, at_k: bool) -> None:
        found = False
        for d in [m.k] if at_k else study.sizes:
            r = _row_at(src_rows, d)
            if r is not None and r.get(col) is not None:
                cells.setdefault((d, label), []).append(r[col])
                found = True
        if found:
            sources.append(f"{label}{f' @ {m.k}' if at_k else ''}, seed {m.seed}: `{_rel(m.path / src, study)}` "
                           f"({col})")

    for label, base in columns:
        for m in [m for g in study.ff_groups() for m in g] if base == "ff" else study.replicas(base):
            src_rows, src, col = per_model(m)
            if src_rows is not None:
                read(label, m, src_rows, src, col, base == "ff")
    for b in study.baselines_models():
        for label, col in baseline_cols:
            if any(col in r for r in b.eval["baselines"]):
                read(label, b, b.eval["baselines"], "eval/baselines.csv", col, False)
    labels = [label for label, _ in columns] + [label for label, _ in baseline_cols]
    rows = []
    for d in study.sizes:
        row: dict[str, Any] = {"dim": d}
        for label in labels:
            if (d, label) in cells:
                _put(row, label, cells[d, label])
        if len(row) > 1:
            rows.append(row)
    return Table(name, title, ["dim", *labels], rows, list(notes), sources, spread=labels)
MODEL_COLUMNS = (("MRL", "mrl"), ("MRL-E", "mrle"), ("FF", "ff"))


def top1_table(study: Study) -> Table:
    def per_model(m):
        rows, src = _top1_source(m)
        return rows, src, "top1"

    return _by_size(study, "top1_by_size", "Linear-classifier top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (("SVD", "svd_top1"), ("SVD-classifier", "svd_classifier_top1"),
                                ("Rand-LP", "rand_lp_top1")),
                    ["MRL, MRL-E: the model's classifier at each size; FF: FF-k's classifier, at its own size k; "
                     "the test top-1 of the training run (metrics_by_dim.csv), else eval/classification.csv.",
                     "SVD, SVD-classifier, Rand-LP: baselines from the full-width FF model (eval/baselines.csv of "
                     "each of its seeds that has one): a probe on the top-d SVD directions, the FF classifier at "
                     "rank d, a probe on d random coordinates."])


def knn_table(study: Study) -> Table:
    def per_model(m):
        return m.eval.get("classification"), "eval/classification.csv", "knn_top1"

    return _by_size(study, "knn_top1_by_size", "1-NN top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (("Rand-FS", "rand_fs_top1"),),
                    ["1-NN with cosine similarity on the size-d prefix, train split as the database "
                     "(eval/classification.csv, knn_top1); FF at its own size k.",
                     "Rand-FS: 1-NN on d random coordinates of the full-width FF model (eval/baselines.csv)."])


def map_table(study: Study, k: int = 10) -> Table:
    def per_model(m):
        return m.eval.get("retrieval"), "eval/retrieval.csv", f"map@{k}"

    return _by_size(study, f"map{k}_by_size", f"Retrieval mAP@{k} (%) by representation size", MODEL_COLUMNS,
                    per_model, (("Rand-FS", f"rand_fs_map@{k}"),),
                    [f"mAP@{k} as the paper computes it (eval/retrieval.csv); database: train split, queries: "
                     "test split; FF at its own size k; Rand-FS: d random coordinates of the full-width FF model."])


def retrieval_table(study: Study, k: int = 10) -> Table:
    metrics = [f"map@{k}", f"precision@{k}", f"recall@{k}", f"hit@{k}", "top1"]
    rows, sources = [], []
    for m in (m for g in study.groups() for m in g):
        if "retrieval" not in m.eval:
            continue
        for r in m.eval["retrieval"]:
            d = int(r["dim"])
            if (m.kind == "ff" and d != m.k) or (m.kind != "ff" and d not in study.sizes):
                continue
            rows.append({"method": m.label, "dim": d, **{c: r.get(c) for c in metrics}})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'retrieval.csv', study)}`")
    for b in study.baselines_models():
        if any(f"rand_fs_map@{k}" in r for r in b.eval["baselines"]):
            for r in b.eval["baselines"]:
                rows.append({"method": "Rand-FS", "dim": int(r["dim"]), f"map@{k}": r.get(f"rand_fs_map@{k}"),
                             "top1": r.get("rand_fs_top1")})
            sources.append(f"Rand-FS, seed {b.seed}: `{_rel(b.eval_dir / 'baselines.csv', study)}`")
    return Table("retrieval_by_size", f"Retrieval (%) at k = {k}, by method and size", ["method", "dim", *metrics],
                 _aggregate(rows, ("method", "dim"), metrics),
                 [f"precision@{k}: hits in the top {k} / {k}; recall@{k}: hits / the query's class size in the "
                  f"database; hit@{k}: any hit in the top {k}; top1: 1-NN accuracy. Rand-FS: only mAP and top1 "
                  "are evaluated."], sources, spread=metrics)


AC_COLUMNS = ("cap", "expected_dim", "expected_dim_std", "accuracy", "accuracy_std", "fixed_accuracy",
              "oracle_expected_dim", "oracle_accuracy")
# the adaptive-classification columns that vary by seed; accuracy_std and expected_dim_std are the spread over one
# run's threshold-selection splits, so their across-seed std is named <column>_seed_std
AC_SPREAD = ("expected_dim", "accuracy", "fixed_accuracy", "oracle_expected_dim", "oracle_accuracy")


def adaptive_classification_table(study: Study) -> Table:
    rows, sources = [], []
    for m in study.replicas("mrl") + study.replicas("mrle"):
        if "adaptive_classification" not in m.eval:
            continue
        for r in m.eval["adaptive_classification"]:
            rows.append({"method": m.label, **{c: r.get(c) for c in AC_COLUMNS}})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'adaptive_classification.csv', study)}`")
    return Table("adaptive_classification", "Adaptive classification (%): confidence cascade up to each cap",
                 ["method", *AC_COLUMNS], _aggregate(rows, ("method", "cap"), AC_SPREAD, "_seed_std"),
                 ["accuracy at expected_dim: the cascade over the trained sizes up to cap (mean over the random "
                  "threshold-selection splits, std beside it); fixed_accuracy: the cap size alone; oracle: the "
                  "smallest correct size per sample (an upper bound).",
                  ("Several seeds: every column is the mean over them; accuracy_std and expected_dim_std stay the "
                   "spread over one run's splits (their mean over seeds), and the spread over seeds is "
                   "<column>_seed_std (with <column>_n seeds) for accuracy, expected_dim, fixed_accuracy and the "
                   "oracle columns.")], sources, spread=list(AC_SPREAD), std="_seed_std")


def adaptive_retrieval_table(study: Study) -> Table:
    rows, sources, metric = [], [], None
    for m in study.replicas("mrl") + study.replicas("mrle"):
        if "adaptive_retrieval" not in m.eval:
            continue
        table = m.eval["adaptive_retrieval"]
        if metric is None:
            metric = next((c for r in table[:1] for c in r if c.startswith("map@")), "map@10")
        exact = next((r for r in table if r.get("kind") == "exact"), None)
        for r in table:
            mf = r.get("mflops")
            ex = exact.get("mflops") if exact else None
            rows.append({"method": m.label, "kind": r.get("kind"), "D_s": r.get("D_s"), "D_r": r.get("D_r"),
                         "K": r.get("K"), metric: r.get(metric), "top1": r.get("top1"), "mflops": mf,
                         "mflops_speedup": ex / mf if isinstance(ex, (int, float)) and isinstance(mf, (int, float))
                         and mf > 0 else None,
                         "us_per_query": r.get("us_per_query"), "speedup": r.get("speedup")})
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.eval_dir / 'adaptive_retrieval.csv', study)}`")
    metric = metric or "map@10"
    # mflops and mflops_speedup follow from the setting alone (the cost model): the same on every seed
    spread = [metric, "top1", "us_per_query", "speedup"]
    return Table("adaptive_retrieval", f"Adaptive retrieval: {metric.replace('map', 'mAP')} (%) against cost",
                 ["method", "kind", "D_s", "D_r", "K", metric, "top1", "mflops", "mflops_speedup", "us_per_query",
                  "speedup"], _aggregate(rows, ("method", "kind", "D_s", "D_r", "K"), spread),
                 ["shortlist K by the first D_s coordinates, rerank on D_r (a funnel: several stages, D_r and K "
                  "listed); exact: brute-force search at the full width.",
                  "mflops: the paper's cost model per query; mflops_speedup: exact mflops / this one; us_per_query: "
                  "measured wall-clock per query; speedup: exact us_per_query / this one (both from "
                  "eval/adaptive_retrieval.csv)."], sources, spread=spread)


def validation_curve_table(study: Study) -> Table:
    """Validation top-1 (%) per epoch (rows): each model at its full width (its largest validated size; FF-k: k)
    in a column named by the model, and MRL at its smallest, a middle and its largest size (``MRL@<d>``); each
    cell the mean over the model's seeds. Models without a curve are named in the notes."""
    cells: dict[tuple[int, str], list[float]] = {}
    sources, absent = [], []
    full: list[str] = []     # the model columns (MRL, MRL-E, FF-k)
    by_size: list[str] = []  # MRL@<d>, after them
    for m in (m for g in study.groups() for m in g):
        if not m.val_curve:
            absent.append(f"{m.name} ({'no csv/metrics.csv' if m.val_curve is None else 'no val/top1@<d> values'})")
            continue
        dims = sorted(m.val_curve)
        columns = [(m.label, dims[-1])]
        if m.kind == "mrl":
            columns += [(f"MRL@{d}", d) for d in dict.fromkeys((dims[0], dims[len(dims) // 2], dims[-1]))]
        for label, d in columns:
            (by_size if label.startswith("MRL@") else full).append(label)
            for epoch, v in m.val_curve[d].items():
                cells.setdefault((epoch, label), []).append(v)
        sources.append(f"{m.label}, seed {m.seed}: `{_rel(m.path / 'csv' / 'metrics.csv', study)}` "
                       f"({', '.join(f'val/top1@{d}' for d in dict.fromkeys(d for _, d in columns))})")
    labels = list(dict.fromkeys(full + by_size))
    rows = []
    for epoch in sorted({e for e, _ in cells}):
        row: dict[str, Any] = {"epoch": epoch}
        for label in labels:
            if (epoch, label) in cells:
                _put(row, label, cells[epoch, label])
        rows.append(row)
    notes = [("Validation top-1 (%) at the end of each epoch (epoch 0: the first) on the validation split "
              "(data.validation; by default a held-out part of the training data), from csv/metrics.csv "
              "(val/top1@<d>). MRL, MRL-E, FF-k: the model at its full width (the largest size it trained; FF-k: "
              "k); MRL@<d>: MRL at size d (the largest repeats the MRL column).")]
    if absent:
        notes.append(f"No validation curve: {', '.join(absent)}.")
    return Table("validation_curve", "Validation top-1 (%) per epoch", ["epoch", *labels], rows, notes, sources,
                 spread=labels)


def zero_shot_table(study: Study) -> Table:
    def per_model(m):
        if "zero_shot" in m.eval:
            return m.eval["zero_shot"], "eval/zero_shot.csv", "top1"
        return m.metrics, "metrics_by_dim.csv", "zero_shot_top1"

    return _by_size(study, "zero_shot_by_size", "Zero-shot top-1 (%) by representation size", MODEL_COLUMNS,
                    per_model, (), ["Image-text models: each test image against the class prompts encoded by the text "
                                    "tower, at the size-d prefix of both (eval/zero_shot.csv, else the training run's "
                                    "metrics_by_dim.csv); FF at its own size k."])


def cross_modal_table(study: Study) -> Table:
    def per_model(m):
        return m.eval.get("cross_modal_retrieval"), "eval/cross_modal_retrieval.csv", "rsum"

    return _by_size(study, "cross_modal_rsum_by_size", "Cross-modal retrieval: the sum of recalls by size",
                    MODEL_COLUMNS, per_model, (),
                    ["rsum: image->text plus text->image recall@1, 5 and 10 at the size-d prefix (each in %, so at "
                     "most 600), over the distinct images and captions of the test split "
                     "(eval/cross_modal_retrieval.csv, where each recall is also given); FF at its own size k."])


#: the by-size tables of image-text studies: (plot's y label, title)
IMAGE_TEXT_TABLES = {"zero_shot_by_size": ("zero-shot top-1 (%)", "Zero-shot top-1 by size"),
                     "cross_modal_rsum_by_size": ("rsum (sum of six recalls, %)", "Cross-modal retrieval by size")}


def build_tables(study: Study, k: int = 10) -> dict[str, Table]:
    """Every table of the study's kind: classification (linear and 1-NN top-1, mAP@k, retrieval, adaptive
    classification and retrieval) or image-text (zero-shot top-1, cross-modal rsum); the validation curve."""
    if study.is_image_text:
        tables = [zero_shot_table(study), cross_modal_table(study)]
    else:
        tables = [top1_table(study), knn_table(study), map_table(study, k), retrieval_table(study, k),
                  adaptive_classification_table(study), adaptive_retrieval_table(study)]
    return {t.name: t for t in [*tables, validation_curve_table(study)]}


# --------------------------------------------------------------------------------------------------
# the paper's published numbers
# --------------------------------------------------------------------------------------------------

_SIZE_TABLES = {  # name: (file, {file column: our column})
    "top1_linear": ("imagenet1k_rn50_top1_linear.csv",
                    {"R50-Rand-LP": "Rand-LP", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL",
                     "R50-NRL-E": "MRL-E", "SLIM": "slimmable"}),
    "knn_top1": ("imagenet1k_rn50_1nn_top1.csv",
                 {"R50-Rand": "Rand", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL", "R50-NRL-E": "MRL-E",
                  "SLIM": "slimmable"}),
    "map10": ("imagenet1k_rn50_map10.csv",
              {"R50-Rand": "Rand-FS", "R50-SVD": "SVD", "R50-FF": "FF", "R50-NRL": "MRL", "R50-NRL-E": "MRL-E",
               "SLIM": "slimmable"}),
    "interpolated_1nn": ("imagenet1k_rn50_interpolated_1nn.csv", {"HD": "dim", "R50_NRL_I": "MRL"}),
}
_COST_TABLES = {
    "adaptive_retrieval": ("imagenet1k_rn50_adaptive_retrieval.csv",
                           {"Shortlist dim": "D_s", "Reranking dim": "D_r", "MFLOPS": "mflops", "MAP@10": "map@10"}),
    "imagenet4k_adaptive_retrieval": ("imagenet4k_rn50_adaptive_retrieval.csv",
                                      {"Ds": "D_s", "Dr": "D_r", "MFLOPS": "mflops", "MAP@10": "map@10"}),
    "exact_retrieval_cost": ("imagenet1k_rn50_exact_retrieval_cost.csv", {"FLOPS": "mflops", "MAP@10": "map@10"}),
}


def load_paper_reference(directory: str | Path = DEFAULT_PAPER_DIR) -> dict[str, list[dict[str, Any]]]:
    """The paper's published ImageNet-1K ResNet-50 numbers (``results/paper_reference``), renamed:

    * ``top1_linear``, ``knn_top1``, ``map10``: ``{"dim", "MRL", "MRL-E", "FF", "SVD", ...}`` per size
      (``Rand-LP`` in top-1, ``Rand`` in 1-NN, ``Rand-FS`` in mAP@10; ``None`` where the file is empty);
    * ``adaptive_classification``: ``{"expected_dim", "accuracy"}`` (the cascade);
      ``fixed_classification``: ``{"dim", "accuracy"}`` (the fixed sizes of the same file);
    * ``adaptive_retrieval``: ``{"D_s", "D_r", "mflops", "map@10"}`` (shortlist 200);
      ``exact_retrieval_cost``: ``{"mflops", "map@10"}``; ``imagenet4k_adaptive_retrieval``; ``interpolated_1nn``.

    Values are the files' (percent). A missing file leaves its table out.
    """
    d = Path(directory)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, (fname, rename) in _SIZE_TABLES.items():
        if (d / fname).is_file():
            rows = []
            for r in read_csv(d / fname):
                new = {("dim" if k == "Representation Size" else rename.get(k, k)): v for k, v in r.items()}
                new["dim"] = int(new["dim"])
                rows.append(new)
            out[name] = rows
    for name, (fname, rename) in _COST_TABLES.items():
        if (d / fname).is_file():
            out[name] = [{rename.get(k, k): v for k, v in r.items()} for r in read_csv(d / fname)]
    fname = "imagenet1k_rn50_adaptive_classification.csv"
    if (d / fname).is_file():
        rows = read_csv(d / fname)
        out["adaptive_classification"] = [{"expected_dim": r["ED"], "accuracy": r["MH_CASC"]} for r in rows
                                          if r.get("ED") is not None]
        out["fixed_classification"] = [{"dim": int(r["D"]), "accuracy": r["MH"]} for r in rows
                                       if r.get("D") is not None]
    return out


def paper_table(paper: Mapping[str, list[dict[str, Any]]], name: str, title: str) -> Table | None:
    rows = paper.get(name)
    if not rows:
        return None
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return Table(f"paper_{name}", title, columns, rows, raw_markdown=True)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------

def _legend(ax, **kwargs) -> None:
    """``ax.legend`` with its entries in drawing order (matplotlib lists lines with error bars after the others)."""
    from matplotlib.container import ErrorbarContainer

    children = ax.get_children()
    entries = sorted(zip(*ax.get_legend_handles_labels()),
                     key=lambda e: children.index(e[0][0] if isinstance(e[0], ErrorbarContainer) else e[0]))
    ax.legend([h for h, _ in entries], [label for _, label in entries], **kwargs)


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend(ax, fontsize=7)
    return save_figure(fig, path)


def _finite(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[float], list[float]]:
    pts = [(x, y) for x, y in zip(xs, ys) if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _points(table: Table, rows: Sequence[Mapping[str, Any]], x: str, y: str
            ) -> tuple[list[float], list[float], list[float | None]]:
    """``(xs, ys, stds)`` of the rows with a number in both ``x`` and ``y``; ``stds[i]``: ``y``'s std over seeds
    (``None`` for a single seed)."""
    std = table.std_column(y)
    pts = [(r[x], r[y], r.get(std) if std else None) for r in rows
           if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _error_bars(ax, xs: Sequence[float], ys: Sequence[float], stds: Sequence[float | None], fmt: str = "none",
                **kwargs) -> bool:
    """``ax.errorbar`` with ±1 std bars when some point is a mean over several seeds (a single-seed point gets no
    bar); whether it drew."""
    if all(s is None for s in stds):
        return False
    ax.errorbar(xs, ys, yerr=[s or 0.0 for s in stds], fmt=fmt, capsize=2.5, elinewidth=0.8, **kwargs)
    return True


def _line(ax, xs: Sequence[float], ys: Sequence[float], stds: Sequence[float | None], fmt: str, **kwargs) -> None:
    """A line through ``(xs, ys)`` with :func:`_error_bars`; without spreads, the plain line it always was."""
    if not _error_bars(ax, xs, ys, stds, fmt, **kwargs):
        ax.plot(xs, ys, fmt, **kwargs)


def plot_by_size(table: Table, path: Path, ylabel: str, title: str,
                 paper_rows: Sequence[Mapping[str, Any]] | None = None,
                 paper_columns: Mapping[str, str] | None = None) -> Path | None:
    """One line per method column (log2 size axis); with ``paper_rows``, the paper's column
    ``paper_columns[ours]`` (default: the same name) dashed in the same colour."""
    methods = [c for c in table.columns if c != "dim"]
    fig, ax = new_figure((7, 4.5))
    drawn = False
    for i, c in enumerate(methods):
        color = f"C{i}"
        xs, ys, stds = _points(table, table.rows, "dim", c)
        if xs:
            _line(ax, xs, ys, stds, "o-", color=color, markersize=4, label=c)
            drawn = True
        pc = (paper_columns or {}).get(c, c)
        if paper_rows and any(r.get(pc) is not None for r in paper_rows):
            pxs, pys = _finite([r["dim"] for r in paper_rows], [r.get(pc) for r in paper_rows])
            ax.plot(pxs, pys, "--", color=color, alpha=0.8, label=f"{c}, {PAPER_LABEL}")
            drawn = True
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    dims = sorted(set(_finite(table.column("dim"), table.column("dim"))[0]) |
                  ({r["dim"] for r in paper_rows} if paper_rows else set()))
    ax.set_xticks(dims, [str(d) for d in dims])
    return _finish(fig, ax, path, title, "representation size (dims)", ylabel)


def comparison_table(study: Study, k: int = 10) -> Table:
    """One table of the runs compared: per size, every method's linear top-1 (``top-1 MRL``, ``top-1 FF``, ...)
    and, where the runs were evaluated, its mAP@k (``mAP@k MRL``, ...), means over seeds with their spreads."""
    parts = [("top-1", top1_table(study)), (f"mAP@{k}", map_table(study, k))]
    picks = [(table, c, f"{prefix} {c}") for prefix, table in parts
             for c in table.columns if c != "dim" and any(r.get(c) is not None for r in table.rows)]
    table = _join_by_dim("comparison", f"Runs compared by size: linear top-1 and mAP@{k} (%)", picks)
    table.notes, table.sources = [n for _, t in parts for n in t.notes], [s for _, t in parts for s in t.sources]
    return table


def _join_by_dim(name: str, title: str, picks: Sequence[tuple[Table, str, str]]) -> Table:
    """Columns of several tables side by side, one row per size: ``picks`` = ``(table, column, new name)`` in
    column order; a spread column brings its std and seed count along."""
    rows: dict[int, dict[str, Any]] = {}
    joined = Table(name, title, ["dim"], [])
    for table, column, new in picks:
        joined.columns.append(new)
        if column in table.spread:
            joined.spread.append(new)
        for r in table.rows:
            row = rows.setdefault(r["dim"], {"dim": r["dim"]})
            row[new] = r.get(column)
            if column in table.spread:
                row[new + joined.std], row[new + "_n"] = r.get(column + table.std), r.get(column + "_n")
    joined.rows = [rows[d] for d in sorted(rows)]
    return joined


def plot_comparison(table: Table, path: Path, title: str) -> Path | None:
    """A panel per metric of :func:`comparison_table` (top-1, mAP@k), a line per method, error bars where
    several seeds were run."""
    metrics = list(dict.fromkeys(c.split(" ")[0] for c in table.columns if c != "dim"))
    if not metrics:
        return None
    fig, axes = new_panels(1, len(metrics), (6.5 * len(metrics), 4.5))
    dims = sorted(table.column("dim"))
    for ax, metric in zip(axes, metrics):
        for i, column in enumerate(c for c in table.columns if c.startswith(metric + " ")):
            xs, ys, stds = _points(table, table.rows, "dim", column)
            if xs:
                _line(ax, xs, ys, stds, "o-", color=f"C{i}", markersize=4, label=column.split(" ", 1)[1])
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
        ax.set_xlabel("representation size (dims)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_adaptive_classification(table: Table, path: Path, title: str,
                                 paper: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Path | None:
    fig, ax = new_figure((7, 4.5))
    drawn = False
    for i, method in enumerate(dict.fromkeys(table.column("method"))):
        rows = [r for r in table.rows if r["method"] == method]
        color = f"C{i}"
        _line(ax, *_points(table, rows, "expected_dim", "accuracy"), "o-", color=color,
              label=f"{method} adaptive (expected size)")
        _line(ax, *_points(table, rows, "cap", "fixed_accuracy"), "s-", color=color, alpha=0.45, markersize=4,
              label=f"{method} fixed size")
        _line(ax, *_points(table, rows, "oracle_expected_dim", "oracle_accuracy"), "^:", color=color, markersize=4,
              label=f"{method} oracle")
        drawn = True
    if paper and paper.get("adaptive_classification"):
        pa = paper["adaptive_classification"]
        ax.plot(*_finite([r["expected_dim"] for r in pa], [r["accuracy"] for r in pa]), "--", color="k",
                label=f"MRL adaptive, {PAPER_LABEL}")
        pf = paper.get("fixed_classification") or []
        ax.plot(*_finite([r["dim"] for r in pf], [r["accuracy"] for r in pf]), "--", color="gray",
                label=f"MRL fixed size, {PAPER_LABEL}")
        drawn = True
    if not drawn:
        return None
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    return _finish(fig, ax, path, title, "(expected) representation size", "top-1 accuracy (%)")


def plot_adaptive_retrieval(table: Table, path: Path, title: str,
                            paper: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> Path | None:
    """mAP against MFLOPs per query, each of our points labelled by its setting (``Ds=16 K=200 Dr=512``, a
    funnel's stages as lists); with ``paper``, the paper's adaptive points and exact-search curve."""
    from matplotlib.ticker import NullFormatter

    from mrl.evaluation.adaptive_retrieval import setting_label

    metric = next((c for c in table.columns if c.startswith("map@")), "map@10")
    fig, ax = new_figure((9, 6))
    drawn = False
    for i, method in enumerate(dict.fromkeys(table.column("method"))):
        rows = [r for r in table.rows if r["method"] == method]
        color = f"C{i}"
        for kind, marker in (("adaptive", "o"), ("funnel", "D"), ("exact", "*")):
            sel = [r for r in rows if str(r.get("kind", "")).startswith(kind)
                   and _finite([r["mflops"]], [r[metric]])[0]]
            if not sel:
                continue
            xs, ys, stds = _points(table, sel, "mflops", metric)
            ax.scatter(xs, ys, marker=marker, s=80 if kind == "exact" else 18, color=color, label=f"{method} {kind}")
            _error_bars(ax, xs, ys, stds, ecolor=color)
            for r in sel:
                ax.annotate(setting_label(r), (r["mflops"], r[metric]), textcoords="offset points", xytext=(4, 3),
                            fontsize=6, color=color)
            drawn = True
    if paper and paper.get("adaptive_retrieval"):
        pa = paper["adaptive_retrieval"]
        ax.scatter(*_finite([r["mflops"] for r in pa], [r["map@10"] for r in pa]), marker="x", s=14, color="k",
                   label=f"MRL adaptive, {PAPER_LABEL}")
        pe = paper.get("exact_retrieval_cost") or []
        ax.plot(*_finite([r["mflops"] for r in pe], [r["map@10"] for r in pe]), "--", color="gray",
                label=f"exact search, {PAPER_LABEL}")
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    return _finish(fig, ax, path, title, "MFLOPs per query", f"{metric.replace('map', 'mAP')} (%)")


def plot_retrieval_by_size(table: Table, path: Path, title: str) -> Path | None:
    """One panel per metric of the retrieval table (mAP@k, precision@k, recall@k, hit@k, top-1) against size, a
    line per method; the FF-k rows (each at its own size) make one FF line."""
    metrics = [c for c in table.columns if c not in ("method", "dim")]
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = new_panels(nrows, ncols, (4.2 * ncols, 3.4 * nrows))
    methods = list(dict.fromkeys("FF" if str(r["method"]).startswith("FF-") else r["method"] for r in table.rows))
    dims = sorted({r["dim"] for r in table.rows})
    drawn = False
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            rows = sorted((r for r in table.rows if r["method"] == method
                           or (method == "FF" and str(r["method"]).startswith("FF-"))), key=lambda r: r["dim"])
            xs, ys, stds = _points(table, rows, "dim", metric)
            if xs:
                _line(ax, xs, ys, stds, "o-", color=f"C{i}", markersize=3, label=method)
                drawn = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
        ax.set_title(f"{metric.replace('map', 'mAP')} (%)", fontsize=9)
        ax.set_xlabel("representation size (dims)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    if not drawn:
        return None
    _legend(axes[0], fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_validation_curve(table: Table, path: Path, title: str) -> Path | None:
    """Validation top-1 against epoch: one panel with every model at its full width (MRL, MRL-E; FF-k in greens,
    darker for larger k), and one with MRL at a few sizes (the ``MRL@<d>`` columns, blues, darker for larger d);
    ±1 std bars where a model has several seeds."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    panels = [(f"{name}: validation top-1 (%)", columns) for name, columns in (
        ("Each model at its full width", [c for c in table.columns[1:] if not c.startswith("MRL@")]),
        ("MRL by size", [c for c in table.columns if c.startswith("MRL@")])) if columns]
    if not table.rows or not panels:
        return None
    fig, axes = new_panels(1, len(panels), (6.5 * len(panels), 4.6))
    for ax, (panel, columns) in zip(axes, panels):
        shaded = [c for c in columns if c.startswith(("FF-", "MRL@"))]
        for c in columns:
            if c in shaded:
                shade = 0.45 + 0.5 * shaded.index(c) / max(1, len(shaded) - 1)
                color = colormaps["Greens" if c.startswith("FF-") else "Blues"](shade)
            else:
                color = {"MRL": "C0", "MRL-E": "C1"}.get(c, "C7")
            _line(ax, *_points(table, table.rows, "epoch", c), "o-", color=color, markersize=3,
                  linewidth=1 if c.startswith("FF-") else 1.8, label=c)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("epoch (0: the first)", fontsize=8)
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize=6, ncol=2)
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def write_report_table(table: Table, out: Path) -> dict[str, Path]:
    paths = {ext: out / f"{table.name}.{ext}" for ext in ("csv", "md", "json")}
    atomic_write_text(paths["csv"], table.csv_text())
    md = table.markdown()
    if table.sources:
        md += "\nSources:\n\n" + "\n".join(f"* {s}" for s in table.sources) + "\n"
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["json"], table.json_text())
    return paths


def commands_markdown(study: Study, out: Path) -> str:
    lines = [f"# Commands behind `{study.root}`", "",
             "Per model folder (each seed replica its own): the training command rebuilt from "
             "`.hydra/overrides.yaml` (plus the `hydra.*` overrides "
             "recorded in `.hydra/hydra.yaml`), run from the repository root; a run resumed from a checkpoint "
             "records its last invocation (with `ckpt_path=...`). The composed config is copied to "
             "`configs/<model>.yaml`; the embedding and evaluation commands come from their own records where the "
             "evaluation stage has run.", ""]
    for m in _ordered(study):
        lines += [f"## {m.name} ({m.label}, seed {m.seed})", ""]
        cmd = m.train_command()
        lines += ["Train:", "", "```bash", cmd, "```", ""] if cmd else ["Train: (no `.hydra/overrides.yaml`)", ""]
        if (out / "configs" / f"{m.name}.yaml").is_file():
            lines.append(f"* config: [`configs/{m.name}.yaml`](configs/{m.name}.yaml) "
                         f"(copy of `{_rel(m.path / '.hydra' / 'config.yaml', study)}`)")
        if m.embed_command:
            lines += ["", "Embed (from `" + _rel(Path(m.embed_source), study) + "`):", "", "```bash",
                      m.embed_command, "```"]
        elif m.eval_command:
            lines += ["", "Embed: not recorded (no `command.txt`, and no Hydra record `.hydra/overrides.yaml` in the "
                      "embeddings folder or a subfolder of it: pass `hydra.run.dir=<embeddings folder>/hydra` to "
                      "`scripts/embed.py`, as `scripts/cifar10_study.sh` does)"]
        if m.eval_command:
            lines += ["", f"Evaluate (from `{_rel(m.eval_dir / 'command.txt', study)}`):", "", "```bash",
                      m.eval_command, "```"]
        if (out / "configs" / f"{m.name}_eval.yaml").is_file():
            lines.append(f"* eval config: [`configs/{m.name}_eval.yaml`](configs/{m.name}_eval.yaml) "
                         f"(copy of `{_rel(m.eval_dir / 'eval_config.yaml', study)}`)")
        if not m.eval_command:
            lines.append("* not evaluated yet (no `eval/command.txt`)")
        lines.append("")
    return "\n".join(lines)


def _ordered(study: Study) -> list[Model]:
    return [m for g in study.groups() for m in g]


SETUP_KEYS = (("experiment", "experiment_name"), ("data set", "data.name"), ("backbone", "model.backbone.name"),
              ("CIFAR/ViT small-input stem", "model.backbone.small_input"),
              ("pretrained", "model.backbone.pretrained"), ("nesting sizes (MRL, MRL-E)", "model.nesting_dims"),
              ("loss weights", "model.loss_weights"), ("label smoothing", "model.label_smoothing"),
              ("epochs", "trainer.max_epochs"), ("batch size per device", "data.batch_size"),
              ("optimizer", "model.optimizer.name"), ("learning rate", "model.optimizer.lr"),
              ("LR reference batch", "model.optimizer.lr_reference_batch"),
              ("weight decay", "model.optimizer.weight_decay"), ("scheduler", "model.scheduler.name"),
              ("warm-up epochs", "model.scheduler.warmup_epochs"), ("precision", "trainer.precision"),
              ("devices", "trainer.devices"), ("checkpoint tested", "test_checkpoint"),
              ("validation fraction", "data.val_fraction"))


def summary_markdown(study: Study, tables: Mapping[str, Table], plots: Mapping[str, Path | None], title: str,
                     command: str | None, paper: Mapping[str, Any] | None, overlay: bool) -> str:
    lines = [f"# {title}", "",
             "Generated by `scripts/report.py` (tables only; every number is read from the study's files, listed "
             "under each table's sources in its `.md`). All accuracies and retrieval metrics in percent.", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if study.single_run:
        lines += [f"Run directory: `{study.root}`, model " +
                  ", ".join(f"{m.name} ({m.label})" for m in _ordered(study)), ""]
    else:
        models = ", ".join(f"{g[0].label} ({', '.join(m.name for m in g)})" for g in study.groups()) or "none"
        lines += [f"Study: `{study.root}`; models present (their folders): {models}", ""]
    lines += ["## Setup (from the configs)", ""]
    if study.config:
        lines += [f"Read from `{study.config_from}/.hydra/config.yaml`; every model uses the same recipe except "
                  "the head, its sizes and the seed" + (" (but see the differences below)." if any(
                      n.startswith("recipe differs") for n in study.notes) else "."), "",
                  "| setting | value |", "|---|---|"]
        for label, key in SETUP_KEYS:
            v = _get(study.config, key)
            if key == "model.nesting_dims" and study.nesting and v != study.nesting:
                v = f"{v} ({', '.join(map(str, study.nesting))})"
            if v is not None:
                lines.append(f"| {label} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
        ff = [g[0].k for g in study.ff_groups()]
        lines.append(f"| FF-k models present | {', '.join(map(str, ff)) if ff else 'none'} |")
    else:
        lines.append("(no model config found)")
    lines.append("")
    if study.models:
        lines += [("Seeds present (a model's seed replicas are its folders `<model>-seed<s>`; the tables show the "
                   "mean over them, `mean ± std (n)`):"), "", "| model | seeds | folders |", "|---|---|---|"]
        lines += [f"| {g[0].label} | {', '.join(str(m.seed) for m in g)} | {', '.join(m.name for m in g)} |"
                  for g in study.groups()]
        lines.append("")
    lines += ["## Missing (study stages not run yet, or failed)", ""]
    lines += [f"* {m}" for m in study.missing] or ["* nothing: every model and evaluator table is present"]
    lines.append("")
    if study.notes:
        lines += ["## Notes", ""] + [f"* {n}" for n in study.notes] + [""]
    captions = {"top1_by_size": "Linear top-1 by size", "knn_top1_by_size": "1-NN top-1 by size",
                "adaptive_classification": "Adaptive classification", "adaptive_retrieval": "Adaptive retrieval",
                "validation_curve": "Validation top-1 per epoch"}
    for name, table in tables.items():
        lines += [table.markdown("##"), ""]
        plot = plots.get(name)
        if plot is not None:
            lines += [f"![{captions.get(name, table.title)}]({plot.name})", ""]
    if overlay:
        lines += ["## The paper's numbers", "",
                  f"The plots draw the paper's published curves dashed, labelled \"{PAPER_LABEL}\" "
                  "(`results/paper_reference/`, from RAIVNLab/MRL). Its linear top-1 table:", ""]
        t = paper_table(paper, "top1_linear", f"Linear top-1 (%), {PAPER_LABEL}")
        if t is not None:
            lines.append(t.markdown("###"))
    elif paper:
        t = paper_table(paper, "top1_linear", f"For context only: linear top-1 (%), {PAPER_LABEL}")
        if t is not None:
            lines += ["## The paper's numbers (context, a different data set)", "",
                      "Not overlaid on the plots: the paper measured ImageNet-1K with ResNet-50, not this study's "
                      "data and backbone. Its published table (`results/paper_reference/"
                      "imagenet1k_rn50_top1_linear.csv`, from RAIVNLab/MRL):", "", t.markdown("###")]
    return "\n".join(lines).rstrip() + "\n"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and v == v else None


def _spread_at(table: Table, column: str, dim: int) -> tuple[float | None, int | None]:
    """``(std, None)``: the std over seeds of a by-size table's ``column`` at size ``dim``; for a single seed
    there, ``(std, size)``: the std at the nearest size in log2 with >= 2 seeds (the larger std on a tie),
    borrowed from it; ``(None, None)`` when the column has >= 2 seeds at no size."""
    std = table.std_column(column)
    measured = {r["dim"]: r[std] for r in table.rows if std and table.seed_count(r, column) > 1}
    if dim in measured:
        return measured[dim], None
    if not measured:
        return None, None
    nearest = min(measured, key=lambda d: (abs(math.log2(d) - math.log2(dim)), -measured[d]))
    return measured[nearest], nearest


def _verdict(diff: float, spread: float | None) -> str:
    """A difference of means is a difference only when it exceeds its spread."""
    if spread is None:
        return "no spread measured"
    return "higher" if diff > spread else "lower" if diff < -spread else "within noise"


def _comparison(table: Table, a: str, b: str, title: str) -> list[str]:
    """A findings section: ``a - b`` at every size where both have a value, with the spread it is judged against
    (the sum of both sides' :func:`_spread_at`) and its :func:`_verdict`, then the count of each verdict."""
    out = [f"### {title}", "", f"| dim | {a} | {b} | {a} - {b} | spread | verdict |",
           "|---:|---:|---:|---:|---:|:---|"]
    verdicts = []
    for r in table.rows:
        if _num(r.get(a)) is None or _num(r.get(b)) is None:
            continue
        diff = r[a] - r[b]
        sides = [(side, *_spread_at(table, side, r["dim"])) for side in (a, b)]
        measured = [(side, std) for side, std, _ in sides if std is not None]
        if not measured:
            spread, how = None, f"{a}: one seed only; {b}: one seed only"
        else:
            # a method trained with one seed only is taken to be as noisy as the other (say, MRL-E as MRL)
            spread = sum(std if std is not None else measured[0][1] for _, std, _ in sides)
            how = "; ".join(f"{side}: std of size {d}, borrowed" if std is not None and d is not None else
                            f"{side}: one seed, {measured[0][0]}'s std assumed" if std is None else ""
                            for side, std, d in sides).strip("; ")
        verdicts.append(_verdict(diff, spread))
        out.append(f"| {r['dim']} | {table.cell(r, a)} | {table.cell(r, b)} | {diff:+.2f} | "
                   f"{'–' if spread is None else f'{spread:.2f}'}{f' ({how})' if how else ''} | {verdicts[-1]} |")
    if not verdicts:
        return out[:2] + ["(no size where both have a value)", ""]
    count = {v: verdicts.count(v) for v in ("higher", "within noise", "lower", "no spread measured")}
    judged = len(verdicts) - count["no spread measured"]
    return out + ["", (f"{a} >= {b} (higher or within noise) at {count['higher'] + count['within noise']} of "
                       f"{judged} sizes with a measured spread (higher at {count['higher']}, within noise at "
                       f"{count['within noise']}, lower at {count['lower']}); no spread measured at "
                       f"{count['no spread measured']} of {len(verdicts)} sizes."), ""]


def _validation_findings(table: Table) -> list[str]:
    """Each model's last validated epoch, its validation top-1 there and the change over the last 2 epochs."""
    out = ["## Validation curve", ""]
    models = [c for c in table.columns[1:] if not c.startswith("MRL@")]
    if not models:
        return out + ["(no validation curve: see validation_curve.md)", ""]
    out += [("From `validation_curve`: each model at its full width; a change near 0 over the last 2 epochs means "
             "the curve has flattened."), "",
            "| model | last epoch | validation top-1 | change over the last 2 epochs |", "|:---|---:|---:|---:|"]
    by_epoch = {r["epoch"]: r for r in table.rows}
    for c in models:
        last = max(e for e, r in by_epoch.items() if _num(r.get(c)) is not None)
        before = by_epoch.get(last - 2, {}).get(c)
        change = "–" if _num(before) is None else \
            f"{by_epoch[last][c] - before:+.2f} (epoch {last - 2}: {_fmt(before)})"
        out.append(f"| {c} | {last} | {table.cell(by_epoch[last], c)} | {change} |")
    return out + [""]


def _control_findings(tables: Mapping[str, Table], control: Mapping[str, Table], label: str,
                      names: Sequence[str]) -> list[str]:
    """A control study (the same recipe changed in one respect, say a longer schedule) against this one: for
    each method the control trained and each table of ``names``, control - this study at every size both have,
    judged by :func:`_comparison` (a side with one seed takes the other's std: the control's models usually have
    one seed, this study's several)."""
    out = [f"## Control: {label}", "",
           (f"The same models trained as the control `{label}` says, against this study's: where the control moves "
            "a number by more than the spread, this study's number is not final in that respect."), ""]
    here = "this study"
    for name in names:
        mine, theirs = tables.get(name), control.get(name)
        if mine is None or theirs is None:
            continue
        methods = [c for c in theirs.columns[1:] if c in mine.columns and any(_num(v) is not None
                                                                              for v in theirs.column(c))]
        merged = _join_by_dim(name, mine.title, [(table, method, f"{method} ({who})") for method in methods
                                                 for table, who in ((theirs, label), (mine, here))])
        for method in methods:
            out += _comparison(merged, f"{method} ({label})", f"{method} ({here})", f"{method}, {mine.title}")
    return out


def findings_markdown(tables: Mapping[str, Table], k: int = 10, tolerance: float = 0.5,
                      seeds: Mapping[str, Sequence[int]] | None = None,
                      control: tuple[str, Mapping[str, Table]] | None = None) -> str:
    """The paper's claims checked on this study's tables: every number below is computed here from
    them (differences of means over seeds, in points, each judged against its spread), so the prose of a
    study README can cite it without retyping. ``seeds``: ``{model label: its seeds}``
    (:meth:`Study.seeds`), listed when given. ``control``: ``(label, tables of a control study)``, compared
    section by section (:func:`_control_findings`)."""
    out = ["# The paper's claims, checked on this study's numbers", "",
           "Computed by `mrl.report.study.findings_markdown` from the tables of this folder; all in % and "
           "percentage points.", "",
           ("**How a difference is judged.** Every number is the mean over the seeds a model was trained with "
            "(`mean ± std (n)`: the sample standard deviation over n seeds). The spread of a difference of two means "
            "is the sum of the two sides' standard deviations; a side with a single seed at a size borrows the "
            "standard deviation of the same method at the nearest size (in log2; the larger one on a tie) that has "
            "at least 2 seeds, marked \"borrowed\". The verdict is `higher` or `lower` only when |difference| "
            "exceeds the spread, `within noise` otherwise. A method trained with a single seed at every size (MRL-E "
            "here) is assumed as noisy as the method it is compared with, marked \"assumed\"; when neither side has "
            "a spread, the verdict is `no spread measured` (never called a difference). In the adaptive sections, "
            "\"equal\" means within "
            f"{tolerance} points."), ""]
    if seeds is not None:
        out += ["## Seeds per model", ""] + [f"* {label}: {', '.join(map(str, s))}" for label, s in seeds.items()]
        out.append("")
    if "zero_shot_by_size" in tables:  # an image-text study
        out += ["## Per size: MRL vs FF", ""]
        out += _comparison(tables["zero_shot_by_size"], "MRL", "FF", "MRL vs FF-k, zero-shot top-1")
        out += _comparison(tables["cross_modal_rsum_by_size"], "MRL", "FF", "MRL vs FF-k, cross-modal rsum")
        out += [""] + _validation_findings(tables["validation_curve"])
        if control:
            out += _control_findings(tables, control[1], control[0], list(IMAGE_TEXT_TABLES))
        return "\n".join(out).rstrip() + "\n"
    top1, mapk = tables["top1_by_size"], tables[f"map{k}_by_size"]
    out += ["## Per size: MRL vs FF, MRL-E vs MRL, and the post-hoc baselines", ""]
    out += _comparison(top1, "MRL", "FF", "MRL vs FF-k, linear top-1")
    out += _comparison(mapk, "MRL", "FF", f"MRL vs FF-k, mAP@{k}")
    out += _comparison(top1, "MRL-E", "MRL", "MRL-E vs MRL, linear top-1")
    out += _comparison(top1, "MRL", "SVD", "MRL vs SVD, linear top-1")
    out += _comparison(top1, "MRL", "Rand-LP", "MRL vs Rand-LP, linear top-1")

    ac = tables["adaptive_classification"]
    out += ["## Adaptive classification", ""]
    for method in dict.fromkeys(ac.column("method")):
        rows = sorted((r for r in ac.rows if r["method"] == method), key=lambda r: r["cap"])
        full = rows[-1]
        target = full["fixed_accuracy"] - tolerance
        reach = next((r for r in rows if r["accuracy"] >= target), None)
        fixed = next((r for r in rows if r["fixed_accuracy"] >= target), None)
        out.append(f"* {method}: full size {full['cap']} alone: {ac.cell(full, 'fixed_accuracy')}; the cascade over "
                   f"all sizes: {ac.cell(full, 'accuracy')} at an expected size of {ac.cell(full, 'expected_dim')} "
                   "dims; "
                   + (f"the smallest cap within {tolerance} points of the full size is {reach['cap']}, at "
                      f"{ac.cell(reach, 'accuracy')} and an expected {ac.cell(reach, 'expected_dim')} dims"
                      if reach else f"no cap comes within {tolerance} points of the full size")
                   + (f" (a fixed size needs {fixed['cap']} dims for that)" if fixed else "")
                   + f"; oracle: {ac.cell(full, 'oracle_accuracy')} at {ac.cell(full, 'oracle_expected_dim')} "
                   "dims.")

    ar = tables["adaptive_retrieval"]
    metric = next((c for c in ar.columns if c.startswith("map@")), f"map@{k}")
    out += ["", f"## Adaptive retrieval at equal {metric}", ""]
    for method in dict.fromkeys(ar.column("method")):
        rows = [r for r in ar.rows if r["method"] == method]
        exact = next((r for r in rows if r["kind"] == "exact"), None)
        if exact is None or _num(exact.get(metric)) is None:
            continue
        equal = [r for r in rows if r["kind"] != "exact" and _num(r.get(metric)) is not None
                 and r[metric] >= exact[metric] - tolerance]
        best = min(equal, key=lambda r: r["mflops"]) if equal else None
        out.append(f"* {method}: exact search at {exact['D_s']} dims: {metric} {ar.cell(exact, metric)}, "
                   f"{_fmt(exact['mflops'])} MFLOPs and {ar.cell(exact, 'us_per_query')} us per query; "
                   + (f"cheapest equal-{metric} setting: {best['kind']} D_s={best['D_s']}, D_r={best['D_r']}, "
                      f"K={best['K']}: {metric} {ar.cell(best, metric)}, {_fmt(best['mflops_speedup'])}x fewer "
                      f"MFLOPs, {ar.cell(best, 'speedup')}x faster wall-clock on this machine" if best
                      else f"no setting reaches the exact {metric}") + ".")
    out += [""] + _validation_findings(tables["validation_curve"])
    if control:
        out += _control_findings(tables, control[1], control[0], ["top1_by_size", f"map{k}_by_size"])
    return "\n".join(out).rstrip() + "\n"


@dataclass
class Report:
    out: Path
    study: Study
    tables: dict[str, Table]
    plots: dict[str, Path | None]
    files: list[Path]


def write_report(study: Study, out_dir: str | Path, title: str | None = None, k: int = 10,
                 paper_dir: str | Path | None = DEFAULT_PAPER_DIR, imagenet: bool | None = None,
                 command: str | None = None, control: tuple[str, Study] | None = None) -> Report:
    """Write the study's tables, plots, ``commands.md``, ``configs/``, ``summary.md`` and ``findings.md`` into
    ``out_dir``.

    ``imagenet``: overlay the paper's curves (``None``: when the study's config says ``data.name:
    imagenet``). ``paper_dir``: the paper reference CSVs (``None`` or absent: no paper numbers). ``control``:
    ``(label, study)``, a control study (the same models trained another way) compared in ``findings.md``."""
    title = title or study.name
    paper = load_paper_reference(paper_dir) if paper_dir and Path(paper_dir).is_dir() else {}
    overlay = bool(paper) and (study.is_imagenet if imagenet is None else imagenet)
    ov = paper if overlay else None
    tables = build_tables(study, k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for t in tables.values():
        files += write_report_table(t, out).values()
    plots: dict[str, Path | None] = {}
    if not study.is_image_text:
        plots["top1_by_size"] = plot_by_size(tables["top1_by_size"], out / "top1_by_size.png", "top-1 accuracy (%)",
                                             f"Linear top-1 by size, {title}", ov and ov.get("top1_linear"))
        plots["knn_top1_by_size"] = plot_by_size(tables["knn_top1_by_size"], out / "knn_top1_by_size.png",
                                                 "1-NN top-1 accuracy (%)", f"1-NN top-1 by size, {title}",
                                                 ov and ov.get("knn_top1"), {"Rand-FS": "Rand"})
        name = f"map{k}_by_size"
        plots[name] = plot_by_size(tables[name], out / f"{name}.png", f"mAP@{k} (%)",
                                   f"Retrieval mAP@{k} by size, {title}", ov and ov.get("map10") if k == 10 else None)
        plots["retrieval_by_size"] = plot_retrieval_by_size(tables["retrieval_by_size"], out / "retrieval_by_size.png",
                                                            f"Retrieval at k = {k} by size, {title}")
        plots["adaptive_classification"] = plot_adaptive_classification(
            tables["adaptive_classification"], out / "adaptive_classification.png", f"Adaptive classification, {title}",
            ov)
        plots["adaptive_retrieval"] = plot_adaptive_retrieval(
            tables["adaptive_retrieval"], out / "adaptive_retrieval.png", f"Adaptive retrieval, {title}",
            ov if k == 10 else None)
    else:
        for name, (ylabel, heading) in IMAGE_TEXT_TABLES.items():
            plots[name] = plot_by_size(tables[name], out / f"{name}.png", ylabel, f"{heading}, {title}")
    plots["validation_curve"] = plot_validation_curve(tables["validation_curve"], out / "validation_curve.png",
                                                      f"Validation top-1 per epoch, {title}")
    for stem, p in list(plots.items()):
        if p is None:
            stale = out / f"{stem}.png"
            if stale.exists():  # from an earlier report of this study: it no longer matches the tables
                stale.unlink()
        else:
            files.append(p)
    configs = out / "configs"
    configs.mkdir(exist_ok=True)
    for m in _ordered(study):
        for src, dst in ((m.path / ".hydra" / "config.yaml", configs / f"{m.name}.yaml"),
                         (m.eval_dir / "eval_config.yaml", configs / f"{m.name}_eval.yaml")):
            if src.is_file():
                shutil.copyfile(src, dst)
                files.append(dst)
    atomic_write_text(out / "commands.md", commands_markdown(study, out))
    atomic_write_text(out / "summary.md", summary_markdown(study, tables, plots, title, command, paper, overlay))
    compared = (control[0], build_tables(control[1], k)) if control else None
    atomic_write_text(out / "findings.md", findings_markdown(tables, k, seeds=study.seeds(), control=compared))
    files += [out / "commands.md", out / "summary.md", out / "findings.md"]
    return Report(out, study, tables, plots, files)
