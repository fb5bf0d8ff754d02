"""Linear probe vs fine-tuning on one split: the one comparison behind ``cnncodes finetune
--escalation`` (:func:`escalate`: probe vs head-only vs full) and ``cnncodes baseline
--fall-through`` (:func:`run_fall_through`: the baseline's probe vs full fine-tuning on its rows).

Both run their fine-tuning arms through :func:`run_arm` (a run folder per arm, resumed when it can
be, a diverged run reported instead of raised) and state the outcome with the one verdict writer,
:func:`verdict`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._distributed import env_info
from .._runtime import command_line, versions
from ..atomic import atomic_write_json, atomic_write_text, save_figure
from ..codes.batches import extract_arrays
from ..codes.extractor import CodeExtractor
from ..errors import FinetuneDivergedError, OptionError, StaleRunError
from ..finetuning.config import FINETUNE_BATCH_SIZE, FinetuneConfig, make_config
from ..finetuning.evaluation import fmt
from ..finetuning.run import FinetuneResult, finetune
from ..finetuning.split import Split, make_split
from ..linear.selection import fit_codes
from ..options import DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions, split_options
from ..outputs import check_output, claim_folder
from ..report.html import write_escalation_html, write_finetune_html
from ..sources.folders import ImageSource
from ..stats import ci_record, format_accuracy

log = logging.getLogger(__name__)

#: Files of an escalation folder (``overwrite`` removes exactly these; the runs have their own).
ESCALATION_FILES = ("escalation.json", "escalation.md", "escalation.png", "probe.json",
                    "split.json", "report.html")
PROBE = "linear probe"
#: the command that owns an escalation folder (:func:`cnncodes.outputs.claim_folder`)
ESCALATION_OWNER = "finetune --escalation"


# ------------------------------------------------------------------------------ the shared core


@dataclass
class Arm:
    """One fine-tuning arm of a comparison: its run's report, also when it diverged."""

    method: str
    status: str
    report: dict[str, Any]
    result: FinetuneResult | None
    this_call_s: float
    message: str | None = None

    @property
    def seconds(self) -> float:
        """The run's own time (every epoch, also of an earlier session, + setup and test)."""
        return float(self.report.get("seconds") or self.this_call_s)

    def balanced_accuracy(self) -> float | None:
        """Mean per-class recall on the test part, from the run's confusion matrix."""
        cm = self.report.get("confusion_matrix")
        if not cm:
            return None
        cm = np.asarray(cm, float)
        support = cm.sum(axis=1)
        present = support > 0
        return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else None


def run_arm(split: Split, output: Path, config: FinetuneConfig, *, resume: bool = True,
            overwrite: bool = False, restart_stale: bool = False,
            command: str | None = None) -> Arm:
    """Fine-tune ``config`` (its ``state``, its ``runtime``) on ``split`` in the run folder
    ``output``.

    Args:
        resume: continue an earlier run there (exactly, when it was interrupted).
        overwrite: start over.
        restart_stale: an earlier run that cannot be continued (other options, source or
            split: :class:`~cnncodes.errors.StaleRunError`) is started over instead of raising;
            any other error is raised with the run folder left exactly as it was.

    A run that diverges is returned with status ``diverged`` (its report read back).
    """
    t0 = time.perf_counter()
    had_run = (output / "checkpoint.pt").is_file() and not overwrite
    method = f"{config.state} fine-tuning"

    def run(fresh: bool) -> FinetuneResult:
        return finetune(None, output, config=config, split=split,
                        resume=resume and not fresh, overwrite=fresh, command=command)

    try:
        try:
            res = run(overwrite)
        except StaleRunError as e:  # only this: any other error leaves the run folder as it is
            if not (restart_stale and had_run):
                raise
            log.warning("%s held a fine-tuning run that cannot be continued here (%s); starting "
                        "it over", output, e)
            res = run(True)
        write_finetune_html(output)
        return Arm(method, res.status, res.report, res, time.perf_counter() - t0)
    except FinetuneDivergedError as e:
        log.warning("%s", e)
        rep = json.loads((output / "report.json").read_text())
        write_finetune_html(output)
        return Arm(method, "diverged", rep, None, time.perf_counter() - t0, str(e))


