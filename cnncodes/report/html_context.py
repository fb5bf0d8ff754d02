"""What ``report.html`` shows, as plain data for the templates (:mod:`cnncodes.report.html`).

Every function here turns a report into dicts and lists of strings: a classifier's ``report.json``
read through its schema (:mod:`cnncodes.report.schema`) and the plain dicts of ``advice.json``;
numbers are formatted here, escaping is the template engine's (autoescape), so nothing here
builds markup. A fine-tuning run's and an escalation's pages are
:mod:`cnncodes.report.finetune_context`, built from the same helpers (:func:`fmt`, :func:`col`,
:func:`provenance`...).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from .._version import __version__
from ..stats import format_accuracy
from .audit_summary import audit_context
from .schema import FallThrough, LinearReport, ResultRow, Selection, Split
from .text import incomplete_text

#: libraries whose versions the provenance lists when the report recorded none
VERSIONED = ("torch", "torchvision", "scikit-learn", "numpy", "h5py", "onnxruntime", "pillow",
             "jinja2")
#: at most this many unreadable files are listed on the page (the JSON has all)
MAX_FAILURES = 50


def fmt(v: Any, spec: str = ".4f") -> str:
    """A number as text (``n/a`` for None / non-numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "n/a" if v is None else str(v)
    return format(v, spec)


def seconds(v: Any) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v:.1f} s"


def col(key: str, title: str, num: bool = False) -> dict[str, Any]:
    return {"key": key, "title": title, "num": num}


