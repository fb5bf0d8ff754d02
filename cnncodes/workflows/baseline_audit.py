"""The audit inside ``baseline``: on by default, at a bounded cost (:func:`baseline_audit`).

``BaselineOptions.audit`` (``--audit`` / ``--no-audit``): None (the default) = the cheap findings
always and the expensive ones when they are cheap relative to the run; True = everything;
False = no audit. The rule (:func:`plan_audit`, pure), from measurements on this 2-core VM
(README "Auditing a data set"):

- always: near-duplicates within the training rows, train -> test leaks with the test accuracy
  of the baseline's own classifier on all test images and on those left after removing the
  leaked ones (its predictions are already there: no extra fit), outliers and class balance.
  These need one neighbour search (exact and blocked up to 20,000 rows, faiss above it when
  installed) and a centroid pass: well under a second at the demo's 500 + 500 rows.
- likely label errors (cleanlab on out-of-fold probabilities): when the classifier is logistic
  regression whose C was chosen by a k-fold search over at least :data:`MIN_GRID_FOR_LABELS`
  values. The probabilities then come from the same fitted pipeline (its C, scaling, class
  weights) on as many folds as the search used: ``cv`` more fits, at most a quarter of the
  ``len(grid) x cv + 1`` fits the search already made. After the one-split large-set search
  it would cost as many full fits as the search itself; LinearSVC has no probabilities: not by
  default (``--audit`` runs them, with logistic regression for LinearSVC).
- the 2-D map (t-SNE): at most :data:`DEFAULT_MAP_ROWS` rows (a random sample) by default, a
  cost that does not grow with the data; :data:`~cnncodes.audit.embedding.MAP_ROWS` with
  ``--audit``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..codes.store import FeatureStore
from ..errors import CnnCodesError

log = logging.getLogger(__name__)

#: rows on the map of the default (cheap) audit
DEFAULT_MAP_ROWS = 500
#: the k-fold C search must have tried this many C values for the label-error pass (``cv``
#: more fits) to be a quarter of its fits or less
MIN_GRID_FOR_LABELS = 4


@dataclass(frozen=True)
class AuditPlan:
    """What the baseline's audit does: ``mode`` (``cheap`` = the default rule, ``full``),
    ``label_issues`` and ``map_rows`` (0: no map), each with the reason."""

    mode: str
    label_issues: bool
    label_reason: str
    map_rows: int
    map_reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_audit(selection: Mapping[str, Any], n_rows: int, *, full: bool,
               cleanlab: bool = True) -> AuditPlan:
    """The rule of the module docstring for a classifier chosen as ``selection`` records it
    (:func:`cnncodes.fit_codes`) on ``n_rows`` training rows (pure)."""
    from ..audit.defaults import MAP_ROWS

    model = selection.get("model")
    kind = (selection.get("search") or {}).get("kind", "kfold")
    grid = len(selection.get("c_grid") or [])
    cv = int(selection.get("cv") or 0)
    if not cleanlab:
        labels, why = False, "not looked for: pip install 'cnncodes[audit]' (cleanlab)"
    elif full:
        labels, why = True, "--audit: always"
    elif model != "logreg":
        labels, why = False, (f"not by default for {model} (no probabilities); --audit runs "
                              "them with logistic regression")
    elif kind != "kfold":
        labels, why = False, ("not by default after the one-split large-set C search (the "
                              "out-of-fold pass would cost as much again); --audit runs them")
    elif grid < MIN_GRID_FOR_LABELS:
        labels, why = False, (f"not by default after a {grid}-value C search (its {cv} more "
                              "fits would be over a quarter of the search); --audit runs them")
    else:
        labels, why = True, (f"{cv} more fits of the chosen classifier at C = "
                             f"{selection.get('best_C'):g} (the search made {grid * cv + 1})")
    rows = min(n_rows, MAP_ROWS if full else DEFAULT_MAP_ROWS)
    where = "--audit" if full else "default"
    return AuditPlan("full" if full else "cheap", labels, why, rows,
                     f"t-SNE of {rows} of {n_rows} training images ({where} cap "
                     f"{MAP_ROWS if full else DEFAULT_MAP_ROWS})")


def _rows(store: FeatureStore, layer: str, paths: list[str]) -> np.ndarray:
    """The codes of ``paths`` (absolute, normalised) from ``store``, in that order."""
    X, _ = store.load(layer, allow_incomplete=True)
    index = {os.path.normpath(os.fspath(p)): i for i, p in enumerate(store.abspaths())}
    rows = np.fromiter((index[p] for p in paths), np.int64, len(paths))
    if np.array_equal(rows, np.arange(len(X))):
        return X
    return X[rows]


def leak_free_accuracy(evaluation: Any, leaked: np.ndarray) -> dict[str, Any]:
    """The baseline's test accuracy on every test image and on those without a near-duplicate
    in training (``leaked``: rows of ``evaluation``)."""
    ok = np.asarray(evaluation.y_pred) == np.asarray(evaluation.y_true)
    keep = np.ones(len(ok), bool)
    keep[np.asarray(leaked, np.int64)] = False
    return {"all": float(ok.mean()) if len(ok) else None, "n": int(len(ok)),
            "without_leaks": float(ok[keep].mean()) if keep.any() else None,
            "n_without_leaks": int(keep.sum()),
            "note": "the baseline's classifier on its test images, with and without the leaked "
                    "ones"}


def check_audit_folder(report: str | os.PathLike, inputs: Any, *, overwrite: bool) -> None:
    """Refuse ``report/audit`` before any work when it cannot take the audit's files."""
    from ..audit.page import AUDIT_FILES, BASELINE_AUDIT_DIR
    from ..report.files import check_report_folder

    check_report_folder(Path(report) / BASELINE_AUDIT_DIR, inputs=inputs, files=AUDIT_FILES,
                        owner="audit", overwrite=overwrite)


