"""The advisor's decisive evidence: a cross-validated linear probe of every candidate layer.

:func:`probe_layers` fits the same stratified folds on every layer's codes (so per-fold
differences are paired) with the advisor's own small probes: ``logreg`` (scikit-learn
LogisticRegression on standardised codes, a small C grid) or ``ridge`` (closed form, every alpha
from one eigendecomposition per fold). These are deliberately not :mod:`cnncodes.linear`'s
classifiers: the probe only ranks layers, quickly, with BLAS on one thread.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OptionError
from ..stats import plural
from .defaults import FOLDS, PROBE, PROBES
from .transfer import logme

log = logging.getLogger(__name__)

#: Ridge penalties tried by the default probe, as multiples of the number of training rows
#: (all solved from one eigendecomposition per fold, so the grid is free).
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: Inverse regularisation strengths tried by the logistic-regression probe.
LOGREG_CS = (0.01, 0.1, 1.0, 10.0)
#: BLAS threads used by the probe fits. LAPACK/BLAS on small matrices gains little from threads and
#: collapses under CPU contention (measured here: a 800x800 eigh 0.12 s on 1 thread vs 1.4-6 s on
#: 2 busy cores; LogisticRegression 50x slower), so the fits run single-threaded.
PROBE_BLAS_THREADS = 1


def check_probe(method: str) -> None:
    """Raise :class:`OptionError` unless ``method`` is one of :data:`PROBES`."""
    if method not in PROBES:
        raise OptionError(f"probe must be one of {', '.join(PROBES)}. Got {method!r} instead.")


@dataclass
class LayerScore:
    """Cross-validated probe accuracy of one layer (or of raw pixels).

    Attributes:
        layer: layer name (``raw`` for the raw-pixel reference).
        depth: ``last``, ``earlier`` or ``raw``.
        dim: code dimension.
        fold_scores: accuracy per fold at the chosen regularisation.
        param: the chosen ridge alpha (x rows) or logistic-regression C.
        grid_scores: mean CV accuracy for every grid value.
        seconds: fit time.
        same_as: another layer whose codes are identical (scores copied, not refitted).
        logme: LogME of the layer's codes on the whole probe sample
            (:func:`cnncodes.advisor.transfer.logme`), None when not computed.
    """

    layer: str
    depth: str
    dim: int
    fold_scores: list[float]
    param: float
    grid_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    same_as: str | None = None
    logme: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def ci95(self) -> float:
        """Half width (accuracy units) of a 95% interval of the CV accuracy (t over the folds,
        Nadeau-Bengio corrected: :func:`cnncodes.advisor.rule.paired_interval`'s formula)."""
        k = len(self.fold_scores)
        if k < 2:
            return 0.0
        from scipy.stats import t

        return float(t.ppf(0.975, k - 1)) * self.std * float(np.sqrt(1 / k + 1 / (k - 1)))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else 0.0


@dataclass
class ProbeResult:
    """The linear probe of every candidate layer on one stratified sample (same folds for all).

    Attributes:
        method: ``ridge`` or ``logreg``.
        n_images: rows in the sample.
        folds: stratified CV folds.
        grid: the regularisation values tried.
        layers: per layer (in network order) its :class:`LayerScore`.
        raw: the raw-pixel reference row, or None.
        excluded_classes: classes left out (fewer than 2 images in the sample).
        class_counts: images per probed class in the sample (empty when not recorded).
    """

    method: str
    n_images: int
    folds: int
    grid: list[float]
    layers: dict[str, LayerScore]
    raw: LayerScore | None = None
    excluded_classes: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def smallest_class(self) -> int | None:
        """Images of the smallest probed class in the sample (None when not recorded)."""
        return min(self.class_counts.values()) if self.class_counts else None

    def to_dict(self, *, compact: bool = False) -> dict[str, Any]:
        def row(s: LayerScore) -> dict[str, Any]:
            d = {"depth": s.depth, "dim": s.dim, "cv_accuracy": round(s.mean, 4),
                 "cv_std": round(s.std, 4), "cv_ci95": round(s.ci95, 4), "param": s.param,
                 "logme": None if s.logme is None else round(s.logme, 4)}
            if s.same_as:
                d["same_as"] = s.same_as
            if not compact:
                d.update(fold_scores=[round(x, 4) for x in s.fold_scores],
                         grid_scores=[round(x, 4) for x in s.grid_scores],
                         seconds=round(s.seconds, 3))
            return d

        return {"method": self.method, "n_images": self.n_images, "folds": self.folds,
                "grid": list(self.grid), "excluded_classes": list(self.excluded_classes),
                "smallest_class": self.smallest_class,
                **({} if compact else {"class_counts": dict(self.class_counts)}),
                "layers": {k: row(v) for k, v in self.layers.items()},
                "raw_pixels": row(self.raw) if self.raw is not None else None}


def _standardize(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = a.mean(0)
    sd = a.std(0)
    sd[sd < 1e-12] = 1.0
    return (a - mu) / sd, (b - mu) / sd


def _ridge_fold(A: np.ndarray, ya: np.ndarray, B: np.ndarray, yb: np.ndarray,
                classes: np.ndarray, grid: Sequence[float]) -> list[float]:
    """Accuracy on ``B`` of one-vs-all ridge classifiers fit on ``A`` for every alpha in grid.

    Solves ``min ||A W - Y||^2 + alpha * n * ||W||^2`` (A standardised, Y centred +-1 targets)
    from one eigendecomposition of A^T A (d <= n) or A A^T (n < d).
    """
    Y = np.where(ya[:, None] == classes[None, :], 1.0, -1.0)
    ymean = Y.mean(0)
    Yc = Y - ymean
    n, d = A.shape
    out = []
    if d <= n:
        s, V = np.linalg.eigh(A.T @ A)
        P = V.T @ (A.T @ Yc)
        BV = B @ V
        for a in grid:
            pred = BV @ (P / (np.maximum(s, 0)[:, None] + a * n)) + ymean
            out.append(float(np.mean(classes[pred.argmax(1)] == yb)))
    else:
        s, U = np.linalg.eigh(A @ A.T)
        Q = U.T @ Yc
        BA = B @ A.T @ U
        for a in grid:
            pred = BA @ (Q / (np.maximum(s, 0)[:, None] + a * n)) + ymean
            out.append(float(np.mean(classes[pred.argmax(1)] == yb)))
    return out


def _logreg_fold(A: np.ndarray, ya: np.ndarray, B: np.ndarray, yb: np.ndarray,
                 classes: np.ndarray, grid: Sequence[float], seed: int) -> list[float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in grid:
            m = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(A, ya)
            out.append(float(m.score(B, yb)))
    return out


def probe_layers(codes: Mapping[str, np.ndarray], labels: np.ndarray, *,
                 depths: Mapping[str, str], method: str = PROBE, folds: int = FOLDS,
                 grid: Sequence[float] | None = None, seed: int = 0,
                 raw: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None) -> ProbeResult:
    """Stratified k-fold CV accuracy of a linear classifier on each layer's codes.

    All layers share the same folds (so per-fold differences are paired). For each layer the grid
    value with the best mean accuracy is kept (ties go to the stronger regularisation); layers
    whose codes equal an already probed layer's reuse its scores.

    Args:
        codes: ``{layer: (N, D)}`` in network order.
        labels: (N,) integer labels.
        depths: ``{layer: "last" | "earlier"}``.
        method: ``logreg`` (scikit-learn LogisticRegression, lbfgs, on standardised codes) or
            ``ridge`` (closed form, every alpha from one eigendecomposition; faster).
        folds: CV folds (reduced to the smallest class count, at least 2).
        grid: ridge alphas (x rows) or logistic C values; default :data:`RIDGE_ALPHAS` /
            :data:`LOGREG_CS`.
        raw: optional (N, P) raw-pixel features probed the same way as a reference row.
        class_names: names of the label values (for messages).

    Raises:
        OptionError: unknown method, fewer than two classes with two images each.
    """
    from sklearn.model_selection import StratifiedKFold

    check_probe(method)
    grid = list(grid if grid is not None else (RIDGE_ALPHAS if method == "ridge" else LOGREG_CS))
    if not grid or any(g <= 0 for g in grid):
        raise OptionError(f"The probe grid must hold positive values. Got {grid} instead.")
    labels = np.asarray(labels)
    vals, counts = np.unique(labels, return_counts=True)
    keep_cls = vals[counts >= 2]
    excluded = [str(class_names[v]) if class_names is not None else str(v)
                for v in vals[counts < 2]]
    if keep_cls.size < 2:
        raise OptionError(f"The probe needs at least 2 classes with 2+ images each. Got class "
                          f"counts {dict(zip(vals.tolist(), counts.tolist(), strict=True))} "
                          "instead; add images, or raise the sample size (--sample).")
    rows = np.flatnonzero(np.isin(labels, keep_cls))
    y = labels[rows]
    counts_kept = {str(class_names[v]) if class_names is not None else str(v): int(c)
                   for v, c in zip(vals.tolist(), counts.tolist(), strict=True) if c >= 2}
    k = int(min(folds, np.bincount(np.searchsorted(keep_cls, y)).min()))
    k = max(k, 2)
    if k < folds:
        log.warning("the smallest class has only %s in the sample: %d-fold CV instead of "
                    "%d", plural(k, "image"), k, folds)
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, y))

    def score(name: str, depth: str, X: np.ndarray) -> LayerScore:
        t0 = time.perf_counter()
        X = np.asarray(X, np.float64)[rows]
        per = []
        for tr, te in splits:
            A, B = _standardize(X[tr], X[te])
            if method == "ridge":
                per.append(_ridge_fold(A, y[tr], B, y[te], keep_cls, grid))
            else:
                per.append(_logreg_fold(A, y[tr], B, y[te], keep_cls, grid, seed))
        acc = np.asarray(per)  # folds x grid
        means = acc.mean(0)
        # ties -> stronger regularisation: largest alpha (ridge) / smallest C (logreg)
        pref = sorted(range(len(grid)), key=lambda i: -grid[i] if method == "ridge" else grid[i])
        j = next(i for i in pref if means[i] >= means.max() - 1e-12)
        return LayerScore(name, depth, int(X.shape[1]), acc[:, j].tolist(), float(grid[j]),
                          means.tolist(), time.perf_counter() - t0, logme=logme(X, y))

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=PROBE_BLAS_THREADS, user_api="blas"):
        res = _probe_all(codes, depths, score, raw, method, rows, k, grid, excluded)
    res.class_counts = counts_kept
    return res


