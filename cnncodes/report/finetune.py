"""Text summaries of fine-tuning results for the terminal: a run (:func:`format_finetune`) and the
escalation comparison (:func:`format_escalation`).
"""

from __future__ import annotations

from typing import Any

from ..stats import format_accuracy, plural


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_finetune(res: Any) -> str:
    """A :class:`cnncodes.FinetuneResult` in a few lines (plus the unreadable files, if any)."""
    rep = res.report
    if res.state == "predict":
        lines = [f"{res.output}: evaluated {rep['backbone']} fine-tuned model on "
                 f"{plural(rep['split']['test'], 'image')}: accuracy "
                 f"{format_accuracy(res.test_accuracy, rep['split']['test'])}"]
    else:
        resumed = f" (resumed at epoch {res.resumed_from})" if res.resumed_from else ""
        lines = [
            f"{res.output}: {res.state} fine-tuning of {rep['backbone']} ({rep['weights']}) "
            f"{res.status}{resumed}: {plural(res.epochs_run, 'epoch')}, best epoch "
            f"{res.best_epoch}",
            f"  validation accuracy {_f(res.val_accuracy)}, test accuracy "
            f"{format_accuracy(res.test_accuracy, rep['split']['test'])}; "
            f"{rep['trainable_params']:,} trainable parameters; {res.seconds:.1f} s",
            f"  model {res.model_path} (usable as --weights for extract; predict with "
            f"`cnncodes predict {res.model_path} IMAGES`), report {res.report_path}, curves "
            f"{res.curves_path}"]
    warm = rep.get("warmup") or {}
    if warm.get("clamped"):
        lines.append(f"  warmup_epochs {warm['warmup_epochs']:g} would have taken "
                     f"{warm['steps_asked']} of the run's {warm['total_steps']} steps: warmed up "
                     f"over {warm['steps']} (half the run) instead")
    for key in ("val_accuracy", "test_accuracy", "per_class_test_accuracy"):
        if rep.get(f"{key}_note"):
            lines.append(f"  {key.replace('_', ' ')}: {rep[f'{key}_note']}")
    if res.failures:
        lines.append(f"{plural(len(res.failures), 'file')} could not be read and were skipped:")
        lines += [f"  {p}: {r}" for p, r in res.failures[:20]]
    return "\n".join(lines)


def format_escalation(esc: Any) -> str:
    """A :class:`cnncodes.EscalationResult`: the table, the verdict, where the files are."""
    return (f"{esc.table()}\n\n{esc.verdict}\n\nreports: {esc.markdown_path}, {esc.json_path}, "
            f"{esc.png_path}; runs in {esc.output / 'head-only'} and {esc.output / 'full'}")
