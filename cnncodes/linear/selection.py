"""Model selection: C chosen by stratified k-fold ``GridSearchCV`` over a log-spaced grid, refitted
on all training rows (:func:`fit_codes`). Where the fits run (NumPy or the array API) is
:mod:`cnncodes.linear.array_api`.

Ties
----
When several C values share the best mean CV score, the **smallest** of them is chosen: the
strongest regularisation (for LinearSVC the widest margin), the simplest model the folds cannot
tell apart from the others (scikit-learn's ``GridSearchCV`` takes the first best candidate, and
the grid is searched in increasing C). When *every* C ties, the grid cannot choose at all:
with a perfect score the classes are separable at every C (the score saturates); otherwise the
score is flat over the grid. :func:`describe_choice` says so in ``selection["c_note"]`` (and a
logged warning); only a unique best at the grid's edge asks for a wider grid.

Model selection on a cluster (joblib + dask)
--------------------------------------------
The grid search's fits (C values x folds) are dispatched by joblib, so any joblib backend set by
the caller is used. To spread them over a dask cluster (``pip install "dask[distributed]"``;
cnncodes does not depend on dask)::

    import joblib
    from dask.distributed import Client
    import cnncodes

    client = Client("tcp://scheduler:8786")        # or Client() for a local test cluster
    with joblib.parallel_config(backend="dask"):   # joblib < 1.3: joblib.parallel_backend("dask")
        model = cnncodes.train("codes.h5", layer="pool", c_grid="full", cv=5, device="cpu")
    cnncodes.save_model(model, "model.npz")

``n_jobs=None`` (the default) lets the backend decide how many fits run at once (dask: every
worker thread of the cluster); ``n_jobs=1`` keeps the fits in this process, outside any
backend. The codes are read on the client and sent to the workers once per
grid search (joblib's dask backend scatters large arguments); each task is a scikit-learn
pipeline fit, so the workers need the same scikit-learn, NumPy and SciPy versions, but not
cnncodes or torch. Use ``device="cpu"`` there: the array API path runs its fits sequentially in
the calling process and does not use the backend.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from ..stats import plural
from .array_api import SMALL_FIT_VALUES, _fit_search, resolve_compute
from .grids import parse_c_grid, resolve_cv
from .large import SearchPlan, choose_search, validation_split, warm_path_search
from .options import ClassifierOptions, classifier_options
from .pipelines import build_pipeline
from .progress import FitProgress, ProgressArg

log = logging.getLogger(__name__)


def _beyond(grid: Sequence[float], side: str) -> str:
    """A ``--c-grid`` that reaches three decades beyond ``side`` of ``grid``, as dense."""
    lo, hi = min(grid), max(grid)
    per_decade = (len(grid) - 1) / max(math.log10(hi / lo), 1e-9)
    n = len(grid) + max(1, round(3 * per_decade))
    lo, hi = (lo / 1e3, hi) if side == "smallest" else (lo, hi * 1e3)
    return f"{lo:.0e}:{hi:.0e}:{n}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def describe_choice(c_grid: Sequence[float], cv_mean: Sequence[float], best_C: float, *,
                    scoring: Any = "accuracy", model: str = "logreg") -> dict[str, Any]:
    """What the chosen C means: ties and grid edges, in words (see "Ties" above).

    Returns ``{}`` for a unique best inside the grid; else ``c_tie`` (``"all"`` or the tied C
    values), ``c_rule``, and/or ``c_at_grid_edge`` (``"smallest"``/``"largest"``), with
    ``c_note``: one sentence for the user. Never suggests a grid the search already covers.
    """
    Cs, means = [float(c) for c in c_grid], [float(m) for m in cv_mean]
    if not isinstance(scoring, str):  # a scorer callable
        scoring = getattr(scoring, "__name__", "score")
    if len(Cs) < 2:
        return {}
    best = max(means)
    tied = [c for c, m in zip(Cs, means, strict=True) if m == best]
    rule = "the smallest tied C (strongest regularisation, widest margin) is chosen"
    saturated = not scoring.startswith("neg_") and best >= 1.0
    if len(tied) == len(Cs):
        why = (f"the classes are separable at every C: the CV {scoring} is {best:.4f} "
               "everywhere (the score saturates)" if saturated else
               f"the CV {scoring} is {best:.4f} at every C: the score is flat over the grid")
        hint = ("; --scoring neg_log_loss can tell the C values apart" if model == "logreg"
                else "")
        return {"c_tie": "all", "c_rule": rule, "c_note": (
            f"all {len(Cs)} C values in [{Cs[0]:.3g}, {Cs[-1]:.3g}] score the same, so the "
            f"grid cannot choose: {why}; by rule {rule} (C = {best_C:.3g}){hint}.")}
    if len(tied) > 1:
        return {"c_tie": tied, "c_rule": rule, "c_note": (
            f"{len(tied)} C values in [{tied[0]:.3g}, {tied[-1]:.3g}] tie for the best CV "
            f"{scoring} ({best:.4f}{': the score saturates' if saturated else ''}); by rule "
            f"{rule} (C = {best_C:.3g}).")}
    if len(Cs) > 2 and best_C in (Cs[0], Cs[-1]):
        side = "smallest" if best_C == Cs[0] else "largest"
        full = parse_c_grid("full")
        reach = full[0] < Cs[0] if side == "smallest" else full[-1] > Cs[-1]
        wider = "full" if reach else _beyond(Cs, side)
        return {"c_at_grid_edge": side, "c_note": (
            f"the chosen C ({best_C:.3g}) is the {side} value of the grid; the best C may lie "
            f"beyond it: widen the grid (e.g. --c-grid {wider}).")}
    return {}


def fit_codes(X: np.ndarray, y: np.ndarray, *, classes: Sequence[str] | None = None,
              classifier: ClassifierOptions | None = None, seed: int = 0,
              threads: int | None = None, device: str = "auto",
              progress: ProgressArg = None, overwrite_X: bool = False,
              **options: Any) -> tuple[Pipeline, dict[str, Any]]:
    """Choose C by stratified k-fold grid search (or, above ``large_set`` training values, one
    stratified validation split: :mod:`cnncodes.linear.large`) and refit on all of ``X, y``.

    Args:
        X: (N, D) float codes.  y: (N,) int labels (class indices).
        classes: class names (only for messages).
        n_jobs: parallel fits, through joblib: ``None`` lets an active joblib backend (e.g.
            ``joblib.parallel_config(backend="dask")``) decide, else runs them one by one.
        threads: BLAS/OpenMP threads during the fit (restored afterwards); None = 1 for small
            problems (up to :data:`SMALL_FIT_VALUES` values), else the library default.
        device: where the search runs: ``auto`` (the GPU through scikit-learn's array API when
            CUDA is present, else NumPy), ``cpu`` (NumPy), ``cuda``/``cuda:N``, or ``cpu-torch``
            (the array API path on CPU torch tensors). LinearSVC always runs with NumPy. See the
            module docstring; ``selection["compute"]`` records what was used.
        classifier: the model and its grid search (:class:`ClassifierOptions`); ``options``
            override single fields (``c_grid=``, ``cv=``, ``model=``...). ``cv`` folds are reduced
            automatically for small classes (see :func:`resolve_cv`).
        seed: seed of the CV folds (and of the solvers/PCA).
        progress: fits done / total with ETA and the score per C, logged; ``True`` also draws
            a tqdm bar, a callable gets ``(done, total, info)`` (:mod:`cnncodes.linear.progress`).
            Fits that joblib runs in other processes are not counted one by one.
        overwrite_X: the large-set path may reorder and standardise ``X`` in place instead of
            copying it (saves one copy of the codes; ``X`` is garbage afterwards).

    Returns:
        ``(fitted pipeline, selection)`` where ``selection`` records the grid, the mean/std CV
        score per C, the chosen C, fold count and timings (JSON-serialisable).
    """
    copts, _ = classifier_options(classifier, options, where="fit_codes")
    model, pca = copts.model_name, copts.pca
    X, y = _checked_codes(X, y)
    grid = parse_c_grid(copts.c_grid)
    folds = resolve_cv(y, copts.cv, classes=classes)
    _check_pca(pca, X.shape, folds)
    pipe = build_pipeline(model=model, l2=copts.l2, standardize=copts.standardize, pca=pca,
                          class_weight=copts.class_weight, max_iter=copts.max_iter,
                          random_state=seed)
    compute = resolve_compute(device, pipeline=pipe,
                              shape=(X.shape[0], X.shape[1], len(np.unique(y))))
    plan = choose_search(X.shape[0], X.shape[1], cv=folds, model=model, pca=pca,
                         array_api=compute.array_api, large_set=copts.large_set)
    log.info("model selection: %s", plan.reason)
    t0 = time.perf_counter()
    if plan.warm_start:
        from threadpoolctl import threadpool_limits

        limit = threads if threads is not None else (1 if X.size <= SMALL_FIT_VALUES else None)
        with threadpool_limits(limits=limit):
            best_pipe, rec = warm_path_search(
                X, y, grid, seed=seed, classifier=copts, val_fraction=plan.val_fraction,
                progress=progress, overwrite_X=overwrite_X)
        extra = {"n_val": rec["n_val"], "fit_s": rec["fit_s"], "in_place": rec["in_place"]}
    else:
        best_pipe, rec, compute = _grid_search(pipe, X, y, grid, plan, seed=seed,
                                               scoring=copts.scoring, n_jobs=copts.n_jobs,
                                               threads=threads, compute=compute,
                                               progress=progress)
        extra = {"n_val": rec["n_val"]} if "n_val" in rec else {}
    seconds = time.perf_counter() - t0
    selection = _selection_record(copts, plan, rec, extra, seed=seed, shape=X.shape,
                                  steps=[n for n, _ in best_pipe.steps],
                                  compute={**compute.to_dict(), "dtype": str(X.dtype)},
                                  seconds=seconds)
    if selection.get("c_note"):  # says which fit it concerns (baseline runs two: codes, pixels)
        log.warning("C search of %s on %d x %d: %s", model, X.shape[0], X.shape[1],
                    selection["c_note"])
    how = (f"{folds} folds" if plan.kind == "kfold" else
           f"validation split of {selection.get('n_val')} rows")
    log.info("%s on %d x %d: best C %.3g, CV %s %.4f (%s, %d C values, %.1f s, %s)",
             model, X.shape[0], X.shape[1], selection["best_C"], copts.scoring,
             selection["best_cv_score"], how, len(grid), seconds, compute.describe())
    return best_pipe, selection


def _checked_codes(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X, y`` as arrays (float16 codes as float32: lossless, both compute paths), after
    checking their shapes and that every code is finite."""
    X = np.asarray(X)
    if X.dtype == np.float16:
        X = X.astype(np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (N, D) with N = len(y); got X {X.shape}, y {y.shape}.")
    if not _all_finite(X):
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"{plural(bad, 'row')} of the codes hold{'s' if bad == 1 else ''} NaN "
                         "or inf values; re-extract them "
                         "(fp16 overflow? try --precision fp32).")
    return X, y


