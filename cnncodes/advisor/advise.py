"""Choosing the layer and the strategy from the data: ``cnncodes advise`` and ``--layers auto``.

The module has two halves, kept apart on purpose:

**Measurement** (:func:`advise` runs it; each piece is callable alone)
    * size: images, classes, images per class, image sizes and modes from a sample
      (:func:`measure_size`);
    * similarity to the pretraining data, measured three ways and shown side by side:
      (a) the ImageNet head's confidence and entropy on a sample (only meaningful with pretrained
      ImageNet weights), (b) how far the data's activation statistics are from the BatchNorm
      running statistics the network carries (Gaussian KL per channel, where the backbone has
      BatchNorm), (c) the decisive, empirical one: a cross-validated linear probe of every
      candidate layer on one stratified sample, plus raw pixels as a reference
      (:func:`probe_layers`).

**Decision** (:func:`decide`, pure and deterministic, unit-tested on constructed evidence)
    The rule, in order:

    1. *Size.* ``large`` when the median number of images per class is at least
       ``large_per_class`` (default 1,000) **and** there are at least ``large_total`` (10,000)
       images; ``small`` when the median per class is below ``small_per_class`` (200); ``medium``
       in between (treated as small, with fine-tuning named as the next step to try).
    2. *Similarity.* ``gap`` = CV accuracy of the best earlier layer minus that of the best last
       layer, in points; ``threshold`` = max(``margin`` (default 1.0 point), ``se_mult`` (default
       0) x the paired standard error of that difference over the folds). ``gap > threshold`` ->
       **dissimilar** (the generic, earlier features transfer better than the ImageNet-specific
       last ones); otherwise **similar** (a near-tie goes to the last layer, the conventional
       choice, at a cost of at most ``margin`` points of CV accuracy). Exact ties between layers
       go to the deeper layer. Raw pixels beating every layer by more than the threshold does not
       change the quadrant but adds a warning.

       Why no significance test by default: the CV gap is an unbiased estimate, so taking the
       best layer maximises expected accuracy; demanding 2 standard errors before leaving the
       last layer was measured to cost 5-6 held-out points on 400-image samples
       (benchmarks/ADVISE_RESULTS.md). ``se_mult`` > 0 is there for users who want it.
    3. *Quadrant -> action.* small+similar: best last layer + logistic regression;
       small+dissimilar: best earlier layer + linear SVM; large+similar: fine-tune with the
       pretrained layers at a lower learning rate (``--head-lr-mult 10 --freeze 1``);
       large+dissimilar: fine-tune the whole network from the pretrained init
       (``--head-lr-mult 1 --freeze 0``). See :data:`FINETUNE_POLICY`.

Everything is deterministic for a given seed and sample size. With a time budget the sample size
is derived from the measured extraction speed (rounded down to a round number so that small
speed differences do not change it); pass ``max_images`` (``--sample``) with ``budget=None`` to
pin it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._runtime import loader_workers, versions
from ..atomic import atomic_write_text
from ..backbones.factory import build_model
from ..backbones.registry import BackboneSpec, get_spec, resolve_layers
from ..backbones.weights import ResolvedWeights, load_weights
from ..codes.extraction import iter_codes, make_dataset
from ..codes.extractor import CodeExtractor
from ..options import DEFAULT_MAX_PIXELS
from ..sources.folders import ImageSource, open_source
from ..sources.loader import normalize_batch

log = logging.getLogger(__name__)

#: Default thresholds (documented in the module docstring; override with :class:`Thresholds`).
SMALL_PER_CLASS = 200
LARGE_PER_CLASS = 1000
LARGE_TOTAL = 10_000
MARGIN_POINTS = 1.0
SE_MULT = 0.0

#: Ridge penalties tried by the default probe, as multiples of the number of training rows
#: (all solved from one eigendecomposition per fold, so the grid is free).
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: Inverse regularisation strengths tried by the logistic-regression probe.
LOGREG_CS = (0.01, 0.1, 1.0, 10.0)
PROBES = ("ridge", "logreg")
#: Share of the time budget given to extracting codes (the rest is for the probe fits).
EXTRACT_SHARE = {"ridge": 0.7, "logreg": 0.5}
#: BLAS threads used by the probe fits. LAPACK/BLAS on small matrices gains little from threads and
#: collapses under CPU contention (measured here: a 800x800 eigh 0.12 s on 1 thread vs 1.4-6 s on
#: 2 busy cores; LogisticRegression 50x slower), so the fits run single-threaded.
PROBE_BLAS_THREADS = 1
#: Side of the raw-pixel thumbnails used as the probe's reference row.
RAW_SIDE = 16
#: Fine-tuning suggestions per similarity, for large data sets (``cnncodes finetune`` options):
#: similar data keeps the pretrained layers close to ImageNet (head learns 10x faster, the stem and
#: first stage frozen); dissimilar data needs every layer to move (one rate, nothing frozen: the
#: pretrained weights are only an initialisation).
FINETUNE_POLICY: dict[str, dict[str, float | int]] = {
    "similar": {"head_lr_mult": 10, "freeze": 1},
    "dissimilar": {"head_lr_mult": 1, "freeze": 0},
}
CLASSIFIER = {"similar": "logreg", "dissimilar": "linearsvc"}
CLASSIFIER_NAME = {"logreg": "logistic regression", "linearsvc": "LinearSVC"}


# ============================================================================================
# Evidence containers


@dataclass(frozen=True)
class Thresholds:
    """The decision rule's documented, overridable thresholds.

    Attributes:
        small_per_class: median images per class below which the data set is ``small``.
        large_per_class: median images per class from which it can be ``large``.
        large_total: total images needed (as well) to be ``large``.
        margin: minimum CV-accuracy gap, in points, for an earlier layer to beat the last one.
        se_mult: the gap must also exceed this many paired standard errors over the folds.
    """

    small_per_class: int = SMALL_PER_CLASS
    large_per_class: int = LARGE_PER_CLASS
    large_total: int = LARGE_TOTAL
    margin: float = MARGIN_POINTS
    se_mult: float = SE_MULT

    def __post_init__(self) -> None:
        for name in ("small_per_class", "large_per_class", "large_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if self.small_per_class > self.large_per_class:
            raise ValueError(f"small_per_class ({self.small_per_class}) must not exceed "
                             f"large_per_class ({self.large_per_class}); raise --large-per-class "
                             "or lower --small-per-class.")
        if self.margin < 0 or self.se_mult < 0:
            raise ValueError(f"margin and se_mult must be >= 0; got {self.margin}, "
                             f"{self.se_mult}.")


@dataclass
class SizeInfo:
    """How big the data set is.

    Attributes:
        n_images: labelled images in the source.
        per_class: images per class name.
        image_sizes: summary of a sample of image headers (widths, heights, modes).
    """

    n_images: int
    per_class: dict[str, int]
    image_sizes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.per_class)

    @property
    def median_per_class(self) -> float:
        return float(np.median(list(self.per_class.values()))) if self.per_class else 0.0

    def size_class(self, th: Thresholds) -> str:
        """``small``, ``medium`` or ``large`` under ``th`` (see the module docstring)."""
        med = self.median_per_class
        if med >= th.large_per_class and self.n_images >= th.large_total:
            return "large"
        if med < th.small_per_class:
            return "small"
        return "medium"

    def to_dict(self, *, max_classes: int | None = None) -> dict[str, Any]:
        counts = list(self.per_class.values())
        d: dict[str, Any] = {
            "n_images": self.n_images, "n_classes": self.n_classes,
            "per_class_min": int(min(counts)) if counts else 0,
            "per_class_median": self.median_per_class,
            "per_class_max": int(max(counts)) if counts else 0,
            "image_sizes": self.image_sizes,
        }
        if max_classes is None or self.n_classes <= max_classes:
            d["per_class"] = dict(self.per_class)
        return d


@dataclass
class LayerScore:
    """Cross-validated probe accuracy of one layer (or of raw pixels).

    Attributes:
        layer: layer name (``raw`` for the raw-pixel reference).
        depth: ``last``, ``earlier`` or ``raw``.
        dim: code dimension.
        fold_scores: accuracy per fold at the chosen regularisation.
        param: the chosen ridge alpha (x rows) or logistic-regression C.
        grid_scores: mean CV accuracy for every grid value.
        seconds: fit time.
        same_as: another layer whose codes are identical (scores copied, not refitted).
    """

    layer: str
    depth: str
    dim: int
    fold_scores: list[float]
    param: float
    grid_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    same_as: str | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_scores, ddof=1)) if len(self.fold_scores) > 1 else 0.0


@dataclass
class ProbeResult:
    """The linear probe of every candidate layer on one stratified sample (same folds for all).

    Attributes:
        method: ``ridge`` or ``logreg``.
        n_images: rows in the sample.
        folds: stratified CV folds.
        grid: the regularisation values tried.
        layers: per layer (in network order) its :class:`LayerScore`.
        raw: the raw-pixel reference row, or None.
        excluded_classes: classes left out (fewer than 2 images in the sample).
    """

    method: str
    n_images: int
    folds: int
    grid: list[float]
    layers: dict[str, LayerScore]
    raw: LayerScore | None = None
    excluded_classes: list[str] = field(default_factory=list)

    def to_dict(self, *, compact: bool = False) -> dict[str, Any]:
        def row(s: LayerScore) -> dict[str, Any]:
            d = {"depth": s.depth, "dim": s.dim, "cv_accuracy": round(s.mean, 4),
                 "cv_std": round(s.std, 4), "param": s.param}
            if s.same_as:
                d["same_as"] = s.same_as
            if not compact:
                d.update(fold_scores=[round(x, 4) for x in s.fold_scores],
                         grid_scores=[round(x, 4) for x in s.grid_scores],
                         seconds=round(s.seconds, 3))
            return d

        return {"method": self.method, "n_images": self.n_images, "folds": self.folds,
                "grid": list(self.grid), "excluded_classes": list(self.excluded_classes),
                "layers": {k: row(v) for k, v in self.layers.items()},
                "raw_pixels": row(self.raw) if self.raw is not None else None}


@dataclass(frozen=True)
class RunSetup:
    """What the next commands must repeat: the source and the extraction options."""

    source: str = "IMAGES"
    backbone: str = "mobilenet_v2"
    weights: str = "auto"
    input_size: int | None = None
    pooling: str = "avg"

    def backbone_args(self, *, pooling: bool = True) -> list[str]:
        out = ["--backbone", self.backbone]
        if self.weights not in ("auto", None):
            out += ["--weights", str(self.weights)]
        if self.input_size:
            out += ["--input-size", str(self.input_size)]
        if pooling and self.pooling != "avg":
            out += ["--pooling", self.pooling]
        return out


@dataclass
class Decision:
    """What to do, and why.

    Attributes:
        quadrant: ``small-similar``, ``small-dissimilar``, ``large-similar`` or
            ``large-dissimilar``.
        size_class: ``small``, ``medium`` or ``large``.
        similarity: ``similar`` or ``dissimilar``.
        layer: the recommended layer.
        classifier: ``logreg`` or ``linearsvc`` (the ``cnncodes train --model`` value).
        action: the practice in words.
        explanation: one sentence with the numbers that decided it.
        commands: the exact next commands, in order.
        also: a further command worth trying (fine-tuning for medium data, the codes baseline
            for large data), or None.
        finetune: suggested fine-tuning options for large/medium data, else None.
        comparison: the numbers of the rule (best layers, gap, threshold, standard error).
        warnings: caveats (random weights, raw pixels beating the codes, imbalance...).
    """

    quadrant: str
    size_class: str
    similarity: str
    layer: str
    classifier: str
    action: str
    explanation: str
    commands: list[str]
    also: str | None
    finetune: dict[str, Any] | None
    comparison: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def next_command(self) -> str:
        return " && ".join(self.commands)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["next_command"] = self.next_command
        return d


@dataclass
class Advice:
    """Everything ``advise`` measured and decided (``to_dict()`` is the JSON report)."""

    setup: RunSetup
    size: SizeInfo
    head: dict[str, Any]
    batchnorm: dict[str, Any]
    probe: ProbeResult
    decision: Decision
    thresholds: Thresholds
    meta: dict[str, Any]

    @property
    def layer(self) -> str:
        return self.decision.layer

    @property
    def explanation(self) -> str:
        return self.decision.explanation

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1, "layer": self.layer, "quadrant": self.decision.quadrant,
            "explanation": self.explanation, "next_command": self.decision.next_command,
            "setup": asdict(self.setup), "size": self.size.to_dict(),
            "similarity": {"imagenet_head": self.head, "batchnorm": self.batchnorm,
                           "probe": self.probe.to_dict()},
            "decision": self.decision.to_dict(), "thresholds": asdict(self.thresholds),
            "meta": self.meta,
        }

    def summary(self) -> dict[str, Any]:
        """A compact, JSON-able record for a store's provenance (``advice``)."""
        head = {k: v for k, v in self.head.items() if k not in ("top_categories",)}
        bn = {k: v for k, v in self.batchnorm.items() if k != "per_layer"}
        d = self.decision
        return {
            "version": 1, "layer": self.layer, "quadrant": d.quadrant,
            "similarity": d.similarity, "size_class": d.size_class, "classifier": d.classifier,
            "explanation": self.explanation, "next_command": d.next_command,
            "comparison": d.comparison, "warnings": d.warnings,
            "size": self.size.to_dict(max_classes=50),
            "probe": self.probe.to_dict(compact=True), "imagenet_head": head, "batchnorm": bn,
            "thresholds": asdict(self.thresholds),
            "meta": {k: v for k, v in self.meta.items() if k != "versions"},
        }


