"""The pure decision rule of the advisor: quadrant, layer and next commands from the evidence.

Nothing here measures anything: :func:`decide` turns a :class:`~cnncodes.advisor.evidence.SizeInfo`
and a :class:`~cnncodes.advisor.probe.ProbeResult` into a :class:`Decision`, deterministically, so
it is unit-tested on constructed evidence.

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
       pretrained layers at a lower learning rate (``--head-lr-mult 10 --freeze 1``);
       large+dissimilar: fine-tune the whole network from the pretrained init
       (``--head-lr-mult 1 --freeze 0``). See :data:`FINETUNE_POLICY`.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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
from .similarity import (
    SimilarityEvidence,
    SimilarityThresholds,
    SimilarityVerdict,
    judge_similarity,
)

#: Fine-tuning suggestions per similarity, for large data sets (``cnncodes finetune`` options):
#: similar data keeps the pretrained layers close to ImageNet (head learns 10x faster, the stem and
#: first stage frozen); dissimilar data needs every layer to move (one rate, nothing frozen: the
#: pretrained weights are only an initialisation).
FINETUNE_POLICY: dict[str, dict[str, float | int]] = {
    "similar": {"head_lr_mult": 10, "freeze": 1},
    "dissimilar": {"head_lr_mult": 1, "freeze": 0},
}
#: ``cnncodes train --model`` per similarity, and its name in words.
CLASSIFIER = {"similar": "logreg", "dissimilar": "linearsvc"}
CLASSIFIER_NAME = {"logreg": "logistic regression", "linearsvc": "LinearSVC"}


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

    def backbone_args(self, *, pooling: bool = True) -> list[str]:
        """The ``--backbone/--weights/--input-size[/--pooling]`` flags that differ from defaults."""
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
        similarity: ``similar`` or ``dissimilar``: answer (a), from the similarity evidence.
        layer: the recommended layer: answer (b), from the probe.
        classifier: ``logreg`` or ``linearsvc`` (the ``cnncodes train --model`` value).
        action: the practice in words.
        explanation: one sentence with the numbers that decided it.
        commands: the exact next commands, in order.
        also: a further command worth trying (fine-tuning for medium data, the codes baseline
            for large data), or None.
        finetune: suggested fine-tuning options for large/medium data, else None.
        comparison: the numbers of the rule (best layers, gap, threshold, standard error).
        warnings: caveats (random weights, raw pixels beating the codes, imbalance...).
        similarity_evidence: answer (a) with its votes
            (:meth:`~cnncodes.advisor.similarity.SimilarityVerdict.to_dict`).
        agree: whether (a) and (b) point the same way (similar <-> last layer).
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
    similarity_evidence: dict[str, Any] = field(default_factory=dict)
    agree: bool = True

    @property
    def next_command(self) -> str:
        return " && ".join(self.commands)

    @property
    def layers_compared(self) -> bool:
        """Whether the sample could carry the layer comparison (step 0 of the rule)."""
        return bool(self.comparison.get("layers_compared", True))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["next_command"] = self.next_command
        return d


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


@dataclass(frozen=True)
class _Gap:
    """Step 2 of the rule: the best last and earlier layers and whether the gap is real."""

    last: LayerScore
    earlier: LayerScore
    gap: float  # points, earlier minus last
    se: float  # paired standard error of the gap, points
    threshold: float  # points the gap must exceed
    ci: float  # half width of the 95% interval of the gap, points

    @property
    def earlier_wins(self) -> bool:
        return self.gap > self.threshold

    @property
    def chosen(self) -> LayerScore:
        return self.earlier if self.earlier_wins else self.last


def _compare_layers(probe: ProbeResult, th: Thresholds) -> _Gap:
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
    return _Gap(bl, be, 100.0 * (be.mean - bl.mean), se, max(th.margin, th.se_mult * se), ci)


@dataclass(frozen=True)
class SampleCheck:
    """Step 0 of the rule: can the probe sample carry a layer comparison?"""

    smallest_class: int  # images of the smallest probed class in the sample
    n_images: int  # images in the probe sample
    n_classes: int
    need_per_class: int
    need_images: int
    source_images: int  # images in the whole data set

    @property
    def enough(self) -> bool:
        return self.smallest_class >= self.need_per_class and self.n_images >= self.need_images

    def message(self, *, short: bool = False) -> str:
        """The verdict's sentence when not :attr:`enough` (``short``: without the fix)."""
        head = (f"not enough images to compare layers: {self.need_per_class} per class / "
                f"{self.need_images:,} in all would be needed (the probe had {self.smallest_class} "
                f"in its smallest class, {self.n_images:,} in all)")
        if short:
            return head
        fix = ("raise --sample / --budget (the data set has "
               f"{self.source_images:,} images)" if self.source_images >= self.need_images
               else "add images")
        return (f"{head}; the measured gaps are not evidence at this size, so no layer is "
                f"claimed to lead: {fix} to compare them")


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