def _probe_all(codes: Mapping[str, np.ndarray], depths: Mapping[str, str],
               score: Callable[[str, str, np.ndarray], LayerScore],
               raw: np.ndarray | None, method: str, rows: np.ndarray, k: int,
               grid: list[float], excluded: list[str]) -> ProbeResult:
    out: dict[str, LayerScore] = {}
    seen: list[tuple[str, np.ndarray]] = []
    for name, X in codes.items():
        X = np.asarray(X)
        twin = next((m for m, Z in seen if Z.shape == X.shape
                     and np.allclose(Z, X, rtol=1e-5, atol=1e-6)), None)
        if twin is not None:
            s = out[twin]
            out[name] = LayerScore(name, depths[name], s.dim, list(s.fold_scores), s.param,
                                   list(s.grid_scores), 0.0, same_as=twin, logme=s.logme)
        else:
            out[name] = score(name, depths[name], X)
            seen.append((name, X))
        log.debug("probe %-8s %5d-d  CV accuracy %.4f +- %.4f, LogME %.3f%s", name,
                  out[name].dim, out[name].mean, out[name].std, out[name].logme,
                  f" (same codes as {out[name].same_as})" if out[name].same_as else "")
    raw_score = score("raw", "raw", raw) if raw is not None else None
    return ProbeResult(method, int(rows.size), k, grid, out, raw_score, excluded)
