"""A study (MRL, MRL-E and FF-k models trained with one recipe) or a single run, collected from its files: the
input of the report (``scripts/report.py``). :mod:`mrl.report.tables` turns it into tables,
:mod:`mrl.report.plots` into plots, :mod:`mrl.report.findings` into ``findings.md``, and
:mod:`mrl.report.write` writes them all.

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

The replicas of one model are its seeds (the config's ``seed``, else the folder's suffix; no suffix: seed 42):
every table cell is the mean over them, with the sample standard deviation and the count beside it
(:func:`mrl.report.tables._put`), and :func:`mrl.report.findings.findings_markdown` calls a difference of means a
difference only when it exceeds the spread of the two sides.

::

    from mrl.report.study import collect
    from mrl.report.write import write_report
    study = collect("logs/cifar10_24ep")          # or one run: collect("logs/cifar10_24ep/mrl")
    write_report(study, "results/cifar10_24ep", title="CIFAR-10, ResNet-18, 24 epochs")

:func:`mrl.report.tables.load_paper_reference` reads the paper's published ImageNet-1K ResNet-50 numbers
(``results/paper_reference``); an ImageNet study's plots draw them dashed beside ours.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.errors import ConfigError
from mrl.embeddings import read_meta
from mrl.heads import HEADS, model_label
from mrl.report.inputs import REWRITE, _flatten, _get, _load_overrides, _load_yaml, read_csv, read_val_curve

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
MODEL_NAME = re.compile(r"^(?:(mrl)|(mrle)|ff(\d+))(?:-seed(\d+))?$")
# the seed of a folder without a -seed<s> suffix and without a config: configs/train.yaml's, the study's first seed
DEFAULT_SEED = 42
# config keys that legitimately differ between the models of a study (not reported as recipe differences)
PER_MODEL_KEYS = ("model.head", "model.nesting_dims", "ckpt_path", "hydra", "seed")
# how the same arithmetic is executed (memory layout, compilation): models differing in these are noted as run
# differently, not as trained with another recipe (the computation differs only in floating-point rounding)
EXECUTION_KEYS = ("model.channels_last", "model.compile")


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
        elif len(distinct) > 1 and key in EXECUTION_KEYS:
            by_value: dict[str, list[str]] = {}
            for name in flat:
                by_value.setdefault(str(given.get(name, "(not set)")), []).append(name)
            notes.append(f"executed differently (the same recipe, rounding aside): {key} = " +
                         "; ".join(f"{v} for {', '.join(names)}" for v, names in by_value.items()))
        elif len(distinct) > 1:
            notes.append(f"recipe differs across models: {key} = " +
                         ", ".join(f"{n}: {given.get(n, '(not set)')}" for n in flat))
    study = Study(root, models, sizes_sorted, width, config, ref.name if ref else None, missing, notes, nesting,
                  single_run)
    b = study.baselines_models()
    if b and b[0].k != width:
        notes.append(f"baselines read from {b[0].base} (ff{width} has no eval/baselines.csv)")
    return study
