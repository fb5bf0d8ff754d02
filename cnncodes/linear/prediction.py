"""Predictions of a linear model: from a code store (checked against the model's provenance) or
from images, whose codes are computed by an extractor rebuilt from the model's own backbone,
weights, layer, pooling and preprocessing (:func:`model_extractor`). :class:`Predictions` is
the result (also of fine-tuned models, see :mod:`cnncodes.workflows.predict`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from ..atomic import atomic_write_csv
from ..codes.numerics import compat_value
from ..codes.store import FeatureStore
from ..options import BackboneOptions, RuntimeOptions
from ..outputs import check_output
from ..sources.folders import ImageSource
from ..stats import ci_record, plural
from .model_file import TrainedModel, load_model, store_provenance, weights_argument
from .training import _abs_paths, _as_store

if TYPE_CHECKING:
    from ..codes.extractor import CodeExtractor
    from ..codes.light import LightExtractor

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    """Predicted labels for a set of images (or store rows); failures are listed, not fatal."""

    paths: list[str]
    labels: list[str]
    scores: np.ndarray  # score of the predicted label: probability or decision value
    score_kind: str
    all_scores: np.ndarray  # (N, C) per class
    classes: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    true_labels: list[str] | None = None
    model: str = ""  # what predicted: TrainedModel.describe() or the fine-tuned network

    def to_csv(self, path: str | os.PathLike, *, overwrite: bool = False,
               inputs: Sequence[Any] = (), top_k: int | None = None) -> Path:
        """Write the predictions as a CSV; returns its path.

        Columns: ``path,label[,true_label],<probability|score>,error``, then with ``top_k`` the
        ``top1_label,top1_<prob|score>,...`` of the ``top_k`` best classes (best first), then
        one ``prob_<class>`` (logistic regression, fine-tuned networks: probabilities summing to
        1) or ``score_<class>`` (LinearSVC: decision values, not probabilities) column per class
        (:func:`score_columns`). Unreadable images come first, with the reason in ``error`` and
        the other columns empty. ``true_label`` is there when the source was labelled.

        Raises:
            OutputError: ``path`` is one of ``inputs``, not a regular file, or a file of another
                kind than a predictions CSV (replaced only with ``overwrite``).
        """
        check_output(path, inputs=inputs, expect="csv", overwrite=overwrite, option="-o")
        k = min(int(top_k), len(self.classes)) if top_k else 0
        short = score_prefix(self.score_kind)
        header = ["path", "label", self.score_kind, "error"]
        if self.true_labels is not None:
            header.insert(2, "true_label")
        header += [x for i in range(1, k + 1) for x in (f"top{i}_label", f"top{i}_{short}")]
        header += score_columns(self.score_kind, self.classes)
        width = len(header)
        rows: list[list[str]] = []
        for p, reason in self.failures:  # first: a reader sees them without scrolling
            row = [p, "", "", reason]
            if self.true_labels is not None:
                row.insert(2, "")
            rows.append(row + [""] * (width - len(row)))
        top = top_classes(self.all_scores, k)
        for i, p in enumerate(self.paths):
            row = [p, self.labels[i], format_score(self.scores[i]), ""]
            if self.true_labels is not None:
                row.insert(2, self.true_labels[i])
            for j in top[i]:
                row += [self.classes[j], format_score(self.all_scores[i, j])]
            rows.append(row + [format_score(v) for v in self.all_scores[i]])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_csv(path, header, rows)

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        """Per image, its ``k`` best classes with their probability or score, best first (ties
        in class order)."""
        return [[(self.classes[j], float(self.all_scores[i, j])) for j in row]
                for i, row in enumerate(top_classes(self.all_scores, k))]

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.paths), "failures": len(self.failures),
                "counts": {c: self.labels.count(c) for c in self.classes},
                "folder_labels": self.label_check()}

    def label_check(self) -> dict[str, Any] | None:
        """The folder labels against the model's classes (None for an unlabelled source).

        ``accuracy`` is over the ``n_known`` images whose folder class is one of the model's
        classes (None when there is none); ``unknown`` lists the folder classes the model does
        not know (their ``n_unknown`` images are left out of the accuracy: the model cannot
        predict them).
        """
        if self.true_labels is None:
            return None
        known = set(self.classes)
        pairs = [(t, p) for t, p in zip(self.true_labels, self.labels, strict=True) if t]
        ok = [(t, p) for t, p in pairs if t in known]
        unknown = sorted({t for t, _ in pairs if t not in known})
        acc = sum(t == p for t, p in ok) / len(ok) if ok else None
        return {"accuracy": acc, **ci_record(acc, len(ok)),
                "n_known": len(ok), "n_unknown": len(pairs) - len(ok), "unknown": unknown}

    def warn_unknown_classes(self) -> None:
        """Log a warning when folder classes are not classes of the model."""
        chk = self.label_check()
        if chk and chk["unknown"]:
            log.warning("folder classes %s are not classes of the model (%s): their %d images "
                        "get one of the model's classes and are left out of the accuracy%s",
                        ", ".join(chk["unknown"]), ", ".join(self.classes), chk["n_unknown"],
                        "" if chk["n_known"] else " (no image of a known class: no accuracy)")


def score_prefix(kind: str) -> str:
    """``prob`` for probabilities, ``score`` for decision values (column names)."""
    return "prob" if kind == "probability" else "score"


def score_columns(kind: str, classes: Sequence[str]) -> list[str]:
    """One column name per class: ``prob_<class>`` (probabilities) or ``score_<class>``
    (LinearSVC decision values, never called probabilities)."""
    return [f"{score_prefix(kind)}_{c}" for c in classes]


def format_score(v: float) -> str:
    """A probability or score as CSV text (6 significant digits; empty when not finite, e.g. a
    class the model never saw)."""
    return f"{v:.6g}" if np.isfinite(v) else ""


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties in column order)."""
    scores = np.asarray(scores, np.float64)
    k = max(0, min(int(k), scores.shape[1] if scores.ndim == 2 else 0))
    if k == 0 or scores.size == 0:
        return np.zeros((len(scores), 0), np.int64)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def model_runtime(model: TrainedModel, runtime: RuntimeOptions | None) -> RuntimeOptions:
    """``runtime`` with its ``auto`` precision and decoder chosen to give codes that mix with the
    model's training codes (fp32 and CPU decoding for a CPU-trained model, also on a GPU); an
    explicit choice is kept (and refused by :func:`model_extractor` if it does not mix)."""
    from .._runtime import is_cuda

    ropts = runtime or RuntimeOptions()
    num, dec = compat_value(model.provenance, "numerics"), compat_value(model.provenance,
                                                                          "decoding")
    changes: dict[str, Any] = {}
    if ropts.precision == "auto":
        changes["precision"] = num.partition("/")[0]
    if (ropts.decoder == "auto" and dec in ("cpu", "cpu-dct")
            and is_cuda(ropts.device)):
        changes["decoder"] = "pil"
    if ropts.jpeg_scaling == "auto" and dec in ("cpu", "cpu-dct"):
        changes["jpeg_scaling"] = "dct" if dec == "cpu-dct" else "off"
    return ropts.replace(**changes) if changes else ropts