def _why(g: _Gap, probe: ProbeResult) -> str:
    """The layer half of the explanation (answer b), with the numbers."""
    bl, be, threshold = g.last.layer, g.earlier.layer, g.threshold
    gap = round(g.gap, 2)  # the value comparison["gap_points"] holds: one rounding everywhere
    how = (f"{probe.method} probe, {probe.folds}-fold CV on {probe.n_images:,} images; gap "
           f"{gap:+.1f} +- {g.ci:.1f} points, 95% interval")
    if abs(gap) > threshold and abs(gap) <= g.ci:
        how += ", which includes 0: the lead is not established at this sample size"
    if g.earlier_wins:
        return f"layer: {be} beats {bl} by {gap:.1f} points ({how}; margin {threshold:.1f})"
    if gap < -threshold:
        return f"layer: {bl} beats the best earlier layer {be} by {-gap:.1f} points ({how})"
    rel = "ahead of" if gap > 0 else "behind"
    return (f"layer: {be} is only {abs(gap):.1f} points {rel} {bl} ({how}; margin "
            f"{threshold:.1f}): a tie goes to the last layer {bl}")


def _similarity_evidence(probe: ProbeResult, g: _Gap, sample: SampleCheck,
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


def _disagreement(sim: SimilarityVerdict, g: _Gap) -> str | None:
    """The plain sentence when (a) and (b) point different ways, else None."""
    if sim.verdict == "similar" and g.earlier_wins:
        return (f"the two answers disagree: the evidence calls the data similar, yet the probe "
                f"finds the earlier layer {g.earlier.layer} {round(g.gap, 2):.1f} points better "
                f"than {g.last.layer}; the layer follows the probe, the quadrant the similarity "
                "evidence")
    if sim.verdict == "dissimilar" and not g.earlier_wins:
        return (f"the two answers disagree: the evidence calls the data dissimilar, yet no "
                f"earlier layer beats the last layer {g.last.layer} in the probe; the layer "
                "follows the probe, the quadrant the similarity evidence")
    return None


def _caveats(size: SizeInfo, probe: ProbeResult, g: _Gap, random_weights: bool,
             sample: SampleCheck) -> tuple[list[str], bool | None]:
    """``(warnings, codes_help)``: too small a sample, raw pixels beating the codes, random
    weights, imbalance (``codes_help`` None: not compared)."""
    warn: list[str] = []
    chosen, codes_help = g.chosen, True
    if not sample.enough:
        warn.append(sample.message())
        codes_help = None
    elif probe.raw is not None and 100.0 * (probe.raw.mean - chosen.mean) > g.threshold:
        codes_help = False
        warn.append(f"raw pixels ({probe.raw.mean:.3f}) beat {chosen.layer} codes "
                    f"({chosen.mean:.3f}) by {100 * (probe.raw.mean - chosen.mean):.1f} points: "
                    "these pretrained features do not help on this data; fine-tuning or training "
                    "from scratch may do better even at this size")
    if random_weights:
        warn.append("the backbone has random weights: the probe measures random features, not "
                    "transfer from ImageNet; the similarity verdict and the quadrant are not "
                    "meaningful")
    counts = list(size.per_class.values())
    if counts and min(counts) > 0 and max(counts) / min(counts) >= 10:
        warn.append(f"classes are imbalanced ({min(counts)} to {max(counts)} images); consider "
                    "class_weight=balanced (cnncodes train --class-weight balanced)")
    return warn, codes_help


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _commands(setup: RunSetup, layer: str, similarity: str) -> tuple[list[str], dict[str, Any]]:
    """``([extract, train], finetune)``: the codes route for ``layer`` and the fine-tuning one."""
    codes_cmds = [
        shlex.join(["cnncodes", "extract", setup.source, "-o", "codes.h5",
                    *setup.backbone_args(), "--layers", layer]),
        shlex.join(["cnncodes", "train", "codes.h5", "--layer", layer, "--model",
                    CLASSIFIER[similarity], "-o", "model.npz"]),
    ]
    pol = FINETUNE_POLICY[similarity]
    ft_cmd = shlex.join(["cnncodes", "finetune", setup.source, *setup.backbone_args(pooling=False),
                         "-o", "run/", "--head-lr-mult", _fmt_num(pol["head_lr_mult"]),
                         "--freeze", str(int(pol["freeze"]))])
    return codes_cmds, {"head_lr_mult": pol["head_lr_mult"], "freeze": int(pol["freeze"]),
                        "command": ft_cmd}


def decide(size: SizeInfo, probe: ProbeResult, *, thresholds: Thresholds | None = None,
           setup: RunSetup | None = None, random_weights: bool = False,
           similarity: SimilarityEvidence | None = None) -> Decision:
    """Quadrant, layer and action from the evidence, by the rule in the module docstring.

    Args:
        size: the data set's size.
        probe: CV accuracies of the candidate layers (needs at least one ``last`` and one
            ``earlier`` layer).
        thresholds: the rule's thresholds (defaults documented in :class:`Thresholds`).
        setup: source and extraction options repeated in the next commands.
        random_weights: the codes came from random weights (adds a warning).
        similarity: the ImageNet head's similarity measures (LEEP share, domain EMD); the code
            gain is taken from ``probe``. None: only the code gain votes.

    Raises:
        OptionError: the probe lacks a last or an earlier layer.
    """
    th = thresholds or Thresholds()
    setup = setup or RunSetup()
    sample = check_sample(size, probe, th)  # step 0: can the sample compare layers?
    g = _compare_layers(probe, th)  # step 2b: the layer
    if not sample.enough:  # no lead is claimed: as a tie, the last layer
        g = dataclasses.replace(g, threshold=math.inf)
    size_class = size.size_class(th)  # step 1: size
    sim = judge_similarity(_similarity_evidence(probe, g, sample, similarity, random_weights),
                           th.similarity())  # step 2: answer (a)
    similarity_verdict, chosen = sim.verdict, g.chosen
    classifier = CLASSIFIER[similarity_verdict]
    layer_why = _why(g, probe) if sample.enough else (
        f"layer: {sample.message(short=True)}; keeping the last layer {g.last.layer}, the "
        "conventional choice, without a measured lead")
    why = f"similarity: {sim.reasons()} -> {similarity_verdict} data; {layer_why}"
    clash = _disagreement(sim, g) if sample.enough else None
    if clash:
        why += f"; {clash}"
    warn, codes_help = _caveats(size, probe, g, random_weights, sample)
    codes_cmds, finetune = _commands(setup, chosen.layer, similarity_verdict)
    ft_cmd = finetune["command"]
    per_class = f"{size.median_per_class:,.0f} per class"
    dissimilar = similarity_verdict == "dissimilar"
    # step 3: quadrant -> action
    if size_class == "large":
        action = ("fine-tune the whole network from the pretrained weights (one learning rate, "
                  "nothing frozen)" if dissimilar else
                  "fine-tune with the pretrained layers at a lower learning rate (head x10, stem "
                  "and first stage frozen)")
        commands, also = [ft_cmd], " && ".join(codes_cmds)
        sentence = (f"{why}; {size.n_images:,} images ({per_class}) is large -> {action}: "
                    f"{ft_cmd}")
    else:
        where = "earlier" if chosen.depth == "earlier" else "last"
        action = (f"{where}-layer codes ({chosen.layer}) + "
                  f"{'linear SVM' if dissimilar else 'linear classifier (logistic regression)'}")
        commands = codes_cmds
        sentence = (f"{why}; use {chosen.layer} codes + {CLASSIFIER_NAME[classifier]}"
                    f" ({size.n_images:,} images, {per_class}: {size_class})")
        if size_class == "medium":
            also = ft_cmd
            sentence += f"; with this much data fine-tuning may pay off next: {ft_cmd}"
        else:
            also, finetune = None, None
    if codes_help is False:
        sentence += " (warning: raw pixels beat the codes)"
    comparison = {
        "best_last": g.last.layer, "best_last_accuracy": round(g.last.mean, 4),
        "best_earlier": g.earlier.layer, "best_earlier_accuracy": round(g.earlier.mean, 4),
        "gap_points": round(g.gap, 2), "paired_se_points": round(g.se, 2),
        "gap_ci95_points": round(g.ci, 2),
        "threshold_points": round(g.threshold, 2) if sample.enough else None,
        "layers_compared": sample.enough, "needed_per_class": sample.need_per_class,
        "needed_images": sample.need_images, "sample_smallest_class": sample.smallest_class,
        "codes_beat_raw_pixels": codes_help,
        "raw_pixels_accuracy": round(probe.raw.mean, 4) if probe.raw is not None else None,
    }
    if not sample.enough:
        why_not = "not computed: the sample is too small to compare layers (step 0)"
        comparison["threshold_points_note"] = comparison["codes_beat_raw_pixels_note"] = why_not
    return Decision(quadrant=f"{'large' if size_class == 'large' else 'small'}-"
                             f"{similarity_verdict}",
                    size_class=size_class, similarity=similarity_verdict, layer=chosen.layer,
                    classifier=classifier, action=action, explanation=sentence,
                    commands=commands, also=also, finetune=finetune, comparison=comparison,
                    warnings=warn, similarity_evidence=sim.to_dict(), agree=clash is None)
