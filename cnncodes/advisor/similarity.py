"""The similarity verdict: is this data like the pretraining data? A pure function of the evidence.

Answer (a) of the advisor, kept apart from answer (b) (which layer: the probe, in
:mod:`cnncodes.advisor.rule`). Two measures vote, each against a documented threshold
(:class:`SimilarityThresholds`); a third is shown beside them:

1. **LEEP share** (Nguyen et al., ICML 2020; :func:`cnncodes.advisor.transfer.leep_share`): how
   much of the entropy of the user's labels the ImageNet head's predictions explain (0 = the
   head's 1,000 classes say nothing about the user's classes, 1 = they determine them). Votes
   similar at ``leep_share`` (default 0.5) or more.
2. **Code gain**: CV accuracy of the last layer's codes minus that of raw 16x16 pixels in the
   same probe (same folds), in points. Votes similar at ``code_gain`` (default 10) points or more.
   Only counted when the probe sample can carry a comparison (step 0 of
   :mod:`cnncodes.advisor.rule`).
3. **Domain EMD** (Cui et al., CVPR 2018; :func:`cnncodes.advisor.transfer.domain_distance`), the
   cosine earth mover's distance from the class means to the head's 1,000 class rows standing in
   for ImageNet's class means: shown, **not a vote**. Calibrated below it spanned only 0.966-0.979
   over four data sets of opposite kinds (photos lowest, digits highest: the right order, but a
   spread smaller than its sampling noise), so no threshold on it could be defended.

**Verdict** (:func:`judge_similarity`):
  * ``dissimilar`` when the codes *lose* to raw pixels by more than ``code_loss`` (default 1)
    point: pretrained features worse than pixels are the plainest sign of a foreign domain,
    whatever the head says;
  * otherwise ``similar`` when either vote says similar: each is positive evidence on its own (the
    ImageNet label space already separates the classes, or the pretrained features separate them
    far better than pixels do), and each misses a kind of similar data the other catches (the head
    does not recognise animal silhouettes as animals, LEEP 0.22, but the codes beat pixels by 26
    points; on natural-photo crops the probe is at its ceiling, gain 9.7, but LEEP is 0.85);
  * otherwise ``dissimilar`` (also when nothing could be measured: the conservative call, which
    keeps earlier layers and whole-network fine-tuning on the table).
LEEP needs the network's ImageNet head (pretrained weights with 1,000 outputs). With random
weights the verdict is computed but flagged as not meaningful.

**Calibration** (benchmarks/bench_similarity.py; MobileNetV2 ImageNet at its default 224 px, 30
images per class (2 x 150 photo crops), 256 through the head; 2-core VM, no GPU):

    data set        LEEP share  code gain  domain EMD   verdict      DATA.md says
    photo crops        0.85        9.7       0.966      similar      natural photos
    Animal-MNIST       0.22       26.3       0.972      similar      fairly similar
    Fashion-MNIST      0.35        5.7       0.968      dissimilar   dissimilar
    digits             0.12        0.0       0.979      dissimilar   very dissimilar

The thresholds sit between the similar and the dissimilar sets on each measure (LEEP 0.35 vs
0.85; gain 5.7 vs 26.3) and above what random-weight MobileNetV2 features gain over pixels on the
same data (see benchmarks/ADVISE_RESULTS.md). One sample of 300 images per set: a code gain has
a CV noise of several points, so sets near a threshold can flip between runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .defaults import SIM_CODE_GAIN, SIM_CODE_LOSS, SIM_LEEP_SHARE


@dataclass(frozen=True)
class SimilarityThresholds:
    """Thresholds of the similarity votes (see the module docstring)."""

    leep_share: float = SIM_LEEP_SHARE
    code_gain: float = SIM_CODE_GAIN
    code_loss: float = SIM_CODE_LOSS


@dataclass(frozen=True)
class SimilarityEvidence:
    """The measured inputs of the verdict (None: not available, with the reason in ``notes``).

    Attributes:
        leep_share: ``1 + LEEP / H(labels)`` of the ImageNet head on the head sample.
        domain_emd: cosine EMD of the class means to the head's class rows (shown, no vote).
        code_gain: last-layer CV accuracy minus raw-pixel CV accuracy, points.
        pretrained: the codes come from pretrained (not random) weights.
        notes: why a measure is missing, per measure name.
    """

    leep_share: float | None = None
    domain_emd: float | None = None
    code_gain: float | None = None
    pretrained: bool = True
    notes: dict[str, str] = field(default_factory=dict)


def shown_value(value: float, threshold: float, rel: str, digits: int) -> str:
    """``value`` with ``digits`` decimals, or more until the printed number itself satisfies
    ``rel`` against ``threshold`` (never "0.50 < 0.5" for 0.498)."""
    ops = {"<": float.__lt__, ">": float.__gt__, "<=": float.__le__, ">=": float.__ge__}
    d = digits
    while d < 8 and not ops[rel](float(f"{value:.{d}f}"), float(threshold)):
        d += 1
    return f"{value:.{d}f}"


@dataclass(frozen=True)
class Vote:
    """One measure's vote: its value, threshold, direction and what it says."""

    measure: str
    value: float
    threshold: float
    similar_when: str  # ">=" or "<="
    says: str  # similar | dissimilar

    def comparison(self) -> str:
        """``"0.12 < 0.5 -> dissimilar"``."""
        cmp = {">=": ("<", ">="), "<=": (">", "<=")}[self.similar_when]
        rel = cmp[1] if self.says == "similar" else cmp[0]
        return (f"{shown_value(self.value, self.threshold, rel, DIGITS[self.measure])} {rel} "
                f"{self.threshold:g} -> {self.says}")

    def sentence(self) -> str:
        return f"{LABELS[self.measure]} {self.comparison()}"