def _check_pca(pca: int | float | None, shape: tuple[int, ...], folds: int) -> None:
    """A number of PCA components must fit a training fold of ``shape`` codes."""
    if pca is None or isinstance(pca, float):
        return
    limit = min(shape[1], shape[0] - shape[0] // folds)
    if pca > limit:
        raise ValueError(f"pca={pca} components is more than a training fold allows "
                         f"(min(features, rows per fold) = {limit}); use --pca {limit} or "
                         "less, or a variance fraction such as 0.95.")


def _selection_record(copts: ClassifierOptions, plan: SearchPlan, rec: dict[str, Any],
                      extra: dict[str, Any], *, seed: int, shape: tuple[int, ...],
                      steps: list[str], compute: dict[str, Any], seconds: float
                      ) -> dict[str, Any]:
    """The JSON-serialisable ``selection`` :func:`fit_codes` returns: the options, the search
    plan, the score per C, the choice (with :func:`describe_choice`'s words) and timings."""
    selection = {
        "model": copts.model_name, "scoring": copts.scoring, "cv": plan.folds,
        "cv_requested": int(copts.cv), "seed": seed, "search": plan.to_dict(), **extra,
        "c_grid": [float(c) for c in rec["c_grid"]],
        "c_not_tried": [float(c) for c in rec.get("c_not_tried", [])],
        "cv_mean": [float(m) for m in rec["cv_mean"]],
        "cv_std": [float(m) for m in rec["cv_std"]],
        "best_C": float(rec["best_C"]), "best_cv_score": float(rec["best_cv_score"]),
        "class_weight": copts.class_weight, "l2": copts.l2, "standardize": copts.standardize,
        "pca": copts.pca, "max_iter": copts.max_iter, "n_jobs": copts.n_jobs,
        "large_set": copts.large_set, "steps": steps,
        "n_train": int(shape[0]), "n_features": int(shape[1]), "compute": compute,
        "train_time_s": round(seconds, 3), "refit_time_s": round(float(rec["refit_time_s"]), 3),
    }
    selection.update(describe_choice(selection["c_grid"], selection["cv_mean"],
                                     selection["best_C"], scoring=copts.scoring,
                                     model=copts.model_name))
    return selection


def _all_finite(X: np.ndarray, rows: int = 4096) -> bool:
    """``np.isfinite(X).all()`` a block of rows at a time (no N x D temporary)."""
    return all(bool(np.isfinite(X[a:a + rows]).all()) for a in range(0, len(X), rows))


def _in_process(n_jobs: int | None) -> bool:
    """Whether joblib runs the grid search's fits in this process (then a progress callback
    sees them): ``n_jobs=1``, or None with no parallel backend configured by the caller."""
    if n_jobs == 1:
        return True
    if n_jobs is not None:
        return False
    from joblib.parallel import get_active_backend

    backend, n = get_active_backend()
    return n in (None, 1) and type(backend).__name__ in ("LokyBackend", "SequentialBackend")


class _CountingScorer:
    """A scorer that reports each scored fit (C, score) to a :class:`FitProgress`."""

    def __init__(self, scorer: Any, bar: FitProgress) -> None:
        self.scorer, self.bar = scorer, bar

    def __call__(self, estimator: Any, X: Any, y: Any) -> float:
        s = self.scorer(estimator, X, y)
        self.bar.step(C=estimator.get_params().get("clf__C"), score=float(s))
        return s


def _grid_search(pipe: Pipeline, X: np.ndarray, y: np.ndarray, grid: np.ndarray,
                 plan: SearchPlan, *, seed: int, scoring: Any, n_jobs: int | None,
                 threads: int | None, compute: Any, progress: ProgressArg
                 ) -> tuple[Pipeline, dict[str, Any], Any]:
    """``GridSearchCV`` over ``grid`` with ``plan``'s k folds or its one validation split;
    progress per fit when the fits run in this process. Returns ``(best pipeline, record,
    compute used)``."""
    from sklearn.metrics import check_scoring

    rec: dict[str, Any] = {}
    if plan.kind == "kfold":
        splitter: Any = StratifiedKFold(n_splits=plan.folds, shuffle=True, random_state=seed)
        n_splits = plan.folds
    else:
        tr, va = validation_split(y, plan.val_fraction, seed)
        splitter, n_splits, rec["n_val"] = [(tr, va)], 1, int(len(va))
    bar = FitProgress(len(grid) * n_splits + 1, desc=f"model selection ({plan.kind})",
                      progress=progress if _in_process(n_jobs) else None)
    scorer: Any = scoring
    if _in_process(n_jobs):
        scorer = _CountingScorer(check_scoring(pipe, scoring=scoring), bar)
    search = GridSearchCV(pipe, {"clf__C": grid.tolist()}, scoring=scorer, cv=splitter,
                          n_jobs=n_jobs, refit=True, error_score="raise")
    try:
        compute = _fit_search(search, X, y, threads=threads, compute=compute)
        bar.step(bar.total - bar.done, stage="refit",
                 C=float(search.best_params_["clf__C"]))
    finally:
        bar.close()
    res = search.cv_results_
    Cs = [float(c) for c in res["param_clf__C"]]
    order = np.argsort(Cs)
    rec.update(c_grid=[Cs[i] for i in order],
               cv_mean=[float(res["mean_test_score"][i]) for i in order],
               cv_std=[float(res["std_test_score"][i]) for i in order],
               best_C=float(search.best_params_["clf__C"]),
               best_cv_score=float(search.best_score_),
               refit_time_s=float(search.refit_time_))
    return search.best_estimator_, rec, compute
