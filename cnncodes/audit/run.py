"""``audit``: what one code store (and an optional test store) says about the data.

:func:`audit` reads the codes once and returns an :class:`AuditResult`: near-duplicate groups in
the training store, leaks (test images with a near-duplicate in training) and the test accuracy
with and without them, likely label errors (:mod:`cnncodes.audit.labels`), outliers, class
balance and a 2-D map. Memory stays O(rows x (dims + k)): neighbours are searched in blocks
(:mod:`cnncodes.audit.neighbours`), never as an n x n matrix.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codes.store import FeatureStore
from .defaults import MAP_ROWS
from .embedding import map_2d, sample_rows
from .findings import (
    DUPLICATE_THRESHOLD,
    OUTLIER_FRACTION,
    K,
    Leaks,
    Outliers,
    class_balance,
    duplicate_groups,
    find_leaks,
    find_outliers,
)
from .labels import LabelIssues, find_label_issues, require_cleanlab
from .neighbours import normalize, top_k
from .pixels import PIXEL_BOUND, pair_differences

log = logging.getLogger(__name__)


@dataclass
class AuditResult:
    """Everything :func:`audit` found; row numbers index the stores' rows. ``tables()`` gives the
    CSV rows, ``summary()`` the JSON, ``frame(name)`` a pandas DataFrame of one table."""

    store: str
    test: str | None
    layer: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    test_paths: list[str]
    test_labels: np.ndarray
    threshold: float
    method: str
    groups: list[np.ndarray]
    leaks: Leaks | None
    accuracy: dict[str, Any] | None
    label_issues: LabelIssues | None
    outliers: Outliers
    balance: list[dict[str, Any]]
    map_rows: np.ndarray
    map_xy: np.ndarray | None
    map_method: str | None
    seconds: dict[str, float] = field(default_factory=dict)

    def _label(self, y: int) -> str:
        return self.classes[y] if y >= 0 else ""

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        """``{name: (header, rows)}`` for ``duplicates``, ``leaks``, ``label_issues``,
        ``outliers`` and ``balance``."""
        t: dict[str, tuple[list[str], list[list[Any]]]] = {}
        t["duplicates"] = (["group", "path", "label"], [
            [g + 1, self.paths[r], self._label(self.labels[r])]
            for g, rows in enumerate(self.groups) for r in rows])
        if self.leaks is not None:
            lk = self.leaks
            diff = (lk.pixel_diff if lk.pixel_diff is not None
                    else np.full(len(lk.test_rows), np.nan, np.float32))
            t["leaks"] = (["test_path", "test_label", "train_path", "train_label", "score",
                           "pixel_difference", "same_picture"], [
                [self.test_paths[a], self._label(self.test_labels[a]), self.paths[b],
                 self._label(self.labels[b]), round(float(s), 4),
                 "" if np.isnan(d) else round(float(d), 2),
                 "" if np.isnan(d) else bool(d <= PIXEL_BOUND)]
                for a, b, s, d in zip(lk.test_rows, lk.train_rows, lk.score, diff,
                                      strict=True)])
        if self.label_issues is not None:
            li = self.label_issues
            t["label_issues"] = (["path", "given", "suggested", "quality"], [
                [self.paths[r], self.classes[g], self.classes[s], round(float(q), 4)]
                for r, g, s, q in zip(li.rows, li.given, li.suggested, li.quality, strict=True)])
        o = self.outliers
        t["outliers"] = (["path", "label", "nearest_class", "centroid_score", "neighbour_score"], [
            [self.paths[r], self._label(self.labels[r]), self.classes[c], round(float(a), 4),
             round(float(b), 4)]
            for r, c, a, b in zip(o.rows, o.nearest_class, o.centroid_score, o.neighbour_score,
                                  strict=True)])
        t["balance"] = (["class", "count", "share"],
                        [[b["class"], b["count"], round(b["share"], 4)] for b in self.balance])
        return t

    def frame(self, name: str) -> Any:
        """One of :meth:`tables` as a pandas DataFrame (pandas comes with the ``audit`` extra)."""
        import pandas as pd

        header, rows = self.tables()[name]
        return pd.DataFrame(rows, columns=header)

    def summary(self) -> dict[str, Any]:
        """Counts and settings (``audit.json``'s head)."""
        counts = [b["count"] for b in self.balance if b["count"]]
        return {
            "store": self.store, "test": self.test, "layer": self.layer,
            "rows": len(self.paths), "test_rows": len(self.test_paths),
            "classes": len(self.classes),
            "neighbour_search": self.method, "duplicate_threshold": self.threshold,
            "similarity": "cosine of codes centred on the training mean",
            "duplicate_groups": len(self.groups),
            "duplicate_images": int(sum(len(g) for g in self.groups)),
            "duplicate_extra_copies": int(sum(len(g) - 1 for g in self.groups)),
            "leaks": None if self.leaks is None else int(len(self.leaks.test_rows)),
            "leaks_same_picture": None if self.leaks is None or self.leaks.pixel_diff is None
            else int(self.leaks.same_picture(PIXEL_BOUND).sum()),
            "pixel_bound": PIXEL_BOUND,
            "accuracy": self.accuracy,
            "label_issues": None if self.label_issues is None else int(
                len(self.label_issues.rows)),
            "label_issue_folds": None if self.label_issues is None else self.label_issues.folds,
            "outliers": int(len(self.outliers.rows)),
            "imbalance_ratio": (max(counts) / min(counts)) if counts else None,
            "map": None if self.map_xy is None else {"method": self.map_method,
                                                      "points": int(len(self.map_rows))},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _store(s: FeatureStore | str | os.PathLike) -> FeatureStore:
    return s if isinstance(s, FeatureStore) else FeatureStore(s)


def _test_accuracy(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray,
                   leaked: np.ndarray, C: float, seed: int) -> dict[str, Any] | None:
    """Accuracy of one logistic regression (the pipeline ``train`` fits, at ``C``) on the test
    rows, and on the test rows without the leaked ones."""
    from ..linear.pipelines import build_pipeline

    lab, tlab = y >= 0, yt >= 0
    if len(np.unique(y[lab])) < 2 or not tlab.any():
        return None
    clf = build_pipeline(model="logreg", C=C, random_state=seed).fit(X[lab], y[lab])
    ok = clf.predict(Xt) == yt
    keep = tlab.copy()
    keep[leaked] = False
    return {"C": C, "all": float(ok[tlab].mean()), "n": int(tlab.sum()),
            "without_leaks": float(ok[keep].mean()) if keep.any() else None,
            "n_without_leaks": int(keep.sum()),
            "note": "one logistic regression at C (no grid search): compare the two figures, "
                    "not with the report's accuracy"}


def audit(store: FeatureStore | str | os.PathLike, test: FeatureStore | str | os.PathLike |
          None = None, *, layer: str | None = None, allow_incomplete: bool = False,
          **options: Any) -> AuditResult:
    """Audit the images of ``store`` (and their leaks into ``test``) through their codes.

    Args:
        store: the training code store.
        test: an optional test store of the same backbone, weights and preprocessing (leaks,
            accuracy with and without them).
        layer: the layer compared (default the store's default layer).
        allow_incomplete: read stores whose extraction was stopped before it finished.
        options: those of :func:`audit_arrays` (threshold, k, method, label_issues, C,
            map_method, map_rows, outlier_fraction, seed).
    """
    if options.get("label_issues", True):
        require_cleanlab()
    t0 = time.perf_counter()
    st = _store(store)
    name = st._layer(layer)
    X, y = st.load(name, allow_incomplete=allow_incomplete)
    classes = st.classes
    paths = [os.fspath(p) for p in st.abspaths()]
    test_arrays = None
    tst = _store(test) if test is not None else None
    if tst is not None:
        from ..codes.compat import check_store_compatible

        check_store_compatible(tst.path, st.provenance, fields=("backbone", "weights",
                                                                "preprocessing"),
                               layer=name, journal=False, what="audit --test",
                               fix=f"Extract the test images with the settings of {st.path}.")
        Xt, yt_local = tst.load(name, allow_incomplete=allow_incomplete)
        tcls = tst.classes
        index = {c: i for i, c in enumerate(classes)}
        yt = np.array([index.get(tcls[v], -1) if v >= 0 else -1 for v in yt_local], np.int64)
        test_arrays = (Xt, yt, [os.fspath(p) for p in tst.abspaths()])
    read = time.perf_counter() - t0
    res = audit_arrays(X, y, classes, paths, test=test_arrays, **options)
    res.store, res.layer = os.fspath(st.path), name
    res.test = None if tst is None else os.fspath(tst.path)
    res.seconds = {"read": read, **res.seconds}
    return res


def audit_arrays(X: np.ndarray, y: np.ndarray, classes: list[str], paths: list[str], *,
                 test: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                 threshold: float = DUPLICATE_THRESHOLD, k: int = K, method: str = "auto",
                 label_issues: bool = True, C: float = 1.0, map_method: str | None = "tsne",
                 map_rows: int = MAP_ROWS, outlier_fraction: float = OUTLIER_FRACTION,
                 seed: int = 0, test_accuracy: bool = True,
                 overwrite_X: bool = False) -> AuditResult:
    """:func:`audit` on codes in memory: ``X`` (N, D), labels ``y`` (indices into ``classes``,
    -1 unlabelled), ``paths``; ``test`` = (codes, labels in ``classes``' indices, paths).

    Args:
        threshold: cosine similarity (codes centred on the training mean) at which two images
            are near-duplicates.
        k: neighbours per row linking duplicate groups.
        method: neighbour search, ``auto`` (exact blocked search up to
            :data:`~cnncodes.audit.neighbours.EXACT_MAX_ROWS` rows, faiss above it when
            installed), ``exact`` or ``faiss``.
        label_issues: find likely label errors (needs cleanlab).
        C: inverse regularisation of the logistic regressions (label errors, accuracy).
        map_method: ``tsne``, ``umap`` or None (no map).
        map_rows: rows placed on the map at most (a random sample above).
        test_accuracy: with ``test``, fit one logistic regression at ``C`` for the test
            accuracy with and without the leaked rows (``baseline`` scores its own predictions
            instead).
        overwrite_X: the caller gives up ``X`` and the test codes: they are centred and
            scaled in place for the neighbour search instead of copied (one (N, D) array less
            at the peak: 307 MB at 60,000 x 1,280); only without ``label_issues`` and
            ``test_accuracy``, which need the codes as they were.
    """
    if label_issues:
        require_cleanlab()
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    center = X.mean(axis=0) if len(X) else None
    in_place = overwrite_X and not label_issues and not (test is not None and test_accuracy)
    rows = sample_rows(len(X), map_rows, seed)
    mapped = X[rows] if map_method else None  # a copy, taken before any in-place scaling
    A = normalize(X, center=center, overwrite=in_place)
    nb = top_k(A, A, k, same=True, method=method)
    groups = duplicate_groups(nb, threshold)
    leaks = None
    if test is not None:
        Xt, yt, test_paths = test
        leaks = find_leaks(normalize(Xt, center=center, overwrite=in_place), A, threshold,
                           method=method)
        # every pair is also compared in pixels (cnncodes.audit.pixels): the same picture, or
        # different images of near-identical things? (``leaks_same_picture`` in the summary)
        if len(leaks.test_rows):
            t1 = time.perf_counter()
            leaks.pixel_diff = pair_differences([test_paths[r] for r in leaks.test_rows],
                                                [paths[r] for r in leaks.train_rows])
            secs["pixels"] = time.perf_counter() - t1
    else:
        yt, test_paths = np.zeros(0, np.int64), []
    secs["neighbours"] = time.perf_counter() - t0 - secs.get("pixels", 0.0)  # not twice
    t0 = time.perf_counter()
    outliers = find_outliers(A, y, len(classes), nb, fraction=outlier_fraction)
    balance = class_balance(y, classes)
    secs["outliers"] = time.perf_counter() - t0
    del A
    issues = None
    if label_issues:
        t0 = time.perf_counter()
        issues = find_label_issues(X, y, n_classes=len(classes), C=C, seed=seed)
        secs["label_issues"] = time.perf_counter() - t0
    accuracy = None
    if test is not None and leaks is not None and test_accuracy:
        t0 = time.perf_counter()
        accuracy = _test_accuracy(X, y, test[0], yt, leaks.test_rows, C, seed)
        secs["accuracy"] = time.perf_counter() - t0
    xy = None
    if mapped is not None:
        t0 = time.perf_counter()
        xy = map_2d(mapped, method=map_method, seed=seed)
        secs["map"] = time.perf_counter() - t0
    log.debug("audit: %d rows, %d duplicate groups, %s leaks, %s label issues (%s search)",
             len(X), len(groups), "-" if leaks is None else len(leaks.test_rows),
             "-" if issues is None else len(issues.rows), nb.method)
    return AuditResult("", None, "", list(classes), list(paths), np.asarray(y, np.int64),
                       list(test_paths), np.asarray(yt, np.int64), threshold, nb.method, groups,
                       leaks, accuracy, issues, outliers, balance, rows, xy, map_method, secs)