def baseline_audit(out: Path, stores: Mapping[str, FeatureStore], trained: Any,
                   evaluation: Any, *, full: bool = False, seed: int = 0,
                   command: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Audit the baseline's training rows (and their leaks into its test rows) into
    ``out/audit/``; returns the summary ``report.json`` records (with ``page``, the link from
    ``report.html``, ``plan``, ``seconds`` per phase, ``total_s`` wall and ``cpu_s`` CPU time)."""
    from ..audit.defaults import AuditSettings
    from ..audit.labels import find_label_issues, require_cleanlab
    from ..audit.page import AUDIT_HTML, BASELINE_AUDIT_DIR, write_audit
    from ..audit.run import audit_arrays

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        require_cleanlab()
        cleanlab = True
    except CnnCodesError:
        cleanlab = False
    sel = trained.selection
    train_store = stores.get("train", stores.get("all"))
    test_store = stores.get("test", train_store)
    assert train_store is not None and test_store is not None
    X = _rows(train_store, trained.layer, list(trained.train_paths))
    Xt = _rows(test_store, trained.layer, list(evaluation.paths))
    y = np.asarray(trained.train_labels, np.int64)
    plan = plan_audit(sel, len(X), full=full, cleanlab=cleanlab)
    read = time.perf_counter() - t0
    res = audit_arrays(X, y, list(trained.classes), list(trained.train_paths),
                       test=(Xt, np.asarray(evaluation.y_true, np.int64), list(evaluation.paths)),
                       settings=AuditSettings(label_issues=False, map_method="tsne"
                                              if plan.map_rows else None,
                                              map_rows=plan.map_rows, seed=seed,
                                              test_accuracy=False),
                       overwrite_X=not plan.label_issues)  # X is not needed after it then
    del Xt
    res.store, res.test, res.layer = os.fspath(train_store.path), os.fspath(test_store.path), \
        trained.layer
    res.seconds = {"read": read, **res.seconds}
    label_note = plan.label_reason
    if plan.label_issues:
        t1 = time.perf_counter()
        logreg = sel.get("model") == "logreg"
        try:
            res.label_issues = find_label_issues(
                X, y, n_classes=len(trained.classes), seed=seed,
                estimator=trained.pipeline if logreg else None,
                folds=int(sel["cv"]) if logreg and sel.get("cv") else None)
        except CnnCodesError as e:  # e.g. a class with one image: the rest of the audit stands
            label_note = f"not looked for: {e}"
        res.seconds["label_issues"] = time.perf_counter() - t1
    assert res.leaks is not None
    lk = res.leaks
    same = lk.test_rows[lk.same_picture()] if lk.pixel_diff is not None \
        else lk.test_rows  # without the pixel check, every look-alike counts
    res.accuracy = leak_free_accuracy(evaluation, same)
    res.accuracy["removed"] = "same picture" if lk.pixel_diff is not None else "look-alikes"
    del X
    t1 = time.perf_counter()
    write_audit(res, out / BASELINE_AUDIT_DIR, inputs=(train_store.path, test_store.path),
                overwrite=overwrite, command=command)
    res.seconds["page"] = time.perf_counter() - t1
    s = res.summary()
    keep = ("rows", "test_rows", "classes", "duplicate_groups", "duplicate_images",
            "duplicate_groups_same_picture", "duplicate_images_same_picture",
            "duplicate_extra_copies_same_picture", "leaks",
            "leaks_same_picture", "pixel_bound",
            "accuracy", "label_issues", "outliers", "imbalance_ratio", "duplicate_threshold",
            "neighbour_search", "map", "seconds")
    summary = {k: s[k] for k in keep}
    summary.update(page=f"{BASELINE_AUDIT_DIR}/{AUDIT_HTML}", plan=plan.to_dict(),
                   total_s=round(time.perf_counter() - t0, 2),
                   cpu_s=round(time.process_time() - c0, 2))
    if res.label_issues is None:
        summary["label_issues_note"] = label_note
    log.debug("audit: %s", summary)  # the CLI prints its own lines (report.audit_summary)
    return summary
