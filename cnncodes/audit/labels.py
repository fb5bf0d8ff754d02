"""Likely label errors: cleanlab's confident learning on out-of-fold probabilities.

The probabilities come from the kind of classifier ``cnncodes train`` fits (the same pipeline:
standardisation + multinomial logistic regression, :func:`cnncodes.linear.pipelines.build_pipeline`)
by ``cross_val_predict``, so every row is scored by a model that did not see it;
``cleanlab.filter.find_label_issues`` then ranks the rows whose given label the model doubts
most (``ranked_by_label_quality``, self-confidence). ``cleanlab`` is an optional dependency
(``pip install 'cnncodes[audit]'``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.preprocessing import StandardScaler

from ..errors import OptionError

log = logging.getLogger(__name__)

#: folds of the out-of-fold probabilities (fewer above LARGE rows: each fold is a full fit)
FOLDS = 5
LARGE = 20_000


@dataclass
class LabelIssues:
    """Rows whose label is likely wrong, most likely first: ``rows`` (into the store),
    ``given`` and ``suggested`` class indices, ``quality`` (cleanlab's label quality: the
    out-of-fold probability of the given label; low = suspicious); ``probabilities`` (N, C) of
    every row; ``folds`` used."""

    rows: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    quality: np.ndarray
    probabilities: np.ndarray
    folds: int


def require_cleanlab() -> None:
    """Raise a clear error when cleanlab is not installed."""
    try:
        import cleanlab  # noqa: F401
    except ImportError as e:
        raise OptionError("Finding label errors needs the cleanlab package: pip install "
                          "'cnncodes[audit]' (or pip install cleanlab), or pass "
                          "--no-label-issues.") from e


#: rows whose statistics :class:`ChunkedScaler` reads at a time
CHUNK_ROWS = 4096


class ChunkedScaler(StandardScaler):
    """``StandardScaler`` whose ``fit`` reads the rows ``CHUNK_ROWS`` at a time
    (``partial_fit``): the same mean and variance without a float64 copy of all of them."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> ChunkedScaler:
        for a in ("n_samples_seen_", "mean_", "var_", "scale_", "n_features_in_"):
            self.__dict__.pop(a, None)
        for s in range(0, max(1, X.shape[0]), CHUNK_ROWS):
            self.partial_fit(X[s:s + CHUNK_ROWS], y,
                             None if sample_weight is None else sample_weight[s:s + CHUNK_ROWS])
        return self


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, *, C: float = 1.0,
                              folds: int | None = None, seed: int = 0,
                              n_jobs: int | None = None,
                              estimator: Any = None) -> tuple[np.ndarray, int]:
    """(N, C) probabilities of each row from a logistic regression fitted without it, and the
    number of stratified folds used (at most the smallest class count).

    ``estimator``: the classifier to cross-validate (e.g. the user's fitted pipeline at its
    chosen C; cloned, so it is left as it is), default ``train``'s pipeline at ``C``. Small
    problems (up to ``SMALL_FIT_VALUES``) run BLAS on one thread, as the C search does.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    from ..linear.array_api import SMALL_FIT_VALUES
    from ..linear.pipelines import build_pipeline

    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = folds or (FOLDS if len(y) <= LARGE else 3)
    k = int(min(k, counts.min()))
    if k < 2 or len(counts) < 2:
        raise OptionError("Finding label errors needs at least 2 classes with 2 images each "
                          f"(got class counts {counts.tolist()}).")
    pipe = clone(estimator) if estimator is not None else build_pipeline(
        model="logreg", C=C, max_iter=300 if len(y) > LARGE else 1000, random_state=seed)
    if isinstance(pipe.named_steps.get("scale"), StandardScaler):
        # each fold's rows are already a copy (cross_val_predict indexes them): scale that copy in
        # place instead of making another (at 100,000 x 1,280 float32 codes: 340 MB less), with
        # the statistics read in chunks (StandardScaler.fit works on a float64 copy of the fold)
        old = pipe.named_steps["scale"].get_params()
        pipe.set_params(scale=ChunkedScaler(**{**old, "copy": False}))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1 if X.size <= SMALL_FIT_VALUES else None):
        probs = cross_val_predict(pipe, X, y, cv=cv, method="predict_proba", n_jobs=n_jobs)
    return np.asarray(probs, np.float64), k


def find_label_issues(X: np.ndarray, y: np.ndarray, *, n_classes: int | None = None,
                      C: float = 1.0, folds: int | None = None, seed: int = 0,
                      n_jobs: int | None = None, estimator: Any = None) -> LabelIssues:
    """Likely label errors among the labelled rows (``y >= 0``) of codes ``X``.

    ``estimator``: see :func:`out_of_fold_probabilities`. Classes are re-indexed to those
    present; ``given``/``suggested`` are indices into the original class list.
    """
    require_cleanlab()
    from cleanlab.filter import find_label_issues as _cl_find

    X = np.asarray(X)
    y = np.asarray(y, np.int64)
    labelled = np.flatnonzero(y >= 0)
    present, yy = np.unique(y[labelled], return_inverse=True)
    # all rows labelled (the usual case): no copy of the codes
    Xl = X if len(labelled) == len(y) else X[labelled]
    probs, k = out_of_fold_probabilities(Xl, yy, C=C, folds=folds, seed=seed,
                                         n_jobs=n_jobs, estimator=estimator)
    ranked = _cl_find(labels=yy, pred_probs=probs, return_indices_ranked_by="self_confidence")
    ranked = np.asarray(ranked, np.int64)
    width = n_classes if n_classes is not None else (int(y.max()) + 1 if len(y) else 0)
    full = np.zeros((len(y), width))
    full[np.ix_(labelled, present)] = probs
    return LabelIssues(rows=labelled[ranked], given=present[yy[ranked]],
                       suggested=present[probs[ranked].argmax(axis=1)],
                       quality=probs[ranked, yy[ranked]], probabilities=full, folds=k)
