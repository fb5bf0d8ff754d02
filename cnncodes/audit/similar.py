"""``similar``: the stored images nearest to a query image by cosine similarity of their codes.

A query is a path already in the store (its stored row is used and left out of the answer), or
an image file / folder / list file not in the store: its codes are then extracted with the
store's own recorded settings (backbone, weights, layer, pooling, input size; the extraction path
of :func:`cnncodes.extract_arrays`), checked against the store like an append would be.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codes.store import FeatureStore
from ..options import BackboneOptions, RuntimeOptions
from .neighbours import normalize, top_k

log = logging.getLogger(__name__)


@dataclass
class Match:
    """One query's answer: ``query`` path, ``in_store`` (its stored row was used), the
    ``rows``, ``paths``, ``labels`` (class names, '' when unlabelled) and ``scores`` of the
    nearest stored images, best first."""

    query: str
    in_store: bool
    rows: np.ndarray
    paths: list[str]
    labels: list[str]
    scores: np.ndarray


@dataclass
class SimilarResult:
    """Every query's :class:`Match`, the layer compared, the search ``method`` and the files
    that could not be read (``failures``: (path, reason))."""

    matches: list[Match]
    layer: str
    method: str
    failures: list[tuple[str, str]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (query, neighbour): ``query``, ``rank``, ``path``, ``label``, ``score``."""
        return [{"query": m.query, "rank": r + 1, "path": p, "label": lab, "score": float(s)}
                for m in self.matches
                for r, (p, lab, s) in enumerate(zip(m.paths, m.labels, m.scores, strict=True))]


def store_extractor(store: FeatureStore, layer: str, *,
                    runtime: RuntimeOptions | None = None) -> Any:
    """A :class:`~cnncodes.CodeExtractor` making codes like those of ``store``'s ``layer``.

    Raises:
        StoreMismatchError: the rebuilt extractor's settings differ from the store's (e.g. the
            weights file changed).
    """
    from ..codes.compat import check_store_compatible
    from ..codes.extractor import CodeExtractor
    from ..linear.model_file import weights_argument

    p = store.provenance
    pooling = store.layer_attrs(layer).get("pooling", p.get("pooling", "avg"))
    bopts = BackboneOptions(backbone=p["backbone"], weights=weights_argument(p), layers=(layer,),
                            pooling=pooling, input_size=p.get("input_size"))
    ext = CodeExtractor(bopts, runtime=runtime or RuntimeOptions())
    check_store_compatible(store.path, ext.provenance(), fields=("backbone", "weights",
                                                                 "preprocessing"),
                           layer=layer, journal=False, what="similar",
                           fix="The query's codes would not be comparable with the store's: "
                               "extract the store again with the current weights.")
    return ext


def _store_row(store_paths: list[Path], query: Path) -> int | None:
    q = os.path.normpath(os.path.abspath(query))
    for i, p in enumerate(store_paths):
        if os.path.normpath(os.path.abspath(p)) == q:
            return i
    return None


def similar(store: FeatureStore | str | os.PathLike, query: str | os.PathLike, *, k: int = 10,
            layer: str | None = None, runtime: RuntimeOptions | None = None,
            method: str = "auto", allow_incomplete: bool = False) -> SimilarResult:
    """The ``k`` stored images most similar to ``query`` (a stored path, an image, a folder).

    Similarity is the cosine of the codes centred on the store's mean code (the measure the
    duplicate threshold of :func:`cnncodes.audit.audit` is calibrated on).
    """
    st = store if isinstance(store, FeatureStore) else FeatureStore(store)
    name = st._layer(layer)
    X, y = st.load(name, allow_incomplete=allow_incomplete)
    center = X.mean(axis=0) if len(X) else None
    base = normalize(X, center=center)
    abspaths = st.abspaths()
    classes = st.classes
    qpath = Path(query).expanduser()
    row = _store_row(abspaths, qpath) if qpath.is_file() else None
    failures: list[tuple[str, str]] = []
    own: list[int | None]  # each query's own row in the store (None: not in it)
    if row is not None:
        queries, qnames, own = base[row:row + 1], [os.fspath(qpath)], [row]
    else:
        from ..codes.batches import extract_arrays

        src = [os.fspath(qpath)] if qpath.is_file() else os.fspath(qpath)
        ext = store_extractor(st, name, runtime=runtime)
        codes = extract_arrays(src, extractor=ext, runtime=runtime or RuntimeOptions())
        root = Path(codes.provenance.get("root", "."))
        qnames = [os.path.normpath(os.fspath(root / p)) for p in codes.paths]
        failures = [(os.path.normpath(os.fspath(root / p)), r) for p, r in codes.failures]
        queries = normalize(codes.codes[name], center=center)
        own = [_store_row(abspaths, Path(q)) for q in qnames]
    nb = top_k(queries, base, k + 1, method=method)
    matches = []
    for i, q in enumerate(qnames):
        keep = (nb.index[i] >= 0) & (nb.index[i] != (own[i] if own[i] is not None else -2))
        rows = nb.index[i][keep][:k]
        matches.append(Match(q, own[i] is not None, rows, [os.fspath(abspaths[r]) for r in rows],
                             [classes[y[r]] if y[r] >= 0 else "" for r in rows],
                             nb.score[i][keep][:k]))
    return SimilarResult(matches, name, nb.method, failures)
