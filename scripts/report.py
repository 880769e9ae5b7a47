"""Collect a study, or a single run, into comparison tables and plots:
``python scripts/report.py --dir logs/cifar10_24ep --out results/cifar10_24ep [--title ...] [--paper DIR]
[--control DIR --control-label TEXT]``.

Thin wrapper over :mod:`mrl.report` (:mod:`~mrl.report.study` collects, :mod:`~mrl.report.write` writes).
``--dir`` is a study folder (one run directory per model: ``mrl``, ``mrle``, ``ff<k>``, and seed replicas
``<model>-seed<s>``, averaged with their std in every table) or one run directory (``scripts/train.py``'s output,
optionally with ``embeddings/`` and ``eval/`` inside); which one is detected. Writes ``<out>/``:
``top1_by_size``, ``knn_top1_by_size``, ``map10_by_size``, ``retrieval_by_size``, ``adaptive_classification``,
``adaptive_retrieval``, ``validation_curve`` (``.csv``, ``.md``, ``.json``, ``.png``), ``commands.md``,
``configs/<model>.yaml``, ``summary.md`` and ``findings.md``.
``--control`` adds to ``findings.md`` a comparison with a control study (the same models trained another way, say
``trainer.max_epochs=24``), per method and size, judged against the seed spread.
Missing models (those of the study's ``plan.txt`` not in, else what a complete study has) or evaluator tables
are listed in ``summary.md`` and skipped; an input file that does not parse stops the report with a one-line
error naming it (exit status 2) before anything is written.
"""

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.errors import ConfigError  # noqa: E402
from mrl.report.study import collect  # noqa: E402
from mrl.report.tables import DEFAULT_PAPER_DIR  # noqa: E402
from mrl.report.write import write_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", "--study-dir", dest="source", required=True, type=Path,
                        help="a study folder (one run directory per model: mrl, mrle, ff<k>, and seed replicas "
                             "<model>-seed<s>) or one run directory")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. results/cifar10")
    parser.add_argument("--title", default=None,
                        help="title of summary.md and the plots (default: the study's or run's folder name)")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER_DIR,
                        help="the paper's reference CSVs (default: %(default)s)")
    parser.add_argument("--no-paper", action="store_true", help="leave the paper's numbers out")
    overlay = parser.add_mutually_exclusive_group()
    overlay.add_argument("--imagenet", dest="imagenet", action="store_true", default=None,
                         help="overlay the paper's ImageNet-1K curves (default: when the study's data is imagenet)")
    overlay.add_argument("--no-imagenet", dest="imagenet", action="store_false",
                         help="never overlay the paper's curves")
    parser.add_argument("--k", type=int, default=10, help="retrieval cut-off for the mAP@k tables (default: 10)")
    parser.add_argument("--control", type=Path, default=None,
                        help="a control study folder (the same models trained another way, e.g. a longer schedule), "
                             "compared with this study in findings.md")
    parser.add_argument("--control-label", default=None,
                        help="what the control changes, e.g. '24 epochs' (default: its folder name)")
    args = parser.parse_args(argv)

    try:
        if not args.source.is_dir():
            raise ConfigError("--dir", f"{args.source} does not exist", "give a study folder or a run directory")
        paper = None if args.no_paper else args.paper
        if paper is not None and not paper.is_dir():
            raise ConfigError("--paper", f"{paper} does not exist", "pass --no-paper to leave the paper out")
        study = collect(args.source)
        control = None
        if args.control is not None:
            if not args.control.is_dir():
                raise ConfigError("--control", f"{args.control} does not exist", "give the control study's folder")
            control_study = collect(args.control)
            if control_study.single_run:
                raise ConfigError("--control", f"{args.control} is one run, not a study folder",
                                  "give the folder holding the control's run directories (mrl, ff<k>, ...)")
            control = (args.control_label or control_study.name, control_study)
        command = shlex.join(["python", "scripts/report.py", *(sys.argv[1:] if argv is None else argv)])
        report = write_report(study, args.out, title=args.title, k=args.k, paper_dir=paper, imagenet=args.imagenet,
                              command=command, control=control)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = f"run {study.root} ({next(iter(study.models.values())).label})" if study.single_run \
        else f"{len(study.groups())} model(s) in {len(study.models)} folder(s) from {study.root}"
    print(f"{what} -> {report.out}/summary.md")
    if study.missing:
        print(f"missing ({len(study.missing)}):")
        for line in study.missing:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