# ============================================================================================
# Decision (pure)


def _best(scores: Sequence[LayerScore]) -> LayerScore:
    """Highest mean CV accuracy; exact ties go to the later (deeper) layer in ``scores``."""
    best = scores[0]
    for s in scores[1:]:
        if s.mean >= best.mean:
            best = s
    return best


def _paired_se(a: LayerScore, b: LayerScore) -> float:
    """Standard error (points) of the mean per-fold difference ``a - b`` (same folds)."""
    d = 100.0 * (np.asarray(a.fold_scores) - np.asarray(b.fold_scores))
    if d.size < 2:
        return 0.0
    return float(np.std(d, ddof=1) / math.sqrt(d.size))


def decide(size: SizeInfo, probe: ProbeResult, *, thresholds: Thresholds | None = None,
           setup: RunSetup | None = None, random_weights: bool = False) -> Decision:
    """Quadrant, layer and action from the evidence, by the rule in the module docstring.

    Args:
        size: the data set's size.
        probe: CV accuracies of the candidate layers (needs at least one ``last`` and one
            ``earlier`` layer).
        thresholds: the rule's thresholds (defaults documented in :class:`Thresholds`).
        setup: source and extraction options repeated in the next commands.
        random_weights: the codes came from random weights (adds a warning).

    Raises:
        ValueError: the probe lacks a last or an earlier layer.
    """
    th = thresholds or Thresholds()
    setup = setup or RunSetup()
    last = [s for s in probe.layers.values() if s.depth == "last"]
    earlier = [s for s in probe.layers.values() if s.depth == "earlier"]
    if not last or not earlier:
        have = ", ".join(f"{k} ({s.depth})" for k, s in probe.layers.items()) or "none"
        raise ValueError(f"The decision compares the last layer with earlier ones; the probe has "
                         f"{have}. Include at least one of each (or leave the candidate layers "
                         "at their default, all layers).")
    bl, be = _best(last), _best(earlier)
    gap = 100.0 * (be.mean - bl.mean)
    se = _paired_se(be, bl)
    threshold = max(th.margin, th.se_mult * se)
    dissimilar = gap > threshold
    similarity = "dissimilar" if dissimilar else "similar"
    chosen = be if dissimilar else bl
    size_class = size.size_class(th)
    quadrant = f"{'large' if size_class == 'large' else 'small'}-{similarity}"
    classifier = CLASSIFIER[similarity]
    n, k = probe.n_images, probe.folds
    how = f"{probe.method} probe, {k}-fold CV on {n:,} images"

    if dissimilar:
        why = (f"{be.layer} beats {bl.layer} by {gap:.1f} points ({how}; threshold "
               f"{threshold:.1f}) -> dissimilar data")
    elif gap < -threshold:
        why = (f"{bl.layer} beats the best earlier layer {be.layer} by {-gap:.1f} points "
               f"({how}) -> similar data")
    else:
        rel = "ahead of" if gap > 0 else "behind"
        why = (f"{be.layer} is only {abs(gap):.1f} points {rel} {bl.layer} ({how}; threshold "
               f"{threshold:.1f}): a tie goes to the last layer -> similar data")

    warn: list[str] = []
    codes_help = True
    if probe.raw is not None and 100.0 * (probe.raw.mean - chosen.mean) > threshold:
        codes_help = False
        warn.append(f"raw pixels ({probe.raw.mean:.3f}) beat {chosen.layer} codes "
                    f"({chosen.mean:.3f}) by {100 * (probe.raw.mean - chosen.mean):.1f} points: "
                    "these pretrained features do not help on this data; fine-tuning or training "
                    "from scratch may do better even at this size")
    if random_weights:
        warn.append("the backbone has random weights: the probe measures random features, not "
                    "transfer from ImageNet; the quadrant is not meaningful")
    counts = list(size.per_class.values())
    if counts and min(counts) > 0 and max(counts) / min(counts) >= 10:
        warn.append(f"classes are imbalanced ({min(counts)} to {max(counts)} images); consider "
                    "class_weight=balanced (cnncodes train --class-weight balanced)")

    codes_cmds = [
        shlex.join(["cnncodes", "extract", setup.source, "-o", "codes.h5",
                    *setup.backbone_args(), "--layers", chosen.layer]),
        shlex.join(["cnncodes", "train", "codes.h5", "--layer", chosen.layer, "--model",
                    classifier, "-o", "model.joblib"]),
    ]
    pol = FINETUNE_POLICY[similarity]
    ft_cmd = shlex.join(["cnncodes", "finetune", setup.source, *setup.backbone_args(pooling=False),
                         "-o", "run/", "--head-lr-mult", _fmt_num(pol["head_lr_mult"]),
                         "--freeze", str(int(pol["freeze"]))])
    finetune = {"head_lr_mult": pol["head_lr_mult"], "freeze": int(pol["freeze"]),
                "command": ft_cmd}
    per_class = f"{size.median_per_class:,.0f} per class"
    if size_class == "large":
        verb = ("fine-tune with the pretrained layers at a lower learning rate (head x10, stem and "
                "first stage frozen)" if not dissimilar else
                "fine-tune the whole network from the pretrained weights (one learning rate, "
                "nothing frozen)")
        action = verb
        commands, also = [ft_cmd], codes_cmds[0] + " && " + codes_cmds[1]
        sentence = (f"{why}; {size.n_images:,} images ({per_class}) is large -> {verb}: "
                    f"{ft_cmd}")
    else:
        action = (f"{'earlier' if dissimilar else 'last'}-layer codes + "
                  f"{'linear SVM' if dissimilar else 'linear classifier (logistic regression)'}")
        commands = codes_cmds
        also = ft_cmd if size_class == "medium" else None
        if size_class != "medium":
            finetune = None
        sentence = (f"{why}; use {chosen.layer} codes + {CLASSIFIER_NAME[classifier]}"
                    f" ({size.n_images:,} images, {per_class}: {size_class})")
        if size_class == "medium":
            sentence += f"; with this much data fine-tuning may pay off next: {ft_cmd}"
    if not codes_help:
        sentence += " (warning: raw pixels beat the codes)"
    comparison = {
        "best_last": bl.layer, "best_last_accuracy": round(bl.mean, 4),
        "best_earlier": be.layer, "best_earlier_accuracy": round(be.mean, 4),
        "gap_points": round(gap, 2), "paired_se_points": round(se, 2),
        "threshold_points": round(threshold, 2), "codes_beat_raw_pixels": codes_help,
        "raw_pixels_accuracy": round(probe.raw.mean, 4) if probe.raw is not None else None,
    }
    return Decision(quadrant=quadrant, size_class=size_class, similarity=similarity,
                    layer=chosen.layer, classifier=classifier, action=action,
                    explanation=sentence, commands=commands, also=also, finetune=finetune,
                    comparison=comparison, warnings=warn)


