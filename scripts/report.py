"""Collect a study into comparison tables and plots:
``python scripts/report.py --study-dir logs/cifar10_study --out results/cifar10 [--title ...] [--paper DIR]``.

Thin wrapper over :mod:`mrl.study_report`. Writes ``<out>/``: ``top1_by_size``, ``knn_top1_by_size``,
``map10_by_size``, ``retrieval_by_size``, ``adaptive_classification``, ``adaptive_retrieval`` (``.csv``,
``.md``, ``.json``, ``.png``), ``commands.md``, ``configs/<model>.yaml`` and ``summary.md``. Missing models
or evaluator tables are listed in ``summary.md`` and skipped.
"""

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.study_report import DEFAULT_PAPER_DIR, collect_study, write_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study-dir", required=True, type=Path,
                        help="folder with one run directory per model: mrl, mrle, ff<k>")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. results/cifar10")
    parser.add_argument("--title", default=None, help="title of summary.md and the plots")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER_DIR,
                        help="the paper's reference CSVs (default: %(default)s)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    overlay = parser.add_mutually_exclusive_group()
    overlay.add_argument("--imagenet", dest="imagenet", action="store_true", default=None,
                         help="overlay the paper's ImageNet-1K curves (default: when the study's data is imagenet)")
    overlay.add_argument("--no-imagenet", dest="imagenet", action="store_false",
                         help="never overlay the paper's curves")
    parser.add_argument("--k", type=int, default=10, help="retrieval cut-off for the mAP@k tables (default: 10)")
    args = parser.parse_args(argv)

    if not args.study_dir.is_dir():
        print(f"error: --study-dir: {args.study_dir} does not exist", file=sys.stderr)
        return 2
    paper = None if args.no_paper else args.paper
    if paper is not None and not paper.is_dir():
        print(f"error: --paper: {paper} does not exist (or pass --no-paper)", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/report.py", *(sys.argv[1:] if argv is None else argv)])
    study = collect_study(args.study_dir)
    report = write_report(study, args.out, title=args.title, k=args.k, paper_dir=paper, imagenet=args.imagenet,
                          command=command)
    print(f"{len(study.models)} model(s) from {study.root} -> {report.out}/summary.md")
    if study.missing:
        print(f"missing ({len(study.missing)}):")
        for line in study.missing:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