def model_extractor(model: TrainedModel, *, runtime: RuntimeOptions | None = None) -> Any:
    """A :class:`~cnncodes.CodeExtractor` configured exactly like the model's training codes
    (``runtime`` gives its device and precision, see :func:`model_runtime`).

    Raises:
        ModelMismatchError: the weights file changed (checksum), or the preprocessing, precision
            (``numerics``) or decoder (``decoding``) of the rebuilt extractor differs from the
            recorded one.
    """
    from ..codes.light import light_extractor

    p = model.provenance
    bopts = BackboneOptions(backbone=p["backbone"], weights=weights_argument(p),
                            layers=(model.layer,), pooling=p.get("pooling", "avg"),
                            input_size=p.get("input_size"))
    ropts = model_runtime(model, runtime)
    # the torch-free path when its graph is cached
    ext: LightExtractor | CodeExtractor | None = light_extractor(bopts, ropts)
    if ext is None:
        from ..codes.extractor import CodeExtractor

        ext = CodeExtractor(bopts, runtime=ropts)
    model.check_compatible(ext.provenance(), layers=ext.layers,
                           what=f"the codes of the rebuilt {p['backbone']} extractor")
    return ext


def linear_predict(model: TrainedModel | str | os.PathLike,
                   source: str | os.PathLike | Sequence[str] | ImageSource | FeatureStore, *,
                   runtime: RuntimeOptions | None = None,
                   trust_pickle: bool = False) -> Predictions:
    """Predict labels with a linear model for images or for the rows of a code store.

    Images: their codes are extracted with the model's own backbone, weights, layer, pooling and
    preprocessing (the extraction code path of ``extract``; ``runtime`` says how). A code store
    (``.h5``) is checked against the model's provenance and read instead. Unreadable images are
    listed in ``Predictions.failures``; they do not stop the run.
    """
    m = load_model(model, trust_pickle=trust_pickle)
    true: list[str] | None = None
    if isinstance(source, FeatureStore) or is_store_source(source):  # (isinstance: for mypy)
        st = _as_store(source)
        sp = store_provenance(st)
        m.check_compatible(sp, dim=sp["dims"].get(m.layer), what=f"the codes in {st.path}")
        st.check_complete(allow_incomplete=True)  # labels the rows it has; warns of the rest
        X, y = st.load(m.layer, allow_incomplete=True)
        paths = _abs_paths(st)
        failures = [(os.path.normpath(os.fspath(st.root / p)), r) for p, r in st.failures]
        if (y >= 0).any():
            cls = st.classes
            true = [cls[i] if i >= 0 else "" for i in y]
    else:
        from ..codes.batches import extract_arrays

        runtime = model_runtime(m, runtime)
        ext = model_extractor(m, runtime=runtime)
        codes = extract_arrays(source, extractor=ext, runtime=runtime)
        X = codes.codes[m.layer]
        root = Path(codes.provenance.get("root", "."))
        paths = [os.path.normpath(os.fspath(root / p)) for p in codes.paths]
        failures = [(os.path.normpath(os.fspath(root / p)), r) for p, r in codes.failures]
        if len(codes.labels) and (codes.labels >= 0).any():
            true = [codes.classes[i] if i >= 0 else "" for i in codes.labels]
    if len(paths):
        idx, scores = m.scores(X)
    else:
        idx, scores = np.zeros(0, np.int64), np.zeros((0, len(m.classes)))
    labels = [m.classes[i] for i in idx]
    best = scores[np.arange(len(idx)), idx] if len(idx) else np.zeros(0)
    if failures:
        n_bad = len(failures)
        log.warning("%s could not be read and %s no prediction (listed first in the CSV)",
                    plural(n_bad, "image"), "has" if n_bad == 1 else "have")
    pred = Predictions(paths, labels, best, m.score_kind, scores, list(m.classes), failures,
                       true, model=m.describe())
    pred.warn_unknown_classes()
    return pred


def is_store_source(source: Any) -> TypeGuard[str | os.PathLike | FeatureStore]:
    """Whether ``source`` is a code store: a :class:`FeatureStore` or an ``.h5`` file."""
    return isinstance(source, FeatureStore) or (
        isinstance(source, (str, os.PathLike)) and Path(source).is_file()
        and Path(source).suffix.lower() in (".h5", ".hdf5"))
