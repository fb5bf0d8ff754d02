"""Nearest neighbours by cosine similarity without an n x n matrix.

Two ways, chosen by size (:func:`choose_method`): an exact search in blocks of rows with NumPy
(float32 matrix products, top-k of each block by ``argpartition``; memory ``block x n``), and
beyond :data:`EXACT_MAX_ROWS` base rows faiss' inverted-file inner-product index when
``faiss-cpu`` is installed (``pip install faiss-cpu``; otherwise the exact search runs at any
size, slower).
Both return the same thing: for every query row the indices and similarities of its ``k``
nearest base rows, best first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: rows of queries per block of the exact search at most
BLOCK = 2048
#: scores held at once by the exact search (block x n_base; each costs 4 bytes of float32
#: score and 8 of argpartition's int64 index: 16M elements = about 200 MB)
BLOCK_ELEMENTS = 16 * 1024 * 1024
#: base rows up to which the exact blocked search is used even when faiss is installed
#: (measured by benchmarks/audit_scale.py: see README "Auditing a data set")
EXACT_MAX_ROWS = 20_000
#: cells of the faiss index each query scans
FAISS_PROBES = 16


@dataclass
class Neighbours:
    """``index[i, j]``: the j-th nearest base row of query row i (-1: none), ``score[i, j]`` its
    cosine similarity; ``method``: ``exact`` or ``faiss``."""

    index: np.ndarray
    score: np.ndarray
    method: str


def normalize(X: np.ndarray, *, center: np.ndarray | None = None,
              overwrite: bool = False) -> np.ndarray:
    """Rows of ``X`` (minus ``center`` when given) scaled to unit length, float32, C order
    (a zero row stays zero). ``overwrite``: scale ``X`` itself when it is a writeable, C-ordered
    float32 array (no copy; its codes are gone afterwards)."""
    X = np.asarray(X, dtype=np.float32)
    if overwrite and X.flags.c_contiguous and X.flags.writeable:
        out = X
    else:  # one new (N, D) array, scaled in place (not four: centred, squared, divided, ...)
        out = np.array(X, dtype=np.float32, order="C", copy=True)
    if center is not None:
        out -= np.asarray(center, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]  # no (N, D) temporary of x * x
    norms[norms == 0] = 1.0
    out /= norms
    return out


def faiss_available() -> bool:
    """Whether ``faiss`` (``pip install faiss-cpu``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_method(n_base: int, method: str = "auto") -> str:
    """``exact`` up to :data:`EXACT_MAX_ROWS` base rows or without faiss, else ``faiss``; an
    explicit ``exact``/``faiss`` is kept (``faiss`` without the package is an error)."""
    from ..errors import OptionError

    if method not in ("auto", "exact", "faiss"):
        raise OptionError(f"method must be auto, exact or faiss. Got {method!r} instead.")
    if method == "faiss" and not faiss_available():
        raise OptionError("method='faiss' needs the faiss package: pip install faiss-cpu "
                          "(or use method='exact').")
    if method != "auto":
        return method
    return "faiss" if n_base > EXACT_MAX_ROWS and faiss_available() else "exact"


def top_k(queries: np.ndarray, base: np.ndarray, k: int, *, same: bool = False,
          method: str = "auto", block: int = BLOCK) -> Neighbours:
    """The ``k`` nearest rows of ``base`` for every row of ``queries`` (both already unit rows,
    :func:`normalize`). ``same``: queries are the base rows themselves and a row is not its own
    neighbour."""
    n_base = base.shape[0]
    k_eff = max(0, min(k, n_base - (1 if same else 0)))
    chosen = choose_method(n_base, method)
    if k_eff == 0 or queries.shape[0] == 0:
        return Neighbours(np.full((queries.shape[0], k), -1, np.int64),
                          np.full((queries.shape[0], k), -np.inf, np.float32), chosen)
    if chosen == "faiss":
        idx, sc = _faiss(queries, base, k_eff, same)
    else:
        idx, sc = _exact(queries, base, k_eff, same, block)
    if k_eff < k:  # pad to k columns
        pad = k - k_eff
        idx = np.hstack([idx, np.full((idx.shape[0], pad), -1, np.int64)])
        sc = np.hstack([sc, np.full((sc.shape[0], pad), -np.inf, np.float32)])
    return Neighbours(idx, sc, chosen)


def _exact(queries: np.ndarray, base: np.ndarray, k: int, same: bool,
           block: int) -> tuple[np.ndarray, np.ndarray]:
    n = queries.shape[0]
    block = max(16, min(block, BLOCK_ELEMENTS // max(1, base.shape[0])))
    idx = np.empty((n, k), np.int64)
    sc = np.empty((n, k), np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        S = queries[s:e] @ base.T  # (block, n_base) float32
        if same:
            S[np.arange(e - s), np.arange(s, e)] = -np.inf
        full = np.argpartition(S, S.shape[1] - k, axis=1)
        part = full[:, -k:].copy()  # not a view: the (block, n_base) indices go now
        del full
        ps = np.take_along_axis(S, part, axis=1)
        del S  # one block's scores alive at a time, not this one's and the next one's
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s:e] = np.take_along_axis(part, order, axis=1)
        sc[s:e] = np.take_along_axis(ps, order, axis=1)
    return idx, sc


def _faiss(queries: np.ndarray, base: np.ndarray, k: int,
           same: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss' inverted-file inner-product index (approximate: each query scans the
    :data:`FAISS_PROBES` cells nearest to it of ``4 sqrt(n)`` k-means cells; unit rows make the
    inner product the cosine; a near-duplicate falls in its source's cell)."""
    import faiss

    n, d = base.shape
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    train = base if n <= 64 * nlist else base[np.sort(rng.choice(n, 64 * nlist, replace=False))]
    index.train(train)
    index.add(base)
    index.nprobe = min(nlist, FAISS_PROBES)
    sc, idx = index.search(queries, k + (1 if same else 0))
    idx = idx.astype(np.int64)
    if same:  # drop each row's own hit (or the last column when it was not found)
        rows = np.arange(idx.shape[0])[:, None]
        self_hit = idx == rows
        keep = ~self_hit
        keep[~self_hit.any(axis=1), -1] = False
        idx = idx[keep].reshape(idx.shape[0], k)
        sc = sc[keep].reshape(sc.shape[0], k)
    return idx, sc.astype(np.float32)
