"""``findings.md``: each of the paper's claims checked against the report's tables, a difference called a
difference only when it exceeds the spread over seeds of the two sides."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mrl.report.tables import IMAGE_TEXT_TABLES, Table, _fmt, _join_by_dim



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
           "Computed by `mrl.report.findings.findings_markdown` from the tables of this folder; all in % and "
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