def _fmt_num(x: float | int) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ============================================================================================
# Measurement: size and sampling


def parse_budget(budget: str | float | int | None) -> float | None:
    """``"5min"``, ``"90s"``, ``"1.5h"``, ``"2m30s"``, ``300`` -> seconds; None/``"none"`` -> None.

    Raises:
        ValueError: unparseable or non-positive budget (the message shows valid forms).
    """
    if budget is None:
        return None
    if isinstance(budget, (int, float)):
        value = float(budget)
    else:
        s = budget.strip().lower().replace(" ", "")
        if s in ("none", "inf", "unlimited", ""):
            return None
        units = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
                 "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600,
                 "hours": 3600}
        parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]*)", s)
        if not parts or "".join(a + b for a, b in parts) != s or any(
                u and u not in units for _, u in parts):
            raise ValueError(f"Cannot read the time budget {budget!r}; write it like 300, 90s, "
                             "5min, 2m30s or 1h (or none).")
        value = sum(float(a) * units[u or "s"] for a, u in parts)
    if not value > 0:
        raise ValueError(f"The time budget must be positive; got {budget!r}.")
    return value


def stratified_order(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A seeded order of the rows whose every prefix is a proportional stratified sample.

    Each class is shuffled, its ``j``-th item gets the key ``(j + 0.5) / n_class``; rows are sorted
    by key (ties by class index). Rows with negative labels are left out.
    """
    rng = np.random.default_rng(seed)
    keys, rows, cls_of = [], [], []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        keys.append((np.arange(idx.size) + 0.5) / idx.size)
        rows.append(idx)
        cls_of.append(np.full(idx.size, c))
    if not rows:
        return np.zeros(0, np.int64)
    k, r, c = np.concatenate(keys), np.concatenate(rows), np.concatenate(cls_of)
    return r[np.lexsort((c, k))].astype(np.int64)


def select_sample(order: np.ndarray, labels: np.ndarray, n: int, *,
                  min_per_class: int = 0) -> np.ndarray:
    """The first ``n`` rows of ``order``, topped up so every class has ``min_per_class`` rows
    where it can; returned in ``order``'s order."""
    n = max(0, min(int(n), order.size))
    take = np.zeros(order.size, bool)
    take[:n] = True
    if min_per_class > 0:
        lab = labels[order]
        for c in np.unique(lab):
            pos = np.flatnonzero(lab == c)
            have = int(take[pos].sum())
            if have < min_per_class:
                take[pos[:min_per_class]] = True
    return order[take]


def round_down_nice(n: int) -> int:
    """Largest of 1, 1.5, 2, 3, 5, 7.5 x 10^k not above ``n`` (keeps budgeted sizes stable)."""
    if n < 10:
        return max(int(n), 0)
    mag = 10 ** int(math.floor(math.log10(n)))
    for m in (7.5, 5, 3, 2, 1.5, 1):
        if m * mag <= n:
            return int(m * mag)
    return int(mag)


def measure_size(source: ImageSource, *, sample: int = 200, seed: int = 0) -> SizeInfo:
    """Counts per class, plus image sizes and modes read from ``sample`` image headers.

    Raises:
        ValueError: the source has no labels, or fewer than two classes.
    """
    _check_labelled(source)
    counts = np.bincount(source.labels[source.labels >= 0], minlength=len(source.classes))
    per_class = {c: int(n) for c, n in zip(source.classes, counts, strict=True) if n > 0}
    order = stratified_order(source.labels, seed=seed)[:sample]
    from PIL import Image

    ws, hs, modes, bad = [], [], {}, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in order:
            try:
                with Image.open(source.abspath(int(i))) as im:
                    ws.append(im.size[0])
                    hs.append(im.size[1])
                    modes[im.mode] = modes.get(im.mode, 0) + 1
            except Exception:  # noqa: BLE001 - an unreadable header is only counted here
                bad += 1
    sizes: dict[str, Any] = {"sampled": int(order.size), "unreadable": bad, "modes": modes}
    if ws:
        for name, v in (("width", ws), ("height", hs)):
            sizes[name] = {"min": int(np.min(v)), "median": float(np.median(v)),
                           "max": int(np.max(v))}
    return SizeInfo(n_images=int(counts.sum()), per_class=per_class, image_sizes=sizes)


def _check_labelled(source: ImageSource) -> None:
    n_lab = int((source.labels >= 0).sum())
    n_cls = len(np.unique(source.labels[source.labels >= 0]))
    if n_lab == 0:
        raise ValueError(f"{source.root} has no labels ({source.kind} source); advise needs "
                         "labelled images: a folder of class folders, or a .txt/.csv list with a "
                         "label per image.")
    if n_cls < 2:
        raise ValueError(f"{source.root} has a single class ({source.classes}); advise needs at "
                         "least two classes to compare layers.")


# ============================================================================================
# Measurement: the linear probe


def _standardize(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = a.mean(0)
    sd = a.std(0)
    sd[sd < 1e-12] = 1.0
    return (a - mu) / sd, (b - mu) / sd


def _ridge_fold(A: np.ndarray, ya: np.ndarray, B: np.ndarray, yb: np.ndarray,
                classes: np.ndarray, grid: Sequence[float]) -> list[float]:
    """Accuracy on ``B`` of one-vs-all ridge classifiers fit on ``A`` for every alpha in grid.

    Solves ``min ||A W - Y||^2 + alpha * n * ||W||^2`` (A standardised, Y centred +-1 targets)
    from one eigendecomposition of A^T A (d <= n) or A A^T (n < d).
    """
    Y = np.where(ya[:, None] == classes[None, :], 1.0, -1.0)
    ymean = Y.mean(0)
    Yc = Y - ymean
    n, d = A.shape
    out = []
    if d <= n:
        s, V = np.linalg.eigh(A.T @ A)
        P = V.T @ (A.T @ Yc)
        BV = B @ V
        for a in grid:
            pred = BV @ (P / (np.maximum(s, 0)[:, None] + a * n)) + ymean
            out.append(float(np.mean(classes[pred.argmax(1)] == yb)))
    else:
        s, U = np.linalg.eigh(A @ A.T)
        Q = U.T @ Yc
        BA = B @ A.T @ U
        for a in grid:
            pred = BA @ (Q / (np.maximum(s, 0)[:, None] + a * n)) + ymean
            out.append(float(np.mean(classes[pred.argmax(1)] == yb)))
    return out


def _logreg_fold(A: np.ndarray, ya: np.ndarray, B: np.ndarray, yb: np.ndarray,
                 classes: np.ndarray, grid: Sequence[float], seed: int) -> list[float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in grid:
            m = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(A, ya)
            out.append(float(m.score(B, yb)))
    return out


def probe_layers(codes: Mapping[str, np.ndarray], labels: np.ndarray, *,
                 depths: Mapping[str, str], method: str = "logreg", folds: int = 5,
                 grid: Sequence[float] | None = None, seed: int = 0,
                 raw: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None) -> ProbeResult:
    """Stratified k-fold CV accuracy of a linear classifier on each layer's codes.

    All layers share the same folds (so per-fold differences are paired). For each layer the grid
    value with the best mean accuracy is kept (ties go to the stronger regularisation); layers
    whose codes equal an already probed layer's reuse its scores.

    Args:
        codes: ``{layer: (N, D)}`` in network order.
        labels: (N,) integer labels.
        depths: ``{layer: "last" | "earlier"}``.
        method: ``logreg`` (scikit-learn LogisticRegression, lbfgs, on standardised codes) or
            ``ridge`` (closed form, every alpha from one eigendecomposition; faster).
        folds: CV folds (reduced to the smallest class count, at least 2).
        grid: ridge alphas (x rows) or logistic C values; default :data:`RIDGE_ALPHAS` /
            :data:`LOGREG_CS`.
        raw: optional (N, P) raw-pixel features probed the same way as a reference row.
        class_names: names of the label values (for messages).

    Raises:
        ValueError: unknown method, fewer than two classes with two images each.
    """
    from sklearn.model_selection import StratifiedKFold

    if method not in PROBES:
        raise ValueError(f"Unknown probe {method!r}; choose one of {', '.join(PROBES)}.")
    grid = list(grid if grid is not None else (RIDGE_ALPHAS if method == "ridge" else LOGREG_CS))
    if not grid or any(g <= 0 for g in grid):
        raise ValueError(f"The probe grid must hold positive values; got {grid}.")
    labels = np.asarray(labels)
    vals, counts = np.unique(labels, return_counts=True)
    keep_cls = vals[counts >= 2]
    excluded = [str(class_names[v]) if class_names is not None else str(v)
                for v in vals[counts < 2]]
    if keep_cls.size < 2:
        raise ValueError(f"The probe needs at least 2 classes with 2+ images each; the sample has "
                         f"counts {dict(zip(vals.tolist(), counts.tolist(), strict=True))}. "
                         "Add images, or raise the sample size (--sample).")
    rows = np.flatnonzero(np.isin(labels, keep_cls))
    y = labels[rows]
    k = int(min(folds, np.bincount(np.searchsorted(keep_cls, y)).min()))
    k = max(k, 2)
    if k < folds:
        log.warning("the smallest class has only %d images in the sample: %d-fold CV instead of "
                    "%d", k, k, folds)
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rows, y))

    def score(name: str, depth: str, X: np.ndarray) -> LayerScore:
        t0 = time.perf_counter()
        X = np.asarray(X, np.float64)[rows]
        per = []
        for tr, te in splits:
            A, B = _standardize(X[tr], X[te])
            if method == "ridge":
                per.append(_ridge_fold(A, y[tr], B, y[te], keep_cls, grid))
            else:
                per.append(_logreg_fold(A, y[tr], B, y[te], keep_cls, grid, seed))
        acc = np.asarray(per)  # folds x grid
        means = acc.mean(0)
        # ties -> stronger regularisation: largest alpha (ridge) / smallest C (logreg)
        pref = sorted(range(len(grid)), key=lambda i: -grid[i] if method == "ridge" else grid[i])
        j = next(i for i in pref if means[i] >= means.max() - 1e-12)
        return LayerScore(name, depth, int(X.shape[1]), acc[:, j].tolist(), float(grid[j]),
                          means.tolist(), time.perf_counter() - t0)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=PROBE_BLAS_THREADS, user_api="blas"):
        return _probe_all(codes, depths, score, raw, method, rows, k, grid, excluded)


