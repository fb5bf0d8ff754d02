"""The audit's files: ``audit.json``, one CSV per finding and ``audit.html``.

``audit.html`` is self-contained like ``report.html`` (:mod:`cnncodes.report.html`: inline style,
``data:`` thumbnails, no script, nothing fetched): the summary, class balance, the 2-D map as inline
SVG (a point per image coloured by class, suspected label errors ringed, a thumbnail on hover for a
bounded sample of points), then the duplicate groups, leaks, label issues and outliers with
thumbnails of the first ones. Every file is written atomically (:mod:`cnncodes.atomic`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_csv, atomic_write_json, atomic_write_text, finite_json
from ..errors import CnnCodesError
from .run import AuditResult

log = logging.getLogger(__name__)

AUDIT_HTML = "audit.html"
AUDIT_JSON = "audit.json"
CSV_NAMES = ("duplicates", "leaks", "label_issues", "outliers", "balance")
AUDIT_FILES = (AUDIT_HTML, AUDIT_JSON) + tuple(f"{n}.csv" for n in CSV_NAMES)
#: map points that carry a thumbnail (suspected label errors first, then a random sample)
MAP_THUMBS = 300
#: items with thumbnails in each list of the page (the CSVs have them all)
LIST_THUMBS = 40
MAP_SIZE = (900, 640)
#: 10 distinguishable colours (class index modulo 10)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def _thumb(path: str, side: int = 64) -> str | None:
    from ..report.html import thumbnail_uri

    try:
        return thumbnail_uri(path, side=side)
    except (CnnCodesError, OSError, ValueError):
        return None


def _map_points(res: AuditResult) -> list[dict[str, Any]]:
    if res.map_xy is None:
        return []
    suspects = set() if res.label_issues is None else set(res.label_issues.rows.tolist())
    suggested = {} if res.label_issues is None else dict(
        zip(res.label_issues.rows.tolist(), res.label_issues.suggested.tolist(), strict=True))
    rows = res.map_rows
    flagged = [i for i, r in enumerate(rows) if int(r) in suspects]
    rest = [i for i in np.random.default_rng(0).permutation(len(rows)) if int(rows[i])
            not in suspects]
    with_thumb = set((flagged + rest)[:MAP_THUMBS])
    w, h = MAP_SIZE
    pts: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        r = int(r)
        lab = int(res.labels[r])
        x = 10 + float(res.map_xy[i, 0]) * (w - 84)
        y = 10 + float(res.map_xy[i, 1]) * (h - 84)
        tip = f"{res.paths[r]} ({res._label(lab) or 'unlabelled'})"
        if r in suspects:
            tip += f": label suspected, suggested {res.classes[suggested[r]]}"
        pts.append({"x": round(x, 1), "y": round(y, 1), "color": PALETTE[lab % 10] if lab >= 0
                    else "#999", "suspect": r in suspects, "tip": tip,
                    "thumb": _thumb(res.paths[r]) if i in with_thumb else None})
    # suspects last, so that they are drawn on top
    pts.sort(key=lambda p: p["suspect"])
    return pts


def _items(res: AuditResult, name: str, header: list[str], rows: list[list[Any]],
           path_cols: tuple[int, ...]) -> dict[str, Any]:
    shown = []
    for row in rows[:LIST_THUMBS]:
        shown.append({"cells": [str(v) for v in row],
                      "thumbs": [u for c in path_cols if (u := _thumb(str(row[c]))) is not None]})
    return {"name": name, "header": header, "total": len(rows), "shown": shown,
            "csv": f"{name}.csv"}


def write_audit(res: AuditResult, out_dir: str | os.PathLike, *, inputs: Any = (),
                overwrite: bool = False, command: str | None = None) -> dict[str, Path]:
    """Write the audit files into ``out_dir`` (checked and claimed like a report folder);
    returns ``{name: path}``."""
    from ..outputs import claim_folder
    from ..report.files import check_report_folder
    from ..report.html import render

    out = check_report_folder(out_dir, inputs=inputs, files=AUDIT_FILES, owner="audit",
                              overwrite=overwrite)
    claim_folder(out, "audit", files=AUDIT_FILES, command=command)
    files: dict[str, Path] = {}
    tables = res.tables()
    for name, (header, rows) in tables.items():
        files[name] = out / f"{name}.csv"
        atomic_write_csv(files[name], header, rows)
    summary = res.summary()
    summary["files"] = {k: v.name for k, v in files.items()} | {"html": AUDIT_HTML}
    doc = {"format": "cnncodes-audit", "summary": summary,
           "balance": res.balance, "command": command}
    files["json"] = out / AUDIT_JSON
    atomic_write_json(files["json"], finite_json(doc))
    lists = []
    specs = {"duplicates": ("Look-alike groups (possible duplicates, training set; "
                            "same_picture: within the pixel bound of a member it is paired with)",
                            (1, 3)),
             "leaks": ("Leaks: test images with a near-duplicate in training", (0, 2)),
             "label_issues": ("Likely label errors (most likely first)", (0,)),
             "outliers": ("Outliers: least like any class", (0,))}
    for name, (title, cols) in specs.items():
        if name in tables:
            header, rows = tables[name]
            lists.append({"title": title, **_items(res, name, header, rows, cols)})
    acc = res.accuracy
    s = summary
    head = [{"label": "images", "value": s["rows"]},
            {"label": "look-alike groups (possible duplicates)",
             "value": f"{s['duplicate_groups']} ({s['duplicate_images']} images)"}]
    if s["duplicate_groups_same_picture"] is not None:
        head.append({"label": "of which the same picture in pixels", "value":
                     f"{s['duplicate_images_same_picture']} images in "
                     f"{s['duplicate_groups_same_picture']} groups"})
    if s["leaks"] is not None:
        same = s["leaks_same_picture"]
        head.append({"label": "leaks (look-alikes, possible leaks)",
                     "value": f"{s['leaks']} of {s['test_rows']} test images" + (
                         "" if same is None else f"; {same} the same picture in pixels")})
    if acc:
        wl = acc["without_leaks"]
        which = "the same pictures" if acc.get("removed") == "same picture" else "leaks"
        head.append({"label": "test accuracy", "value": f"{acc['all']:.3f} (without {which} "
                     f"{'n/a' if wl is None else f'{wl:.3f}'})"})
    if s["label_issues"] is not None:
        head.append({"label": "likely label errors", "value": s["label_issues"]})
    head.append({"label": "outliers", "value": s["outliers"]})
    html = render("audit.html.j2", {
        "title": "cnncodes audit", "subtitle": f"{res.store} ({res.layer})", "summary": head,
        "settings": [{"key": k, "value": str(s[k])} for k in (
            "neighbour_search", "duplicate_threshold", "similarity", "label_issue_folds",
            "imbalance_ratio", "seconds")],
        "accuracy": acc, "balance": res.balance, "lists": lists,
        "points": _map_points(res), "map_size": MAP_SIZE, "map": s["map"],
        "provenance": [("store", res.store), ("test", res.test or "-"), ("layer", res.layer),
                       ("command", command or "-")],
        "files": [f.name for f in files.values()] + [AUDIT_HTML]})
    files["html"] = out / AUDIT_HTML
    atomic_write_text(files["html"], html)
    log.info("audit written to %s", out)
    return files


#: the audit's sub-folder of a baseline report folder
BASELINE_AUDIT_DIR = "audit"
