"""Report files of trained classifiers: ``report.json`` (built by :func:`build_report`), the
figures, ``per_class.csv`` and ``report.html``, all written atomically (:mod:`cnncodes.atomic`),
and :func:`load_report` (:mod:`cnncodes.report.schema`: the typed report, read back).

``report.json`` holds the model summary (backbone, weights, layer, classes), the split, the
model-selection record (CV score per C, chosen C, train time), the test metrics (accuracy,
balanced accuracy, per-class precision/recall/F1, confusion matrix) and comparison rows (e.g. the
raw-pixel baseline). ``selection["compute"]`` says where the grid search ran (NumPy, or
scikit-learn's array API on a torch device) and why not on the GPU when it fell back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..atomic import atomic_write_csv, atomic_write_json, finite_json
from ..errors import OptionError
from ..outputs import check_output, claim_folder
from ..stats import ci_record, codes_vs_pixels, format_accuracy
from .html import REPORT_HTML, write_linear_html
from .plots import plot_confusion, plot_cv_scores
from .schema import REPORT_FORMAT, SCHEMA_VERSION, TASKS, LinearReport, ResultRow
from .schema import load_report as load_report  # read back through the schema
from .text import codes_vs_pixels_text, is_raw_pixel_row

log = logging.getLogger(__name__)


def build_report(*, model: Any, task: str, evaluation: Any = None,
                 rows: Sequence[Mapping[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-serialisable report of a :class:`~cnncodes.classify.TrainedModel` and, optionally,
    its :class:`~cnncodes.classify.Evaluation` and comparison ``rows``, made by ``task`` (one
    of :data:`~cnncodes.report.schema.TASKS`); checked against :class:`LinearReport`."""
    if task not in TASKS:
        raise OptionError(f"task must be one of {', '.join(TASKS)}. Got {task!r} instead.")
    p = model.provenance
    rep: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "task": task,
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
        n_test = (rep.get("test") or {}).get("n")
        rep["rows"] = [row_with_ci(r, n_test) for r in rows]
        verdict = codes_vs_pixels_record(rep["rows"], source=(extra or {}).get("source"))
        if verdict is not None:
            rep["codes_vs_pixels"] = verdict
    if extra:
        rep.update({k: v for k, v in extra.items() if v is not None})
    notes = [n for n in (model.split.get("incomplete_store"),
                         getattr(evaluation, "incomplete_store", None)) if n]
    if notes:  # read with allow_incomplete: the report says so
        rep["incomplete_stores"] = list({n["store"]: n for n in notes}.values())
    # JSON types only; a NaN/inf metric becomes null with "<key>_note" beside it
    return LinearReport.from_dict(finite_json(rep)).to_dict()


def row_with_ci(row: Mapping[str, Any], n_test: Any) -> dict[str, Any]:
    """A comparison row with ``accuracy_ci95`` (the 95% Wilson interval over its own ``n_test``,
    else the report's test size) when it has an accuracy."""
    r = dict(row)
    n = r.get("n_test") if r.get("n_test") is not None else n_test
    r.update(ci_record(r.get("accuracy"), n))
    return r


def codes_vs_pixels_record(rows: Sequence[Mapping[str, Any]], *,
                           source: Any = None) -> dict[str, Any] | None:
    """``report["codes_vs_pixels"]``: :func:`cnncodes.stats.codes_vs_pixels` of the first codes
    row against the raw-pixel row, with the message to print (None without both rows)."""
    raw = next((r for r in rows if is_raw_pixel_row(r) and "skipped" not in r), None)
    codes = next((r for r in rows if not is_raw_pixel_row(r) and r.get("kind") != "finetune"
                  and "skipped" not in r), None)
    if raw is None or codes is None:
        return None
    out = codes_vs_pixels({**codes, "n_test": codes.get("n_test") or raw.get("n_test")}, raw)
    if out is None:
        return None
    out["message"] = codes_vs_pixels_text(out, source=source)
    return out