def verdict(probe: Mapping[str, Any], others: Sequence[Mapping[str, Any]]) -> str:
    """The one verdict: is fine-tuning worth its cost over the linear probe?

    Args:
        probe, others: outcomes with ``method``, ``test_accuracy`` and ``seconds`` (wall time).
    """
    done = [o for o in others if o.get("test_accuracy") is not None]
    if not done:
        return "fine-tuning produced no test accuracy; keep the codes + linear classifier."
    best = max(done, key=lambda o: o["test_accuracy"])
    a, b = probe.get("test_accuracy"), best["test_accuracy"]
    bt = format_accuracy(b, best.get("n_test"))
    if a is None:
        return f"{best['method']} is best ({bt}); the linear probe has no test accuracy."
    at = format_accuracy(a, probe.get("n_test"))
    ratio = float(best.get("seconds") or 0.0) / max(float(probe.get("seconds") or 0.0), 1e-9)
    if b > a:
        return (f"{best['method']} is best ({bt}, +{100 * (b - a):.1f} points over the "
                f"linear probe's {at}) at {ratio:.1f}x its wall time.")
    return (f"the linear probe is as good or better ({at} vs {bt} for {best['method']}, "
            f"which took {ratio:.1f}x its wall time): keep the codes + linear classifier.")


# ------------------------------------------------------------------------------ the escalation


def linear_probe(split: Split, *, backbone: str | BackboneOptions = DEFAULT_BACKBONE,
                 runtime: RuntimeOptions | None = None,
                 c_grid: str | Sequence[float] | None = None, cv: int = 5, seed: int = 0,
                 **options: Any) -> dict[str, Any]:
    """The linear probe (:func:`cnncodes.fit_codes`: standardised codes, logistic regression, C by
    stratified CV) on ``split``.

    Codes of the backbone's default layer (or ``layers``' first) are computed with the
    deterministic evaluation transform; the probe is fitted on the training part and scored on
    the validation and test parts. Wall time covers extraction and fitting. ``backbone``,
    ``runtime`` and ``options`` as for :func:`cnncodes.extract`.
    """
    bopts, ropts, _ = split_options(backbone, runtime, options, where="linear_probe")
    t0 = time.perf_counter()
    ext = CodeExtractor(bopts, runtime=ropts)
    layer = ext.layers[0]
    parts = {}
    for part in ("train", "val", "test"):
        src = split.source(part)
        if len(src) == 0:
            parts[part] = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
            continue
        a = extract_arrays(src, extractor=ext, runtime=ropts)
        parts[part] = (a.codes[layer], a.labels)
    t_codes = time.perf_counter() - t0
    (xtr, ytr), (xva, yva), (xte, yte) = parts["train"], parts["val"], parts["test"]
    clf, selection = fit_codes(xtr, ytr, classes=split.classes, c_grid=c_grid, cv=cv, seed=seed)
    return {"method": PROBE, "backbone": bopts.backbone, "weights": ext.resolved.id,
            "layer": layer, "dim": int(xtr.shape[1]), "input_size": ext.preprocessing.crop,
            "C": selection["best_C"], "cv": selection["cv"],
            "cv_score": selection["best_cv_score"],
            "val_accuracy": float(clf.score(xva, yva)) if len(yva) else None,
            "test_accuracy": float(clf.score(xte, yte)) if len(yte) else None,
            "n_test": int(len(yte)),
            **ci_record(float(clf.score(xte, yte)) if len(yte) else None, len(yte)),
            "trainable_params": int(xtr.shape[1] * len(split.classes) + len(split.classes)),
            "seconds": time.perf_counter() - t0, "codes_seconds": t_codes,
            "status": "completed"}