def _probe_all(codes: Mapping[str, np.ndarray], depths: Mapping[str, str], score: Any,
               raw: np.ndarray | None, method: str, rows: np.ndarray, k: int,
               grid: list[float], excluded: list[str]) -> ProbeResult:
    out: dict[str, LayerScore] = {}
    seen: list[tuple[str, np.ndarray]] = []
    for name, X in codes.items():
        X = np.asarray(X)
        twin = next((m for m, Z in seen if Z.shape == X.shape
                     and np.allclose(Z, X, rtol=1e-5, atol=1e-6)), None)
        if twin is not None:
            s = out[twin]
            out[name] = LayerScore(name, depths[name], s.dim, list(s.fold_scores), s.param,
                                   list(s.grid_scores), 0.0, same_as=twin)
        else:
            out[name] = score(name, depths[name], X)
            seen.append((name, X))
        log.debug("probe %-8s %5d-d  CV accuracy %.4f +- %.4f%s", name, out[name].dim,
                  out[name].mean, out[name].std,
                  f" (same codes as {out[name].same_as})" if out[name].same_as else "")
    raw_score = score("raw", "raw", raw) if raw is not None else None
    return ProbeResult(method, int(rows.size), k, grid, out, raw_score, excluded)


# ============================================================================================
# Measurement: the pretrained network's own view (ImageNet head, BatchNorm statistics)


