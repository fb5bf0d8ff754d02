"""TEMPORARY: the linear-probe vs fine-tune comparison of ``baseline --fall-through``, moved
verbatim from the old ``classify`` module. Another helper merges it with ``finetune.escalate`` in its
own ``workflows/compare.py``, which replaces this file (``run_fall_through`` keeps this signature).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.data import ImageSource

log = logging.getLogger(__name__)


def _finetune_command(parts: Sequence[str], *, backbone: str, weights: str | None,
                      input_size: int | None, out: Path,
                      options: Mapping[str, Any]) -> str:
    import shlex

    from ..advisor.advise import RunSetup

    args = ["cnncodes", "finetune", *parts,
            *RunSetup(backbone=backbone, weights=str(weights) if weights is not None else "auto",
                      input_size=input_size).backbone_args(pooling=False), "-o", os.fspath(out)]
    for k in ("epochs", "head_lr_mult", "freeze"):
        if k in options:
            v = options[k]
            args += [f"--{k.replace('_', '-')}", str(int(v) if float(v).is_integer() else v)]
    return shlex.join(args)


def _ft_balanced_accuracy(rep: Mapping[str, Any]) -> float | None:
    cm = rep.get("confusion_matrix")
    if not cm:
        return None
    cm = np.asarray(cm, float)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else None


def _fall_through_verdict(probe: Mapping[str, Any], ft: Mapping[str, Any]) -> str:
    a, b = probe.get("accuracy"), ft.get("accuracy")
    if b is None:
        return "fine-tuning produced no test accuracy; keep the codes + linear classifier."
    ratio = (ft.get("wall_time_s") or 0.0) / max(probe.get("wall_time_s") or 0.0, 1e-9)
    gain = 100.0 * (b - a)
    if gain > 0:
        return (f"fine-tuning is better by {gain:.1f} points ({b:.4f} vs {a:.4f}) at "
                f"{ratio:.1f}x the linear probe's wall time.")
    return (f"the linear probe is as good or better ({a:.4f} vs {b:.4f}; fine-tuning took "
            f"{ratio:.1f}x its wall time): keep the codes + linear classifier.")


def run_fall_through(train_source: ImageSource, test_source: ImageSource, output: Path, *,
                     backbone: str, weights: str | None, input_size: int | None, seed: int,
                     device: str, precision: str, num_workers: int | None,
                     threads: int | None, max_pixels: int | None, progress: bool,
                     overwrite: bool, command: str | None,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Full fine-tuning on exactly the linear probe's rows: its training rows (a seeded
    validation share of them for model selection by epoch) and its test rows.

    Returns ``(row, FinetuneResult or None)``; the run folder is ``output``: an earlier run there
    is continued (an interrupted one resumes exactly) when its options and split are the same,
    else, or with ``overwrite``, started over.
    """
    from ..errors import FinetuneDivergedError
    from ..finetuning.finetune import finetune, make_config, make_split

    cfg = make_config(None, backbone=backbone, weights=weights, input_size=input_size,
                      state="full", seed=seed, device=device, precision=precision,
                      num_workers=num_workers, threads=threads, max_pixels=max_pixels,
                      **dict(options))
    split = make_split(train_source, val_fraction=cfg.val_fraction, test_fraction=0.0,
                       seed=cfg.seed, test=test_source)
    had_run = (output / "checkpoint.pt").is_file() and not overwrite
    log.info("fall-through: full fine-tuning of %s on %d train / %d validation / %d test images "
             "(%d epochs) in %s", backbone, len(split.train), len(split.val), len(split.test),
             cfg.epochs, output)
    t0 = time.perf_counter()
    res = None

    def run(fresh: bool) -> Any:
        return finetune(None, output, config=cfg, split=split, resume=not fresh,
                        overwrite=fresh, progress=progress, command=command)

    try:
        try:
            res = run(overwrite)
        except ValueError as e:
            if not had_run:
                raise
            # the folder is this report's: a run made with other options or on another split
            # (another seed or hold-out) does not belong to it any more
            log.warning("%s held a fine-tuning run that cannot be continued here (%s); starting "
                        "it over", output, e)
            res = run(True)
        rep = res.report
        status = res.status
    except FinetuneDivergedError as e:
        import json

        rep = json.loads((output / "report.json").read_text())
        status = "diverged"
        log.warning("%s", e)
    wall = time.perf_counter() - t0
    row = {
        "name": f"fine-tuned {backbone} (full, {rep.get('epochs_run')} "
                f"epoch{'' if rep.get('epochs_run') == 1 else 's'}, {rep.get('input_size')} px)",
        "kind": "finetune", "status": status, "method": "full fine-tuning",
        "accuracy": rep.get("test_accuracy"), "balanced_accuracy": _ft_balanced_accuracy(rep),
        "val_accuracy": rep.get("val_accuracy"), "n_test": (rep.get("split") or {}).get("test"),
        "n_train": len(split.train), "n_val": len(split.val), "epochs": rep.get("epochs_run"),
        "best_epoch": rep.get("best_epoch"), "trainable_params": rep.get("trainable_params"),
        # the run's own time (every epoch, also of an earlier session, + setup and test)
        "wall_time_s": round(float(rep.get("seconds") or wall), 2),
        "this_call_s": round(wall, 2), "run": os.fspath(output),
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k in ("epochs", "batch_size", "optimizer", "lr", "head_lr_mult", "freeze",
                            "val_fraction", "seed")},
    }
    if status == "diverged":
        row["message"] = rep.get("message")
    return row, res


def format_fall_through(report: Mapping[str, Any]) -> str:
    """The ``fall_through`` part of a baseline report as text (empty when there is none)."""
    ft = report.get("fall_through")
    if not ft:
        return ""
    size = ft.get("size", {})
    lines = [f"fall-through: {size.get('n_images')} training images, median "
             f"{size.get('median_per_class', 0):g} per class -> {size.get('size_class')} "
             "(advise's size rule)"]
    if ft.get("status") == "skipped":
        lines.append(f"  {ft['message']}")
        return "\n".join(lines)
    probe, row = ft.get("linear_probe") or {}, ft.get("finetune") or {}
    if ft.get("forced"):
        lines[0] += "; fine-tuning forced"
    names = [str(probe.get("name", "linear probe")), str(row.get("name", "fine-tuning"))]
    w = max(30, *(len(n) for n in names))
    lines.append(f"  {'method':<{w}}  {'test acc':>8}  {'bal acc':>8}  {'wall s':>8}")

    def f(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    for n, r in zip(names, (probe, row), strict=True):
        lines.append(f"  {n:<{w}}  {f(r.get('accuracy')):>8}  "
                     f"{f(r.get('balanced_accuracy')):>8}  {f(r.get('wall_time_s'), '.1f'):>8}")
    lines.append(f"  same split: {row.get('n_train')} train + {row.get('n_val')} validation "
                 f"(fine-tuning) / {probe.get('n_test')} test images; fine-tuning run in "
                 f"{row.get('run')}")
    if row.get("status") == "diverged":
        lines.append(f"  fine-tuning diverged: {row.get('message')}")
    lines.append(f"  verdict: {ft.get('verdict')}")
    return "\n".join(lines)
