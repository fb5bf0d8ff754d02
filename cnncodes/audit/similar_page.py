"""``similar --report DIR``: ``report.html`` with thumbnails of each query and its neighbours.

Self-contained like the other pages (:mod:`cnncodes.report.html`): the images are embedded as
small base64 JPEG thumbnails (``data:`` URIs), nothing is fetched; an image that cannot be read
is listed by path with the reason. Written atomically (:mod:`cnncodes.atomic`); the folder is
checked and claimed like a report folder (owner ``similar``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import CnnCodesError
from .similar import SimilarResult

log = logging.getLogger(__name__)

SIMILAR_HTML = "report.html"
SIMILAR_FILES = (SIMILAR_HTML,)
#: thumbnail side (px) of the query and of each neighbour
SIDE = 96
#: queries shown with thumbnails at most (a folder query can hold thousands; the CSV has all)
MAX_QUERIES = 50


def _thumb(path: str) -> dict[str, Any]:
    from ..report.html import thumbnail_uri

    try:
        return {"uri": thumbnail_uri(path, side=SIDE), "error": None}
    except (CnnCodesError, OSError, ValueError) as e:
        return {"uri": None, "error": str(e)}


def similar_context(res: SimilarResult, *, store: str = "", command: str | None = None,
                    max_queries: int = MAX_QUERIES) -> dict[str, Any]:
    """The template context of ``similar.html.j2``: per query its thumbnail and, per
    neighbour, rank, thumbnail, label, score and path."""
    queries = []
    for m in res.matches[:max_queries]:
        queries.append({
            "path": m.query, "in_store": m.in_store, **_thumb(m.query),
            "neighbours": [{"rank": r, "path": p, "label": lab or "-", "score": f"{s:.4f}",
                            **_thumb(p)}
                           for r, (p, lab, s) in enumerate(zip(m.paths, m.labels, m.scores,
                                                               strict=True), 1)]})
    k = max((len(m.paths) for m in res.matches), default=0)
    return {"title": "cnncodes similar", "subtitle": f"{store} ({res.layer})",
            "summary": [{"label": "queries", "value": len(res.matches)},
                        {"label": "neighbours each", "value": k},
                        {"label": "search", "value": res.method}],
            "queries": queries, "hidden": max(0, len(res.matches) - max_queries),
            "failures": [{"path": p, "reason": r} for p, r in res.failures],
            "provenance": [("store", store or "-"), ("layer", res.layer),
                           ("similarity", "cosine of codes centred on the store's mean"),
                           ("command", command or "-")]}


def write_similar(res: SimilarResult, out_dir: str | os.PathLike, *, store: str = "",
                  inputs: Any = (), overwrite: bool = False,
                  command: str | None = None) -> Path:
    """Write ``out_dir/report.html`` for ``res``; returns its path.

    Raises:
        OutputError: ``out_dir`` cannot take it (an input, another command's folder...).
    """
    from ..outputs import claim_folder
    from ..report.files import check_report_folder
    from ..report.html import render

    out = check_report_folder(out_dir, inputs=inputs, files=SIMILAR_FILES, owner="similar",
                              overwrite=overwrite)
    claim_folder(out, "similar", files=SIMILAR_FILES, command=command)
    html = render("similar.html.j2", similar_context(res, store=store, command=command))
    atomic_write_text(path := out / SIMILAR_HTML, html)
    log.info("similar page written to %s", path)
    return path
