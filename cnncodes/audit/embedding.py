"""The 2-D map of the codes: PCA to 50 dimensions, then t-SNE (scikit-learn) or UMAP.

t-SNE is the default: it needs no extra package (umap-learn pulls numba and llvmlite, +210 MB), and
on the map's 2,000 rows it cost about the same CPU time here (benchmarks/audit_scale.py: t-SNE 52
CPU-seconds, UMAP 44 with its JIT compilation; README "cnncodes similar and cnncodes audit");
``method="umap"`` uses umap-learn when installed. At most :data:`MAP_ROWS` rows are placed (a
random sample above that), which bounds the time and the page.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import OptionError

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap")


def sample_rows(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: all ``n`` rows, or ``max_rows`` of them at random."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def map_2d(X: np.ndarray, *, method: str = "tsne", seed: int = 0,
           n_jobs: int | None = None) -> np.ndarray:
    """(N, 2) coordinates of the rows of ``X``, scaled to [0, 1] on each axis."""
    from sklearn.decomposition import PCA

    if method not in METHODS:
        raise OptionError(f"map method must be one of {', '.join(METHODS)}. Got {method!r}.")
    X = np.asarray(X, np.float32)
    n = len(X)
    if n < 3:
        return np.full((n, 2), 0.5)
    Z = PCA(n_components=min(50, n - 1, X.shape[1]), random_state=seed).fit_transform(X)
    if method == "umap":
        try:
            import umap
        except ImportError as e:
            raise OptionError("map method 'umap' needs umap-learn: pip install umap-learn "
                              "(or use the default, tsne).") from e
        Y = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(Z)
    else:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # one OpenMP thread: on a busy 2-core machine the Barnes-Hut gradient's per-iteration
        # barriers made 2 threads spin (500 rows: 151 s wall; one thread 1.6 CPU-s, 6 s wall)
        with threadpool_limits(limits=1, user_api="openmp"):
            Y = TSNE(n_components=2, init="pca", perplexity=min(30.0, (n - 1) / 3),
                     random_state=seed, n_jobs=n_jobs).fit_transform(Z)
    Y = np.asarray(Y, np.float64)
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (Y - lo) / span
