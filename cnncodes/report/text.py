"""Reports as plain text: the classifier report table (:func:`format_table`) and the one-line
description of where model selection ran (:func:`describe_compute`).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ..stats import format_accuracy, plural

log = logging.getLogger(__name__)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _acc(row: Mapping[str, Any], test: Mapping[str, Any] | None) -> str:
    """A row's test accuracy with its 95% interval (over its own ``n_test``, else the test
    part's size)."""
    n = row.get("n_test") if row.get("n_test") is not None else (test or {}).get("n")
    return format_accuracy(row.get("accuracy"), n) if row.get("accuracy") is not None else "-"


def describe_compute(compute: Mapping[str, Any]) -> str:
    """One line for ``selection["compute"]``: where the grid search ran, and why not on the GPU
    when it fell back."""
    if compute.get("engine") == "array-api":
        text = f"scikit-learn array API on torch {compute.get('device')}"
    else:
        text = "NumPy on CPU"
    if compute.get("dtype"):
        text += f", {compute['dtype']}"
    if compute.get("reason"):
        text += f" (not the array API: {compute['reason']})"
    return text


def incomplete_text(note: Mapping[str, Any]) -> str:
    """One line on a store read although its extraction was stopped (``--allow-incomplete``)."""
    n = note.get("missing")
    missing = (f"{plural(n, 'image')} {'was' if n == 1 else 'were'} not extracted"
               if n is not None else "an unrecorded number of images were not extracted")
    rows = note.get("rows")
    used = plural(rows, "row") if isinstance(rows, int) else f"{rows} rows"
    return (f"{note.get('store')} is incomplete ({missing}; {used} used, read "
            "with --allow-incomplete): the results cover only part of the data.")


def is_raw_pixel_row(row: Mapping[str, Any]) -> bool:
    """Whether a comparison row is the raw-pixel baseline."""
    return str(row.get("name", "")).startswith("raw pixels")


def codes_vs_pixels_text(verdict: Mapping[str, Any], *, source: Any = None) -> str:
    """The plain words for :func:`cnncodes.stats.codes_vs_pixels` ("" when the codes beat raw
    pixels), pointing to ``cnncodes advise``."""
    kind = verdict.get("verdict")
    if kind not in ("not_better", "not_clearly_better"):
        return ""
    c, p = verdict["codes"], verdict["raw_pixels"]
    both = (f"codes {format_accuracy(c[0], c[3])} vs raw pixels "
            f"{format_accuracy(p[0], p[3])}")
    advise = f"cnncodes advise {shlex.quote(str(source)) if source else 'IMAGES'}"
    if kind == "not_better":
        return (f"The codes do not beat raw pixels on this test part: {both}. This backbone and "
                f"layer add nothing over the pixels themselves here; run `{advise}` to see "
                "which layer (or backbone, with --backbones) fits these images, or whether to "
                "fine-tune.")
    return (f"The codes are not clearly better than raw pixels on this test part: {both}; the "
            "two 95% intervals overlap, so this test part cannot tell them apart. Run "
            f"`{advise}` to compare layers and backbones, or test on more images.")