class PretrainedMeter:
    """Runs the complete network (with its head) on a sample of images and accumulates:

    * the ImageNet head's softmax: top-1 probability, normalised entropy, predicted category;
    * per BatchNorm layer, the per-channel mean and variance of its *input* over the sample, to
      compare with the running statistics it learnt during pretraining.

    A fresh copy of the network is built (the caller's extractor and RNG are not touched).
    """

    def __init__(self, spec: BackboneSpec, resolved: ResolvedWeights, *,
                 device: torch.device | str = "cpu"):
        self.spec = spec
        self.resolved = resolved
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            model = build_model(spec)
        load_weights(model, spec, resolved)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.bns = [(n, m) for n, m in self.model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    and m.running_mean is not None]
        self._sum = [torch.zeros(m.num_features, dtype=torch.float64) for _, m in self.bns]
        self._sq = [torch.zeros(m.num_features, dtype=torch.float64) for _, m in self.bns]
        self._cnt = [0] * len(self.bns)
        self._handles = [m.register_forward_pre_hook(self._hook(i))
                         for i, (_, m) in enumerate(self.bns)]
        self.top1: list[np.ndarray] = []
        self.entropy: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n_outputs: int | None = None

    def _hook(self, i: int) -> Any:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach().to(torch.float64)
            dims = [0] + list(range(2, x.ndim))
            self._sum[i] += x.sum(dim=dims).cpu()
            self._sq[i] += (x * x).sum(dim=dims).cpu()
            self._cnt[i] += x.numel() // x.shape[1]

        return hook

    @property
    def n_seen(self) -> int:
        return int(sum(len(p) for p in self.pred))

    def update(self, images: torch.Tensor, labels: np.ndarray, pp: Any) -> None:
        """Add a uint8 NCHW batch (``pp`` = the extractor's preprocessing)."""
        x = normalize_batch(images.to(self.device), pp, channels_last=True)
        with torch.inference_mode():
            logits = self.model(x).float()
        if logits.ndim != 2:
            return
        self.n_outputs = int(logits.shape[1])
        p = torch.softmax(logits, dim=1)
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1) / math.log(max(2, logits.shape[1]))
        self.top1.append(p.max(1).values.cpu().numpy())
        self.entropy.append(ent.cpu().numpy())
        self.pred.append(p.argmax(1).cpu().numpy())
        self.labels.append(np.asarray(labels))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def head_evidence(self) -> dict[str, Any]:
        """ImageNet-head confidence, entropy and agreement with the user's classes."""
        from sklearn.metrics import normalized_mutual_info_score

        if not self.pred:
            return {"available": False, "reason": "no images reached the head"}
        if self.n_outputs != 1000:
            return {"available": False, "meaningful": False,
                    "reason": f"the network's head has {self.n_outputs} outputs, not ImageNet's "
                              "1000 classes"}
        top1, ent = np.concatenate(self.top1), np.concatenate(self.entropy)
        pred, lab = np.concatenate(self.pred), np.concatenate(self.labels)
        cats = self.resolved.categories
        vals, cnt = np.unique(pred, return_counts=True)
        top = sorted(zip(cnt.tolist(), vals.tolist(), strict=True), reverse=True)[:5]
        return {
            "available": True, "meaningful": True, "n_images": int(top1.size),
            "mean_top1_prob": round(float(top1.mean()), 4),
            "median_top1_prob": round(float(np.median(top1)), 4),
            "frac_top1_above_0.5": round(float((top1 > 0.5).mean()), 4),
            "mean_normalized_entropy": round(float(ent.mean()), 4),
            "distinct_top1_categories": int(vals.size),
            "nmi_classes_vs_imagenet": round(float(normalized_mutual_info_score(lab, pred)), 4),
            "top_categories": [{"category": cats[v] if cats and v < len(cats) else int(v),
                                "share": round(c / top1.size, 4)} for c, v in top],
            "top1_hist": np.histogram(top1, bins=10, range=(0, 1))[0].tolist(),
            "note": "ImageNet-like photos make the head confident (high top-1, low entropy); "
                    "side evidence only, the probe decides",
        }

    def bn_evidence(self) -> dict[str, Any]:
        """Distance between the data's BN-input statistics and the running (pretraining) ones."""
        if not self.bns:
            return {"available": False,
                    "reason": f"{self.spec.name} has no BatchNorm layers (nothing to compare)"}
        per = []
        for i, (name, m) in enumerate(self.bns):
            if not self._cnt[i]:
                continue
            mu = self._sum[i] / self._cnt[i]
            var = (self._sq[i] / self._cnt[i] - mu * mu).clamp_min(0) + m.eps
            rm = m.running_mean.detach().double().cpu()
            rv = m.running_var.detach().double().cpu() + m.eps
            kl = 0.5 * (torch.log(rv / var) + (var + (mu - rm) ** 2) / rv - 1)
            z = (mu - rm).abs() / rv.sqrt()
            per.append({"layer": name, "kl": round(float(kl.mean()), 4),
                        "mean_shift_z": round(float(z.mean()), 4),
                        "log_var_ratio": round(float(torch.log(var / rv).mean()), 4)})
        if not per:
            return {"available": False, "reason": "no BatchNorm layer saw any input"}
        kls = np.array([p["kl"] for p in per])
        thirds = np.array_split(kls, 3) if kls.size >= 3 else [kls]
        return {
            "available": True, "meaningful": True, "n_images": self.n_seen,
            "n_bn_layers": len(per), "mean_kl": round(float(kls.mean()), 4),
            "median_kl": round(float(np.median(kls)), 4),
            "kl_by_depth_thirds": [round(float(t.mean()), 4) for t in thirds],
            "mean_shift_z": round(float(np.mean([p["mean_shift_z"] for p in per])), 4),
            "per_layer": per,
            "note": "Gaussian KL(data || running stats) per channel, averaged; 0 = the data "
                    "looks like the pretraining data to that layer. Depends on the input size "
                    "too: compare data sets at the same --input-size; side evidence only",
        }


