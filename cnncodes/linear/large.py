"""Model selection that scales: the choice between exhaustive k-fold and one validation split
(:func:`choose_search`, a pure rule), and the large-set search itself (:func:`warm_path_search`).

The rule
--------
Up to :data:`LARGE_SET_VALUES` training values (rows x features; ``large_set=`` /
``--large-set``) every C is scored by stratified k-fold (``GridSearchCV``), as before. Above it,
``cv`` folds cost ``cv`` times the fits for a score whose noise is already small (10,000
validation rows: a standard error of about 0.3 points at 90 % accuracy), so one stratified
validation split of :data:`VAL_FRACTION` of each class scores every C instead. For logistic
regression without PCA on NumPy the C path is then fitted in increasing C with warm starts (each
fit starts from the previous solution, as ``LogisticRegressionCV`` does), in float32, on one
standardised copy of the codes (row-permuted so the training and validation parts are views:
no per-fold or per-C copies). Other pipelines (LinearSVC, PCA, the array API) use
``GridSearchCV`` with that one split.

Threads: the path is sequential (each fit starts from the last), so the cores are filled by
BLAS/OpenMP threads inside each fit rather than by joblib workers (which would each need their
own scaled copy of the codes). The k-fold path's joblib workers receive the codes memory-mapped
(joblib does this for arrays over 1 MB), not copied per worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .options import LARGE_SET_VALUES, ClassifierOptions
from .progress import FitProgress, ProgressArg

log = logging.getLogger(__name__)

#: Share of each class held out as the validation split of a large set.
VAL_FRACTION = 0.2
#: The warm C path stops once this many C values in a row score more than PATH_DROP below the
#: best (on full Fashion-MNIST codes it skips C = 10 and 100, the two slowest of eight fits).
PATH_PATIENCE = 2
PATH_DROP = 0.002
#: Values (rows x features) standardised at a time: bounds the scaling's temporaries (its
#: float64 statistics pass included) to a few MB whatever the size of the codes.
CHUNK_VALUES = 1 << 19


@dataclass(frozen=True)
class SearchPlan:
    """How C is chosen: ``kind`` ``"kfold"`` (``folds`` stratified folds) or ``"holdout"`` (one
    stratified split of ``val_fraction``); ``warm_start``: the warm-started float32 C path;
    ``reason``: one sentence for the user (printed and recorded)."""

    kind: str
    folds: int
    val_fraction: float
    warm_start: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_search(n_rows: int, n_features: int, *, cv: int, model: str = "logreg",
                  pca: int | float | None = None, array_api: bool = False,
                  large_set: int | None = LARGE_SET_VALUES,
                  val_fraction: float = VAL_FRACTION) -> SearchPlan:
    """The search for ``n_rows x n_features`` training values (pure: no data, no side effect).

    ``large_set`` None or <= 0 means "never large" (always k-fold).
    """
    values = int(n_rows) * int(n_features)
    size = f"{n_rows:,} x {n_features:,} = {values:,} training values"
    if not large_set or large_set <= 0 or values <= large_set:
        limit = f"at most {large_set:,}" if large_set and large_set > 0 else "no size limit set"
        return SearchPlan("kfold", int(cv), 0.0, False, (
            f"{size} ({limit}, --large-set): exhaustive stratified {cv}-fold search over C"))
    warm = model == "logreg" and pca is None and not array_api
    n_val = int(round(n_rows * val_fraction))
    how = ("C path fitted in increasing C with warm starts, float32, one standardised copy"
           if warm else "each C fitted by GridSearchCV on that split"
           + (" (no warm starts: " + ("LinearSVC" if model != "logreg" else
                                       "PCA in the pipeline" if pca is not None
                                       else "the array API path") + ")"))
    return SearchPlan("holdout", 1, float(val_fraction), warm, (
        f"{size} is over --large-set {large_set:,}: one stratified validation split "
        f"({val_fraction:.0%} of each class, about {n_val:,} rows) instead of {cv} folds, "
        f"{cv}x fewer fits for a validation score whose noise is already small; {how}"))


def validation_split(y: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices: stratified, seeded, each sorted."""
    from sklearn.model_selection import StratifiedShuffleSplit

    n_classes = len(np.unique(y))
    n_val = max(int(round(len(y) * val_fraction)), n_classes)
    sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    tr, va = next(sss.split(np.zeros((len(y), 1)), y))
    return np.sort(tr), np.sort(va)


