"""What a fine-tuning run's and an escalation's ``report.html`` show, as plain data for the
templates (:mod:`cnncodes.report.html`): a run's ``report.json`` read through its schema
(:mod:`cnncodes.report.finetune_schema`) and the plain dict of ``escalation.json``. Formatting
helpers shared with the classifier and advice pages live in :mod:`cnncodes.report.html_context`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..stats import format_accuracy, format_lr
from .finetune_schema import FinetuneReport
from .html_context import (
    col,
    confusion_ctx,
    failures_ctx,
    fmt,
    preprocessing_text,
    provenance,
    seconds,
)

HISTORY_KEYS = (("epoch", "epoch", "d"), ("train_loss", "train loss", ".4f"),
                ("train_acc", "train acc.", ".4f"), ("val_loss", "val loss", ".4f"),
                ("val_acc", "val acc.", ".4f"), ("lr", "lr", ".3g"), ("seconds", "seconds", ".1f"))


def _lr_text(lr: Any) -> str:
    """An epoch's learning rates (one per parameter group) as ``backbone 0.001, head 0.01``."""
    if not isinstance(lr, Mapping):
        return format_lr(lr)
    body = sorted({v for k, v in lr.items() if k != "head" and isinstance(v, (int, float))})
    text = "backbone " + (format_lr(body[0]) if len(body) == 1 else
                          f"{format_lr(body[0])}-{format_lr(body[-1])}") if body else ""
    if "head" in lr:
        text += (", " if text else "") + f"head {format_lr(lr['head'])}"
    return text


def _base_lr(rep: FinetuneReport) -> str:
    """The configured base learning rate, else the one the optimiser groups ran at."""
    if rep.config.lr is not None:
        return fmt(rep.config.lr, "g")
    groups = [g["lr"] for g in rep.param_groups or [] if g.get("name") != "head"
              and isinstance(g.get("lr"), (int, float))]
    return f"{fmt(max(groups), 'g')} (default)" if groups else "default"


def finetune_context(rep: FinetuneReport) -> dict[str, Any]:
    """The page of a fine-tuning run's ``report.json`` (read through the schema)."""
    split, cfg, classes = rep.split, rep.config, rep.classes
    history = rep.history or []
    keys = [k for k in HISTORY_KEYS if any(k[0] in h for h in history)]
    best = next((i for i, h in enumerate(history) if h.get("epoch") == rep.best_epoch), None)
    summary = [{"label": "task", "value": f"fine-tuning ({rep.state})"},
               {"label": "data", "value": f"{split.train} train / {split.val} validation / "
                                          f"{split.test} test images"},
               {"label": "accuracy",
                "value": f"test {format_accuracy(rep.test_accuracy, split.test)}, "
                         f"validation {fmt(rep.val_accuracy)}"},
               {"label": "status", "value": f"{rep.status}, {rep.epochs_run} epochs, best "
                                            f"{rep.best_epoch}"},
               {"label": "time", "value": seconds(rep.seconds)}]
    return {
        "title": f"cnncodes finetune: {rep.backbone} ({rep.state})",
        "subtitle": f"{len(classes)} classes",
        "summary": summary, "message": rep.message,
        "notes": [f"{k.replace('_', ' ')}: {v}" for k, v in rep.notes().items()],
        "history": [{k: _lr_text(h.get(k)) if k == "lr" else fmt(h.get(k), spec)
                     for k, _, spec in keys} for h in history],
        "history_columns": [col(k, t, True) for k, t, _ in keys], "best_index": best,
        "cm": confusion_ctx(rep.confusion_matrix, classes),
        "per_class": [{"class": str(c), "acc": fmt(v)}
                      for c, v in (rep.per_class_test_accuracy or {}).items()],
        "per_class_columns": [col("class", "class"), col("acc", "test accuracy", True)],
        "failures_ctx": failures_ctx(rep.failures),
        "provenance": provenance(
            [("backbone", rep.backbone), ("weights", rep.weights),
             ("weights sha256", rep.weights_sha256),
             ("layer", "all (fine-tuned end to end)" if rep.state == "full" else rep.state),
             ("input size", rep.input_size),
             ("preprocessing", preprocessing_text(rep.preprocessing)),
             ("optimiser", f"{cfg.optimizer} lr {_base_lr(rep)} (head x{cfg.head_lr_mult}), "
                           f"batch {cfg.batch_size}, freeze {cfg.freeze}, {cfg.epochs} epochs"),
             ("device", f"{rep.device}, {rep.precision}, world size {rep.world_size}"),
             ("trainable parameters", fmt(rep.trainable_params, ",")),
             ("classes", ", ".join(str(c) for c in classes))],
            versions=rep.versions, command=rep.command, created=rep.created),
    }


def escalation_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """The page of an ``escalation.json``: probe vs head-only vs full on one split."""
    split = data.get("split") or {}
    rows = list(data.get("rows") or [])
    accs = [r.get("test_accuracy") for r in rows]
    scored = [i for i, a in enumerate(accs) if isinstance(a, (int, float))]
    best = max(scored, key=lambda i: accs[i]) if scored else None
    table = [{"method": str(r.get("method")), "params": fmt(r.get("trainable_params"), ","),
              "epochs": str(r.get("epochs", "-")), "val": fmt(r.get("val_accuracy")),
              "test": format_accuracy(r.get("test_accuracy"), split.get("test")),
              "time": seconds(r.get("seconds")),
              "status": str(r.get("status"))} for r in rows]
    cfg = data.get("config") or {}
    probe = rows[0] if rows else {}
    summary = [{"label": "task", "value": "escalation (linear probe vs fine-tuning)"},
               {"label": "data", "value": f"{split.get('train')} train / {split.get('val')} "
                                          f"validation / {split.get('test')} test images"},
               {"label": "accuracy", "value": "; ".join(f"{t['method']} {t['test']}"
                                                         for t in table)},
               {"label": "probe C", "value": fmt(probe.get("C"), ".3g")},
               {"label": "time", "value": seconds(sum(float(r.get("seconds") or 0)
                                                      for r in rows))}]
    return {
        "title": f"cnncodes escalation: {data.get('backbone')}, {data.get('input_size')} px",
        "subtitle": f"{len(data.get('classes') or [])} classes, seed {split.get('seed')}",
        "summary": summary, "verdict": data.get("verdict"), "best_index": best,
        "split_note": f"The same split for every method: {split.get('train')} train, "
                      f"{split.get('val')} validation, {split.get('test')} test images.",
        "rows": table,
        "columns": [col("method", "method"), col("params", "trainable params", True),
                    col("epochs", "epochs", True), col("val", "val acc.", True),
                    col("test", "test acc.", True), col("time", "wall time", True),
                    col("status", "status")],
        "arms": [{"name": str(r.get("run")), "title": str(r.get("method"))}
                 for r in rows if r.get("run") in ("head-only", "full")],
        "provenance": provenance(
            [("backbone", data.get("backbone")), ("weights", data.get("weights")),
             ("probe layer", probe.get("layer")), ("input size", data.get("input_size")),
             ("fine-tuning", f"{cfg.get('optimizer')} lr {cfg.get('lr')}, {cfg.get('epochs')} "
                             f"epochs, batch {cfg.get('batch_size')}"),
             ("classes", ", ".join(str(c) for c in data.get("classes") or []))],
            versions=data.get("versions"), command=data.get("command"),
            created=data.get("created")),
    }
