"""Constructed evidence for the advisor's tests: probe results and sizes without any model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from cnncodes.advisor.evidence import SizeInfo
from cnncodes.advisor.probe import LayerScore, ProbeResult
from cnncodes.advisor.rule import RunSetup

MNV2_DEPTHS = {"stage2": "earlier", "stage3": "earlier", "stage4": "earlier",
               "stage5": "earlier", "pool": "last"}
TWO = {"stage4": "earlier", "pool": "last"}
SETUP = RunSetup(source="my photos/", backbone="mobilenet_v2", weights="auto", input_size=112)


def make_probe(means: dict[str, float], *, spread: float = 0.002, n: int = 2000, folds: int = 5,
               depths: dict[str, str] = MNV2_DEPTHS, raw: float | None = None,
               fold_scores: dict[str, list[float]] | None = None) -> ProbeResult:
    """Per-layer fold scores around ``means`` (a fixed small zig-zag, so the paired SE is tiny)."""
    wiggle = spread * np.array([1, -1, 0.5, -0.5, 0][:folds])
    layers = {}
    for name, m in means.items():
        fs = (fold_scores or {}).get(name, (m + wiggle).tolist())
        layers[name] = LayerScore(name, depths[name], 64, fs, 0.1)
    raw_s = LayerScore("raw", "raw", 768, (raw + wiggle).tolist(), 0.1) if raw is not None else None
    return ProbeResult("logreg", n, folds, [0.1], layers, raw_s)


def make_size(per_class: int, n_classes: int = 10) -> SizeInfo:
    return SizeInfo(per_class * n_classes, {f"c{i}": per_class for i in range(n_classes)})


def expected_layer(probe: ProbeResult, margin_points: float) -> str:
    """The rule restated independently: the best layer overall when it is an earlier layer that
    beats the best last layer by more than the margin, else the best last layer (ties deeper)."""
    names = list(probe.layers)
    def best(depth: str) -> str:
        cands = [n for n in names if probe.layers[n].depth == depth]
        top = max(probe.layers[n].mean for n in cands)
        return [n for n in cands if probe.layers[n].mean == top][-1]
    bl, be = best("last"), best("earlier")
    gap = 100 * (probe.layers[be].mean - probe.layers[bl].mean)
    return be if gap > margin_points else bl


def decide(size: SizeInfo, probe: ProbeResult, *, setup: RunSetup | None = None,
           flags: Any = None, **kwargs: Any) -> SimpleNamespace:
    """:func:`cnncodes.advisor.rule.decide`, rendered: the keys of advice.json's ``decision``
    (words from :func:`cnncodes.report.verdict_text.render`) as attributes, with the typed
    ``verdict`` and ``layers_compared`` beside them."""
    from cnncodes.advisor.rule import decide as decide_verdict
    from cnncodes.report.verdict_text import DEFAULT_FLAGS, decision_dict, render

    v = decide_verdict(size, probe, **kwargs)
    text = render(v, setup or RunSetup(), flags or DEFAULT_FLAGS)
    return SimpleNamespace(**decision_dict(v, text), verdict=v, text=text,
                           layers_compared=v.layers_compared)