# ============================================================================================
# The advise run


def _raw_thumbnails(images: torch.Tensor) -> np.ndarray:
    x = torch.nn.functional.adaptive_avg_pool2d(images.float(), RAW_SIDE)
    return (x.flatten(1) / 255.0).numpy()


def advise(
    source: str | os.PathLike | ImageSource,
    *,
    backbone: str = "mobilenet_v2",
    weights: str | None = "auto",
    layers: str | Sequence[str] | None = None,
    pooling: str = "avg",
    input_size: int | None = None,
    budget: str | float | None = "5min",
    max_images: int = 2000,
    folds: int = 5,
    probe: str = "logreg",
    seed: int = 0,
    head_sample: int = 256,
    thresholds: Thresholds | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    report: str | os.PathLike | None = None,
) -> Advice:
    """Measure the data and the backbone's layers, then decide the quadrant, layer and action.

    Args:
        source: labelled images (class-folder tree or labelled list).
        backbone, weights, pooling, input_size: as for :func:`cnncodes.extract`; the probe uses
            exactly the codes that ``extract`` would write.
        layers: candidate layers (default: every layer of the backbone).
        budget: time budget (``"5min"``, seconds, or None for no limit); it sets the sample size.
        max_images: largest sample probed (``--sample``).
        folds: stratified CV folds.
        probe: ``logreg`` (default: StandardScaler + LogisticRegression over a small C grid)
            or ``ridge`` (closed-form ridge classifier, every alpha from one eigendecomposition;
            faster on big samples).
        seed: seeds the sample, the folds and the solvers.
        head_sample: images shown to the complete network for the head/BatchNorm evidence.
        thresholds: decision thresholds (see :class:`Thresholds`).
        report: folder to write ``advice.json`` and ``advice.png`` into.

    Returns:
        An :class:`Advice`; ``advice.layer`` is the recommended layer.

    Raises:
        ValueError: unlabelled source, one class, unknown layer/probe, bad budget.
    """
    t0 = time.perf_counter()
    th = thresholds or Thresholds()
    budget_s = parse_budget(budget)
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {', '.join(PROBES)}.")
    if max_images < 4:
        raise ValueError(f"max_images must be >= 4; got {max_images}.")
    if folds < 2:
        raise ValueError(f"folds must be >= 2; got {folds}.")
    src = open_source(source)
    size = measure_size(src, seed=seed)
    spec = get_spec(backbone)
    cand = list(spec.layers) if layers in (None, "", ()) else resolve_layers(spec, layers)
    depths = {n: spec.cut(n).depth for n in cand}
    if "last" not in depths.values() or "earlier" not in depths.values():
        raise ValueError(f"Candidate layers {', '.join(cand)} of {backbone} must include a last "
                         f"layer ({', '.join(spec.last_layers)}) and an earlier one "
                         f"({', '.join(spec.earlier_layers)}).")
    ext = CodeExtractor(backbone, weights=weights, layers=cand, pooling=pooling,
                        input_size=input_size, device=device, precision=precision)
    pp = ext.preprocessing
    meter = None
    if not ext.resolved.is_random and head_sample > 0:
        meter = PretrainedMeter(spec, ext.resolved, device=ext.device)
    order = stratified_order(src.labels, seed=seed)
    n_cap = min(max_images, order.size)
    dataset = make_dataset(src, ext, max_pixels=max_pixels)  # the codes extract would write
    got_codes: dict[int, dict[str, np.ndarray]] = {}
    got_raw: dict[int, np.ndarray] = {}
    failures: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_cap, unit="img", desc=f"advise {backbone}", dynamic_ncols=True)

    def run(indices: Sequence[int]) -> float:
        """Extract ``indices``; returns seconds spent outside the head/BN meter."""
        workers = loader_workers(ext.device, num_workers, len(indices), batch_size)
        t = time.perf_counter()
        t_meter = 0.0
        indices = [int(i) for i in indices]
        for batch, codes in iter_codes(dataset, ext, indices, batch_size=batch_size,
                                       num_workers=workers, threads=threads):
            raw = _raw_thumbnails(batch.images) if batch.indices else None
            for j, i in enumerate(batch.indices):
                got_codes[i] = {k: v[j] for k, v in codes.items()}
                got_raw[i] = raw[j]
            failures.extend((src.paths[i], r) for i, r in batch.failures)
            if meter is not None and meter.n_seen < head_sample and batch.indices:
                tm = time.perf_counter()
                take = min(len(batch.indices), head_sample - meter.n_seen)
                meter.update(batch.images[:take], src.labels[batch.indices[:take]], pp)
                t_meter += time.perf_counter() - tm
            if bar is not None:
                bar.update(len(batch.indices) + len(batch.failures))
        return time.perf_counter() - t - t_meter

    try:
        first = order[:min(n_cap, max(head_sample, 2 * batch_size))]
        secs = run(first)
        rate = len(first) / secs if secs > 0 else float("inf")
        n = n_cap
        if budget_s is not None:
            fit = int(rate * EXTRACT_SHARE[probe] * budget_s)
            n = min(n_cap, max(first.size, round_down_nice(fit)))
            if n < n_cap:
                log.info("budget %.0f s at %.0f img/s: probing %d of %d images", budget_s, rate,
                         n, order.size)
        sample = select_sample(order, src.labels, n, min_per_class=folds)
        failed = {p for p, _ in failures}
        rest = [int(i) for i in sample
                if int(i) not in got_codes and src.paths[int(i)] not in failed]
        if bar is not None:
            bar.total = len(sample)
            bar.refresh()
        if rest:
            run(rest)
    finally:
        if bar is not None:
            bar.close()
        if meter is not None:
            meter.close()
    t_extract = time.perf_counter() - t0
    in_sample = np.sort(np.array([i for i in sample if int(i) in got_codes], np.int64))
    for p, r in failures:
        log.warning("skipping %s: %s", p, r)
    codes = {k: np.stack([got_codes[int(i)][k] for i in in_sample]) for k in cand}
    raw = np.stack([got_raw[int(i)] for i in in_sample])
    y = src.labels[in_sample]
    t_probe = time.perf_counter()
    result = probe_layers(codes, y, depths=depths, method=probe, folds=folds, seed=seed, raw=raw,
                          class_names=src.classes)
    t_probe = time.perf_counter() - t_probe
    if ext.resolved.is_random:
        reason = ("random weights: the head and the BatchNorm statistics are initial values, not "
                  "ImageNet's; not meaningful")
        head = {"available": False, "meaningful": False, "reason": reason}
        bn = {"available": False, "meaningful": False, "reason": reason}
    elif meter is None:
        head = bn = {"available": False, "reason": "head_sample=0"}
    else:
        head, bn = meter.head_evidence(), meter.bn_evidence()
    setup = RunSetup(source=os.fspath(source) if not isinstance(source, ImageSource)
                     else os.fspath(src.root), backbone=backbone,
                     weights=str(weights) if weights is not None else "random",
                     input_size=input_size, pooling=pooling)
    decision = decide(size, result, thresholds=th, setup=setup,
                      random_weights=ext.resolved.is_random)
    elapsed = time.perf_counter() - t0
    if budget_s is not None and elapsed > 1.25 * budget_s:
        log.warning("advise took %.0f s, over its %.0f s budget (probe fits are slower than "
                    "estimated); pass a smaller --sample to stay within it", elapsed, budget_s)
    meta = {
        "seed": seed, "budget_s": budget_s, "elapsed_s": round(elapsed, 2),
        "extract_s": round(t_extract, 2), "probe_s": round(t_probe, 2),
        "images_per_s": round(rate, 1),
        "sample_requested": int(n), "sample_used": int(in_sample.size),
        "failures": len(failures), "weights_id": ext.resolved.id,
        "input_size": pp.crop, "pooling": pooling, "device": str(ext.device),
        "versions": versions(),
    }
    adv = Advice(setup, size, head, bn, result, decision, th, meta)
    log.debug("%s", adv.explanation)
    if report is not None:
        save_report(adv, report)
    return adv


