"""Scoring a model on codes it was not trained on: :func:`evaluate` (a store; training rows are
excluded and counted), :class:`Evaluation` and :func:`score_predictions` (accuracy, balanced
accuracy, per-class precision/recall/F1, confusion matrix).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from ..codes.store import FeatureStore
from ..stats import ci_record, plural
from .model_file import TrainedModel, load_model, store_provenance
from .prediction import format_score, score_columns
from .training import _abs_paths, _as_store, report_note

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Scores of a model on labelled codes it was not trained on."""

    source: str
    layer: str
    classes: list[str]
    paths: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, Any]
    excluded_training_rows: int = 0
    unlabelled_rows: int = 0
    #: per row, the score of the predicted class (``confidence_kind``: ``probability`` for
    #: logreg, ``score`` (decision value) for LinearSVC); None when not recorded
    confidence: np.ndarray | None = None
    confidence_kind: str = "probability"
    #: the store was read although its extraction was stopped (``allow_incomplete``)
    incomplete_store: dict[str, Any] | None = None
    #: (N, C) per-class probabilities or decision values (``confidence_kind``); None when not
    #: recorded
    all_scores: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def balanced_accuracy(self) -> float:
        return float(self.metrics["balanced_accuracy"])

    def to_dict(self) -> dict[str, Any]:
        """The report's ``test`` entry: the metrics, with the accuracy's 95% Wilson interval
        (``accuracy_ci95``, :mod:`cnncodes.stats`)."""
        n = int(len(self.y_true))
        return {"source": self.source, "layer": self.layer, "n": n,
                "excluded_training_rows": self.excluded_training_rows,
                "unlabelled_rows": self.unlabelled_rows, **self.metrics,
                **ci_record(self.metrics.get("accuracy"), n),
                **({"incomplete_store": self.incomplete_store} if self.incomplete_store else {})}

    def prediction_table(self) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` of the per-image predictions of the test rows: ``path,
        true_label, predicted, correct, <probability|score>`` and one ``prob_<class>`` /
        ``score_<class>`` column per class (when the scores were recorded)."""
        kind = self.confidence_kind
        header = ["path", "true_label", "predicted", "correct", kind]
        if self.all_scores is not None:
            header += score_columns(kind, self.classes)
        rows: list[list[Any]] = []
        for i, p in enumerate(self.paths):
            t, q = int(self.y_true[i]), int(self.y_pred[i])
            row = [p, self.classes[t], self.classes[q], int(t == q),
                   "" if self.confidence is None else format_score(float(self.confidence[i]))]
            if self.all_scores is not None:
                row += [format_score(float(v)) for v in self.all_scores[i]]
            rows.append(row)
        return header, rows


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray,
                      classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix."""
    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = np.isin(labels, y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes absent from y_true
        bal = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(bal),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes) if present[i] or s[i]],
        "macro_f1": float(np.mean(f[present])) if present.any() else 0.0,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def _map_labels(y: np.ndarray, source_classes: Sequence[str], model_classes: Sequence[str],
                what: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(model_classes)}
    used = {source_classes[i] for i in np.unique(y) if i >= 0}
    unknown = sorted(used - set(index))
    if unknown:
        raise ValueError(f"{what} has labels the model was not trained on: {unknown[:10]}; the "
                         f"model knows {list(model_classes)[:20]}. Use `cnncodes predict` for "
                         "images of unknown classes.")
    lut = np.array([index.get(c, -1) for c in source_classes] + [-1], np.int64)
    return lut[y]  # -1 (unlabelled) indexes the trailing -1


def evaluate(model: TrainedModel | str | os.PathLike, store: str | os.PathLike | FeatureStore,
             *, layer: str | None = None, allow_incomplete: bool = False,
             trust_pickle: bool = False) -> Evaluation:
    """Score ``model`` on the labelled rows of ``store`` that it was not trained on.

    Rows whose image path was used for training (e.g. the same store after ``train(...,
    holdout=0.2)``: what remains is the held-out part) are excluded and counted.
    ``trust_pickle``: also load a model file of the old joblib (pickle) format (see
    :func:`~cnncodes.load_model`).

    Raises:
        ModelMismatchError: the store's codes come from another backbone/weights/layer/pooling/
            preprocessing (the field is named).
        IncompleteStoreError: the store's extraction was stopped (without ``allow_incomplete``,
            which reads it anyway and records so in the evaluation).
        ValueError: no labelled rows left to evaluate, or labels the model does not know.
    """
    m = load_model(model, trust_pickle=trust_pickle)
    st = _as_store(store)
    note = st.check_complete(allow_incomplete)
    sp = store_provenance(st)
    m.check_compatible(sp, dim=sp["dims"].get(m.layer), what=f"the codes in {st.path}")
    name = layer or m.layer
    if name != m.layer:
        raise ValueError(f"The model reads layer {m.layer!r}; got layer={layer!r}.")
    X, y = st.load(name, allow_incomplete=True)
    paths = np.asarray(_abs_paths(st), dtype=object)
    y = _map_labels(y, st.classes, m.classes, os.fspath(st.path))
    labelled = y >= 0
    trained = set(m.train_paths)
    seen = np.array([p in trained for p in paths], bool) if trained else np.zeros(len(y), bool)
    keep = labelled & ~seen
    n_seen = int((labelled & seen).sum())
    own_holdout = (m.split.get("kind") == "holdout"
                   and os.path.abspath(m.split.get("store", "")) == os.path.abspath(st.path))
    if n_seen:
        (log.info if own_holdout else log.warning)(
            "%s: %s used to train the model and not evaluated", st.path,
            f"{plural(n_seen, 'row')} {'was' if n_seen == 1 else 'were'}")
    if not keep.any():
        raise ValueError(f"{st.path} has no labelled rows the model was not trained on "
                         f"({int(labelled.sum())} labelled, {n_seen} used in training); evaluate "
                         "on a separate test store, or train with --holdout.")
    pred, scores = m.scores(X[keep])
    metrics = score_predictions(y[keep], pred, m.classes)
    log.info("%s: accuracy %.4f, balanced accuracy %.4f on %d rows", st.path,
             metrics["accuracy"], metrics["balanced_accuracy"], int(keep.sum()))
    return Evaluation(os.fspath(st.path), name, list(m.classes), paths[keep].tolist(), y[keep],
                      pred, metrics, excluded_training_rows=n_seen,
                      unlabelled_rows=int((~labelled).sum()),
                      confidence=scores.max(axis=1),
                      confidence_kind=m.score_kind, all_scores=scores,
                      incomplete_store=report_note(note) if note is not None else None)
