"""The similarity verdict: is this data like the pretraining data? A pure function of the evidence.

Answer (a) of the advisor, kept apart from answer (b) (which layer: the probe, in
:mod:`cnncodes.advisor.rule`). Three measures, each compared with its documented threshold
(:class:`SimilarityThresholds`), each casting a vote:

1. **LEEP share** (Nguyen et al., ICML 2020; :func:`cnncodes.advisor.transfer.leep_share`): how
   much of the entropy of the user's labels the ImageNet head's predictions explain. Similar when
   at least ``leep_share`` (default 0.5).
2. **Domain EMD** (Cui et al., CVPR 2018; :func:`cnncodes.advisor.transfer.domain_distance`): the
   cosine earth mover's distance from the user's class means to the head's 1,000 class rows.
   Similar when at most ``domain_emd`` (default 0.80).
3. **Code gain**: CV accuracy of the last layer's codes minus that of raw 16x16 pixels in the
   same probe (same folds), in points. Pretrained features that fit the data beat pixels by a
   wide margin; similar when at least ``code_gain`` (default 10 points).

**Verdict**: ``similar`` when more than half of the available votes say similar; otherwise
``dissimilar`` (a tie, e.g. one vote each with the head unavailable, is called dissimilar: the
conservative reading, which keeps earlier layers and whole-network fine-tuning on the table).
(1) and (2) need the network's ImageNet head (pretrained weights with 1,000 outputs); (3) needs a
probe sample that can carry a comparison (step 0 of :mod:`cnncodes.advisor.rule`) and is left out
otherwise. With random weights the verdict is computed but flagged as not meaningful.

Calibration (benchmarks/bench_similarity.py, MobileNetV2 ImageNet at 224 px, 30 images per class,
2-core VM): see the table in benchmarks/ADVISE_RESULTS.md; the thresholds sit between the
natural-photo / Animal-MNIST values and the digits values, and above the random-weight controls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .defaults import SIM_CODE_GAIN, SIM_DOMAIN_EMD, SIM_LEEP_SHARE


@dataclass(frozen=True)
class SimilarityThresholds:
    """Thresholds of the similarity votes (see the module docstring)."""

    leep_share: float = SIM_LEEP_SHARE
    domain_emd: float = SIM_DOMAIN_EMD
    code_gain: float = SIM_CODE_GAIN


@dataclass(frozen=True)
class SimilarityEvidence:
    """The measured inputs of the verdict (None: not available, with the reason in ``notes``).

    Attributes:
        leep_share: ``1 + LEEP / H(labels)`` of the ImageNet head on the head sample.
        domain_emd: cosine EMD of the class means to the head's class rows.
        code_gain: last-layer CV accuracy minus raw-pixel CV accuracy, points.
        pretrained: the codes come from pretrained (not random) weights.
        notes: why a measure is missing, per measure name.
    """

    leep_share: float | None = None
    domain_emd: float | None = None
    code_gain: float | None = None
    pretrained: bool = True
    notes: dict[str, str] = field(default_factory=dict)


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
        return f"{self.value:.{DIGITS[self.measure]}f} {rel} {self.threshold:g} -> {self.says}"

    def sentence(self) -> str:
        return f"{LABELS[self.measure]} {self.comparison()}"


@dataclass(frozen=True)
class SimilarityVerdict:
    """Answer (a): the verdict, the votes that made it and the missing evidence."""

    verdict: str  # similar | dissimilar
    votes: list[Vote]
    missing: dict[str, str]
    meaningful: bool

    @property
    def n_similar(self) -> int:
        return sum(v.says == "similar" for v in self.votes)

    def reasons(self) -> str:
        """``"LEEP share 0.12 < 0.5 -> dissimilar; ... (1 of 3 say similar)"``."""
        if not self.votes:
            return "no similarity evidence could be measured (the conservative call)"
        return (f"{'; '.join(v.sentence() for v in self.votes)} ({self.n_similar} of "
                f"{len(self.votes)} say similar)")

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "meaningful": self.meaningful,
                "n_similar": self.n_similar, "n_votes": len(self.votes),
                "votes": [asdict(v) for v in self.votes], "missing": dict(self.missing),
                "reasons": self.reasons()}


LABELS = {"leep_share": "LEEP share", "domain_emd": "domain EMD",
          "code_gain": "codes - raw pixels (points)"}
DIGITS = {"leep_share": 2, "domain_emd": 3, "code_gain": 1}


def judge_similarity(ev: SimilarityEvidence,
                     th: SimilarityThresholds | None = None) -> SimilarityVerdict:
    """The verdict from the evidence, by the rule in the module docstring (pure)."""
    th = th or SimilarityThresholds()
    votes: list[Vote] = []
    missing = dict(ev.notes)
    for name, value, thr, when in (("leep_share", ev.leep_share, th.leep_share, ">="),
                                   ("domain_emd", ev.domain_emd, th.domain_emd, "<="),
                                   ("code_gain", ev.code_gain, th.code_gain, ">=")):
        if value is None:
            missing.setdefault(name, "not measured")
            continue
        ok = value >= thr if when == ">=" else value <= thr
        votes.append(Vote(name, float(value), float(thr), when,
                          "similar" if ok else "dissimilar"))
    n_sim = sum(v.says == "similar" for v in votes)
    verdict = "similar" if votes and 2 * n_sim > len(votes) else "dissimilar"
    return SimilarityVerdict(verdict, votes, {k: v for k, v in missing.items()
                                              if k in LABELS}, ev.pretrained)
