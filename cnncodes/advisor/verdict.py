"""The advisor's verdict as data: what :func:`cnncodes.advisor.rule.decide` returns.

Enums and numbers only: the size class, the similarity, the quadrant, the chosen layer, the
classifier, the route (codes or fine-tuning) and its fine-tuning policy, the layer comparison (gap,
interval, threshold) and whether the sample could carry it, and the facts the caveats rest on. No
sentence and no command line is made here: :mod:`cnncodes.report.verdict_text` renders a verdict
into the explanation and the next commands, with the option names of the command-line parsers it is
given, so a renamed option cannot leave a stale hint behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .probe import LayerScore
from .similarity import SimilarityVerdict


class SizeClass(StrEnum):
    """Step 1 of the rule: the data set's size (``medium`` is treated as small)."""

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"


class Similarity(StrEnum):
    """Answer (a): is the data like the pretraining data?"""

    SIMILAR = "similar"
    DISSIMILAR = "dissimilar"


class Quadrant(StrEnum):
    """Size (small or large) x similarity."""

    SMALL_SIMILAR = "small-similar"
    SMALL_DISSIMILAR = "small-dissimilar"
    LARGE_SIMILAR = "large-similar"
    LARGE_DISSIMILAR = "large-dissimilar"

    @classmethod
    def of(cls, size_class: SizeClass, similarity: Similarity) -> Quadrant:
        size = "large" if size_class is SizeClass.LARGE else "small"
        return cls(f"{size}-{similarity.value}")


class Classifier(StrEnum):
    """The linear classifier on the codes (the values of ``cnncodes train --model``)."""

    LOGREG = "logreg"
    LINEARSVC = "linearsvc"


class Route(StrEnum):
    """What to run: the codes (extract, then train a linear classifier) or fine-tuning."""

    CODES = "codes"
    FINETUNE = "finetune"


@dataclass(frozen=True)
class FinetunePolicy:
    """How to fine-tune: the head's learning rate as a multiple of the backbone's, and how many
    stages (from the stem) stay frozen."""

    head_lr_mult: float
    freeze: int


#: Fine-tuning per similarity, for large data sets: similar data keeps the pretrained layers
#: close to ImageNet (head learns 10x faster, the stem and first stage frozen); dissimilar data
#: needs every layer to move (one rate, nothing frozen: the pretrained weights are only an
#: initialisation).
FINETUNE_POLICY: dict[Similarity, FinetunePolicy] = {
    Similarity.SIMILAR: FinetunePolicy(head_lr_mult=10, freeze=1),
    Similarity.DISSIMILAR: FinetunePolicy(head_lr_mult=1, freeze=0),
}
#: The classifier per similarity.
CLASSIFIER: dict[Similarity, Classifier] = {Similarity.SIMILAR: Classifier.LOGREG,
                                            Similarity.DISSIMILAR: Classifier.LINEARSVC}


@dataclass(frozen=True)
class LayerGap:
    """Step 2b of the rule: the best last and earlier layers and whether the gap is real."""

    last: LayerScore
    earlier: LayerScore
    gap: float  # points, earlier minus last
    se: float  # paired standard error of the gap, points
    threshold: float  # points the gap must exceed (inf when the layers were not compared)
    ci: float  # half width of the 95% interval of the gap, points

    @property
    def earlier_wins(self) -> bool:
        return self.gap > self.threshold

    @property
    def chosen(self) -> LayerScore:
        return self.earlier if self.earlier_wins else self.last


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


@dataclass(frozen=True)
class Verdict:
    """What to do, as data (rendered into words by :mod:`cnncodes.report.verdict_text`).

    Attributes:
        size_class, similarity, quadrant: steps 1, 2 and 3 of the rule.
        layer, depth: the recommended layer (answer b) and its depth (``last`` or ``earlier``).
        classifier: the linear classifier for the codes route.
        route: the recommended route (fine-tuning for large data, else the codes).
        also: a further route worth trying (fine-tuning for medium data, the codes for large
            data), or None.
        finetune: the fine-tuning policy when fine-tuning is the route or the ``also`` (else None).
        gap: the layer comparison (best layers, gap, standard error, interval, threshold).
        sample: step 0: whether the probe sample could compare layers, and what was needed.
        codes_beat_raw: whether the chosen layer's codes beat raw pixels (None: not compared).
        raw_accuracy: the raw-pixel probe's CV accuracy (None: no raw-pixel row).
        random_weights: the codes came from random weights.
        imbalance: ``(smallest, largest)`` class counts when they differ 10x or more, else None.
        similarity_verdict: answer (a) with its votes.
        agree: whether (a) and (b) point the same way (similar <-> last layer).
        probe_method, probe_folds, probe_images: how the layers were probed.
        n_images, median_per_class: the data set's size.
    """

    size_class: SizeClass
    similarity: Similarity
    quadrant: Quadrant
    layer: str
    depth: str
    classifier: Classifier
    route: Route
    also: Route | None
    finetune: FinetunePolicy | None
    gap: LayerGap
    sample: SampleCheck
    codes_beat_raw: bool | None
    raw_accuracy: float | None
    random_weights: bool
    imbalance: tuple[int, int] | None
    similarity_verdict: SimilarityVerdict
    agree: bool
    probe_method: str
    probe_folds: int
    probe_images: int
    n_images: int
    median_per_class: float

    @property
    def layers_compared(self) -> bool:
        """Whether the sample could carry the layer comparison (step 0 of the rule)."""
        return self.sample.enough

    def comparison(self) -> dict[str, Any]:
        """The numbers of the rule (JSON: best layers, gap, threshold, standard error...)."""
        g, compared = self.gap, self.layers_compared
        out: dict[str, Any] = {
            "best_last": g.last.layer, "best_last_accuracy": round(g.last.mean, 4),
            "best_earlier": g.earlier.layer, "best_earlier_accuracy": round(g.earlier.mean, 4),
            "gap_points": round(g.gap, 2), "paired_se_points": round(g.se, 2),
            "gap_ci95_points": round(g.ci, 2),
            "threshold_points": round(g.threshold, 2) if compared else None,
            "layers_compared": compared, "needed_per_class": self.sample.need_per_class,
            "needed_images": self.sample.need_images,
            "sample_smallest_class": self.sample.smallest_class,
            "codes_beat_raw_pixels": self.codes_beat_raw,
            "raw_pixels_accuracy": (round(self.raw_accuracy, 4) if self.raw_accuracy is not None
                                    else None),
        }
        if not compared:
            why_not = "not computed: the sample is too small to compare layers (step 0)"
            out["threshold_points_note"] = out["codes_beat_raw_pixels_note"] = why_not
        return out

    def to_dict(self) -> dict[str, Any]:
        """The typed verdict as JSON types (enums as their values)."""
        return {
            "size_class": self.size_class.value, "similarity": self.similarity.value,
            "quadrant": self.quadrant.value, "layer": self.layer, "depth": self.depth,
            "classifier": self.classifier.value, "route": self.route.value,
            "also": None if self.also is None else self.also.value,
            "finetune": (None if self.finetune is None else
                         {"head_lr_mult": self.finetune.head_lr_mult,
                          "freeze": self.finetune.freeze}),
            "layers_compared": self.layers_compared, "agree": self.agree,
            "random_weights": self.random_weights,
            "imbalance": None if self.imbalance is None else list(self.imbalance),
            "probe": {"method": self.probe_method, "folds": self.probe_folds,
                      "n_images": self.probe_images},
            "comparison": self.comparison(),
        }