def format_table(report: Mapping[str, Any], *, per_class: bool = True) -> str:
    """The report as plain text: model line, comparison rows, per-class table."""
    lines: list[str] = []
    m = report["model"]
    sel = report.get("selection", {})
    split = report.get("split", {})
    lines.append(f"model      {m['model']} on {m['backbone']}/{m['layer']} codes "
                 f"({m['n_features']}-d, {m.get('weights')}, {m.get('input_size')} px), "
                 f"{len(m['classes'])} classes")
    kind = split.get("kind")
    if kind == "holdout":
        how = (f"stratified hold-out {split.get('test_size')} (seed {split.get('seed')}): "
               f"{split.get('n_train')} train / {split.get('n_test')} test")
    elif kind == "predefined":
        how = (f"train/ and test/ folders: {split.get('n_train')} train / "
               f"{split.get('n_test')} test")
    else:
        how = f"all {split.get('n_train')} labelled rows used for training"
    lines.append(f"split      {how}")
    for note in report.get("incomplete_stores") or []:
        lines.append(f"WARNING    {incomplete_text(note)}")
    if sel:
        search = sel.get("search") or {}
        how = (f"one stratified validation split ({sel.get('n_val')} rows)"
               if search.get("kind") == "holdout" else f"{sel.get('cv')}-fold stratified CV")
        lines.append(f"selection  {how} over {len(sel['c_grid'])} C "
                     f"values [{min(sel['c_grid']):.3g}, {max(sel['c_grid']):.3g}]: best C "
                     f"{sel['best_C']:.3g}, CV {sel.get('scoring')} {sel['best_cv_score']:.4f}, "
                     f"{sel.get('train_time_s', 0):.1f} s")
        if search.get("kind") == "holdout":  # which search and why (--large-set)
            lines.append(f"why        {search.get('reason')}")
        if sel.get("model_reason") and sel.get("model_source") != "given":
            lines.append(f"classifier {sel['model_reason']}")
        if sel.get("c_note"):  # a tie over C or a choice at the grid's edge, in words
            lines.append(f"note       {sel['c_note']}")
        comp = sel.get("compute")
        if comp:
            lines.append(f"compute    {describe_compute(comp)}")
    test = report.get("test")
    rows = report.get("rows") or []
    if rows:
        w = max(28, *(len(str(r["name"])) for r in rows))
        lines.append("")
        aw = max(8, *(len(_acc(r, test)) for r in rows))
        lines.append(f"{'':<{w}}  {'model':<9}  {'test acc':<{aw}}  {'bal acc':>8}  {'CV':>7}  "
                     f"{'best C':>8}  {'dim':>6}  {'fit s':>6}")
        for r in rows:
            if "skipped" in r:
                lines.append(f"{r['name']:<{w}}  skipped: {r['skipped']}")
                continue
            s = r.get("selection") or {}
            clf = r.get("model") or s.get("model") or r.get("kind") or "-"  # what made the row
            lines.append(f"{r['name']:<{w}}  {clf:<9}  {_acc(r, test):<{aw}}  "
                         f"{_fmt(r.get('balanced_accuracy')):>8}  "
                         f"{_fmt(s.get('best_cv_score')):>7}  {_fmt(s.get('best_C'), '.3g'):>8}  "
                         f"{r.get('features', '-'):>6}  {_fmt(s.get('train_time_s'), '.1f'):>6}")
        first = rows[0].get("model") or (rows[0].get("selection") or {}).get("model")
        lines += [f"note: {r['name']} is {r['model_note']}" for r in rows[1:]
                  if r.get("model_note") and r.get("model") != first]
        lines += [f"note: {r['name']} {r['subsample']['note']}" for r in rows[1:]
                  if isinstance(r.get("subsample"), dict) and r["subsample"].get("note")]
        verdict = (report.get("codes_vs_pixels") or {}).get("message")
        if verdict:
            lines += ["", f"WARNING    {verdict}"]
    elif test:
        lines.append(f"test       accuracy {format_accuracy(test['accuracy'], test['n'])}, "
                     f"balanced accuracy {test['balanced_accuracy']:.4f}")
    if test and per_class:
        lines.append("")
        cw = max(8, *(len(str(r["class"])) for r in test["per_class"]))
        lines.append(f"{'class':<{cw}}  {'precision':>9}  {'recall':>7}  {'f1':>6}  "
                     f"{'support':>7}")
        for r in test["per_class"]:
            lines.append(f"{r['class']:<{cw}}  {r['precision']:>9.3f}  {r['recall']:>7.3f}  "
                         f"{r['f1']:>6.3f}  {r['support']:>7d}")
        if test.get("excluded_training_rows") and split.get("kind") != "holdout":
            k = test["excluded_training_rows"]
            lines.append(f"({plural(k, 'row')} of the test source {'was' if k == 1 else 'were'} "
                         "used for training and not scored)")
    return "\n".join(lines)


def format_failures(failures: Sequence[tuple[str, str]], where: str, most: int = 20) -> str:
    """``N files could not be read (where):`` and the first ``most`` of them with their reason."""
    lines = [f"{plural(len(failures), 'file')} could not be read ({where}):"]
    lines += [f"  {p}: {r}" for p, r in failures[:most]]
    if len(failures) > most:
        lines.append(f"  ... and {len(failures) - most} more")
    return "\n".join(lines)