# ============================================================================================
# --layers auto


def recorded_advice(store: str | os.PathLike, *, backbone: str,
                    pooling: str = "avg") -> dict[str, Any] | None:
    """The advice an earlier ``--layers auto`` run recorded for ``store``, if it still applies.

    Looks at the store's provenance, then at the journal of an interrupted first extraction. Returns
    None when nothing was recorded or the backbone/pooling differ.
    """
    from ..codes.store import FeatureStore
    from ..codes.journal import Journal

    path = Path(store)
    if path.is_file():
        try:
            prov = FeatureStore(path).provenance
        except (ValueError, OSError):
            return None
        adv = prov.get("advice")
        if (isinstance(adv, dict) and adv.get("layer") in prov.get("layers", [])
                and prov.get("backbone") == backbone and prov.get("pooling") == pooling):
            return adv
        return None
    journal = Journal(path)
    manifest = journal.manifest() if journal.exists() else None
    if manifest and journal.part_files() and manifest.get("backbone") == backbone \
            and manifest.get("pooling") == pooling and len(manifest.get("layers", [])) == 1:
        layer = manifest["layers"][0]
        return {"version": 1, "layer": layer, "reused": True,
                "explanation": f"{layer}: chosen by an earlier --layers auto run that was "
                               "interrupted before its first commit (its evidence was not "
                               "kept; `cnncodes advise` shows it again)"}
    return None


