"""``report.html``: one self-contained page per report folder (train/evaluate/baseline, advise,
a fine-tuning run, an escalation), rendered by Jinja2 from the templates in
``cnncodes/report/templates`` (package data) with autoescaping on, so every file, folder and class
name is text, never markup.

Self-contained: the style sheet is inlined, every figure and thumbnail is a ``data:`` URI (the
PNGs the report already wrote; small JPEG thumbnails made from the test images on disk), there is
no JavaScript and nothing is fetched, so the page works from ``file://`` offline and can be mailed.
The only links are relative ones to the other files of the same folder.

The page content comes from :mod:`cnncodes.report.html_context` and
:mod:`cnncodes.report.finetune_context` (plain dicts of strings);
this module owns the template environment, the images and writing the file
(:func:`cnncodes.atomic.atomic_write_text`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..atomic import atomic_write_text
from ..errors import DecodeError
from . import finetune_context as ft_ctx
from . import html_context as ctx
from .finetune_schema import load_finetune_report
from .schema import LinearReport

if TYPE_CHECKING:
    from .verdict_text import Flags

log = logging.getLogger(__name__)

#: the page's file name, beside ``report.json`` / ``advice.json`` / ``escalation.json``
REPORT_HTML = "report.html"
#: thumbnails per group (misclassified, confident correct)
THUMBNAILS = 24
#: thumbnail side in pixels (JPEG, fitted inside a square)
THUMB_SIDE = 96
#: pixel limit for decoding a test image into a thumbnail (the extraction default)
THUMB_MAX_PIXELS = 89_478_485

_ENV: Any = None


def environment() -> Any:
    """The Jinja2 environment (autoescape on, templates from the package), built once."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(loader=jinja2.PackageLoader("cnncodes.report", "templates"),
                                  autoescape=True, trim_blocks=False, lstrip_blocks=False,
                                  undefined=jinja2.StrictUndefined)
    return _ENV