def _fill_scaled(out: np.ndarray, X: np.ndarray, rows: np.ndarray, *, l2: bool,
                 standardize: bool, fit_rows: int) -> Any:
    """``out[i] = X[rows[i]]`` (L2-normalised if ``l2``), then standardised in place with a
    ``StandardScaler`` fitted (chunk by chunk) on the first ``fit_rows`` rows of ``out``.
    Returns the scaler (None without ``standardize``)."""
    from sklearn.preprocessing import Normalizer, StandardScaler

    norm = Normalizer() if l2 else None
    step = max(1, CHUNK_VALUES // max(1, X.shape[1]))
    for a in range(0, len(rows), step):
        block = X[rows[a:a + step]]
        out[a:a + len(block)] = norm.transform(block) if norm is not None else block
    if not standardize:
        return None
    scaler = StandardScaler()
    for a in range(0, fit_rows, step):
        scaler.partial_fit(out[a:min(a + step, fit_rows)])
    mean = scaler.mean_.astype(out.dtype)
    scale = scaler.scale_.astype(out.dtype)
    for a in range(0, len(out), step):
        out[a:a + step] -= mean
        out[a:a + step] /= scale
    return scaler


def permute_rows(X: np.ndarray, order: np.ndarray) -> None:
    """``X[:] = X[order]`` in place, one row of extra memory (``X[order]`` would copy all)."""
    n = len(order)
    done = np.zeros(n, bool)
    for start in range(n):
        if done[start] or order[start] == start:
            done[start] = True
            continue
        first = X[start].copy()
        i = start
        while True:
            j = int(order[i])
            done[i] = True
            if j == start:
                X[i] = first
                break
            X[i] = X[j]
            i = j


@dataclass(frozen=True)
class PathStop:
    """When the warm C path stops early: once ``patience`` C values in a row score more than
    ``drop`` below the best so far (``patience=0``: every C is tried)."""

    patience: int = PATH_PATIENCE
    drop: float = PATH_DROP


def warm_path_search(X: np.ndarray, y: np.ndarray, grid: Sequence[float] | np.ndarray, *,
                     seed: int, classifier: ClassifierOptions | None = None,
                     val_fraction: float = VAL_FRACTION, progress: ProgressArg = None,
                     overwrite_X: bool = False, stop: PathStop = PathStop()
                     ) -> tuple[Any, dict[str, Any]]:
    """Logistic regression's C chosen on one stratified validation split along a warm-started
    float32 C path, then refitted on all rows (warm-started from the chosen C's solution).

    ``classifier``: its ``scoring``, ``l2``, ``standardize``, ``class_weight`` and ``max_iter``
    are used (the model is logistic regression, the grid is ``grid``, no PCA).

    The path stops early (``stop``, a :class:`PathStop`) once ``patience`` C values in a row
    score more than ``drop`` below the best so far (the validation score has peaked and is
    falling): the larger C values left are the slowest fits and would not be chosen unless the
    score rose again. ``PathStop(patience=0)`` tries every C.

    Memory: one float32 copy of ``X`` (rows permuted: training part, then validation part, both
    views), standardised in place with the training part's statistics; that same affine
    scaling is the final pipeline's ``StandardScaler`` (fitted on 1 - ``val_fraction`` of the
    rows; the classifier is refitted on all). ``overwrite_X``: ``X`` itself (float32 or float64,
    C-contiguous) is permuted and scaled in place instead: no copy at all; its contents are
    garbage afterwards.

    Returns:
        ``(fitted Pipeline [l2] -> [scale] -> clf, record)``; ``record`` holds ``c_grid``,
        ``cv_mean`` (the validation score per C), ``cv_std`` (zeros: one split), ``best_C``,
        ``best_cv_score``, ``n_val``, ``fit_s`` per C and ``refit_time_s``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import check_scoring

    copts = classifier if classifier is not None else ClassifierOptions()
    X = np.asarray(X)
    n_features = X.shape[1]
    Cs = sorted(float(c) for c in grid)
    tr, va = validation_split(y, val_fraction, seed)
    order = np.concatenate([tr, va])
    n_tr = len(tr)
    Xs, scaler, in_place = _scaled_rows(X, order, n_tr, copts, overwrite_X=overwrite_X)
    del X
    y_all = y[order]
    clf = LogisticRegression(C=Cs[0], solver="lbfgs", max_iter=copts.max_iter,
                             class_weight=copts.class_weight, random_state=seed,
                             warm_start=True)
    scorer = check_scoring(clf, scoring=copts.scoring)
    bar = FitProgress(len(Cs) + 1, desc="model selection (validation split, warm C path)",
                      progress=progress)
    try:
        path = _walk_path(clf, scorer, Xs, y_all, n_tr, Cs, bar, stop)
        t = time.perf_counter()
        final = _refit(clf, path.best, Xs, y_all)
        refit_s = time.perf_counter() - t
        bar.step(stage="refit", C=path.best[1])
    finally:
        bar.close()
    del Xs
    tried = Cs[:len(path.means)]
    record = {"c_grid": tried, "cv_mean": path.means, "cv_std": [0.0] * len(tried),
              "best_C": path.best[1], "c_not_tried": Cs[len(path.means):],
              "best_cv_score": path.best[0], "n_val": int(len(va)), "fit_s": path.times,
              "refit_time_s": round(refit_s, 3), "in_place": bool(in_place)}
    return _path_pipeline(final, scaler, l2=copts.l2, n_features=n_features), record


def _scaled_rows(X: np.ndarray, order: np.ndarray, n_tr: int, copts: ClassifierOptions, *,
                 overwrite_X: bool) -> tuple[np.ndarray, Any, bool]:
    """The rows of ``X`` in ``order``, [L2-normalised and] standardised with the first ``n_tr``
    rows' statistics: ``X`` itself when ``overwrite_X`` allows (float, C-contiguous, writeable),
    else one copy. Returns ``(rows, scaler or None, in place)``."""
    in_place = (overwrite_X and X.dtype in (np.float32, np.float64)
                and X.flags.c_contiguous and X.flags.writeable)
    if in_place:
        permute_rows(X, order)
        scaler = _fill_scaled(X, X, np.arange(len(order)), l2=copts.l2,
                              standardize=copts.standardize, fit_rows=n_tr)
        return X, scaler, True
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
    Xs = np.empty((len(order), X.shape[1]), dtype)
    scaler = _fill_scaled(Xs, X, order, l2=copts.l2, standardize=copts.standardize,
                          fit_rows=n_tr)
    return Xs, scaler, False


@dataclass
class _Path:
    """The C path walked so far: validation score and fit seconds per C tried, and the best
    ``(score, C, coef, intercept)``."""

    means: list[float]
    times: list[float]
    best: tuple[float, Any, Any, Any]


def _walk_path(clf: Any, scorer: Any, Xs: np.ndarray, y_all: np.ndarray, n_tr: int,
               Cs: list[float], bar: FitProgress, stop: PathStop) -> _Path:
    """Fit ``clf`` (warm-started) on the first ``n_tr`` rows for each C in increasing order,
    score it on the rest, until ``stop`` says the score has peaked."""
    y_tr, y_va = y_all[:n_tr], y_all[n_tr:]
    path = _Path([], [], (-np.inf, None, None, None))
    falling = 0
    for i, C in enumerate(Cs):
        if stop.patience and falling >= stop.patience:
            log.info("model selection: stopping the C path after C=%.3g: %d C values in a "
                     "row scored more than %.1f points below the best (%.4f at C=%.3g); "
                     "not tried: %s", Cs[i - 1], falling, 100 * stop.drop, path.best[0],
                     path.best[1], ", ".join(f"{c:.3g}" for c in Cs[i:]))
            bar.shrink(len(Cs) - i)
            break
        t = time.perf_counter()
        clf.set_params(C=C)
        clf.fit(Xs[:n_tr], y_tr)
        s = float(scorer(clf, Xs[n_tr:], y_va))
        path.times.append(round(time.perf_counter() - t, 3))
        path.means.append(s)
        if s > path.best[0]:  # strict: ties keep the smallest C (the documented rule)
            path.best = (s, C, clf.coef_.copy(), clf.intercept_.copy())
        falling = falling + 1 if s < path.best[0] - stop.drop else 0
        bar.step(C=C, score=s)
    return path


def _refit(clf: Any, best: tuple[float, Any, Any, Any], Xs: np.ndarray, y_all: np.ndarray
           ) -> Any:
    """``clf``'s settings at the chosen C, refitted on all rows (same scaling), warm-started
    from the chosen C's solution."""
    from sklearn.base import clone

    final = clone(clf).set_params(C=best[1])
    final.coef_, final.intercept_ = best[2], best[3]
    final.fit(Xs, y_all)
    final.set_params(warm_start=False)
    return final


def _path_pipeline(final: Any, scaler: Any, *, l2: bool, n_features: int) -> Any:
    """The fitted pipeline [l2] -> [scale] -> clf the path search returns."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    steps: list[tuple[str, Any]] = []
    if l2:
        steps.append(("l2", Normalizer(norm="l2").fit(np.zeros((1, n_features)))))
    if scaler is not None:
        steps.append(("scale", scaler))
    steps.append(("clf", final))
    return Pipeline(steps)
