"""The pure decision rule of the advisor: quadrant, layer and route from the evidence.

Nothing here measures anything: :func:`decide` turns a :class:`~cnncodes.advisor.evidence.SizeInfo`
and a :class:`~cnncodes.advisor.probe.ProbeResult` into a :class:`~cnncodes.advisor.verdict.Verdict`
(enums and numbers), deterministically, so it is unit-tested on constructed evidence. The words
(the explanation, the warnings, the next commands) are rendered from the verdict by
:mod:`cnncodes.report.verdict_text`.

**The rule**, in order:

    0. *Sample.* A layer comparison is carried by the probe sample only when its smallest class
       has at least ``min_per_class`` images (default 10) and it holds at least ``min_images``
       images in all (default 100, and never fewer than ``min_per_class`` x classes). Why these:
       stratified k-fold CV tests each image once, so at the default 5 folds 10 images per class
       put 2 of every class in each test fold; with fewer the folds are cut down (below 5 per
       class) or a class's share of a fold is a single image, and the per-fold accuracies, hence
       the paired standard error, move in steps of whole classes. In all: a layer's CV accuracy
       on ``n`` images has a binomial standard error of up to ``50 / sqrt(n)`` points (at p =
       0.5), i.e. 5 points at 100 images and 25 points at 4; the gaps the rule decides on are
       1-6 points on real data (benchmarks/ADVISE_RESULTS.md), so below 100 images the noise of
       one layer's accuracy alone is larger than the effect being compared (on 4 images one image
       is 25 points: "stage3 beats pool by 75 points" is 3 images). Below the minimum the evidence
       is still reported, but the verdict says "not enough images to compare layers: N per class
       / M in all would be needed", claims no lead (the last layer is kept, as for a tie; the
       raw-pixel comparison is not made either) and a warning says the same. With a median below
       2 images per class (:data:`~cnncodes.advisor.defaults.MIN_PROBE_PER_CLASS`) nothing can be
       probed and :func:`check_probe_size` refuses before any extraction.
    1. *Size.* ``large`` when the median number of images per class is at least
       ``large_per_class`` (default 1,000) **and** there are at least ``large_total`` (10,000)
       images; ``small`` when the median per class is below ``small_per_class`` (200); ``medium``
       in between (treated as small, with fine-tuning named as the next step to try).
    2. *Similarity (answer a).* :func:`cnncodes.advisor.similarity.judge_similarity` on evidence
       that does not depend on which layer wins: the LEEP share of the ImageNet head and the gain
       of the last layer's codes over raw pixels (the latter only when step 0 passes); Cui et
       al.'s domain EMD is shown beside them. Its rule, thresholds and calibration are documented
       in that module.
    2b. *Layer (answer b).* ``gap`` = CV accuracy of the best earlier layer minus that of the best
       last layer, in points; ``threshold`` = max(``margin`` (default 1.0 point), ``se_mult``
       (default 0) x the paired standard error of that difference over the folds). ``gap >
       threshold`` -> the best earlier layer, otherwise the best last layer (a near-tie goes to
       the last layer, the conventional choice, at a cost of at most ``margin`` points of CV
       accuracy). Exact ties between layers go to the deeper layer. The gap is reported with a
       95% confidence interval: a t interval over the paired per-fold differences with Nadeau
       and Bengio's correction for overlapping training folds (variance x (1/k + 1/(k-1)), k-1
       degrees of freedom), :func:`paired_interval`. When (a) says similar but (b) picks an
       earlier layer, or (a) says dissimilar and (b) keeps the last layer, the explanation says
       so plainly: the layer follows (b), the quadrant (a).

       Why no significance test by default: the CV gap is an unbiased estimate, so taking the
       best layer maximises expected accuracy; demanding 2 standard errors before leaving the
       last layer was measured to cost 5-6 held-out points on 400-image samples
       (benchmarks/ADVISE_RESULTS.md). ``se_mult`` > 0 is there for users who want it.
    3. *Quadrant -> action.* small+similar: the layer of (b) + logistic regression;
       small+dissimilar: the layer of (b) + linear SVM; large+similar: fine-tune with the
       pretrained layers at a lower learning rate (head x10, one stage frozen);
       large+dissimilar: fine-tune the whole network from the pretrained init (one rate,
       nothing frozen). See :data:`~cnncodes.advisor.verdict.FINETUNE_POLICY`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError
from ..options import DEFAULT_BACKBONE
from .defaults import (
    LARGE_PER_CLASS,
    LARGE_TOTAL,
    MARGIN_POINTS,
    MIN_COMPARE_IMAGES,
    MIN_COMPARE_PER_CLASS,
    MIN_PROBE_PER_CLASS,
    SE_MULT,
    SIM_CODE_GAIN,
    SIM_CODE_LOSS,
    SIM_LEEP_SHARE,
    SMALL_PER_CLASS,
)
from .evidence import SizeInfo
from .probe import LayerScore, ProbeResult
from .similarity import SimilarityEvidence, SimilarityThresholds, judge_similarity
from .verdict import (
    CLASSIFIER,
    FINETUNE_POLICY,
    LayerGap,
    Quadrant,
    Route,
    SampleCheck,
    Similarity,
    SizeClass,
    Verdict,
)


@dataclass(frozen=True)
class Thresholds:
    """The decision rule's documented, overridable thresholds.

    Attributes:
        small_per_class: median images per class below which the data set is ``small``.
        large_per_class: median images per class from which it can be ``large``.
        large_total: total images needed (as well) to be ``large``.
        margin: minimum CV-accuracy gap, in points, for an earlier layer to beat the last one.
        se_mult: the gap must also exceed this many paired standard errors over the folds.
        min_per_class: images of the smallest probed class needed to compare layers (step 0).
        min_images: images in the probe sample needed to compare layers (step 0).
        leep_share, code_gain, code_loss: the similarity verdict's thresholds (step 2, see
            :mod:`cnncodes.advisor.similarity`).
    """

    small_per_class: int = SMALL_PER_CLASS
    large_per_class: int = LARGE_PER_CLASS
    large_total: int = LARGE_TOTAL
    margin: float = MARGIN_POINTS
    se_mult: float = SE_MULT
    min_per_class: int = MIN_COMPARE_PER_CLASS
    min_images: int = MIN_COMPARE_IMAGES
    leep_share: float = SIM_LEEP_SHARE
    code_gain: float = SIM_CODE_GAIN
    code_loss: float = SIM_CODE_LOSS

    def similarity(self) -> SimilarityThresholds:
        """The thresholds of step 2."""
        return SimilarityThresholds(self.leep_share, self.code_gain, self.code_loss)

    def __post_init__(self) -> None:
        for name in ("small_per_class", "large_per_class", "large_total", "min_per_class",
                     "min_images"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be >= 1. Got {getattr(self, name)} instead.")
        if self.small_per_class > self.large_per_class:
            raise OptionError(f"small_per_class must not exceed large_per_class. Got "
                              f"small_per_class ({self.small_per_class}) > large_per_class "
                              f"({self.large_per_class}) instead; raise --large-per-class or lower "
                              "--small-per-class.")
        if self.margin < 0 or self.se_mult < 0:
            raise OptionError(f"margin and se_mult must be >= 0. Got margin={self.margin}, "
                              f"se_mult={self.se_mult} instead.")


@dataclass(frozen=True)
class RunSetup:
    """What the next commands must repeat: the source and the extraction options."""

    source: str = "IMAGES"
    backbone: str = DEFAULT_BACKBONE
    weights: str = "auto"
    input_size: int | None = None
    pooling: str = "avg"


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


def paired_interval(diffs: Sequence[float], *, level: float = 0.95) -> tuple[float, float]:
    """``(mean, half_width)`` of a confidence interval for the mean of per-fold differences.

    A t interval with k-1 degrees of freedom whose variance carries Nadeau and Bengio's correction
    for k-fold CV (training sets overlap, so the folds are not independent): ``s^2 (1/k +
    1/(k-1))`` instead of ``s^2 / k``. Half width 0 with fewer than 2 folds.
    """
    from scipy.stats import t

    d = np.asarray(diffs, np.float64)
    k = d.size
    if k < 2:
        return float(d.mean()) if k else 0.0, 0.0
    sd = float(np.std(d, ddof=1))
    half = float(t.ppf(0.5 + level / 2, k - 1)) * sd * math.sqrt(1 / k + 1 / (k - 1))
    return float(d.mean()), half


def _compare_layers(probe: ProbeResult, th: Thresholds) -> LayerGap:
    last = [s for s in probe.layers.values() if s.depth == "last"]
    earlier = [s for s in probe.layers.values() if s.depth == "earlier"]
    if not last or not earlier:
        have = ", ".join(f"{k} ({s.depth})" for k, s in probe.layers.items()) or "none"
        raise OptionError(f"The decision compares the last layer with earlier ones: the probe "
                          f"must hold at least one of each. Got {have} instead; leave the "
                          "candidate layers at their default (all layers) or add the missing "
                          "depth.")
    bl, be = _best(last), _best(earlier)
    se = _paired_se(be, bl)
    _, ci = paired_interval(100.0 * (np.asarray(be.fold_scores) - np.asarray(bl.fold_scores)))
    return LayerGap(bl, be, 100.0 * (be.mean - bl.mean), se, max(th.margin, th.se_mult * se), ci)


def check_sample(size: SizeInfo, probe: ProbeResult, th: Thresholds) -> SampleCheck:
    """Step 0: the probe sample against ``min_per_class`` / ``min_images``."""
    counts = probe.class_counts or size.per_class  # constructed probes: the data set's counts
    n_classes = len(counts) or size.n_classes
    smallest = min(counts.values()) if counts else 0
    return SampleCheck(int(smallest), int(probe.n_images), int(n_classes), th.min_per_class,
                       max(th.min_images, th.min_per_class * n_classes), int(size.n_images))


def check_probe_size(size: SizeInfo, *, source: str = "the source",
                     thresholds: Thresholds | None = None, last_layer: str | None = None) -> None:
    """Refuse a data set too small to probe at all (median under
    :data:`~cnncodes.advisor.defaults.MIN_PROBE_PER_CLASS` images per class); ``last_layer`` (the
    backbone's default layer) is the one the message suggests instead of the advisor.

    Raises:
        OptionError: naming the source, its counts, what would be enough and the way out.
    """
    th = thresholds or Thresholds()
    if size.median_per_class >= MIN_PROBE_PER_CLASS:
        return
    need = max(th.min_images, th.min_per_class * size.n_classes)
    raise OptionError(
        f"advise needs at least {MIN_PROBE_PER_CLASS} images per class to probe the layers. Got "
        f"{source}: {size.n_images:,} images in {size.n_classes} classes, median "
        f"{size.median_per_class:g} per class, instead. To compare layers "
        f"{th.min_per_class} per class / {need:,} in all would be needed: add images, or skip "
        "the advisor and pick a layer yourself ("
        + (f"e.g. --layers {last_layer}, the backbone's last layer)" if last_layer
           else "`cnncodes models BACKBONE` lists the layers)"))


def _similarity_evidence(probe: ProbeResult, g: LayerGap, sample: SampleCheck,
                         similarity: SimilarityEvidence | None,
                         random_weights: bool) -> SimilarityEvidence:
    """The head's measures as given, plus the probe's code gain (last layer vs raw pixels)."""
    base = similarity or SimilarityEvidence(notes={"leep_share": "no ImageNet-head evidence given"})
    notes = dict(base.notes)
    gain = None
    if probe.raw is None:
        notes["code_gain"] = "no raw-pixel row in the probe"
    elif not sample.enough:
        notes["code_gain"] = "the probe sample is too small to compare (step 0)"
    else:
        gain = 100.0 * (g.last.mean - probe.raw.mean)
    return dataclasses.replace(base, code_gain=gain, notes=notes,
                               pretrained=base.pretrained and not random_weights)


def _codes_help(probe: ProbeResult, g: LayerGap, sample: SampleCheck) -> bool | None:
    """Whether the chosen layer's codes beat raw pixels by the rule's threshold (None: not
    compared, the sample being too small)."""
    if not sample.enough:
        return None
    raw = probe.raw
    return not (raw is not None and 100.0 * (raw.mean - g.chosen.mean) > g.threshold)


def _imbalance(size: SizeInfo) -> tuple[int, int] | None:
    """``(smallest, largest)`` class counts when they differ 10x or more."""
    counts = list(size.per_class.values())
    if counts and min(counts) > 0 and max(counts) / min(counts) >= 10:
        return int(min(counts)), int(max(counts))
    return None


def decide(size: SizeInfo, probe: ProbeResult, *, thresholds: Thresholds | None = None,
           random_weights: bool = False,
           similarity: SimilarityEvidence | None = None) -> Verdict:
    """Quadrant, layer and route from the evidence, by the rule in the module docstring.

    Args:
        size: the data set's size.
        probe: CV accuracies of the candidate layers (needs at least one ``last`` and one
            ``earlier`` layer).
        thresholds: the rule's thresholds (defaults documented in :class:`Thresholds`).
        random_weights: the codes came from random weights (a caveat).
        similarity: the ImageNet head's similarity measures (LEEP share, domain EMD); the code
            gain is taken from ``probe``. None: only the code gain votes.

    Returns:
        The :class:`~cnncodes.advisor.verdict.Verdict` (data only; the explanation and the next
        commands are rendered by :func:`cnncodes.report.verdict_text.render`).

    Raises:
        OptionError: the probe lacks a last or an earlier layer.
    """
    th = thresholds or Thresholds()
    sample = check_sample(size, probe, th)  # step 0: can the sample compare layers?
    g = _compare_layers(probe, th)  # step 2b: the layer
    if not sample.enough:  # no lead is claimed: as a tie, the last layer
        g = dataclasses.replace(g, threshold=math.inf)
    size_class = SizeClass(size.size_class(th))  # step 1: size
    sim = judge_similarity(_similarity_evidence(probe, g, sample, similarity, random_weights),
                           th.similarity())  # step 2: answer (a)
    similar = Similarity(sim.verdict)
    # step 3: quadrant -> route
    route, also = {SizeClass.LARGE: (Route.FINETUNE, Route.CODES),
                   SizeClass.MEDIUM: (Route.CODES, Route.FINETUNE),
                   SizeClass.SMALL: (Route.CODES, None)}[size_class]
    agree = not sample.enough or (similar is Similarity.SIMILAR) != g.earlier_wins
    return Verdict(
        size_class=size_class, similarity=similar, quadrant=Quadrant.of(size_class, similar),
        layer=g.chosen.layer, depth=g.chosen.depth, classifier=CLASSIFIER[similar], route=route,
        also=also, finetune=FINETUNE_POLICY[similar] if Route.FINETUNE in (route, also) else None,
        gap=g, sample=sample, codes_beat_raw=_codes_help(probe, g, sample),
        raw_accuracy=probe.raw.mean if probe.raw is not None else None,
        random_weights=random_weights, imbalance=_imbalance(size), similarity_verdict=sim,
        agree=agree, probe_method=probe.method, probe_folds=probe.folds,
        probe_images=probe.n_images, n_images=size.n_images,
        median_per_class=size.median_per_class)
