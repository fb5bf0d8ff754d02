"""The classifier options, each with its one default: which linear model and how its C is chosen.

:class:`ClassifierOptions` is taken by :func:`~cnncodes.linear.selection.fit_codes`,
:func:`~cnncodes.train`, :func:`~cnncodes.linear.pixels.pixel_baseline` and
:func:`~cnncodes.baseline`, and the CLI builds its ``--model --c-grid --cv ...`` group from the same
fields and defaults. Those functions also accept the fields one by one as keyword arguments
(``train(store, c_grid="full", cv=3)``): :func:`classifier_options` sorts them.

Nothing here imports scikit-learn: cheap for the CLI's ``--help``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..errors import OptionError
from ..options import sort_keywords

#: Classifier names accepted by ``model=`` / ``--model``.
MODELS = ("logreg", "linearsvc")
#: The classifier used when none is named (``baseline --layer auto`` uses the advised one).
DEFAULT_MODEL = "logreg"
#: The default C grid: 7 log-spaced values, one per decade (``--c-grid 1e-4:1e2:7``).
DEFAULT_C_GRID = "1e-4:1e2:7"
#: The published linear-probe protocol's grid: 45 log-spaced values in [1e-6, 1e5].
FULL_C_GRID = "1e-6:1e5:45"
#: The model file's default name (``cnncodes train -o``, the baseline's report folder): a zip of
#: ``.npy`` arrays and JSON (:mod:`cnncodes.linear.model_format`), so ``.npz``.
MODEL_FILE = "model.npz"
#: Training values (rows x features) above which model selection uses one validation split
#: (:func:`cnncodes.linear.large.choose_search`): e.g. more than 15,625 codes of 1,280 features.
LARGE_SET_VALUES = 20_000_000
#: Side in pixels of the raw-pixel baseline's images (``--raw-size``).
DEFAULT_RAW_SIZE = 32


@dataclass(frozen=True)
class ClassifierOptions:
    """Which linear classifier, and how its ``C`` is chosen by stratified k-fold grid search.

    Attributes:
        model: ``logreg`` (LogisticRegression, lbfgs, multinomial) or ``linearsvc``; None =
            :data:`DEFAULT_MODEL` (for ``baseline(layer="auto")``: the advised classifier).
        c_grid: the C values searched (see :func:`~cnncodes.parse_c_grid`); None = the default.
        cv: stratified folds (reduced automatically for classes with fewer rows).
        n_jobs: parallel CV fits through joblib (None: an active joblib backend decides).
        class_weight: None or ``"balanced"``.
        l2: L2-normalise each code first.
        standardize: zero mean, unit variance per feature.
        pca: PCA components (int) or variance fraction (0 < float < 1); None = no PCA.
        scoring: the CV score (any scikit-learn scorer name).
        max_iter: solver iterations.
        large_set: above this many training values (rows x features) one stratified
            validation split replaces the k-fold search (warm-started C path for logistic
            regression); None or 0 = always k-fold. See :mod:`cnncodes.linear.large`.
    """

    model: str | None = None
    c_grid: str | float | Sequence[float] | None = None
    cv: int = 5
    n_jobs: int | None = None
    class_weight: str | Mapping[int, float] | None = None
    l2: bool = False
    standardize: bool = True
    pca: int | float | None = None
    scoring: str = "accuracy"
    max_iter: int = 1000
    large_set: int | None = LARGE_SET_VALUES

    def __post_init__(self) -> None:
        if self.model is not None and self.model not in MODELS:
            raise OptionError(f"model must be one of {', '.join(MODELS)}. Got {self.model!r} "
                              "instead.")
        if isinstance(self.c_grid, list):
            object.__setattr__(self, "c_grid", tuple(self.c_grid))

    @property
    def model_name(self) -> str:
        """``model``, or :data:`DEFAULT_MODEL` when none was named."""
        return self.model or DEFAULT_MODEL

    def replace(self, **changes: Any) -> ClassifierOptions:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_selection(cls, selection: Mapping[str, Any]) -> ClassifierOptions:
        """The options a model-selection record (``TrainedModel.selection``) was made with."""
        known = {k: selection[k] for k in CLASSIFIER_FIELDS if k in selection}
        if isinstance(known.get("c_grid"), list):
            known["c_grid"] = tuple(known["c_grid"])
        return cls(**known)


CLASSIFIER_FIELDS = tuple(f.name for f in fields(ClassifierOptions))


def classifier_options(classifier: ClassifierOptions | None, options: Mapping[str, Any], *,
                       where: str, allow: Sequence[str] = ()
                       ) -> tuple[ClassifierOptions, dict[str, Any]]:
    """Sort keyword ``options`` into a :class:`ClassifierOptions` (overriding ``classifier``).

    Returns ``(options object, the remaining options named in allow)``.

    Raises:
        TypeError: an unknown option (the message lists the valid ones), or ``classifier`` of
            another type.
    """
    copts = classifier if classifier is not None else ClassifierOptions()
    if not isinstance(copts, ClassifierOptions):
        raise TypeError(f"{where}(): classifier must be a ClassifierOptions. Got "
                        f"{type(copts).__name__} instead.")
    (changes,), rest = sort_keywords(options, [CLASSIFIER_FIELDS], where=where, allow=allow)
    return (copts.replace(**changes) if changes else copts), rest
