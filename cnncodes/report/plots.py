"""Report figures: ``cv_scores.png`` (CV score against C for every row, chosen C marked) and
``confusion.png``. Figures use matplotlib's Agg canvas directly (no display, no pyplot, the
caller's backend is untouched) and are saved through :func:`cnncodes.atomic.save_figure`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import save_figure

log = logging.getLogger(__name__)


def _figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure on its own Agg canvas: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_cv_scores(series: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                   scoring: str = "accuracy") -> Path:
    """CV score (mean +- std over folds) against C on a log axis, one line per series.

    Each series is ``{"name": ..., "selection": {"c_grid", "cv_mean", "cv_std", "best_C"}}``.
    """
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for s in series:
        sel = s.get("selection")
        if not sel:
            continue
        c = np.asarray(sel["c_grid"], float)
        m = np.asarray(sel["cv_mean"], float)
        sd = np.asarray(sel["cv_std"], float)
        (line,) = ax.plot(c, m, marker="o", ms=3, label=f"{s['name']} (C={sel['best_C']:.3g})")
        ax.fill_between(c, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        best = int(np.argmin(np.abs(np.log(c) - math.log(sel["best_C"]))))
        ax.plot([c[best]], [m[best]], marker="*", ms=12, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse regularisation)")
    ax.set_ylabel(f"cross-validated {scoring}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("model selection: CV score per C (* = chosen)")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str],
                   path: str | os.PathLike, *, title: str = "confusion matrix") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), coloured by row-normalised rate,
    annotated with counts when it is small enough to read."""
    counts = np.asarray(cm, float)
    k = len(classes)
    size = min(16.0, max(4.5, 0.45 * k + 2.5))
    fig = _figure((size, size * 0.9))
    ax = fig.add_subplot(1, 1, 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right",
                  fontsize=8 if k > 12 else 9)
    ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8 if k > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path