def choose_layer(
    source: str | os.PathLike | ImageSource,
    *,
    backbone: str = "mobilenet_v2",
    weights: str | None = "auto",
    pooling: str = "avg",
    input_size: int | None = None,
    budget: str | float | None = "2min",
    reuse_from: str | os.PathLike | None = None,
    **advise_options: Any,
) -> tuple[str, dict[str, Any]]:
    """The layer ``--layers auto`` uses, with the evidence to record.

    Runs :func:`advise` (same rule as ``cnncodes advise``) and returns ``(layer, summary)`` where
    ``summary`` is :meth:`Advice.summary` (compact, JSON-able; store it as provenance
    ``advice``). With ``reuse_from`` (the output store) an earlier choice recorded there is
    returned instead, so resuming an extraction keeps its layer.
    """
    if reuse_from is not None:
        prior = recorded_advice(reuse_from, backbone=backbone, pooling=pooling)
        if prior is not None:
            log.info("--layers auto: reusing %s, recorded in %s", prior["layer"], reuse_from)
            return str(prior["layer"]), prior
    adv = advise(source, backbone=backbone, weights=weights, pooling=pooling,
                 input_size=input_size, budget=budget, **advise_options)
    return adv.layer, adv.summary()


# ============================================================================================
# Reports: JSON, PNG, text


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
    means = [100 * pr.layers[n].mean for n in names]
    errs = [100 * pr.layers[n].std for n in names]
    ax = axes[0]
    x = np.arange(len(names))
    ax.errorbar(x, means, yerr=errs, marker="o", capsize=3, color="tab:blue",
                label=f"{pr.method} probe, {pr.folds}-fold CV")
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
                 f"{pr.n_images:,} images\n{advice.decision.quadrant}", fontsize=10)
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
    fig.savefig(out)
    return out


def save_report(advice: Advice, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``advice.json`` and ``advice.png`` into ``folder``; returns their paths."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise ValueError(f"--report {d} is a file; pass a folder (it is created if needed).")
    d.mkdir(parents=True, exist_ok=True)
    js = d / "advice.json"
    atomic_write_text(js, json.dumps(advice.to_dict(), indent=2))
    png = plot_advice(advice, d / "advice.png")
    return {"json": js, "png": png}


def format_advice(advice: Advice) -> str:
    """The human-readable report ``cnncodes advise`` prints."""
    s, d, pr = advice.size, advice.decision, advice.probe
    sz = s.to_dict()
    lines = [f"data      {advice.setup.source}: {s.n_images:,} images, {s.n_classes} classes, "
             f"{sz['per_class_min']}-{sz['per_class_max']} per class (median "
             f"{s.median_per_class:g}) -> {d.size_class}"]
    im = s.image_sizes
    if "width" in im:
        modes = ", ".join(f"{k} {v}" for k, v in im["modes"].items())
        lines.append(f"images    {im['width']['median']:g}x{im['height']['median']:g} px median "
                     f"(w {im['width']['min']}-{im['width']['max']}, h {im['height']['min']}-"
                     f"{im['height']['max']}; {im['sampled']} sampled; modes {modes}); "
                     f"network input {advice.meta.get('input_size')} px")
    lines.append(f"backbone  {advice.setup.backbone} ({advice.meta.get('weights_id')})")
    lines.append("similarity evidence")
    h = advice.head
    if h.get("available"):
        cats = ", ".join(f"{c['category']} {100 * c['share']:.0f}%" for c in h["top_categories"])
        lines.append(f"  (a) ImageNet head   mean top-1 prob {h['mean_top1_prob']:.3f}, "
                     f"normalised entropy {h['mean_normalized_entropy']:.3f}, NMI(classes, "
                     f"ImageNet top-1) {h['nmi_classes_vs_imagenet']:.3f}; top: {cats}")
    else:
        lines.append(f"  (a) ImageNet head   n/a: {h.get('reason')}")
    b = advice.batchnorm
    if b.get("available"):
        thirds = ", ".join(f"{x:.3g}" for x in b["kl_by_depth_thirds"])
        lines.append(f"  (b) BatchNorm stats mean KL {b['mean_kl']:.3g} over {b['n_bn_layers']} "
                     f"layers (early/mid/late {thirds}), mean |shift| {b['mean_shift_z']:.3g} sd")
    else:
        lines.append(f"  (b) BatchNorm stats n/a: {b.get('reason')}")
    lines.append(f"  (c) linear probe    {pr.method}, {pr.folds}-fold stratified CV on "
                 f"{pr.n_images:,} images (seed {advice.meta.get('seed')})")
    rows = list(pr.layers.values()) + ([pr.raw] if pr.raw is not None else [])
    for r in rows:
        mark = " <- recommended" if r.layer == advice.layer else ""
        same = f" (= {r.same_as})" if r.same_as else ""
        lines.append(f"      {r.layer:<10} {r.depth:<8} {r.dim:>6}-d  {100 * r.mean:6.2f} "
                     f"+- {100 * r.std:4.2f}{same}{mark}")
    if pr.excluded_classes:
        lines.append(f"      classes left out (under 2 images): {', '.join(pr.excluded_classes)}")
    lines.append(f"quadrant  {d.quadrant}: {d.action}")
    lines.append(f"why       {d.explanation}")
    for w in d.warnings:
        lines.append(f"warning   {w}")
    lines.append("next      " + "\n          ".join(d.commands))
    if d.also:
        lines.append(f"also      {d.also}")
    lines.append(f"took      {advice.meta['elapsed_s']:.1f} s (budget "
                 f"{advice.meta['budget_s'] or 'none'}; {advice.meta['images_per_s']} img/s)")
    return "\n".join(lines)


__all__ = [
    "Advice", "Decision", "LayerScore", "PretrainedMeter", "ProbeResult", "RunSetup", "SizeInfo",
    "Thresholds", "advise", "choose_layer", "decide", "format_advice", "measure_size",
    "parse_budget", "plot_advice", "probe_layers", "recorded_advice", "save_report",
    "select_sample", "stratified_order",
]
