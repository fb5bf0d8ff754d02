"""Fine-tuning plots: learning curves (matplotlib's object API: no pyplot, no global backend
change; written through :func:`cnncodes.atomic.save_figure`).

With two or more epochs the curves are per epoch (train vs validation). A run of one epoch has
no curve per epoch, so its training loss and accuracy are drawn per optimiser step (the history
record's ``step_loss``/``step_acc``, binned to at most :data:`MAX_STEP_POINTS` points) with the
validation result as one marked point at the end; when there are no step values either (fewer
than two steps, or a history written before they were recorded), the figure says that there is
nothing to plot and shows the epoch's values as text.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import save_figure

#: At most this many points per epoch in ``step_loss``/``step_acc`` (means of equal runs of steps).
MAX_STEP_POINTS = 50


def bin_steps(values: Sequence[float], most: int = MAX_STEP_POINTS) -> list[float]:
    """``values`` (one per step) as at most ``most`` means of consecutive, near-equal runs."""
    if len(values) <= most:
        return [float(v) for v in values]
    return [float(np.mean(part)) for part in np.array_split(np.asarray(values, float), most)]


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _log_scale_if_wide(ax: Any, values: Sequence[Any]) -> None:
    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if vals and max(vals) / min(vals) > 100:
        ax.set_yscale("log")


def _per_epoch(axes: Sequence[Any], history: Sequence[dict[str, Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    ep = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("loss", "acc"), strict=True):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        val = [h.get(f"val_{key}") for h in history]
        if any(_finite(v) for v in val):
            ax.plot(ep, [np.nan if v is None else v for v in val], "s-", label="validation")
        if key == "loss":
            _log_scale_if_wide(ax, [v for h in history
                                    for v in (h.get("train_loss"), h.get("val_loss"))])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")


def _per_step(axes: Sequence[Any], rec: dict[str, Any]) -> None:
    steps = int(rec.get("steps") or len(rec["step_loss"]))
    for ax, key in zip(axes, ("loss", "acc"), strict=True):
        ys = rec.get(f"step_{key}") or []
        if not ys:
            continue
        # bin i covers steps [i*steps/n, (i+1)*steps/n): plotted at its last step
        xs = [(i + 1) * steps / len(ys) for i in range(len(ys))]
        ax.plot(xs, ys, "-", label="train (per step)" if len(ys) == steps else
                f"train (mean of {steps / len(ys):.3g} steps)")
        if _finite(rec.get(f"val_{key}")):
            ax.plot([steps], [rec[f"val_{key}"]], "s", label="validation (end of epoch)")
        if key == "loss":
            _log_scale_if_wide(ax, [*ys, rec.get("val_loss")])
        ax.set_xlim(0, steps * 1.02)
        ax.set_xlabel(f"optimiser step (1 epoch = {steps} steps)")


def _nothing_to_plot(fig: Any, history: Sequence[dict[str, Any]]) -> None:
    ax = fig.subplots(1, 1)
    ax.set_axis_off()
    text = ["nothing to plot: a learning curve needs 2 or more epochs (or steps)"]
    for h in history:
        vals = ", ".join(f"{name} {h[k]:.4f}" for k, name in (
            ("train_loss", "train loss"), ("train_acc", "train accuracy"),
            ("val_loss", "validation loss"), ("val_acc", "validation accuracy"))
            if _finite(h.get(k)))
        text.append(f"epoch {h.get('epoch')}: {vals}")
    ax.text(0.5, 0.5, "\n".join(text), ha="center", va="center", fontsize=11,
            transform=ax.transAxes)


def curve_kind(history: Sequence[dict[str, Any]]) -> str:
    """How :func:`plot_curves` draws ``history``: ``epochs``, ``steps`` or ``none``."""
    if len(history) >= 2:
        return "epochs"
    if history and len(history[0].get("step_loss") or []) >= 2:
        return "steps"
    return "none"


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                title: str = "") -> Path:
    """Learning curves (loss and accuracy, train vs validation) as a PNG: per epoch, per step
    for a run of one epoch, or a figure saying there is nothing to plot (module docstring)."""
    return save_figure(curves_figure(history, title=title), path)


def curves_figure(history: Sequence[dict[str, Any]], *, title: str = "") -> Any:
    """The matplotlib ``Figure`` of :func:`plot_curves`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    kind = curve_kind(history)
    if kind == "none":
        _nothing_to_plot(fig, history)
    else:
        axes = fig.subplots(1, 2)
        if kind == "epochs":
            _per_epoch(axes, history)
        else:
            _per_step(axes, history[0])
        for ax, label in zip(axes, ("loss", "accuracy"), strict=True):
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
