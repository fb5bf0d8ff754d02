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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..codes.store import FeatureStore
from .defaults import AuditSettings
from .embedding import map_2d, sample_rows
from .findings import (
    Leaks,
    Outliers,
    class_balance,
    duplicate_pairs,
    find_leaks,
    find_outliers,
    groups_from_pairs,
)
from .groups import GroupCheck, check_groups
from .labels import LabelIssues, find_label_issues, require_cleanlab
from .neighbours import Neighbours, normalize, top_k
from .pixels import PIXEL_BOUND, SAME_SIZE_BOUND, pair_differences

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
    #: the groups' pairs compared in pixels (None: not checked)
    group_check: GroupCheck | None = None

    def _label(self, y: int) -> str:
        return self.classes[y] if y >= 0 else ""

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        """``{name: (header, rows)}`` for ``duplicates``, ``leaks``, ``label_issues``,
        ``outliers`` and ``balance``."""
        t: dict[str, tuple[list[str], list[list[Any]]]] = {}
        t["duplicates"] = self._duplicates()
        if self.leaks is not None:
            lk = self.leaks
            nan = np.full(len(lk.test_rows), np.nan, np.float32)
            diff = lk.pixel_diff if lk.pixel_diff is not None else nan
            bound = lk.pixel_bound if lk.pixel_bound is not None else nan
            t["leaks"] = (["test_path", "test_label", "train_path", "train_label", "score",
                           "pixel_difference", "pixel_bound", "same_picture"], [
                [self.test_paths[a], self._label(self.test_labels[a]), self.paths[b],
                 self._label(self.labels[b]), round(float(s), 4),
                 "" if np.isnan(d) else round(float(d), 2), "" if np.isnan(d) else float(m),
                 "" if np.isnan(d) else bool(d <= m)]
                for a, b, s, d, m in zip(lk.test_rows, lk.train_rows, lk.score, diff, bound,
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

    def _duplicates(self) -> tuple[list[str], list[list[Any]]]:
        """Each group's members, with the member of the group closest in pixels among those
        the search paired it with, that difference and the verdict (blank: not read), and how
        many members of the group are the same picture as another member."""
        gc = self.group_check
        rows: list[list[Any]] = []
        for g, members in enumerate(self.groups):
            nan = np.full(len(members), np.nan)
            diff = gc.member_diff[g] if gc is not None else nan
            bound = gc.member_bound[g] if gc is not None else nan
            near = gc.closest[g] if gc is not None else np.full(len(members), -1)
            confirmed = "" if gc is None else int(np.sum(diff <= bound))
            for r, d, m, c in zip(members, diff, bound, near, strict=True):
                rows.append([g + 1, self.paths[r], self._label(self.labels[r]),
                             self.paths[c] if c >= 0 else "",
                             "" if np.isnan(d) else round(float(d), 2),
                             "" if np.isnan(d) else float(m),
                             "" if np.isnan(d) else bool(d <= m), confirmed])
        return (["group", "path", "label", "closest_member", "pixel_difference", "pixel_bound",
                 "same_picture", "group_same_picture"], rows)

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
            **self._same_picture_counts(),
            "leaks": None if self.leaks is None else int(len(self.leaks.test_rows)),
            "leaks_same_picture": None if self.leaks is None or self.leaks.pixel_diff is None
            else int(self.leaks.same_picture().sum()),
            "pixel_bound": PIXEL_BOUND, "pixel_bound_same_size": SAME_SIZE_BOUND,
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

    def _same_picture_counts(self) -> dict[str, int | None]:
        """The groups with members the pixel check confirms, those members, and the images
        that could go with one kept per same picture (None each: not checked)."""
        gc = self.group_check
        if gc is None:
            return dict.fromkeys(("duplicate_groups_same_picture",
                                  "duplicate_images_same_picture",
                                  "duplicate_extra_copies_same_picture"))
        confirmed = gc.confirmed()
        return {"duplicate_groups_same_picture": sum(c > 0 for c in confirmed),
                "duplicate_images_same_picture": sum(confirmed),
                "duplicate_extra_copies_same_picture": gc.extra_copies(len(self.paths))}


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
          settings: AuditSettings | None = None, **options: Any) -> AuditResult:
    """Audit the images of ``store`` (and their leaks into ``test``) through their codes.

    Args:
        store: the training code store.
        test: an optional test store of the same backbone, weights and preprocessing (leaks,
            accuracy with and without them).
        layer: the layer compared (default the store's default layer).
        allow_incomplete: read stores whose extraction was stopped before it finished.
        settings: what to look for and how (:class:`~cnncodes.audit.defaults.AuditSettings`;
            default its defaults).
        options: fields of :class:`~cnncodes.audit.defaults.AuditSettings` replaced in
            ``settings`` (threshold, k, method, label_issues, C, map_method, map_rows,
            outlier_fraction, seed, test_accuracy).
    """
    settings = replace(settings or AuditSettings(), **options)
    if settings.label_issues:
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
    res = audit_arrays(X, y, classes, paths, test=test_arrays, settings=settings)
    res.store, res.layer = os.fspath(st.path), name
    res.test = None if tst is None else os.fspath(tst.path)
    res.seconds = {"read": read, **res.seconds}
    return res


@dataclass
class _Search:
    """What the neighbour search gives the rest of the audit."""

    A: np.ndarray
    nb: Neighbours
    groups: list[np.ndarray]
    group_check: GroupCheck
    leaks: Leaks | None


def _search(X: np.ndarray, paths: list[str], test: tuple[np.ndarray, np.ndarray, list[str]] |
            None, s: AuditSettings, in_place: bool, secs: dict[str, float]) -> _Search:
    """Unit rows, neighbours, duplicate groups and leaks, each pair the codes match compared in
    pixels (:mod:`cnncodes.audit.pixels`: the same picture, or different images of
    near-identical things?). ``secs`` gets ``neighbours``, ``pixels`` (leaks) and
    ``group_pixels``."""
    t0 = time.perf_counter()
    center = X.mean(axis=0) if len(X) else None
    A = normalize(X, center=center, overwrite=in_place)
    nb = top_k(A, A, s.k, same=True, method=s.method)
    a, b = duplicate_pairs(nb, s.threshold)
    groups = groups_from_pairs(len(A), a, b)
    leaks = None
    if test is not None:
        Xt, _, test_paths = test
        leaks = find_leaks(normalize(Xt, center=center, overwrite=in_place), A, s.threshold,
                           method=s.method)
    secs["neighbours"] = time.perf_counter() - t0
    if leaks is not None and len(leaks.test_rows):
        t0 = time.perf_counter()
        px = pair_differences([test_paths[r] for r in leaks.test_rows],
                              [paths[r] for r in leaks.train_rows])
        leaks.pixel_diff, leaks.pixel_bound = px.diff, px.bound
        secs["pixels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    check = check_groups(groups, a, b, paths)
    secs["group_pixels"] = time.perf_counter() - t0
    return _Search(A, nb, groups, check, leaks)


def audit_arrays(X: np.ndarray, y: np.ndarray, classes: list[str], paths: list[str], *,
                 test: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
                 settings: AuditSettings | None = None, overwrite_X: bool = False,
                 **options: Any) -> AuditResult:
    """:func:`audit` on codes in memory: ``X`` (N, D), labels ``y`` (indices into ``classes``,
    -1 unlabelled), ``paths``; ``test`` = (codes, labels in ``classes``' indices, paths).

    Args:
        settings: what to look for and how (:class:`~cnncodes.audit.defaults.AuditSettings`).
        overwrite_X: the caller gives up ``X`` and the test codes: they are centred and
            scaled in place for the neighbour search instead of copied (one (N, D) array less
            at the peak: 307 MB at 60,000 x 1,280); only without ``label_issues`` and
            ``test_accuracy``, which need the codes as they were.
        options: fields of ``settings`` replaced (threshold, k, method, label_issues, C,
            map_method, map_rows, outlier_fraction, seed, test_accuracy).
    """
    s = replace(settings or AuditSettings(), **options)
    if s.label_issues:
        require_cleanlab()
    secs: dict[str, float] = {}
    in_place = overwrite_X and not s.label_issues and not (test is not None and s.test_accuracy)
    rows = sample_rows(len(X), s.map_rows, s.seed)
    mapped = X[rows] if s.map_method else None  # a copy, taken before any in-place scaling
    found = _search(X, paths, test, s, in_place, secs)
    t0 = time.perf_counter()
    outliers = find_outliers(found.A, y, len(classes), found.nb, fraction=s.outlier_fraction)
    balance = class_balance(y, classes)
    secs["outliers"] = time.perf_counter() - t0
    found.A = np.zeros((0, 0), np.float32)  # the unit rows are not needed after this
    issues = None
    if s.label_issues:
        t0 = time.perf_counter()
        issues = find_label_issues(X, y, n_classes=len(classes), C=s.C, seed=s.seed)
        secs["label_issues"] = time.perf_counter() - t0
    accuracy, leaks = None, found.leaks
    yt, test_paths = (test[1], test[2]) if test is not None else (np.zeros(0, np.int64), [])
    if test is not None and leaks is not None and s.test_accuracy:
        t0 = time.perf_counter()
        checked = leaks.pixel_diff is not None  # then only the same pictures are removed
        accuracy = _test_accuracy(X, y, test[0], yt, leaks.test_rows[leaks.same_picture()]
                                  if checked else leaks.test_rows, s.C, s.seed)
        if accuracy is not None:
            accuracy["removed"] = "same picture" if checked else "look-alikes"
        secs["accuracy"] = time.perf_counter() - t0
    xy = None
    if mapped is not None and s.map_method:  # (mapped only with a map method)
        t0 = time.perf_counter()
        xy = map_2d(mapped, method=s.map_method, seed=s.seed)
        secs["map"] = time.perf_counter() - t0
    log.debug("audit: %d rows, %d duplicate groups, %s leaks, %s label issues (%s search)",
              len(X), len(found.groups), "-" if leaks is None else len(leaks.test_rows),
              "-" if issues is None else len(issues.rows), found.nb.method)
    return AuditResult("", None, "", list(classes), list(paths), np.asarray(y, np.int64),
                       list(test_paths), np.asarray(yt, np.int64), s.threshold, found.nb.method,
                       found.groups, leaks, accuracy, issues, outliers, balance, rows, xy,
                       s.map_method, secs, found.group_check)
