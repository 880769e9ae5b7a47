"""Compare runs across sizes: MRL vs MRL-E vs FF-k, from local run folders or from a W&B group: the library behind
``scripts/compare.py``.

* :func:`collect_wandb`: the runs of a W&B group (online) as a :class:`~mrl.report.study.Study`: each run's head,
  sizes and seed from its config, its test top-1 per size from its summary (``test/top1@<m>``, written by
  training), its mAP@k where it has ``eval/retrieval/map@<k>@<m>`` fields (added by ``scripts/eval.py``).
* Local run folders are read by :func:`mrl.report.study.collect_runs`.
* :func:`write_comparison`: ``comparison.{csv,md,json,png}`` (:func:`~mrl.report.tables.comparison_table`: one
  table, and one plot with a panel per metric).
* :func:`push_comparison`: the table and a line plot per metric logged to a run of the group (``job_type=compare``),
  so the comparison sits in the group's W&B workspace as a panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mrl.heads import HEADS
from mrl.errors import ConfigError
from mrl.report.inputs import _get
from mrl.report.plots import plot_comparison
from mrl.report.study import DEFAULT_SEED, Model, Study, _int_list, _summarise, add_replica
from mrl.report.tables import Table, comparison_table
from mrl.report.write import write_report_table


def _nested(config: Mapping[str, Any], dotted: str) -> Any:
    """``config``'s value at ``dotted``, nested (``{"model": {"head": ..}}``) or flat (``{"model.head": ..}``)."""
    return _get(config, dotted, config.get(dotted))


def collect_wandb(group: str, project: str, entity: str | None = None, k: int = 10, api=None) -> Study:
    """The runs of W&B group ``group`` in ``entity/project`` as a study (``api``: a ``wandb.Api``; made here by
    default). Runs without a head and sizes in their config (e.g. an earlier comparison) are listed in the notes."""
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    models: dict[str, Model] = {}
    notes: list[str] = []
    for run in api.runs(path, filters={"group": group}):
        config, summary = dict(run.config), dict(run.summary)
        head, dims = _nested(config, "model.head"), _int_list(_nested(config, "model.nesting_dims"))
        if dims is None:  # "auto" in a config logged before its sizes were resolved: the sizes it was tested at
            dims = sorted(int(key.split("@")[1]) for key in summary
                          if key.startswith("test/top1@") and key.split("@")[1].isdigit()) or None
        seed = _nested(config, "seed")
        if head not in HEADS or not dims:
            notes.append(f"W&B run {run.name} ({run.id}): no model.head / model.nesting_dims in its config, skipped")
            continue
        model = Model(run.name, head, dims[0] if head == "ff" else None, Path(group) / run.id,
                      seed if isinstance(seed, int) else DEFAULT_SEED, config=config)
        model.metrics = [{"dim": m, "top1": summary[f"test/top1@{m}"], "top5": summary.get(f"test/top5@{m}")}
                         for m in dims if isinstance(summary.get(f"test/top1@{m}"), (int, float))] or None
        key = f"eval/retrieval/map@{k}@{{}}"  # written by scripts/eval.py into the training run
        retrieval = [{"dim": m, f"map@{k}": summary[key.format(m)]} for m in dims
                     if isinstance(summary.get(key.format(m)), (int, float))]
        if retrieval:
            model.eval["retrieval"] = retrieval
        add_replica(models, model, f"W&B run {run.name}",
                    "compare one run per model and seed (delete or move the other)")
    if not models:
        raise ConfigError("--wandb-group", f"{group!r} has no training runs in {path}",
                          "check the group (the experiment name), --project and --entity")
    study = _summarise(Path(group), models, [], notes, single_run=False)
    study.missing = [m for m in study.missing if "eval/" not in m and ".hydra" not in m]  # files a W&B run lacks
    return study


def write_comparison(study: Study, out_dir: str | Path, title: str, k: int = 10) -> tuple[Table, list[Path]]:
    """``comparison.{csv,md,json}`` and ``comparison.png`` in ``out_dir``; returns the table and the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(study, k)
    if not table.rows:
        raise ConfigError("--runs", "none of the runs has test results (metrics_by_dim.csv or test/top1@<m>)",
                          "compare finished runs")
    files = list(write_report_table(table, out).values())
    plot = plot_comparison(table, out / "comparison.png", title)
    return table, files + ([plot] if plot else [])


def push_comparison(table: Table, project: str, group: str, entity: str | None = None,
                    mode: str | None = None, directory: str | Path | None = None) -> str:
    """Log ``table`` and a line plot per metric (every method against size) to a new run of ``group``
    (``job_type="compare"``), its files under ``directory/wandb`` (default: W&B's, the working directory);
    returns the run's URL (its folder when offline)."""
    import wandb

    run = wandb.init(project=project, entity=entity, group=group, job_type="compare", name=f"{group}:compare",
                     mode=mode, config={"compared_runs": table.sources},
                     dir=str(directory) if directory is not None else None)
    columns = table.file_columns
    logged: dict[str, Any] = {"comparison/table": wandb.Table(columns=columns,
                                                              data=[[r.get(c) for c in columns] for r in table.rows])}
    for metric in dict.fromkeys(c.split(" ")[0] for c in table.columns if c != "dim"):
        methods = [c for c in table.columns if c.startswith(metric + " ")]
        points = [[(r["dim"], r[c]) for r in table.rows if r.get(c) is not None] for c in methods]
        logged[f"comparison/{metric}"] = wandb.plot.line_series(
            xs=[[x for x, _ in p] for p in points], ys=[[y for _, y in p] for p in points],
            keys=[c.split(" ", 1)[1] for c in methods], title=f"{group}: {metric} by size", xname="dims")
    run.log(logged)
    url = run.url or run.dir
    run.finish()
    return url
