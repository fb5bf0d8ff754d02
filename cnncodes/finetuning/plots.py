"""Fine-tuning plots: learning curves (matplotlib's object API: no pyplot, no global backend
change; written through :func:`cnncodes.atomic.save_figure`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import save_figure


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                title: str = "") -> Path:
    """Learning curves (loss and accuracy per epoch, train vs validation) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    for ax, key, label in ((ax1, "loss", "loss"), (ax2, "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        val = [h.get(f"val_{key}") for h in history]
        if any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in val):
            ax.plot(ep, [np.nan if v is None else v for v in val], "s-", label="validation")
        if key == "loss":
            vals = [v for h in history for v in (h.get("train_loss"), h.get("val_loss"))
                    if v is not None and math.isfinite(v) and v > 0]
            if vals and max(vals) / min(vals) > 100:
                ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