def render(template: str, context: Mapping[str, Any]) -> str:
    """``template`` (e.g. ``linear.html.j2``) rendered with ``context`` plus the common fields."""
    full = {"version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "files": [], "subtitle": "", **context}
    return environment().get_template(template).render(**full)


# ------------------------------------------------------------------------------------ images


def png_data_uri(path: str | os.PathLike | None) -> str | None:
    """A PNG file as a ``data:image/png;base64,...`` URI (None when there is no such file)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def thumbnail_uri(path: str | os.PathLike, *, side: int = THUMB_SIDE) -> str:
    """A small JPEG of the image at ``path`` (fitted in ``side`` x ``side``) as a data URI.

    Raises:
        DecodeError: the file is missing or not a readable image (the reason says which).
    """
    from PIL import Image

    from ..sources.images import load_rgb

    img = load_rgb(path, max_pixels=THUMB_MAX_PIXELS)
    img.thumbnail((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_groups(evaluation: Any, *, limit: int = THUMBNAILS,
                     side: int = THUMB_SIDE) -> tuple[dict[str, Any], dict[str, Any]]:
    """The misclassified test images (most confident mistakes first) and the most confident
    correct ones, at most ``limit`` each, as thumbnails made from the image files; an image that
    is not on disk (a store alone) or cannot be read is listed by path with the reason."""
    import numpy as np

    y, pred = np.asarray(evaluation.y_true), np.asarray(evaluation.y_pred)
    conf = getattr(evaluation, "confidence", None)
    kind = getattr(evaluation, "confidence_kind", "probability")
    order = (np.argsort(-np.asarray(conf, float), kind="stable") if conf is not None
             else np.arange(len(y)))
    classes = list(evaluation.classes)
    groups = []
    for wrong in (True, False):
        picked = [int(i) for i in order if (pred[i] != y[i]) == wrong]
        items, listed = [], []
        for i in picked[:limit]:
            c = None if conf is None else float(conf[i])
            cap = ctx.thumb_caption(classes[int(y[i])], classes[int(pred[i])], c, kind,
                                    wrong=wrong)
            path = str(evaluation.paths[i])
            try:
                items.append({"uri": thumbnail_uri(path, side=side), "caption": cap,
                              "path": path})
            except DecodeError as e:
                listed.append({"path": path, "caption": cap, "reason": str(e)})
        groups.append(ctx.thumb_group(items, listed, total=len(picked), wrong=wrong,
                                      kind=kind, ranked=conf is not None))
    return groups[0], groups[1]


# ------------------------------------------------------------------------------------ writers


def _write(out_dir: Path, template: str, context: Mapping[str, Any]) -> Path:
    path = out_dir / REPORT_HTML
    atomic_write_text(path, render(template, context))
    log.info("HTML report written to %s", path)
    return path


def _present(out_dir: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if n != REPORT_HTML and (out_dir / n).is_file()]


def write_linear_html(report: LinearReport, out_dir: str | os.PathLike, *,
                      evaluation: Any = None,
                      files: Mapping[str, os.PathLike] | None = None) -> Path:
    """``report.html`` of a train / evaluate / baseline report folder.

    Args:
        report: the typed ``report.json`` (:class:`~cnncodes.report.schema.LinearReport`).
        evaluation: the :class:`~cnncodes.linear.evaluation.Evaluation` behind ``report["test"]``
            (its image paths give the thumbnails); None: no thumbnails.
        files: the files written beside it (``cv_plot``, ``confusion`` PNGs are inlined).
    """
    out = Path(out_dir)
    f = dict(files or {})
    context = ctx.linear_context(report)
    context["cv_png"] = png_data_uri(f.get("cv_plot"))
    context["confusion_png"] = png_data_uri(f.get("confusion"))
    empty = ctx.thumb_group([], [], total=0, wrong=True, kind="probability", ranked=False)
    wrong, right = empty, {**empty, "empty": "No test image was classified correctly."}
    if evaluation is not None and report.test:
        wrong, right = thumbnail_groups(evaluation)
    context.update(wrong=wrong, right=right)
    ft = context.get("fall_through")
    if ft and ft.get("run"):
        ft["curves_png"] = png_data_uri(Path(ft["run"]) / "curves.png")
    names = list((report.files or {}).values()) + [Path(p).name for p in f.values()]
    context["files"] = _present(out, list(dict.fromkeys(names)))
    return _write(out, "linear.html.j2", context)


def write_advice_html(advice: Any, out_dir: str | os.PathLike, *,
                      command: str | None = None, flags: Flags | None = None) -> Path:
    """``report.html`` of an ``advise`` report folder (beside ``advice.json``/``advice.png``).

    ``advice``: an :class:`~cnncodes.advisor.advice.Advice` (its next commands spelled with
    ``flags``) or its JSON (:func:`~cnncodes.report.advice.advice_json`)."""
    from ..advisor.advice import Advice
    from .advice import advice_json
    from .verdict_text import DEFAULT_FLAGS

    out = Path(out_dir)
    data = (advice_json(advice, flags or DEFAULT_FLAGS) if isinstance(advice, Advice)
            else dict(advice))
    context = ctx.advice_page_context(data, command=command)
    context["advice_png"] = png_data_uri(out / "advice.png")
    context["files"] = _present(out, ["advice.json", "advice.png"])
    return _write(out, "advice.html.j2", context)


def write_ranking_html(ranking: Any, out_dir: str | os.PathLike, *,
                       command: str | None = None, flags: Flags | None = None) -> Path:
    """``report.html`` of an ``advise --backbones`` folder, and each backbone's own page in its
    ``<backbone>/`` sub-folder (beside the ``advice.json`` written there)."""
    out = Path(out_dir)
    for name, adv in getattr(ranking, "advices", {}).items():
        write_advice_html(adv, out / name, command=command, flags=flags)
    from ..advisor.ranking import Ranking
    from .advice import ranking_json
    from .verdict_text import DEFAULT_FLAGS

    data = (ranking_json(ranking, flags or DEFAULT_FLAGS) if isinstance(ranking, Ranking)
            else dict(ranking))
    context = ctx.ranking_page_context(data, command=command)
    context["files"] = _present(out, ["ranking.json"])
    return _write(out, "ranking.html.j2", context)


def write_finetune_html(run_dir: str | os.PathLike) -> Path | None:
    """``report.html`` of a fine-tuning run folder, from its ``report.json`` and ``curves.png``
    (None when the folder holds no report)."""
    out = Path(run_dir)
    rep_path = out / "report.json"
    if not rep_path.is_file():
        return None
    context = ft_ctx.finetune_context(load_finetune_report(rep_path))
    context["curves_png"] = png_data_uri(out / "curves.png")
    context["files"] = _present(out, ["report.json", "curves.png", "model.pt", "checkpoint.pt",
                                      "split.json", "config.json"])
    return _write(out, "finetune.html.j2", context)


def write_escalation_html(out_dir: str | os.PathLike) -> Path | None:
    """``report.html`` of an escalation folder (``escalation.json`` and ``.png``, and the
    ``head-only``/``full`` runs' curves); None when there is no ``escalation.json``."""
    out = Path(out_dir)
    path = out / "escalation.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    context = ft_ctx.escalation_context(data)
    context["escalation_png"] = png_data_uri(out / "escalation.png")
    for arm in context["arms"]:
        arm["curves_png"] = png_data_uri(out / arm["name"] / "curves.png")
        link = f"{arm['name']}/{REPORT_HTML}"
        arm["link"] = link if (out / link).is_file() else None
    context["files"] = _present(out, ["escalation.json", "escalation.md", "escalation.png",
                                      "probe.json", "split.json"])
    return _write(out, "escalation.html.j2", context)
