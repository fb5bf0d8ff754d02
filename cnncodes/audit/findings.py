"""What the neighbours say: near-duplicate groups, leaks across splits, outliers, class balance.

Everything works on unit rows (:func:`cnncodes.audit.neighbours.normalize`) and on the ``k``
nearest neighbours of each row, never on an n x n matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .defaults import DUPLICATE_THRESHOLD, OUTLIER_FRACTION, K
from .neighbours import Neighbours, top_k

__all__ = ["K", "OUTLIER_FRACTION", "Leaks", "Outliers", "class_balance", "duplicate_groups",
           "duplicate_pairs", "find_leaks", "find_outliers", "groups_from_pairs"]


def groups_from_pairs(n: int, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Connected components (of size >= 2) of the graph on ``n`` nodes with edges ``a[i]-b[i]``,
    each a sorted row array, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(a) == 0:
        return []
    g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    order = np.argsort(comp, kind="stable")
    sizes = np.bincount(comp)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = [np.sort(order[s:s + z]) for s, z in zip(starts, sizes, strict=True) if z >= 2]
    out.sort(key=lambda r: (-len(r), int(r[0])))
    return out


def duplicate_pairs(nb: Neighbours, threshold: float = DUPLICATE_THRESHOLD
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(a[i], b[i])``, ``a < b``, each once, of rows whose similarity the search
    found >= ``threshold`` (from each row's neighbours ``nb`` within one set): at most ``k`` per
    row."""
    rows, cols = np.nonzero((nb.score >= threshold) & (nb.index >= 0))
    other = nb.index[rows, cols].astype(np.int64)
    a, b = np.minimum(rows, other), np.maximum(rows, other)
    keep = a != b
    n = max(1, nb.index.shape[0])
    key = np.unique(a[keep] * n + b[keep])
    return key // n, key % n


def duplicate_groups(nb: Neighbours, threshold: float = DUPLICATE_THRESHOLD) -> list[np.ndarray]:
    """Groups of rows linked by similarity >= ``threshold`` (from each row's neighbours ``nb``
    within one set)."""
    return groups_from_pairs(nb.index.shape[0], *duplicate_pairs(nb, threshold))


@dataclass
class Leaks:
    """Test rows with a near-duplicate in the training set: ``test_rows``, their most similar
    ``train_rows`` and the ``score``; ``best_score`` is every test row's best similarity."""

    test_rows: np.ndarray
    train_rows: np.ndarray
    score: np.ndarray
    best_score: np.ndarray
    method: str
    #: each pair's thumbnail difference (:mod:`cnncodes.audit.pixels`; None: not checked)
    pixel_diff: np.ndarray | None = None
    #: the bound each pair's difference is held to (:func:`~cnncodes.audit.pixels.pair_bound`)
    pixel_bound: np.ndarray | None = None

    def same_picture(self) -> np.ndarray:
        """Which pairs the pixel check confirms (all False when it was not made)."""
        if self.pixel_diff is None or self.pixel_bound is None:
            return np.zeros(len(self.test_rows), bool)
        return np.asarray(self.pixel_diff <= self.pixel_bound)


def find_leaks(test: np.ndarray, train: np.ndarray, threshold: float = DUPLICATE_THRESHOLD, *,
               method: str = "auto") -> Leaks:
    """Test rows (unit rows ``test``) whose nearest training row is a near-duplicate."""
    nb = top_k(test, train, 1, method=method)
    best = nb.score[:, 0]
    hit = np.flatnonzero(best >= threshold)
    return Leaks(hit, nb.index[hit, 0], best[hit], best, nb.method)


def centroid_similarity(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) cosine similarity of each unit row to each class's mean direction (NaN for a class
    without rows)."""
    C = np.zeros((n_classes, X.shape[1]), np.float32)
    for c in range(n_classes):
        m = y == c
        if m.any():
            C[c] = X[m].mean(axis=0)
    norms = np.linalg.norm(C, axis=1, keepdims=True)
    ok = norms[:, 0] > 0
    C[ok] /= norms[ok]
    S = X @ C.T
    S[:, ~ok] = np.nan
    return S


@dataclass
class Outliers:
    """The rows least like any class: ``rows`` (lowest first), ``centroid_score`` (best
    similarity to a class mean direction), ``neighbour_score`` (similarity to the nearest other
    row), ``nearest_class``."""

    rows: np.ndarray
    centroid_score: np.ndarray
    neighbour_score: np.ndarray
    nearest_class: np.ndarray


def find_outliers(X: np.ndarray, y: np.ndarray, n_classes: int, nb: Neighbours, *,
                  fraction: float = OUTLIER_FRACTION) -> Outliers:
    """The ``fraction`` of rows with the lowest similarity to every class centroid (ties broken
    by the lowest similarity to their nearest neighbour)."""
    S = centroid_similarity(X, y, n_classes)
    best = np.nanmax(np.where(np.isnan(S), -np.inf, S), axis=1) if n_classes else \
        np.zeros(len(X))
    near = nb.score[:, 0] if nb.score.shape[1] else np.zeros(len(X))
    n = int(np.ceil(fraction * len(X))) if len(X) else 0
    order = np.lexsort((near, best))[:n]
    return Outliers(order, best[order], near[order],
                    np.argmax(np.where(np.isnan(S), -np.inf, S), axis=1)[order])


def class_balance(y: np.ndarray, classes: list[str]) -> list[dict]:
    """Per class: ``class``, ``count``, ``share`` of the labelled rows."""
    counts = np.bincount(y[y >= 0], minlength=len(classes)) if len(y) else \
        np.zeros(len(classes), np.int64)
    total = max(1, int(counts.sum()))
    return [{"class": c, "count": int(n), "share": float(n) / total}
            for c, n in zip(classes, counts, strict=True)]
