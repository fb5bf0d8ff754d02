"""The audit's option defaults and settings, importable without NumPy (the CLI builds its parser
from them)."""

from __future__ import annotations

from dataclasses import dataclass

#: cosine similarity at or above which two images are near-duplicates (codes centred on the
#: training mean, MobileNetV2 ImageNet pool codes): calibrated by benchmarks/audit_calibrate.py,
#: see README "Auditing a data set"
DUPLICATE_THRESHOLD = 0.90
#: rows placed on the 2-D map at most (a random sample above)
MAP_ROWS = 2_000
#: neighbours kept per row (duplicate groups are linked through them)
K = 10
#: share of rows listed as outliers (the lowest similarity to every class centroid)
OUTLIER_FRACTION = 0.01


@dataclass(frozen=True)
class AuditSettings:
    """What an audit looks for and how (:func:`cnncodes.audit.audit_arrays`; the CLI's
    ``cnncodes audit`` options and ``baseline``'s audit build one).

    Attributes:
        threshold: cosine similarity (codes centred on the training mean) at which two images
            are near-duplicates (look-alikes; the pixel check then says which are the same
            picture).
        k: neighbours per row linking duplicate groups.
        method: neighbour search, ``auto`` (exact blocked search up to
            :data:`~cnncodes.audit.neighbours.EXACT_MAX_ROWS` rows, faiss above it when
            installed), ``exact`` or ``faiss``.
        label_issues: find likely label errors (needs cleanlab).
        C: inverse regularisation of the logistic regressions (label errors, accuracy).
        map_method: ``tsne``, ``umap`` or None (no map).
        map_rows: rows placed on the map at most (a random sample above).
        outlier_fraction: share of rows listed as outliers.
        seed: random seed (map sample, t-SNE, folds).
        test_accuracy: with a test set, fit one logistic regression at ``C`` for the test
            accuracy with and without the leaked rows (``baseline`` scores its own predictions
            instead).
    """

    threshold: float = DUPLICATE_THRESHOLD
    k: int = K
    method: str = "auto"
    label_issues: bool = True
    C: float = 1.0
    map_method: str | None = "tsne"
    map_rows: int = MAP_ROWS
    outlier_fraction: float = OUTLIER_FRACTION
    seed: int = 0
    test_accuracy: bool = True
