"""The unfitted classifier pipeline: optional L2 normalisation -> standardisation -> PCA ->
``LogisticRegression`` (lbfgs, multinomial) or ``LinearSVC``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC

from .options import MODELS

log = logging.getLogger(__name__)


def build_pipeline(*, model: str = "logreg", C: float = 1.0, l2: bool = False,
                   standardize: bool = True, pca: int | float | None = None,
                   class_weight: str | Mapping[int, float] | None = None, max_iter: int = 1000,
                   random_state: int | None = 0) -> Pipeline:
    """An unfitted ``[l2] -> [scale] -> [pca] -> clf`` pipeline (the C grid searches ``clf__C``).

    Args:
        model: ``logreg`` (LogisticRegression, lbfgs, multinomial) or ``linearsvc`` (LinearSVC).
        C: inverse regularisation strength.
        l2: L2-normalise each code first (``Normalizer``).
        standardize: zero mean, unit variance per feature (``StandardScaler``).
        pca: keep this many PCA components (int) or this fraction of the variance (0 < float < 1).
        class_weight: ``None`` or ``"balanced"`` (or an explicit {label: weight} mapping).
        max_iter: solver iterations.
    """
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    if class_weight not in (None, "balanced") and not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be None or 'balanced'; got {class_weight!r}.")
    steps: list[tuple[str, Any]] = []
    if l2:
        steps.append(("l2", Normalizer(norm="l2")))
    if standardize:
        steps.append(("scale", StandardScaler()))
    if pca is not None:
        from sklearn.decomposition import PCA

        if isinstance(pca, float) and not 0 < pca < 1 or not isinstance(pca, float) and pca < 1:
            raise ValueError(f"pca must be a component count >= 1 or a variance fraction in "
                             f"(0, 1); got {pca!r}.")
        # QR power iterations: the randomized solver that scikit-learn's "auto" may pick then
        # also runs under array API dispatch, so the NumPy and GPU paths fit the same PCA
        steps.append(("pca", PCA(n_components=pca, power_iteration_normalizer="QR",
                                 random_state=random_state)))
    if model == "logreg":
        clf: Any = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter,
                                      class_weight=class_weight, random_state=random_state)
    else:
        clf = LinearSVC(C=C, dual="auto", max_iter=max_iter, class_weight=class_weight,
                        random_state=random_state)
    steps.append(("clf", clf))
    return Pipeline(steps)