def lib_versions() -> dict[str, str]:
    """Versions of the installed libraries (metadata only: nothing is imported)."""
    from importlib import metadata

    out = {"cnncodes": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _text(v: Any) -> str:
    if v is None or v == "":
        return "(not recorded)"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def provenance(items: Sequence[tuple[str, Any]], *, versions: Mapping[str, Any] | None,
               command: Any, created: Any = None) -> list[tuple[str, str]]:
    """Provenance rows: the given ones, then versions (recorded, else this process's) and the
    command line."""
    key = "versions" if versions else "versions (when this page was written)"
    vers = dict(versions) if versions else lib_versions()
    rows = [(k, _text(v)) for k, v in items]
    rows.append((key, ", ".join(f"{k} {v}" for k, v in vers.items())))
    rows.append(("command line", _text(command)))
    if created:
        rows.append(("run created", str(created)))
    return rows


def preprocessing_text(pp: Any) -> str:
    if not isinstance(pp, Mapping):
        return _text(pp)
    parts = [f"{k} {pp[k]}" for k in ("resize", "crop", "interpolation") if k in pp]
    for k in ("mean", "std"):
        if k in pp:
            parts.append(f"{k} {', '.join(fmt(x, '.3f') for x in pp[k])}")
    rest = {k: v for k, v in pp.items() if k not in ("resize", "crop", "interpolation", "mean",
                                                     "std")}
    if rest:
        parts.append(json.dumps(rest, sort_keys=True, default=str))
    return "; ".join(parts)


def confusion_ctx(cm: Any, classes: Sequence[str]) -> dict[str, Any] | None:
    """The confusion matrix as table rows (true class per row, predicted per column)."""
    if not cm or not classes:
        return None
    rows = [{"name": str(classes[i]),
             "cells": [{"value": int(v), "diag": i == j} for j, v in enumerate(r)]}
            for i, r in enumerate(cm)]
    return {"classes": [str(c) for c in classes], "rows": rows}


def failures_ctx(failures: Any) -> dict[str, Any]:
    items = []
    for f in failures or []:
        if isinstance(f, Mapping):
            items.append({"path": str(f.get("path")), "reason": str(f.get("reason"))})
        elif isinstance(f, (list, tuple)) and len(f) == 2:
            items.append({"path": str(f[0]), "reason": str(f[1])})
    return {"total": len(items), "entries": items[:MAX_FAILURES]}


def thumb_caption(true: str, pred: str, conf: float | None, kind: str, *, wrong: bool) -> str:
    c = "" if conf is None else (f", {100 * conf:.0f}%" if kind == "probability"
                                 else f", score {conf:.2f}")
    return f"{true} -> {pred}{c}" if wrong else f"{true}{c}"


def thumb_group(items: list[dict[str, Any]], listed: list[dict[str, Any]], *, total: int,
                wrong: bool, kind: str, ranked: bool) -> dict[str, Any]:
    shown = len(items) + len(listed)
    what = "misclassified" if wrong else "correctly classified"
    how = ("true -> predicted class, " if wrong else "class, ") + (
        "predicted-class probability" if kind == "probability" else "decision value")
    order = ("most confident first" if ranked else "in test order (no confidence recorded)")
    note = (f"{shown} of {total} {what} test images, {order} ({how})." if total else "")
    return {"shown": items, "listed": listed, "total": total, "note": note,
            "listed_why": "no image file on disk (only the store is available) or unreadable",
            "empty": "No test image was misclassified." if wrong else
                     "No test image was classified correctly."}


# ------------------------------------------------------------------------ train/evaluate/baseline


def split_text(split: Split) -> str:
    """``holdout 20% (seed 0): 24 train / 6 test images`` and the like."""
    n = f"{split.n_train} train / {'no' if split.n_test is None else split.n_test} test images"
    if split.kind == "holdout":
        return f"hold-out {fmt(100 * float(split.test_size or 0), 'g')}% (seed {split.seed}): {n}"
    if split.kind == "predefined":
        return f"predefined train/test split: {n}"
    return f"{split.kind or 'split'}: {n}"


def _row(r: ResultRow, n_test: Any = None) -> dict[str, Any]:
    sel = r.selection or Selection()
    n = r.n_test if r.n_test is not None else n_test
    wall = r.wall_time_s
    if wall is None and sel.train_time_s is not None:  # raw pixels: load + CV + refit
        wall = float(r.load_time_s or 0.0) + sel.train_time_s
    return {"name": r.name, "features": fmt(r.features, ","),
            "accuracy": format_accuracy(r.accuracy, n),
            "balanced": fmt(r.balanced_accuracy), "macro_f1": fmt(r.macro_f1),
            "C": fmt(sel.best_C, ".3g"), "cv": fmt(sel.best_cv_score), "time": seconds(wall),
            "note": str(r.skipped or r.message or r.status or "")}


ROW_COLUMNS = [col("name", "method"), col("features", "features", True),
               col("accuracy", "test accuracy", True), col("balanced", "balanced acc.", True),
               col("macro_f1", "macro F1", True), col("C", "chosen C", True),
               col("cv", "CV score", True), col("time", "wall time", True), col("note", "note")]
PER_CLASS_COLUMNS = [col("class", "class"), col("precision", "precision", True),
                     col("recall", "recall", True), col("f1", "F1", True),
                     col("support", "support", True)]


def _accuracy_text(report: LinearReport) -> str:
    rows, test = report.rows or [], report.test
    if not test:
        return "not tested"
    codes = next((r for r in rows if not r.is_raw_pixels and r.kind != "finetune"), None)
    raw = next((r for r in rows if r.is_raw_pixels), None)
    ft = next((r for r in rows if r.kind == "finetune"), None)

    def with_ci(r: ResultRow | None, a: Any) -> str:
        return format_accuracy(a, (r.n_test if r else None) or test.n)

    text = f"codes {with_ci(codes, codes.accuracy if codes else test.accuracy)}"
    if raw is not None:
        text += (f" vs raw pixels {with_ci(raw, raw.accuracy)}" if raw.accuracy is not None
                 else f"; raw pixels skipped ({raw.skipped})")
    if ft is not None:
        text += f" vs fine-tuned {with_ci(ft, ft.accuracy)}"
    return text


def linear_context(report: LinearReport) -> dict[str, Any]:
    """The page of a train / evaluate / baseline ``report.json`` (read through the schema)."""
    m, sel, test = report.model, report.selection, report.test
    task = report.task
    wall = report.wall_time_s if report.wall_time_s is not None else sel.train_time_s
    summary = [{"label": "task", "value": task},
               {"label": "data", "value": _text(report.data_source())},
               {"label": "accuracy", "value": _accuracy_text(report)},
               {"label": "chosen C",
                "value": f"{fmt(sel.best_C, '.3g')} ({sel.model or m.model}, "
                         f"{sel.cv}-fold CV {fmt(sel.best_cv_score)})"},
               {"label": "time", "value": seconds(wall)}]
    summary += [{"label": "WARNING", "value": incomplete_text(n)}
                for n in report.incomplete_stores or []]
    verdict = (report.codes_vs_pixels or {}).get("message")
    if verdict:
        summary.append({"label": "WARNING", "value": verdict})
    note = ""
    if sel.c_at_grid_edge:
        note = (f"The chosen C is at the {sel.c_at_grid_edge} end of the grid; a wider "
                "--c-grid may score better.")
    ctx: dict[str, Any] = {
        "title": f"cnncodes {task}: {m.model} on {m.backbone} {m.layer} codes",
        "subtitle": f"{len(m.classes)} classes; {split_text(report.split)}",
        "summary": summary,
        "rows": [_row(r, test.n if test else None) for r in report.rows or []],
        "codes_vs_pixels": verdict or "",
        "row_columns": ROW_COLUMNS, "selection_note": note, "test": bool(test),
        "cm": confusion_ctx(test.confusion_matrix, test.classes) if test else None,
        "per_class": [{"class": str(r.get("class")), "precision": fmt(r.get("precision")),
                       "recall": fmt(r.get("recall")), "f1": fmt(r.get("f1")),
                       "support": fmt(r.get("support"), "d")}
                      for r in (test.per_class if test else [])],
        "per_class_columns": PER_CLASS_COLUMNS,
        "fall_through": fall_through_ctx(report.fall_through),
        "advice_ctx": advice_ctx(report.advice) if report.advice else None,
        "failures_ctx": failures_ctx(report.failures),
        "audit": audit_context(report.audit),
    }
    ctx["provenance"] = provenance(
        [("backbone", m.backbone), ("weights", m.weights), ("weights sha256", m.weights_sha256),
         ("layer", m.layer), ("pooling", m.pooling), ("input size", m.input_size),
         ("preprocessing", preprocessing_text(m.preprocessing)),
         ("classifier", f"{sel.model}, C {fmt(sel.best_C, '.3g')}, standardize "
                        f"{sel.standardize}, class_weight {sel.class_weight}, pca {sel.pca}, "
                        f"steps {sel.steps}"),
         ("grid search", _text(sel.compute)), ("train store", m.train_store),
         ("test codes", test.source if test else None), ("model file", report.model_path()),
         ("classes", ", ".join(str(c) for c in m.classes))],
        versions=report.versions, command=report.command, created=report.created)
    return ctx


def fall_through_ctx(ft: FallThrough | None) -> dict[str, Any] | None:
    """The baseline's fall-through: probe vs fine-tuning on one split, or why it was skipped."""
    if not ft:
        return None
    size = ft.size
    text = (f"{size.get('n_images')} training images, median "
            f"{fmt(size.get('median_per_class'), 'g')} per class -> {size.get('size_class')} "
            f"(advise's size rule){'; fine-tuning forced' if ft.forced else ''}.")
    out: dict[str, Any] = {"size": text, "verdict": ft.verdict, "rows": [],
                           "columns": ROW_COLUMNS, "message": ft.message,
                           "command": ft.command, "run": None, "curves_png": None}
    if ft.status in ("ran", "running"):
        probe = ft.linear_probe or ResultRow("None")
        out["rows"] = [_row(probe)] + ([_row(ft.finetune)] if ft.finetune else [])
        out["run"] = ft.finetune.extra.get("run") if ft.finetune else None
        if ft.status == "running":
            out["message"] = "fine-tuning was still running when this page was written"
    return out


# ------------------------------------------------------------------------------------ advise


EVIDENCE_COLUMNS = [col("what", "evidence"), col("value", "measured"), col("reading", "reading")]
LAYER_COLUMNS = [col("layer", "layer"), col("depth", "depth"), col("dim", "dim", True),
                 col("cv", "CV accuracy (95% Wilson interval over the probed images)", True),
                 col("note", "note")]


def _similarity(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """``advice.json``'s evidence block (a store's advice summary has the word there instead)."""
    sim = d.get("similarity")
    return sim if isinstance(sim, Mapping) else {}


def _evidence(d: Mapping[str, Any], probe: Mapping[str, Any]) -> list[dict[str, str]]:
    size = d.get("size") or {}
    sim = _similarity(d)
    head = d.get("imagenet_head", sim.get("imagenet_head")) or {}
    bn = d.get("batchnorm", sim.get("batchnorm")) or {}
    dec = d.get("decision") or d
    rows = [{"what": "data size", "value": f"{size.get('n_images')} images, "
             f"{size.get('n_classes')} classes, {size.get('per_class_min')}-"
             f"{size.get('per_class_max')} per class (median "
             f"{fmt(size.get('per_class_median'), 'g')})", "reading": str(dec.get("size_class"))}]
    if head.get("available"):
        rows.append({"what": "(a) ImageNet head",
                     "value": f"mean top-1 probability {fmt(head.get('mean_top1_prob'), '.3f')}"
                              f", normalised entropy "
                              f"{fmt(head.get('mean_normalized_entropy'), '.3f')}, NMI(classes, "
                              f"ImageNet top-1) {fmt(head.get('nmi_classes_vs_imagenet'), '.3f')}",
                     "reading": ""})
    else:
        rows.append({"what": "(a) ImageNet head", "value": "n/a",
                     "reading": str(head.get("reason") or "")})
    if bn.get("available"):
        rows.append({"what": "(b) BatchNorm statistics",
                     "value": f"mean KL {fmt(bn.get('mean_kl'), '.3g')} over "
                              f"{bn.get('n_bn_layers')} layers, mean |shift| "
                              f"{fmt(bn.get('mean_shift_z'), '.3g')} sd", "reading": ""})
    else:
        rows.append({"what": "(b) BatchNorm statistics", "value": "n/a",
                     "reading": str(bn.get("reason") or "")})
    rows.append({"what": "(c) linear probe",
                 "value": f"{probe.get('method')}, {probe.get('folds')}-fold CV on "
                          f"{probe.get('n_images')} images",
                 "reading": f"best layer {d.get('layer')}; {dec.get('similarity')} to ImageNet"})
    return rows


def advice_ctx(d: Mapping[str, Any]) -> dict[str, Any]:
    """An advice (``advice.json``, or the summary a baseline records) for the advice macro."""
    dec = d.get("decision") or {}
    probe = d.get("probe") or _similarity(d).get("probe") or {}
    layers = [{"layer": str(name), "depth": str(r.get("depth")), "dim": fmt(r.get("dim"), ","),
               "cv": format_accuracy(r.get("cv_accuracy"), probe.get("n_images")),
               "note": ("recommended" if name == d.get("layer") else "")
                       + (f" (= {r['same_as']})" if r.get("same_as") else "")}
              for name, r in (probe.get("layers") or {}).items()]
    raw = probe.get("raw_pixels")
    if raw:
        layers.append({"layer": "raw pixels", "depth": str(raw.get("depth", "")),
                       "dim": fmt(raw.get("dim"), ","),
                       "cv": format_accuracy(raw.get("cv_accuracy"), probe.get("n_images")),
                       "note": "reference"})
    names = list((probe.get("layers") or {}).keys())
    return {"quadrant": d.get("quadrant"), "action": dec.get("action") or d.get("action"),
            "explanation": d.get("explanation"), "warnings": list(d.get("warnings") or []),
            "next_command": str(d.get("next_command") or "").replace(" && ", "\n"),
            "also": dec.get("also") or d.get("also"),
            "evidence": _evidence(d, probe), "evidence_columns": EVIDENCE_COLUMNS,
            "layers": layers, "layer_columns": LAYER_COLUMNS,
            "best_index": names.index(d["layer"]) if d.get("layer") in names else None}


def advice_page_context(d: Mapping[str, Any], *, command: str | None) -> dict[str, Any]:
    """The page of an ``advise`` report folder."""
    setup, meta, size = d.get("setup") or {}, d.get("meta") or {}, d.get("size") or {}
    summary = [{"label": "task", "value": "advise"},
               {"label": "data", "value": _text(setup.get("source"))},
               {"label": "verdict", "value": f"{d.get('quadrant')}, layer {d.get('layer')}"},
               {"label": "images", "value": f"{size.get('n_images')} in "
                                            f"{size.get('n_classes')} classes"},
               {"label": "time", "value": seconds(meta.get("elapsed_s"))}]
    per_class = size.get("per_class") or {}
    return {
        "title": f"cnncodes advise: {setup.get('backbone')} on {setup.get('source')}",
        "subtitle": f"sample of {meta.get('sample_used')} images, seed {meta.get('seed')}",
        "summary": summary, "advice_ctx": advice_ctx(d),
        "classes": [{"class": str(k), "n": fmt(v, ",")} for k, v in per_class.items()],
        "class_columns": [col("class", "class"), col("n", "images", True)],
        "provenance": provenance(
            [("backbone", setup.get("backbone")), ("weights", meta.get("weights_id")
                                                   or setup.get("weights")),
             ("weights sha256", meta.get("weights_sha256")),
             ("recommended layer", d.get("layer")), ("pooling", setup.get("pooling")),
             ("input size", meta.get("input_size")), ("device", meta.get("device")),
             ("decoder", meta.get("decoder")), ("thresholds", d.get("thresholds"))],
            versions=meta.get("versions"), command=command or meta.get("command")),
    }


def ranking_page_context(d: Mapping[str, Any], *, command: str | None) -> dict[str, Any]:
    """The page of an ``advise --backbones`` report folder: the (backbone, layer) table, the
    recommendation and a link to each backbone's own advice page (``<backbone>/report.html``)."""
    rec, meta = d.get("recommendation") or {}, d.get("meta") or {}
    rows = [{"backbone": r.get("backbone"), "layer": r.get("layer"), "depth": r.get("depth"),
             "dim": fmt(r.get("dim"), "d"),
             "acc": f"{fmt(r.get('cv_accuracy'), '.3f')} +- {fmt(r.get('ci95'), '.3f')}",
             "logme": fmt(r.get("logme"), ".3f"), "speed": fmt(r.get("images_per_s"), ".1f"),
             "advised": "yes" if r.get("recommended_layer") else ""}
            for r in d.get("rows") or []]
    return {
        "title": f"cnncodes advise --backbones: {len(d.get('advice') or {})} backbones",
        "subtitle": "probe accuracy +- its 95% interval per (backbone, layer), best first",
        "summary": [{"label": "task", "value": "advise --backbones"},
                    {"label": "recommended", "value": f"{rec.get('backbone')}, layer "
                                                      f"{rec.get('layer')}"},
                    {"label": "time", "value": seconds(meta.get("elapsed_s"))}],
        "recommendation": _text(rec.get("explanation")),
        "rows": rows,
        "columns": [col("backbone", "backbone"), col("layer", "layer"), col("depth", "depth"),
                    col("dim", "dim", True), col("acc", "probe accuracy", True),
                    col("logme", "LogME", True), col("speed", "img/s", True),
                    col("advised", "advised layer")],
        "links": [{"name": name, "href": f"{name}/report.html"}
                  for name in (d.get("advice") or {})],
        "skipped": [{"backbone": k, "why": _text(v)} for k, v in (d.get("skipped") or {}).items()],
        "provenance": provenance([("budget", meta.get("budget_s"))], versions=None,
                                 command=command),
    }
