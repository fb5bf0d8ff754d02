"""``advise --backbones a,b,c``: the same advise run per backbone, then one table ranking every
backbone's layers on the user's data, and a recommendation.

:func:`cnncodes.workflows.advice.rank_backbones` splits the time budget evenly between the
backbones and runs :func:`cnncodes.workflows.advice.advise` for each (same seed, so every sample
is a prefix of the same stratified order); a backbone whose weights cannot be had (offline) is
reported as skipped, not fatal. This module holds the pure parts: :func:`rank_rows`, every
(backbone, layer) row with its LogME, probe
accuracy and 95% interval, extraction speed and code size, sorted by probe accuracy.

**Recommendation** (pure, :func:`recommend`): the backbone whose *recommended* layer (answer (b)
of its own advice) has the highest CV probe accuracy; exact ties go to the faster extraction.
Other backbones whose recommended layer lies within the winner's 95% interval (the Wilson
interval of :mod:`cnncodes.stats` over the probed images) are named as
statistically indistinguishable on this sample, with their speed, so a user can trade a
non-significant accuracy difference for throughput. LogME is shown beside the probe, not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError
from ..stats import accuracy_interval, format_accuracy
from .advice import Advice


@dataclass(frozen=True)
class RankRow:
    """One (backbone, layer) of the ranking table."""

    backbone: str
    weights_id: str
    layer: str
    depth: str
    dim: int
    cv_accuracy: float
    ci95: float  # half width, accuracy units
    logme: float | None
    images_per_s: float
    n_images: int
    recommended_layer: bool  # this backbone's advice chose this layer


@dataclass
class Ranking:
    """Backbones and their layers ranked on one data set.

    Attributes:
        rows: every (backbone, layer), best probe accuracy first.
        advices: each backbone's full :class:`~cnncodes.advisor.advice.Advice`.
        skipped: backbone -> why it was not measured (e.g. weights unavailable offline).
        recommendation: ``backbone``, ``layer``, ``cv_accuracy``, ``ci95``, ``explanation``,
            ``indistinguishable`` (other backbones within the interval).
        meta: budget, per-backbone budget, elapsed seconds.
    """

    rows: list[RankRow]
    advices: dict[str, Advice]
    skipped: dict[str, str]
    recommendation: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def rank_rows(advices: dict[str, Advice]) -> list[RankRow]:
    """Every (backbone, layer) row from the advices, best CV accuracy first (pure)."""
    rows = []
    for name, adv in advices.items():
        speed = float(adv.meta.get("images_per_s") or 0.0)
        for layer, s in adv.probe.layers.items():
            rows.append(RankRow(name, str(adv.meta.get("weights_id")), layer, s.depth, s.dim,
                                round(s.mean, 4), round(s.ci95, 4),
                                None if s.logme is None else round(s.logme, 4), speed,
                                adv.probe.n_images, layer == adv.layer))
    return sorted(rows, key=lambda r: (-r.cv_accuracy, -r.images_per_s))


def recommend(rows: Sequence[RankRow]) -> dict[str, Any]:
    """The recommendation rule of the module docstring (pure)."""
    chosen = [r for r in rows if r.recommended_layer]
    if not chosen:
        raise OptionError("No backbone could be measured: nothing to rank.")
    best = sorted(chosen, key=lambda r: (-r.cv_accuracy, -r.images_per_s))[0]
    low = accuracy_interval(best.cv_accuracy, best.n_images)[0] if best.n_images else \
        best.cv_accuracy - best.ci95
    close = [r for r in chosen if r is not best and r.cv_accuracy >= low]
    text = (f"{best.backbone} {best.layer}: CV accuracy "
            f"{format_accuracy(best.cv_accuracy, best.n_images)} at {best.images_per_s:.0f} "
            f"img/s, {best.dim}-d codes")
    if close:
        others = ", ".join(f"{r.backbone} {r.layer} {r.cv_accuracy:.3f} "
                           f"({r.images_per_s:.0f} img/s)" for r in close)
        text += (f"; within its interval, so not distinguishable on this sample: {others}")
    if any(r.weights_id == "random" for r in chosen):
        text += "; random-weight backbones are ranked on random features"
    return {"backbone": best.backbone, "layer": best.layer, "cv_accuracy": best.cv_accuracy,
            "ci95": best.ci95, "images_per_s": best.images_per_s,
            "indistinguishable": [r.backbone for r in close], "explanation": text}


def parse_backbones(value: str | Sequence[str]) -> list[str]:
    """``"a,b,c"`` or a list -> names, no duplicates, at least one.

    Raises:
        OptionError: empty or repeated names.
    """
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise OptionError(f"backbones must be distinct registry names separated by commas. Got "
                          f"{value!r} instead (e.g. mobilenet_v2,efficientnet_b0,resnet50).")
    return names
