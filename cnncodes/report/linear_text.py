"""Plain-text summaries of predictions and of a baseline run (what ``cnncodes predict`` and
``cnncodes baseline`` print; the tables themselves are :func:`cnncodes.report.text.format_table`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..stats import format_accuracy, plural
from .text import format_failures, format_table


def format_predictions(pred: Any, out: str | os.PathLike) -> str:
    """What a :class:`~cnncodes.linear.prediction.Predictions` written to ``out`` holds: counts
    per label, the accuracy against the folder labels when known, the unreadable files."""
    kind = ("per-class probabilities (prob_<class> columns)" if pred.score_kind == "probability"
            else "per-class decision scores (score_<class> columns; not probabilities)")
    lines = [f"{os.fspath(out)}: {plural(len(pred.paths), 'image')} labelled by {pred.model}; "
             f"{kind}"]
    counts = ", ".join(f"{c} {n}" for c, n in pred.to_dict()["counts"].items() if n)
    if counts:
        lines.append(f"  {counts}")
    chk = pred.label_check()  # folder classes the model lacks: also a logged warning
    if chk is not None:
        unknown = ", ".join(chk["unknown"])
        if chk["accuracy"] is not None:
            only = (f", over the images of the model's classes only; "
                    f"{plural(chk['n_unknown'], 'image')} of {unknown} left out"
                    if unknown else "")
            lines.append("  accuracy against the folder labels: "
                         f"{format_accuracy(chk['accuracy'], chk['n_known'])}{only}")
        elif unknown:
            lines.append(f"  no accuracy: none of the folder classes ({unknown}) is a class of "
                         f"the model ({', '.join(pred.classes)})")
    if pred.failures:
        lines.append(format_failures(pred.failures, "listed first in the CSV, with the reason "
                                                    "in its error column"))
    return "\n".join(lines)


def format_advice_use(report: Mapping[str, Any]) -> str:
    """How ``--layer auto`` chose (empty without advice)."""
    use, advice = report.get("advice_use"), report.get("advice")
    if not use or advice is None:
        return ""
    again = (" (reused: recorded in the cache for these training images)"
             if use.get("reused_from_cache") else "")
    # which classifier was used, and why: the report table's "classifier" line
    return f"--layer auto -> {use['layer']}: {advice.get('explanation')}{again}"


def format_baseline(report: Mapping[str, Any], *, fall_through: str = "",
                    failures: Sequence[tuple[str, str]] = (),
                    folder: str | os.PathLike | None = None) -> str:
    """A baseline report as text: the advice, the table, the fall-through part (``fall_through``,
    already formatted), the unreadable files and where the files are."""
    parts = []
    advice = format_advice_use(report)
    if advice:
        parts.append(advice + "\n")
    parts.append(format_table(dict(report)))
    if fall_through:
        parts.append("\n" + fall_through)
    if failures:
        lines = [f"\n{plural(len(failures), 'file')} could not be read and were left out:"]
        lines += [f"  {p}: {r}" for p, r in failures[:20]]
        parts.append("\n".join(lines))
    if folder is not None:
        parts.append(f"\nmodel, report.json, predictions.csv (every test image) and PNGs in "
                     f"{os.fspath(folder)} "
                     f"({report.get('wall_time_s')} s in all)\n"
                     f"report: {Path(folder).resolve() / 'report.html'}")
    return "\n".join(parts)