@dataclass(frozen=True)
class SimilarityVerdict:
    """Answer (a): the verdict, the votes that made it, the missing and the side evidence."""

    verdict: str  # similar | dissimilar
    votes: list[Vote]
    missing: dict[str, str]
    meaningful: bool
    rule: str  # which branch of the verdict applied, in words
    side: dict[str, float] = field(default_factory=dict)

    @property
    def n_similar(self) -> int:
        return sum(v.says == "similar" for v in self.votes)

    def reasons(self) -> str:
        """``"LEEP share 0.12 < 0.5 -> dissimilar; ... (1 of 3 say similar)"``."""
        if not self.votes:
            return "no similarity evidence could be measured (the conservative call)"
        return f"{'; '.join(v.sentence() for v in self.votes)} ({self.rule})"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "meaningful": self.meaningful,
                "n_similar": self.n_similar, "n_votes": len(self.votes),
                "votes": [asdict(v) for v in self.votes], "missing": dict(self.missing),
                "rule": self.rule, "side": dict(self.side), "reasons": self.reasons()}


LABELS = {"leep_share": "LEEP share", "code_gain": "codes - raw pixels (points)"}
DIGITS = {"leep_share": 2, "code_gain": 1}


def judge_similarity(ev: SimilarityEvidence,
                     th: SimilarityThresholds | None = None) -> SimilarityVerdict:
    """The verdict from the evidence, by the rule in the module docstring (pure)."""
    th = th or SimilarityThresholds()
    votes: list[Vote] = []
    missing = dict(ev.notes)
    for name, value, thr in (("leep_share", ev.leep_share, th.leep_share),
                             ("code_gain", ev.code_gain, th.code_gain)):
        if value is None:
            missing.setdefault(name, "not measured")
            continue
        votes.append(Vote(name, float(value), float(thr), ">=",
                          "similar" if value >= thr else "dissimilar"))
    side = {} if ev.domain_emd is None else {"domain_emd": float(ev.domain_emd)}
    n_sim = sum(v.says == "similar" for v in votes)
    if ev.code_gain is not None and ev.code_gain < -th.code_loss:
        verdict = "dissimilar"
        rule = (f"the codes lose to raw pixels by more than {th.code_loss:g} point: dissimilar "
                "whatever the head says")
    elif n_sim:
        verdict = "similar"
        rule = f"{n_sim} of {len(votes)} votes say similar; one is enough"
    else:
        verdict = "dissimilar"
        rule = f"none of the {len(votes)} votes says similar"
    missing.pop("domain_emd", None)
    return SimilarityVerdict(verdict, votes, {k: v for k, v in missing.items() if k in LABELS},
                             ev.pretrained, rule, side)
