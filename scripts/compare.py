"""Compare runs across sizes (MRL vs MRL-E vs FF-k): one table and one plot of linear top-1, and of mAP@10 where the
runs were evaluated.

    python scripts/compare.py --runs logs/train/multiruns/imagenet_resnet50_ff/<time>/* \\
        logs/train/runs/imagenet_resnet50/slurm-123456 --out results/compare
    python scripts/compare.py --wandb-group imagenet_resnet50 --project mrl [--entity me] --out results/compare --push

``--runs``: local run folders (offline runs, or copies of cluster runs); each is identified by its records (head,
size, seed), and seed replicas are averaged with their spread. ``--wandb-group``: the runs of a W&B group (online;
``test/top1@<m>`` and ``eval/retrieval/map@<k>@<m>`` from their summaries). ``--push`` logs the table and plots to
a run of the group (``job_type=compare``), where they show as panels beside the runs. Writes
``<out>/comparison.{csv,md,json,png}``; bad input stops with one line (exit status 2) before anything is written.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.report.compare import collect_wandb, push_comparison, write_comparison  # noqa: E402
from mrl.errors import ConfigError  # noqa: E402
from mrl.report.study import collect_runs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", nargs="+", type=Path, help="run folders written by scripts/train.py")
    source.add_argument("--wandb-group", help="a W&B group: the experiment name the runs were logged under")
    parser.add_argument("--project", default="mrl", help="W&B project (default: %(default)s)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--title", default=None, help="plot title (default: the group, or the runs' common folder)")
    parser.add_argument("--k", type=int, default=10, help="retrieval cut-off of the mAP@k column (default: 10)")
    parser.add_argument("--push", action="store_true", help="log the comparison to a run of the W&B group")
    args = parser.parse_args(argv)
    try:
        study = collect_runs(args.runs) if args.runs else collect_wandb(args.wandb_group, args.project, args.entity,
                                                                           args.k)
        title = args.title or args.wandb_group or study.name
        table, files = write_comparison(study, args.out, title, args.k)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table.markdown())
    for note in study.notes + study.missing:
        print(f"note: {note}")
    print("wrote " + ", ".join(str(f) for f in files))
    if args.push:
        group = args.wandb_group or str(study.config and study.config.get("experiment_name") or title)
        print(f"pushed to {push_comparison(table, args.project, group, args.entity, directory=args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
