"""The MLM study's report (results/mlm): masked-token accuracy per size of our MRL-E model and our FF-style models,
beside the MRL paper's BERT-Base numbers, as one table, one plot and the folder's README, all from run outputs:
``python scripts/mlm_report.py --runs results/mlm/runs --out results/mlm [--paper FILE]``.

``--runs`` holds one folder per model, as ``scripts/mlm_study.sh`` collects them: ``mrle`` and ``ff<k>`` (each with
``metrics_by_dim.json`` of ``scripts/train.py``, ``.hydra/config.yaml``, ``command.txt``, ``train.log``). Every number
written is read from those files or from the paper's CSV (fractions there, percent here); nothing is typed by hand.
The runs must have been scored on the same held-out masked tokens (the same data, split and mask seeds, and
number of tokens scored), else the report stops with a one-line error (exit status 2) before writing anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.errors import ConfigError
from mrl.report.run_tables import atomic_write_text, markdown_table, new_panels, save_figure, write_table

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAPER = PROJECT_ROOT.parent / "shared" / "paper" / "bert_base_mlm_accuracy.csv"
PAPER_COLUMNS = {"Representation Size": "dim", "BERT-FF": "paper_ff", "BERT-NRL": "paper_mrl"}
# what must agree between runs for their test tokens to be the same
SAME_DATA = ("data.train", "data.test", "data.val_size", "data.test_size", "data.split_seed", "data.eval_mask_seed",
             "data.mask_probability", "model.backbone.name", "model.backbone.max_length")
NAME = re.compile(r"^(mrle|ff(\d+))$")


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(str(path), f"cannot be read ({type(err).__name__})",
                          "rerun the study's collect stage") from None


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = cfg.get(key) if isinstance(cfg, dict) else None
    return cfg


def load_run(folder: Path) -> dict[str, Any]:
    """One model's test metrics per size, its config and how it was made."""
    match = NAME.match(folder.name)
    if not match:
        raise ConfigError(str(folder), "is not a model folder of the study", "name it mrle or ff<k>")
    path = folder / "metrics_by_dim.json"
    try:
        result = json.loads(path.read_text())
        rows = {int(r["dim"]): (float(r["mlm_accuracy"]), float(r["loss"])) for r in result["rows"]}
        head, tokens = result["head"], int(result["num_samples"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(str(path), f"is not a masked-LM metrics table ({type(err).__name__}: {err})",
                          "rerun the model's training (scripts/mlm_study.sh)") from None
    expected = "mrle" if match[2] is None else "ff"
    if head != expected or (expected == "ff" and list(rows) != [int(match[2])]):
        raise ConfigError(str(path), f"holds head {head} at sizes {list(rows)}, not what {folder.name} names",
                          "collect the run into the folder of its model")
    config = _yaml(folder / ".hydra" / "config.yaml")
    log = (folder / "train.log").read_text() if (folder / "train.log").is_file() else ""
    seconds = [float(s) for s in re.findall(r"^epoch \d+/\d+ .* ([\d.]+) s$", log, flags=re.MULTILINE)]
    command = (folder / "command.txt").read_text().strip() if (folder / "command.txt").is_file() else ""
    texts = result.get("num_texts")
    if texts is None and (folder / "csv" / "metrics.csv").is_file():  # the test split's texts, as Lightning logged
        with (folder / "csv" / "metrics.csv").open(newline="") as f:
            logged = [row.get("test/num_texts") for row in csv.DictReader(f)]
        texts = next((int(float(v)) for v in reversed(logged) if v), None)
    return {"name": folder.name, "head": head, "rows": rows, "tokens": tokens, "config": config,
            "texts": texts, "train_seconds": sum(seconds) if seconds else None,
            "steps": _get(config, "trainer.limit_train_batches"), "seed": _get(config, "seed"), "command": command}


def load_runs(runs: Path) -> dict[str, dict[str, Any]]:
    if not runs.is_dir():
        raise ConfigError("--runs", f"{runs} does not exist", "run scripts/mlm_study.sh first")
    loaded = {f.name: load_run(f) for f in sorted(runs.iterdir()) if f.is_dir() and (f / "DONE").is_file()}
    if "mrle" not in loaded:
        raise ConfigError("--runs", f"{runs} has no finished mrle model", "run scripts/mlm_study.sh (MODELS=mrle)")
    reference = loaded["mrle"]
    for run in loaded.values():
        for key in SAME_DATA:
            if _get(run["config"], key) != _get(reference["config"], key):
                raise ConfigError("--runs", f"{run['name']} has {key}={_get(run['config'], key)!r} but mrle has "
                                  f"{_get(reference['config'], key)!r}: they were not scored on the same masked tokens",
                                  "rerun it with the study's settings")
        if run["tokens"] != reference["tokens"]:
            raise ConfigError("--runs", f"{run['name']} scored {run['tokens']} masked tokens, mrle "
                              f"{reference['tokens']}", "rerun it with the study's settings")
    return loaded


def load_paper(path: Path) -> dict[int, dict[str, float]]:
    """The paper's BERT-Base accuracy per size, in percent (the file holds fractions)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return {int(r["Representation Size"]): {ours: 100.0 * float(r[theirs]) for theirs, ours in
                                                PAPER_COLUMNS.items() if ours != "dim"} for r in rows}
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ConfigError("--paper", f"{path} is not the paper's BERT table ({type(err).__name__}: {err})",
                          "give ../shared/paper/bert_base_mlm_accuracy.csv") from None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def table_rows(runs: dict[str, dict[str, Any]], paper: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    mrle = runs["mrle"]["rows"]
    full = max(mrle)
    ff = {int(name[2:]): run["rows"][int(name[2:])] for name, run in runs.items() if name.startswith("ff")}
    paper_full = max(paper) if paper else None
    rows = []
    for dim in sorted(set(mrle) | set(paper)):
        ours, theirs = mrle.get(dim), paper.get(dim, {})
        rows.append({
            "dim": dim,
            "ours_mrle": _round(ours[0]) if ours else None,
            "ours_ff": _round(ff[dim][0]) if dim in ff else None,
            "ours_mrle_minus_ff": _round(ours[0] - ff[dim][0]) if ours and dim in ff else None,
            "ours_mrle_kept": _round(ours[0] / mrle[full][0], 3) if ours else None,
            "ours_mrle_loss": _round(ours[1], 3) if ours else None,
            "ours_ff_loss": _round(ff[dim][1], 3) if dim in ff else None,
            "paper_mrl": _round(theirs.get("paper_mrl")),
            "paper_ff": _round(theirs.get("paper_ff")),
            "paper_mrl_minus_ff": _round(theirs["paper_mrl"] - theirs["paper_ff"]) if theirs else None,
            "paper_mrl_kept": _round(theirs["paper_mrl"] / paper[paper_full]["paper_mrl"], 3) if theirs else None,
        })
    return rows


def plot(rows: list[dict[str, Any]], path: Path, runs: dict[str, dict[str, Any]]) -> Path:
    fig, (ours, theirs) = new_panels(1, 2, (11, 4.2))
    for ax, columns, title in (
            (ours, (("ours_mrle", "MRL-E (one model, every size)", "o-"), ("ours_ff", "FF (a model per size)", "s")),
             f"ours: all-MiniLM-L6-v2 + MLM, {runs['mrle']['steps']} steps on local sentences"),
            (theirs, (("paper_mrl", "MRL (the paper's BERT-NRL)", "o--"),
                      ("paper_ff", "FF (the paper's BERT-FF)", "s--")),
             "the paper's BERT-Base (Wikipedia + BookCorpus)")):
        for column, label, style in columns:
            points = [(r["dim"], r[column]) for r in rows if r[column] is not None]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=7)
        dims = [r["dim"] for r in rows if any(r[c] is not None for c, _, _ in columns)]
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_xlabel("representation size (dims)")
        ax.set_ylabel("masked-token accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def binomial_se(accuracy: float, n: int) -> float:
    p = accuracy / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def findings(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences computed from the table: MRL-E against FF at each FF size, in points and against the noise of one
    accuracy on this many tokens; what MRL-E keeps at its smallest size; the same for the paper."""
    tokens = runs["mrle"]["tokens"]
    lines = []
    for r in rows:
        if r["ours_mrle_minus_ff"] is None:
            continue
        noise = 2 * math.sqrt(binomial_se(r["ours_mrle"], tokens) ** 2 + binomial_se(r["ours_ff"], tokens) ** 2)
        verdict = ("within noise" if abs(r["ours_mrle_minus_ff"]) <= noise else
                   "MRL-E ahead" if r["ours_mrle_minus_ff"] > 0 else "FF ahead")
        paper = (f"; the paper's MRL minus FF at {r['dim']}: {r['paper_mrl_minus_ff']:+.2f}"
                 if r["paper_mrl_minus_ff"] is not None else "")
        lines.append(f"At {r['dim']} dims: MRL-E {r['ours_mrle']:.2f}% vs FF-{r['dim']} {r['ours_ff']:.2f}% "
                     f"({r['ours_mrle_minus_ff']:+.2f} points; twice the unpaired binomial standard error of the "
                     f"difference is {noise:.2f}: {verdict}); test cross-entropy {r['ours_mrle_loss']:.3f} vs "
                     f"{r['ours_ff_loss']:.3f} nats{paper}.")
    smallest, largest = rows[0], max((r for r in rows if r["ours_mrle"] is not None), key=lambda r: r["dim"])
    paper_full = max((r for r in rows if r["paper_mrl"] is not None), key=lambda r: r["dim"], default=None)
    level = f"Levels: ours MRL-E at its full {largest['dim']} dims {largest['ours_mrle']:.2f}%"
    if paper_full is not None:
        level += f", the paper's MRL at its full {paper_full['dim']} dims {paper_full['paper_mrl']:.2f}%"
        if largest["paper_mrl"] is not None and paper_full is not largest:
            level += f" ({largest['paper_mrl']:.2f}% at {largest['dim']})"
    lines.append(level + ".")
    lines.append(f"MRL-E at {smallest['dim']} dims keeps {smallest['ours_mrle_kept']:.3f} of its {largest['dim']}-dim "
                 f"accuracy ({smallest['ours_mrle']:.2f}% vs {largest['ours_mrle']:.2f}%); the paper's MRL at "
                 f"{smallest['dim']} keeps {smallest['paper_mrl_kept']:.3f} of its 768-dim accuracy.")
    return lines


STATIC_NOTES = """\
## What the numbers are

* **Masked-token accuracy at size m**: of the masked positions of the held-out test texts, the percentage whose
  top-1 prediction at size m is the original token. Size m means: the first m coordinates of the token's final hidden
  state, BERT's MLM transform restricted to its first m inputs and outputs (dense weight `[:m, :m]`, LayerNorm over
  those m coordinates with its first m scales and shifts), scored against the first m columns of the input embedding
  matrix (the tied output layer) plus the output bias (`mrl/tasks/mlm.py`).
* **MRL-E**: one model trained with the cross-entropies of all six sizes summed (12, 24, ..., 384). The output layer
  is the embedding matrix, shared by every size, so MRL here is MRL-E, as in the paper's BERT experiment.
* **FF-k**: the FF-style baseline, a separate model trained with the same recipe and the same sliced head at the
  single size k (`model.head=ff model.nesting_dims=[k]`).
* **Test texts**: {test_size} sentences drawn once (split seed {split_seed}) from SST-2 dev and test and SNLI test,
  texts no model trains on; each is masked as BERT masks (max(1, round({p} n)) of its n word-piece tokens;
  80% `[MASK]`, 10% a random token, 10% unchanged) from a seed fixed by its place in the split (mask seed
  {eval_mask_seed}). Every model is scored on exactly the
  same masked tokens (the report checks that their data settings and token counts agree).
* **The paper's numbers** (`../shared/paper/bert_base_mlm_accuracy.csv`, from the authors' repository; columns
  `BERT-FF` and `BERT-NRL`, NRL being the paper's early name for MRL) are fractions there, percent here. They are
  BERT-Base trained on Wikipedia and BookCorpus and are **not** comparable in level with ours: only the shapes
  (how accuracy falls with size, and MRL against FF at each size) can be set side by side.

## Caveats

* **Scale.** Ours is all-MiniLM-L6-v2 (6 layers, 384 wide), a sentence-embedding model with no MLM head, continued
  for {steps} steps of {batch} short texts on a 2-core CPU: its MLM transform starts from scratch and its final
  hidden states were trained for mean-pooled sentence similarity, not token prediction. The paper's BERT-Base
  (12 layers, 768 wide) was trained on billions of words. The levels are not comparable, and the gaps between
  methods after so short a run say little about converged models.
* **Corpus.** Training texts: SST-2's train phrases (many are fragments of the same movie-review sentences), AG
  News titles and descriptions, SNLI dev sentences, each text once; test texts are other sentences of the same
  domains. Texts are cut at {max_length} tokens.
* **One seed.** Each model was trained once. The binomial standard error in the findings covers which test tokens
  were drawn (unpaired, so conservative: both models score the same tokens), not the variation between training
  runs, which is not measured here.
* **Recipe.** The learning rates (the new MLM head at 5e-2, the encoder at 2e-4) were chosen by a few short probes
  (80 to 120 steps) of the MRL-E model, because at the usual 1e-3 the small sizes stayed at chance within this
  budget; FF runs the same recipe untuned. A recipe tuned per model, or a longer run, may move the FF numbers most.
* **FF sizes.** FF was trained at the sizes listed; the other sizes have no FF model (empty cells).
"""


def readme(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]], out: Path, command: str,
           paper_path: Path) -> str:
    mrle = runs["mrle"]
    ff_sizes = sorted(int(n[2:]) for n in runs if n.startswith("ff"))
    minutes = {name: run["train_seconds"] / 60 for name, run in runs.items() if run["train_seconds"]}
    shown = [{"size": r["dim"],
              "ours MRL-E": r["ours_mrle"], "ours FF": r["ours_ff"], "ours MRL-E - FF": r["ours_mrle_minus_ff"],
              "ours MRL-E kept": r["ours_mrle_kept"],
              "paper BERT-Base MRL": r["paper_mrl"], "paper BERT-Base FF": r["paper_ff"],
              "paper MRL - FF": r["paper_mrl_minus_ff"], "paper MRL kept": r["paper_mrl_kept"]} for r in rows]
    cfg = mrle["config"]
    notes = STATIC_NOTES.format(test_size=_get(cfg, "data.test_size"), split_seed=_get(cfg, "data.split_seed"),
                                eval_mask_seed=_get(cfg, "data.eval_mask_seed"), steps=mrle["steps"],
                                p=_get(cfg, "data.mask_probability"),
                                batch=_get(cfg, "data.batch_size"), max_length=_get(cfg, "model.backbone.max_length"))
    table = markdown_table(shown).replace(" None ", "  ")
    per_model = [f"* `{name}`: `runs/{name}/` (`command.txt`, composed config `.hydra/config.yaml`, `train.log`, "
                 f"`csv/metrics.csv`, `metrics_by_dim.json`)"
                 + (f"; trained in {minutes[name]:.1f} minutes" if name in minutes else "") for name in runs]
    per_model.append("(Training minutes are wall-clock on a machine shared with other jobs: not a cost comparison.)")
    return f"""# Masked language modelling with MRL (the paper's BERT experiment, CPU scale): MRL-E vs FF per size

Generated by `scripts/mlm_report.py` from `runs/*/` and the paper's CSV; every number below is read from those files.
Models: MRL-E and FF at {", ".join(map(str, ff_sizes))} dims, seed {mrle['seed']}, all-MiniLM-L6-v2 continued with
masked language modelling for {mrle['steps']} steps of 32 texts (`configs/experiment/minilm_mlm_mrl.yaml`); test:
{mrle['tokens']} masked tokens of {mrle['texts']} held-out texts, the same for every model.

## Masked-token accuracy (%) per size, ours beside the paper's BERT-Base

{table}
`kept`: the accuracy at that size over the model's full-size accuracy (ours: 384 dims; the paper's: 768).
Empty cells: no such model (FF trained at {", ".join(map(str, ff_sizes))} only; ours stops at 384, MiniLM's width).
Also in `mlm_accuracy_by_size.csv` / `.json` (with each size's test cross-entropy), plotted in
`mlm_accuracy_by_size.png`:

![masked-token accuracy per size](mlm_accuracy_by_size.png)

## Findings (computed)

{chr(10).join(f"* {line}" for line in findings(rows, runs))}

{notes}
## How it is made

```bash
# from a separate git worktree, so that edits to the checkout do not change the code under a running study
DATA_DIR=../shared/data RESULTS_DIR=$PWD/results/mlm COMMIT=1 STAGES="train collect" scripts/mlm_study.sh
{command}
```

`scripts/mlm_study.sh` trains each model with `scripts/train.py +experiment=minilm_mlm_mrl` (one CPU thread per run:
the machine is shared) and copies its small outputs here; the paper's numbers come from `{paper_path.name}`.
The exact command and composed configuration of each model:

{chr(10).join(per_model)}

On a cluster, the same experiment at the paper's scale is `python scripts/train.py +experiment=bert_base_mlm_mrl`
(bert-base-uncased on Wikipedia + BookCorpus through Hugging Face `datasets`, 12..768, bf16) and, for FF-k,
`model.head=ff model.nesting_dims=[k]`; it has not been run here.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="one folder per model: mrle, ff<k>")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/mlm")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER, help="the paper's CSV (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
        paper = load_paper(args.paper)
        rows = table_rows(runs, paper)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/mlm_report.py", *(sys.argv[1:] if argv is None else argv)])
    notes = [("ours_*: all-MiniLM-L6-v2 continued with MLM (this study); paper_*: the MRL paper's BERT-Base "
             "(../shared/paper/bert_base_mlm_accuracy.csv, BERT-NRL = MRL), percent"),
             "*_kept: accuracy over the same model's full-size accuracy; *_loss: test cross-entropy (nats)"]
    extra = {"masked_tokens": runs["mrle"]["tokens"], "texts": runs["mrle"]["texts"],
             "models": {n: {"head": r["head"], "seed": r["seed"], "steps": r["steps"],
                            "train_minutes": None if r["train_seconds"] is None else r["train_seconds"] / 60}
                        for n, r in runs.items()}}
    write_table(rows, args.out, "mlm_accuracy_by_size", "Masked-token accuracy (%) per size: ours and the paper's "
                "BERT-Base", notes=notes, extra=extra)
    plot(rows, args.out / "mlm_accuracy_by_size.png", runs)
    atomic_write_text(args.out / "README.md", readme(rows, runs, args.out, command, args.paper))
    print(f"{len(runs)} model(s) from {args.runs} -> {args.out}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