@dataclass
class EscalationResult:
    """The escalation report: one row per method (linear probe, head-only, full)."""

    output: Path
    rows: list[dict[str, Any]]
    verdict: str
    json_path: Path
    markdown_path: Path
    png_path: Path

    def table(self) -> str:
        """The comparison as a Markdown table."""
        return comparison_table(self.rows)


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Escalation rows as a Markdown table."""
    lines = ["| method | trainable params | epochs | val acc | test acc | wall time (s) | status |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r.get('trainable_params', 0):,} | "
                     f"{r.get('epochs', '-')} | {fmt(r.get('val_accuracy'), '.4f')} | "
                     f"{format_accuracy(r.get('test_accuracy'), r.get('n_test'))} | "
                     f"{r['seconds']:.1f} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Test accuracy and wall time per method as a bar chart (PNG, atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bars = ax.bar([r["method"] for r in rows], [r.get("test_accuracy") or 0.0 for r in rows],
                  color=["#888888", "#4c72b0", "#dd8452"][:len(rows)])
    for b, r in zip(bars, rows, strict=True):
        ax.annotate(f"{fmt(r.get('test_accuracy'), '.3f')}\n{r['seconds']:.0f} s",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _escalation_split(source: Any, out: Path, cfg: FinetuneConfig, test: Any) -> Split:
    if (out / "split.json").is_file():
        return Split.from_dict(json.loads((out / "split.json").read_text()))
    split = make_split(source, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       seed=cfg.seed, test=test)
    atomic_write_json(out / "split.json", split.to_dict())
    return split


def _escalation_probe(split: Split, out: Path, cfg: FinetuneConfig, *,
                      resume: bool) -> dict[str, Any]:
    """The probe row, reused from ``probe.json`` when resuming with the same backbone."""
    if resume and (out / "probe.json").is_file():
        probe = json.loads((out / "probe.json").read_text())
        if (probe.get("backbone") == cfg.backbone and probe.get("config_weights") == cfg.weights
                and probe.get("config_input_size") == cfg.input_size):
            return probe
    log.info("escalation 1/3: linear probe on %s codes", cfg.backbone)
    # the run's runtime, at least 64 images per forward pass (extraction needs no BatchNorm)
    runtime = cfg.runtime.replace(batch_size=max(cfg.runtime.batch_size, 64))
    probe = linear_probe(split, backbone=cfg.backbone, weights=cfg.weights,
                         input_size=cfg.input_size, runtime=runtime, seed=cfg.seed)
    probe.update(config_weights=cfg.weights, config_input_size=cfg.input_size)
    atomic_write_json(out / "probe.json", probe)
    return probe


def escalate(
    source: str | os.PathLike | ImageSource,
    output: str | os.PathLike,
    *,
    config: FinetuneConfig | None = None,
    runtime: RuntimeOptions | None = None,
    test: str | os.PathLike | ImageSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    **options: Any,
) -> EscalationResult:
    """Linear probe on codes vs head-only vs full fine-tuning, on one split, into ``output``.

    Writes ``split.json``, ``probe.json``, ``head-only/`` and ``full/`` run folders, and
    ``escalation.json`` / ``escalation.md`` / ``escalation.png`` (accuracy and wall time per
    method). ``config.freeze`` applies to the full run; ``config.state`` is not used.
    ``config``, ``runtime`` and ``options`` as for :func:`cnncodes.finetune` (``progress=True``:
    bars).

    Raises:
        ValueError: state ``predict``, or an existing escalation without ``resume``/``overwrite``.
    """
    if env_info().enabled:
        raise OptionError("The escalation report runs in one process (its linear probe and the "
                          "wall-time comparison are single-process); run --escalation without "
                          "torchrun, or fine-tune under torchrun with --state head-only / full.")
    cfg = make_config(config, runtime=runtime, **options)
    if cfg.state == "predict":
        raise OptionError("The escalation report trains head-only and full models; state "
                          "'predict' does not apply (drop --state or --escalation).")
    out = check_output(output, kind="folder", files=ESCALATION_FILES, option="-o",
                       inputs=(source, test, cfg.weights if isinstance(cfg.weights, str) else None),
                       owner=ESCALATION_OWNER, overwrite=overwrite)
    if overwrite:
        for name in ESCALATION_FILES:
            (out / name).unlink(missing_ok=True)
    elif (out / "split.json").is_file() and not resume:
        raise OptionError(f"{out} already holds an escalation report; pass --resume to continue "
                          "it, --overwrite to start over, or another -o folder.")
    command = command or command_line()
    claim_folder(out, ESCALATION_OWNER, files=ESCALATION_FILES, command=command)
    split = _escalation_split(source, out, cfg, test)
    probe = _escalation_probe(split, out, cfg, resume=resume)
    rows: list[dict[str, Any]] = [{**probe, "epochs": "-"}]
    for i, state in enumerate(("head-only", "full"), 2):
        log.info("escalation %d/3: %s fine-tuning", i, state)
        sub = dataclasses.replace(cfg, state=state,
                                  freeze=0 if state == "head-only" else cfg.freeze)
        arm = run_arm(split, out / state, sub, resume=resume, overwrite=overwrite,
                      command=command)
        rep = arm.report
        row = {"method": arm.method, "status": arm.status,
               "val_accuracy": rep.get("val_accuracy"), "test_accuracy": rep.get("test_accuracy"),
               "n_test": len(split.test), **ci_record(rep.get("test_accuracy"), len(split.test)),
               "seconds": float(rep.get("seconds") or 0.0), "epochs": rep.get("epochs_run"),
               "best_epoch": rep.get("best_epoch"),
               "trainable_params": rep.get("trainable_params", 0), "run": state}
        if arm.message:
            row["message"] = arm.message
        rows.append(row)
    text = verdict(rows[0], rows[1:])
    _write_escalation(out, cfg, split, probe, rows, text, command)
    write_escalation_html(out)
    log.info("escalation: %s", text)
    return EscalationResult(out, rows, text, out / "escalation.json", out / "escalation.md",
                            out / "escalation.png")


def _write_escalation(out: Path, cfg: FinetuneConfig, split: Split, probe: Mapping[str, Any],
                      rows: list[dict[str, Any]], text: str, command: str) -> None:
    size = probe["input_size"]
    atomic_write_json(out / "escalation.json", {
        "kind": "cnncodes-escalation-report", "backbone": cfg.backbone,
        "weights": probe["weights"], "input_size": size, "classes": split.classes,
        "split": {**split.sizes(), "seed": split.seed}, "rows": rows, "verdict": text,
        "config": cfg.to_dict(), "command": command, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    sizes = split.sizes()
    md = (f"# Escalation report: {cfg.backbone} ({probe['weights']}), {size} px\n\n"
          f"Same split for every method: {sizes['train']} train / {sizes['val']} validation / "
          f"{sizes['test']} test images, {len(split.classes)} classes (seed {split.seed}); "
          f"{cfg.epochs} epochs of fine-tuning, batch {cfg.runtime.batch_size}, {cfg.optimizer} lr "
          f"{cfg.base_lr:g} (head x{cfg.head_lr_mult:g}), freeze {cfg.freeze} for full.\n\n"
          + comparison_table(rows) + f"\n\n{text}\n")
    atomic_write_text(out / "escalation.md", md)
    plot_comparison(rows, out / "escalation.png",
                    f"{cfg.backbone}, {size} px, {sizes['train']} train images")


# ------------------------------------------------------------------------------ the fall-through


def finetune_command(parts: Sequence[str], *, backbone: str, weights: str | None,
                     input_size: int | None, out: Path, options: Mapping[str, Any]) -> str:
    """The ``cnncodes finetune`` command line that runs the fall-through by hand."""
    args = ["cnncodes", "finetune", *parts, "--backbone", backbone]
    if weights is not None and str(weights) != "auto":
        args += ["--weights", str(weights)]
    if input_size:
        args += ["--input-size", str(input_size)]
    args += ["-o", os.fspath(out)]
    for k in ("epochs", "head_lr_mult", "freeze"):
        if k in options:
            v = options[k]
            args += [f"--{k.replace('_', '-')}", str(int(v) if float(v).is_integer() else v)]
    return shlex.join(args)


def fall_through_verdict(probe_row: Mapping[str, Any], ft_row: Mapping[str, Any]) -> str:
    """:func:`verdict` on a baseline's probe row and :func:`run_fall_through`'s row."""
    def outcome(r: Mapping[str, Any], method: str) -> dict[str, Any]:
        return {"method": method, "test_accuracy": r.get("accuracy"),
                "n_test": r.get("n_test"), "seconds": r.get("wall_time_s")}

    return verdict(outcome(probe_row, PROBE), [outcome(ft_row, "full fine-tuning")])


def run_fall_through(train_source: ImageSource, test_source: ImageSource, output: Path, *,
                     backbone: BackboneOptions, runtime: RuntimeOptions, seed: int,
                     overwrite: bool, command: str | None,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Full fine-tuning on exactly the linear probe's rows: its training rows (a seeded
    validation share of them for model selection by epoch) and its test rows.

    Returns ``(row, FinetuneResult or None)``; the run folder is ``output``: an earlier run there
    is continued (an interrupted one resumes exactly) when its options and split are the same,
    else, or with ``overwrite``, started over.
    """
    # the baseline's runtime, whole; the batch size is fine-tuning's own (the baseline's is per
    # forward pass of extraction) unless ``options`` give one
    cfg = make_config(None, backbone=backbone.backbone, weights=backbone.weights,
                      input_size=backbone.input_size, state="full", seed=seed,
                      runtime=runtime.replace(batch_size=FINETUNE_BATCH_SIZE), **dict(options))
    split = make_split(train_source, val_fraction=cfg.val_fraction, test_fraction=0.0,
                       seed=cfg.seed, test=test_source)
    log.info("fall-through: full fine-tuning of %s on %d train / %d validation / %d test images "
             "(%d epochs) in %s", backbone.backbone, len(split.train), len(split.val),
             len(split.test), cfg.epochs, output)
    arm = run_arm(split, output, cfg, resume=True, overwrite=overwrite, restart_stale=True,
                  command=command)
    rep = arm.report
    epochs = rep.get("epochs_run")
    plural = "" if epochs == 1 else "s"
    row = {
        "name": f"fine-tuned {backbone.backbone} (full, {epochs} epoch{plural}, "
                f"{rep.get('input_size')} px)",
        "kind": "finetune", "status": arm.status, "method": arm.method,
        "accuracy": rep.get("test_accuracy"), "balanced_accuracy": arm.balanced_accuracy(),
        "val_accuracy": rep.get("val_accuracy"), "n_test": (rep.get("split") or {}).get("test"),
        **ci_record(rep.get("test_accuracy"), (rep.get("split") or {}).get("test")),
        "n_train": len(split.train), "n_val": len(split.val), "epochs": epochs,
        "best_epoch": rep.get("best_epoch"), "trainable_params": rep.get("trainable_params"),
        "wall_time_s": round(arm.seconds, 2), "this_call_s": round(arm.this_call_s, 2),
        "run": os.fspath(output),
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k in ("epochs", "batch_size", "optimizer", "lr", "head_lr_mult", "freeze",
                            "val_fraction", "seed")},
    }
    if arm.status == "diverged":
        row["message"] = rep.get("message")
    return row, arm.result


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
    names = [str(probe.get("name", PROBE)), str(row.get("name", "fine-tuning"))]
    w = max(30, *(len(n) for n in names))
    accs = [format_accuracy(r.get("accuracy"), r.get("n_test")) for r in (probe, row)]
    aw = max(8, *(len(a) for a in accs))
    lines.append(f"  {'method':<{w}}  {'test acc':<{aw}}  {'bal acc':>8}  {'wall s':>8}")
    for n, r, a in zip(names, (probe, row), accs, strict=True):
        lines.append(f"  {n:<{w}}  {a:<{aw}}  "
                     f"{fmt(r.get('balanced_accuracy'), '.4f'):>8}  "
                     f"{fmt(r.get('wall_time_s'), '.1f'):>8}")
    lines.append(f"  same split: {row.get('n_train')} train + {row.get('n_val')} validation "
                 f"(fine-tuning) / {probe.get('n_test')} test images; fine-tuning run in "
                 f"{row.get('run')}")
    if row.get("status") == "diverged":
        lines.append(f"  fine-tuning diverged: {row.get('message')}")
    lines.append(f"  verdict: {ft.get('verdict')}")
    return "\n".join(lines)