#: the files :func:`write_report` writes into its folder
REPORT_FILES = ("report.json", "cv_scores.png", "confusion.png", "per_class.csv",
                "predictions.csv", "report.html")


def check_report_folder(out_dir: str | os.PathLike, *, inputs: Any = (),
                        files: Sequence[str] = REPORT_FILES, owner: str | None = None,
                        overwrite: bool = False) -> Path:
    """Refuse a report folder that is not a folder, is (inside) an input folder, whose report
    files are special files or inputs, or (``owner``: the command writing it) that another
    command wrote or that holds images, unless ``overwrite``
    (:func:`cnncodes.outputs.check_output`)."""
    return check_output(out_dir, kind="folder", files=files, inputs=inputs, option="--report",
                        owner=owner, overwrite=overwrite)


def write_report(report: Mapping[str, Any] | LinearReport, out_dir: str | os.PathLike, *,
                 evaluation: Any = None, inputs: Any = (), owner: str = "train",
                 overwrite: bool = False, own_files: Sequence[str] = REPORT_FILES
                 ) -> dict[str, Path]:
    """Write ``report.json``, ``cv_scores.png``, ``confusion.png`` (when there is a test part),
    ``per_class.csv``, ``predictions.csv`` (every test image: path, true label, predicted
    label, probabilities or decision scores per class; with ``evaluation``) and ``report.html``
    (:mod:`cnncodes.report.html`: the page with the
    thumbnails of ``evaluation``'s test images) into ``out_dir``; returns ``{name: path}``.

    ``owner`` (the command writing it: ``train``, ``evaluate``, ``baseline``) is recorded in the
    folder (:func:`cnncodes.outputs.claim_folder`, with ``own_files`` as its files); a folder another
    command wrote is refused unless ``overwrite``.

    ``report``: :func:`build_report`'s dict (checked through :class:`LinearReport`) or the typed
    report.

    Raises:
        OutputError: ``out_dir`` cannot take the report (see :func:`check_report_folder`).
        ReportError: ``report`` does not fit the schema (names the field).
    """
    out = check_report_folder(out_dir, inputs=inputs, owner=owner, overwrite=overwrite,
                              files=own_files)
    rep = report if isinstance(report, LinearReport) else \
        LinearReport.from_dict(finite_json(dict(report)))
    claim_folder(out, owner, files=own_files, command=rep.command)
    files: dict[str, Path] = {}
    names = dict(rep.files or {})
    rows = rep.rows or [ResultRow(f"{rep.model.backbone} {rep.model.layer} codes",
                                  selection=rep.selection)]
    if any(r.selection and r.selection.to_dict() for r in rows):
        files["cv_plot"] = plot_cv_scores([r.to_dict() for r in rows], out / "cv_scores.png",
                                          scoring=rep.selection.scoring or "accuracy")
    test = rep.test
    if test:
        files["confusion"] = plot_confusion(
            test.confusion_matrix, test.classes, out / "confusion.png",
            title=f"{rep.model.backbone} {rep.model.layer}: test accuracy "
                  f"{format_accuracy(test.accuracy, test.n)}")
        files["per_class"] = out / "per_class.csv"
        atomic_write_csv(files["per_class"], ["class", "precision", "recall", "f1", "support"],
                         ([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                           f"{r['f1']:.4f}", r["support"]] for r in test.per_class))
        if evaluation is not None and hasattr(evaluation, "prediction_table"):
            files["predictions"] = out / "predictions.csv"
            atomic_write_csv(files["predictions"], *evaluation.prediction_table())
    names.update({k: v.name for k, v in files.items()})
    names["json"] = "report.json"
    names["html"] = REPORT_HTML
    rep.files = names
    files["json"] = out / "report.json"
    atomic_write_json(files["json"], finite_json(rep.to_dict()))
    files["html"] = write_linear_html(rep, out, evaluation=evaluation, files=files)
    log.info("report written to %s", out)
    return files
