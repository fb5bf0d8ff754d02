"""A fine-tuning run's ``report.json``: :func:`run_report` (what the run was, what it reached, how
long it took) and :func:`run_metrics` (validation/test accuracy, each null one with a note saying
why), read from a finished :class:`~cnncodes.finetuning.trainer.Trainer`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._distributed import backend as dist_backend
from .._runtime import versions
from ..atomic import jsonable
from ..backbones.weights import weights_sha256
from ..stats import ci_record
from .config import REPORT_KIND, REPORT_SCHEMA_VERSION
from .evaluation import Evaluation, confusion, per_class, per_class_note, set_metric
from .split import Split

if TYPE_CHECKING:
    from .trainer import Trainer


def run_metrics(split: Split, best_rec: dict[str, Any] | None,
                test_ev: Evaluation | None) -> dict[str, Any]:
    """Validation/test accuracy, test loss and per-class accuracy; each null one with a
    ``<name>_note`` saying why."""
    m: dict[str, Any] = {}
    no_model = "no epoch finished, so there is no model.pt to test"
    if not split.val:
        why_val = (f"no validation images (val_fraction {split.val_fraction}: the validation "
                   "part is empty)")
    elif best_rec is None:
        why_val = "no epoch finished"
    else:
        why_val = best_rec.get("val_note", "no validation image could be read")
    set_metric(m, "val_accuracy", best_rec["val_acc"] if best_rec else None, why_val)
    if not split.test:
        why_test = "no test images (test_fraction 0 and no --test source)"
    elif test_ev is None:
        why_test = no_model
    else:
        why_test = f"none of the {len(split.test)} test images could be read"
    set_metric(m, "test_accuracy", test_ev.accuracy if test_ev else None, why_test)
    if test_ev is not None:  # the one interval of cnncodes.stats (95% Wilson)
        m.update({f"test_{k}": v for k, v in
                  ci_record(test_ev.accuracy, len(test_ev.predicted)).items()})
    set_metric(m, "test_loss", test_ev.loss if test_ev else None, why_test)
    labels = split.source("test").labels
    m["per_class_test_accuracy"] = (per_class(labels, test_ev.predicted, split.classes)
                                    if test_ev else None)
    note = (per_class_note(labels, test_ev.predicted, split.classes) if test_ev
            else why_test)
    if note:
        m["per_class_test_accuracy_note"] = note
    return m


def run_report(trainer: Trainer, diverged: str | None,
               test_ev: Evaluation | None) -> dict[str, Any]:
    """The ``report.json`` content of ``trainer``'s run (``diverged``: the divergence message;
    ``test_ev``: the best model on the test part)."""
    t = trainer
    cfg, di, st, split = t.cfg, t.di, t.state, t.split
    history = st.history
    test_src = split.source("test")
    status = "diverged" if diverged else (st.stopped or "completed")
    train_seconds = float(sum(h["seconds"] for h in history))
    this_session = sum(h["seconds"] for h in history[t.first_epoch_this_session:])
    best_rec = next((h for h in history if h["epoch"] == st.best_epoch), None)
    test_labels = test_src.labels
    return jsonable({  # JSON types only, no NaN: the report is printed as JSON too
        "kind": REPORT_KIND, "schema_version": REPORT_SCHEMA_VERSION, "task": "finetune",
        "status": status, "state": cfg.state,
        "message": diverged, "backbone": cfg.backbone, "weights": t.resolved.id,
        "weights_sha256": weights_sha256(t.resolved) or "", "classes": split.classes,
        "input_size": t.pp.crop, "preprocessing": t.pp.to_dict(),
        "device": str(t.device), "precision": t.precision, "world_size": di.world,
        "distributed": {"world_size": di.world,
                        "backend": dist_backend() if di.enabled else None,
                        "batch_size_per_process": cfg.runtime.batch_size,
                        "global_batch_size": cfg.runtime.batch_size * di.world,
                        "sync_bn": t.sync_bn,
                        "train_padding_per_epoch": t.sampler.padding},
        "split": {**split.sizes(), "seed": split.seed, "val_fraction": split.val_fraction,
                  "test_fraction": split.test_fraction, "test_source": split.test_source},
        "stages": [{"index": s.index, "span": s.span, "params": len(s.params),
                    "frozen": s.index <= t.net.frozen_stages} for s in t.net.stages],
        "param_groups": t.groups(), "warmup": t.warmup,
        "trainable_params": sum(p.numel() for p in t.net.parameters()
                                if p.requires_grad),
        "total_params": sum(p.numel() for p in t.net.parameters()),
        "epochs_run": len(history), "best_epoch": st.best_epoch,
        **run_metrics(split, best_rec, test_ev),
        "confusion_matrix": confusion(test_labels, test_ev.predicted, len(split.classes))
        if test_ev else None,
        "train_seconds": train_seconds,
        # every epoch's time (also from sessions before a resume) + this session's setup/test
        "seconds": train_seconds + max(0.0, time.perf_counter() - t.t_start
                                       - this_session),
        "history": history, "resumed_from": t.resumed_from,
        "failures": sorted(st.failures.items()), "config": cfg.to_dict(),
        "files": {"model": "model.pt" if (t.out / "model.pt").is_file() else None,
                  "checkpoint": "checkpoint.pt", "curves": "curves.png",
                  "split": "split.json"},
        "command": t.command, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
