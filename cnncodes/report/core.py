"""Reports of trained classifiers: a JSON file, PNG figures and a plain-text table.

``report.json`` holds the model summary (backbone, weights, layer, classes), the split, the
model-selection record (CV score per C, chosen C, train time), the test metrics (accuracy,
balanced accuracy, per-class precision/recall/F1, confusion matrix) and comparison rows (e.g. the
raw-pixel baseline). ``selection["compute"]`` says where the grid search ran (NumPy, or
scikit-learn's array API on a torch device) and why not on the GPU when it fell back.
Figures: ``cv_scores.png`` (CV score against C for every row, chosen C marked) and
``confusion.png``; ``per_class.csv`` repeats the per-class table. Figures use matplotlib's Agg
canvas directly (no display, no pyplot, the caller's backend is untouched).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..atomic import atomic_write_csv, atomic_write_json, jsonable, save_figure

log = logging.getLogger(__name__)

REPORT_FORMAT = "cnncodes-report"


def build_report(*, model: Any, evaluation: Any = None,
                 rows: Sequence[Mapping[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-serialisable report of a :class:`~cnncodes.classify.TrainedModel` and, optionally,
    its :class:`~cnncodes.classify.Evaluation` and comparison ``rows``."""
    p = model.provenance
    rep: dict[str, Any] = {
        "format": REPORT_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cnncodes": __version__,
        "model": {"model": model.kind, "layer": model.layer, "backbone": p.get("backbone"),
                  "weights": p.get("weights"), "weights_sha256": p.get("weights_sha256"),
                  "pooling": p.get("pooling"), "input_size": p.get("input_size"),
                  "preprocessing": p.get("preprocessing"), "classes": list(model.classes),
                  "n_features": model.n_features, "train_store": model.store},
        "split": dict(model.split),
        "selection": dict(model.selection),
    }
    if evaluation is not None:
        rep["test"] = evaluation.to_dict()
    if rows:
        rep["rows"] = [dict(r) for r in rows]
    if extra:
        rep.update({k: v for k, v in extra.items() if v is not None})
    return jsonable(rep)


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_cv_scores(series: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                   scoring: str = "accuracy") -> Path:
    """CV score (mean +- std over folds) against C on a log axis, one line per series.

    Each series is ``{"name": ..., "selection": {"c_grid", "cv_mean", "cv_std", "best_C"}}``.
    """
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for s in series:
        sel = s.get("selection")
        if not sel:
            continue
        c = np.asarray(sel["c_grid"], float)
        m = np.asarray(sel["cv_mean"], float)
        sd = np.asarray(sel["cv_std"], float)
        (line,) = ax.plot(c, m, marker="o", ms=3, label=f"{s['name']} (C={sel['best_C']:.3g})")
        ax.fill_between(c, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        best = int(np.argmin(np.abs(np.log(c) - math.log(sel["best_C"]))))
        ax.plot([c[best]], [m[best]], marker="*", ms=12, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse regularisation)")
    ax.set_ylabel(f"cross-validated {scoring}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("model selection: CV score per C (* = chosen)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str],
                   path: str | os.PathLike, *, title: str = "confusion matrix") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), coloured by row-normalised rate,
    annotated with counts when it is small enough to read."""
    cm = np.asarray(cm, float)
    k = len(classes)
    size = min(16.0, max(4.5, 0.45 * k + 2.5))
    fig = _figure((size, size * 0.9))
    ax = fig.add_subplot(1, 1, 1)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right",
                  fontsize=8 if k > 12 else 9)
    ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8 if k > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, *,
                 evaluation: Any = None) -> dict[str, Path]:
    """Write ``report.json``, ``cv_scores.png``, ``confusion.png`` (when there is a test part)
    and ``per_class.csv`` into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rep = dict(report)
    names = dict(rep.get("files") or {})
    rows = rep.get("rows") or [{"name": f"{rep['model']['backbone']} {rep['model']['layer']} "
                                        "codes", "selection": rep.get("selection")}]
    if any(r.get("selection") for r in rows):
        files["cv_plot"] = plot_cv_scores(rows, out / "cv_scores.png",
                                          scoring=rep.get("selection", {}).get("scoring",
                                                                               "accuracy"))
    test = rep.get("test")
    if test:
        acc = test.get("accuracy", float("nan"))
        files["confusion"] = plot_confusion(
            test["confusion_matrix"], test["classes"], out / "confusion.png",
            title=f"{rep['model']['backbone']} {rep['model']['layer']}: test accuracy {acc:.3f} "
                  f"(n={test.get('n')})")
        files["per_class"] = out / "per_class.csv"
        atomic_write_csv(files["per_class"], ["class", "precision", "recall", "f1", "support"],
                         ([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                           f"{r['f1']:.4f}", r["support"]] for r in test["per_class"]))
    names.update({k: v.name for k, v in files.items()})
    names["json"] = "report.json"
    rep["files"] = names
    files["json"] = out / "report.json"
    atomic_write_json(files["json"], rep)
    log.info("report written to %s", out)
    return files


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``report.json`` (a folder or the file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    return json.loads(p.read_text(encoding="utf-8"))


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


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
    if sel:
        lines.append(f"selection  {sel.get('cv')}-fold stratified CV over {len(sel['c_grid'])} C "
                     f"values [{min(sel['c_grid']):.3g}, {max(sel['c_grid']):.3g}]: best C "
                     f"{sel['best_C']:.3g}, CV {sel.get('scoring')} {sel['best_cv_score']:.4f}, "
                     f"{sel.get('train_time_s', 0):.1f} s")
        comp = sel.get("compute")
        if comp:
            lines.append(f"compute    {describe_compute(comp)}")
    test = report.get("test")
    rows = report.get("rows") or []
    if rows:
        w = max(28, *(len(str(r["name"])) for r in rows))
        lines.append("")
        lines.append(f"{'':<{w}}  {'test acc':>8}  {'bal acc':>8}  {'CV':>7}  "
                     f"{'best C':>8}  {'dim':>6}  {'fit s':>6}")
        for r in rows:
            if "skipped" in r:
                lines.append(f"{r['name']:<{w}}  skipped: {r['skipped']}")
                continue
            s = r.get("selection") or {}
            lines.append(f"{r['name']:<{w}}  {_fmt(r.get('accuracy')):>8}  "
                         f"{_fmt(r.get('balanced_accuracy')):>8}  "
                         f"{_fmt(s.get('best_cv_score')):>7}  {_fmt(s.get('best_C'), '.3g'):>8}  "
                         f"{r.get('features', '-'):>6}  {_fmt(s.get('train_time_s'), '.1f'):>6}")
    elif test:
        lines.append(f"test       accuracy {test['accuracy']:.4f}, balanced accuracy "
                     f"{test['balanced_accuracy']:.4f} on {test['n']} rows")
    if test and per_class:
        lines.append("")
        cw = max(8, *(len(str(r["class"])) for r in test["per_class"]))
        lines.append(f"{'class':<{cw}}  {'precision':>9}  {'recall':>7}  {'f1':>6}  "
                     f"{'support':>7}")
        for r in test["per_class"]:
            lines.append(f"{r['class']:<{cw}}  {r['precision']:>9.3f}  {r['recall']:>7.3f}  "
                         f"{r['f1']:>6.3f}  {r['support']:>7d}")
        if test.get("excluded_training_rows") and split.get("kind") != "holdout":
            lines.append(f"({test['excluded_training_rows']} rows of the test source were used "
                         "for training and were not scored)")
    return "\n".join(lines)
