"""Tables of an image-text study (scripts/align_study.sh) from its models' evaluator outputs:
``python scripts/align_report.py --runs results/align_cifar10/runs --out results/align_cifar10``.

Reads ``<runs>/<model>/eval/{zero_shot,cross_modal_retrieval}.json`` (``mrl``: every size; ``ff<k>``: the model
trained without Matryoshka at size k) and writes ``<out>/by_model.{csv,md,json}`` (every model and size),
``<out>/comparison.{csv,md,json}`` (per size: MRL against the FF model trained for that size) and
``<out>/commands.md`` (each model's recorded commands). Nothing is typed by hand.
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrl.report.run_tables import atomic_write_text, write_table  # noqa: E402

METRICS = ("top1", "top5", "i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "rsum")


def _rows(path: Path) -> dict[int, dict]:
    return {row["dim"]: row for row in json.loads(path.read_text())["rows"]} if path.is_file() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    models = sorted((d.name for d in args.runs.iterdir() if (d / "eval").is_dir()),
                    key=lambda m: (m != "mrl", int(re.sub(r"\D", "", m) or 0)))
    table, by = [], {}
    for model in models:
        zs, xm = _rows(args.runs / model / "eval" / "zero_shot.json"), _rows(args.runs / model / "eval" /
                                                                              "cross_modal_retrieval.json")
        for dim in sorted(set(zs) | set(xm)):
            row = {"model": model, "dim": dim, **{m: {**zs.get(dim, {}), **xm.get(dim, {})}.get(m) for m in METRICS}}
            table.append(row)
            by[(model, dim)] = row
    images = next((r.get("num_images") for rows in [_rows(args.runs / models[0] / "eval" / "zero_shot.json")]
                   for r in rows.values()), None) if models else None
    notes = [f"Test split ({images} images), each model's checkpoint chosen by held-out zero-shot top-1. "
             "top1/top5: zero-shot classification against 5 prompt templates per class; i2t/t2i_r@k: recall@k over the "
             "distinct images and captions (match: same class); rsum: the sum of the six recalls. All in %.",
             "mrl: one model trained on every prefix 8..128; ffk: the same recipe trained at size k only."]
    write_table(table, args.out, "by_model", "Image-text study: every model and size", notes)
    comparison = []
    for dim in sorted({d for m, d in by if m == "mrl"}):
        mrl, ff = by[("mrl", dim)], by.get((f"ff{dim}", dim))
        comparison.append({"dim": dim, "mrl_top1": mrl["top1"], "ff_top1": ff["top1"] if ff else None,
                           "mrl_rsum": mrl["rsum"], "ff_rsum": ff["rsum"] if ff else None,
                           "mrl_t2i_r@1": mrl["t2i_r@1"], "ff_t2i_r@1": ff["t2i_r@1"] if ff else None})
    write_table(comparison, args.out, "comparison", "Matryoshka dual encoder (one model) vs FF-k (one model per size)",
                notes + ["ff_*: the model trained without Matryoshka at exactly that size (empty: none trained)."])
    lines = ["# Commands of each model (recorded by the runs themselves)", ""]
    for model in models:
        for path in sorted([*(args.runs / model).rglob("command*.txt"), *(args.runs / model).rglob("overrides.yaml")]):
            lines += [f"## {model}: {path.relative_to(args.runs / model)}", "", "```", path.read_text().strip(),
                      "```", ""]
    atomic_write_text(args.out / "commands.md", "\n".join(lines))
    print(f"wrote {args.out}/by_model.md, comparison.md, commands.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
