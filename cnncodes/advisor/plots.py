"""The advisor's files: ``advice.png`` (:func:`plot_advice`) and the report folder with
``advice.json`` next to it (:func:`save_report`); both written atomically (:mod:`cnncodes.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json, save_figure
from ..outputs import check_output, claim_folder
from ..stats import accuracy_interval
from .advice import Advice


def plot_advice(advice: Advice, path: str | os.PathLike) -> Path:
    """Per-layer CV accuracy curve (+ raw pixels, recommended layer) and, where measured, the
    BatchNorm distance by depth and the ImageNet-head confidence histogram; one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = ["probe"]
    if advice.batchnorm.get("available"):
        panels.append("bn")
    if advice.head.get("available"):
        panels.append("head")
    fig = Figure(figsize=(5.2 * len(panels), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    pr = advice.probe
    names = list(pr.layers)
    means = [pr.layers[n].mean for n in names]
    # the one interval of every accuracy (cnncodes.stats): 95% Wilson over the probed images
    ci = np.array([accuracy_interval(m, pr.n_images) for m in means]).reshape(-1, 2)
    errs = 100 * np.abs(ci.T - np.array(means))
    means = [100 * m for m in means]
    ax = axes[0]
    x = np.arange(len(names))
    ax.errorbar(x, means, yerr=errs, marker="o", capsize=3, color="tab:blue",
                label=f"{pr.method} probe, {pr.folds}-fold CV (95% interval)")
    for i, n in enumerate(names):
        if pr.layers[n].depth == "last":
            ax.plot(i, means[i], "s", ms=11, mfc="none", mec="tab:gray")
    j = names.index(advice.layer)
    ax.plot(j, means[j], "*", ms=18, color="tab:red", label=f"recommended: {advice.layer}")
    if pr.raw is not None:
        ax.axhline(100 * pr.raw.mean, ls="--", color="tab:green", label="raw pixels")
    ax.set_xticks(x, [n + (" (last)" if pr.layers[n].depth == "last" else "") for n in names],
                  rotation=30, ha="right")
    ax.set_ylabel("CV accuracy (%)")
    ax.set_title(f"{advice.setup.backbone} @ {advice.meta.get('input_size')} px, "
                 f"{pr.n_images:,} images\n{advice.verdict.quadrant.value}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    k = 1
    if "bn" in panels:
        ax = axes[k]
        k += 1
        per = advice.batchnorm["per_layer"]
        ax.plot([p["kl"] for p in per], marker=".", color="tab:purple")
        ax.set_yscale("log")
        ax.set_xlabel("BatchNorm layer (input -> output)")
        ax.set_ylabel("KL(data || running stats), mean over channels")
        ax.set_title(f"BatchNorm statistics: mean KL {advice.batchnorm['mean_kl']:.3g}",
                     fontsize=10)
        ax.grid(alpha=0.3)
    if "head" in panels:
        ax = axes[k]
        h = advice.head
        ax.bar(np.arange(10) / 10 + 0.05, h["top1_hist"], width=0.09, color="tab:orange")
        ax.set_xlabel("ImageNet top-1 probability")
        ax.set_ylabel("images")
        ax.set_title(f"ImageNet head: mean top-1 {h['mean_top1_prob']:.2f}, "
                     f"entropy {h['mean_normalized_entropy']:.2f}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


REPORT_FILES = ("advice.json", "advice.png", "report.html")


def check_report_folder(folder: str | os.PathLike, *, inputs: Any = (),
                        overwrite: bool = False) -> Path:
    """``folder`` as a Path; raises :class:`~cnncodes.errors.OutputError` when it is not a folder,
    is an input (or inside an input folder), holds a non-regular ``advice.json``/``.png``, or
    another command wrote it (or it holds images) and not ``overwrite``."""
    return check_output(folder, kind="folder", files=REPORT_FILES, inputs=inputs,
                        option="--report", owner="advise", overwrite=overwrite)


def save_report(advice: Advice, folder: str | os.PathLike, data: Mapping[str, Any], *,
                overwrite: bool = False) -> dict[str, Path]:
    """Write ``data`` (the JSON report, :func:`cnncodes.report.advice.advice_json`) as
    ``advice.json`` and the plot as ``advice.png`` into ``folder`` (owned by ``advise``); returns
    their paths."""
    d = check_report_folder(folder, overwrite=overwrite)
    claim_folder(d, "advise", files=REPORT_FILES)
    js = atomic_write_json(d / "advice.json", data)
    png = plot_advice(advice, d / "advice.png")
    return {"json": js, "png": png}
