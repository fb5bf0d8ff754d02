"""The model file: :class:`TrainedModel` (a fitted pipeline bound to the provenance of the codes it
was trained on), :func:`save_model` / :func:`load_model` (a joblib file holding a plain dict,
written atomically) and the provenance checks every reader of codes runs first
(:meth:`TrainedModel.check_compatible` names each differing field).

.. warning:: joblib (pickle) files execute code when loaded. Only load model files you made
   yourself or that come from a source you trust.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from ..atomic import atomic_path
from ..codes.store import FeatureStore, canonical
from ..codes.numerics import COMPAT_DEFAULTS, compat_value
from ..errors import ModelMismatchError
from ..outputs import check_output, sniff

log = logging.getLogger(__name__)


MODEL_FORMAT = "cnncodes-model"


MODEL_FORMAT_VERSION = 1


#: Provenance fields copied from the store into the model file (the first four are checked).
BINDING_FIELDS = ("backbone", "weights", "pooling", "preprocessing")


_COPIED_FIELDS = BINDING_FIELDS + ("numerics", "decoding", "family", "weights_sha256",
                                   "input_size", "dtype", "root", "source_kind",
                                   "default_layer", "versions")


TRUST_WARNING = ("joblib model files run code when loaded: load only files you made or that come "
                 "from a source you trust.")


@dataclass
class TrainedModel:
    """A fitted pipeline bound to the provenance of the codes it was trained on.

    Attributes:
        pipeline: the fitted sklearn pipeline (predicts class indices into ``classes``).
        classes: class names.
        layer: the layer whose codes it reads.
        provenance: backbone, weights id + sha256, pooling, preprocessing, input size, layer info
            of the training codes (checked by :meth:`check_compatible`).
        split: how training rows were chosen (``{"kind": "all"|"holdout", ...}``).
        selection: the model-selection record (see :func:`fit_codes`).
        train_paths: absolute paths of the training images (never evaluated on).
        train_labels: their class indices (lets a raw-pixel baseline be trained on the same rows).
    """

    pipeline: Pipeline
    classes: list[str]
    layer: str
    provenance: dict[str, Any]
    split: dict[str, Any]
    selection: dict[str, Any]
    train_paths: list[str] = field(default_factory=list, repr=False)
    train_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    store: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.selection["n_features"])

    @property
    def kind(self) -> str:
        return str(self.selection["model"])

    @property
    def score_kind(self) -> str:
        """``probability`` (logistic regression) or ``score`` (LinearSVC decision value)."""
        return "probability" if hasattr(self.pipeline, "predict_proba") and \
            self.kind == "logreg" else "score"

    def describe(self) -> str:
        p = self.provenance
        return (f"{self.kind} on {p.get('backbone')}/{self.layer} codes ({p.get('weights')}, "
                f"{p.get('input_size')} px, {len(self.classes)} classes)")

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted class index (N,), score matrix (N, C))``: probabilities for logreg,
        decision values for LinearSVC; columns follow ``classes``."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"Codes have shape {X.shape}; the model expects (N, "
                             f"{self.n_features}) {self.layer} codes.")
        est_classes = np.asarray(self.pipeline.classes_)
        if self.score_kind == "probability":
            s = self.pipeline.predict_proba(X)
        else:
            s = self.pipeline.decision_function(X)
            if s.ndim == 1:
                s = np.stack([-s, s], axis=1)
        full = np.full((X.shape[0], len(self.classes)), -np.inf if self.score_kind == "score"
                       else 0.0)
        full[:, est_classes] = s
        return est_classes[np.argmax(s, axis=1)], full

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names for codes ``X`` (N, D)."""
        idx, _ = self.scores(X)
        return np.asarray(self.classes, dtype=object)[idx]

    # --- compatibility -------------------------------------------------------------------------

    def binding(self) -> dict[str, Any]:
        """The fields a source of codes must share with the training codes."""
        p = self.provenance
        return {"backbone": p.get("backbone"), "weights": _weights_identity(p),
                "layer": self.layer, "pooling": _layer_pooling(p, self.layer),
                "preprocessing": p.get("preprocessing"),
                # precision and decoder of the training codes (fp32/cpu for older files)
                **{f: compat_value(p, f) for f in COMPAT_DEFAULTS}}

    def check_compatible(self, provenance: Mapping[str, Any], *,
                         layers: Sequence[str] | None = None, dim: int | None = None,
                         what: str = "these codes") -> None:
        """Raise :class:`ModelMismatchError` naming every field where ``provenance`` (of a store
        or a :class:`~cnncodes.CodeExtractor`) differs from the training codes."""
        mine = self.binding()
        layers = list(layers if layers is not None else provenance.get("layers", []))
        diffs = []
        for f, want in mine.items():
            if f == "layer":
                if self.layer not in layers:
                    diffs.append(f"layer: model reads {self.layer!r}, {what} hold "
                                 f"{', '.join(map(repr, layers)) or 'none'}")
                continue
            have = (_weights_identity(provenance) if f == "weights"
                    else _layer_pooling(provenance, self.layer) if f == "pooling"
                    else compat_value(provenance, f) if f in COMPAT_DEFAULTS
                    else provenance.get(f))
            if canonical(have) != canonical(want):
                diffs.append(f"{f}: model has {_show(want)}, {what} have {_show(have)}")
        if not diffs and dim is not None and dim != self.n_features:
            diffs.append(f"dimension: model expects {self.n_features}-d {self.layer} codes, "
                         f"{what} have {dim}-d")
        if diffs:
            raise ModelMismatchError(
                f"{what} do not match the model ({self.describe()}): " + "; ".join(diffs)
                + f". Extract the images with the model's settings ({self.extract_hint()}) or "
                "use `cnncodes predict MODEL IMAGES`, which does that for you.")

    def extract_hint(self) -> str:
        p = self.provenance
        return (f"cnncodes extract IMAGES -o NEW.h5 --backbone {p.get('backbone')} --weights "
                f"{weights_argument(p)} --layers {self.layer} --pooling {p.get('pooling')} "
                f"--input-size {p.get('input_size')}")

    # --- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "pipeline": self.pipeline, "classes": list(self.classes), "layer": self.layer,
            "provenance": dict(self.provenance), "split": dict(self.split),
            "selection": dict(self.selection), "train_paths": list(self.train_paths),
            "train_labels": np.asarray(self.train_labels, np.int64), "store": self.store,
            "created": self.created, "versions": {k: str(v) for k, v in self.versions.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "model") -> TrainedModel:
        if not isinstance(d, Mapping) or d.get("format") != MODEL_FORMAT:
            raise ValueError(f"{source} is not a cnncodes model file (no 'format': "
                             f"'{MODEL_FORMAT}' entry); make one with `cnncodes train`.")
        if int(d.get("format_version", -1)) > MODEL_FORMAT_VERSION:
            raise ValueError(f"{source} has model format {d.get('format_version')}, newer than "
                             f"this cnncodes ({MODEL_FORMAT_VERSION}); upgrade cnncodes.")
        keys = ("pipeline", "classes", "layer", "provenance", "split", "selection", "train_paths",
                "train_labels", "store", "created", "versions")
        return cls(**{k: d[k] for k in keys if k in d})


def save_model(model: TrainedModel, path: str | os.PathLike, *, overwrite: bool = False,
               inputs: Sequence[Any] = ()) -> Path:
    """Write ``model`` as a joblib file holding a plain dict (see :meth:`TrainedModel.to_dict`).

    The file is written to a temporary name and moved into place atomically.

    Args:
        overwrite: replace an existing file that is not a cnncodes model (never an input, a
            folder or a special file: :func:`cnncodes.outputs.check_output`).
        inputs: files the model was made from (the training store is always one).

    Raises:
        OutputError: ``path`` is an input, not a regular file, or another kind of file.
    """
    import joblib

    path = check_output(path, inputs=(model.store or None, *inputs), expect="model",
                        overwrite=overwrite, option="-o")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        joblib.dump(model.to_dict(), tmp)
    return path


def load_model(path: str | os.PathLike | TrainedModel) -> TrainedModel:
    """Load a model file written by :func:`save_model`.

    .. warning:: joblib/pickle files execute code while loading. Load only model files you made
       or that come from a trusted source.

    Raises:
        FileNotFoundError, ValueError: missing file, or not a cnncodes model file.
    """
    if isinstance(path, TrainedModel):
        return path
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}; train one with `cnncodes train "
                                "CODES.h5 -o model.joblib`.")
    kind, what = sniff(path)
    if kind not in ("model", "pickle"):
        hint = (" For a fine-tuned network pass its RUN/model.pt to `cnncodes predict`."
                if kind == "torch" else "")
        raise ValueError(f"{path} is {what}, not a cnncodes model file; pass the file written by "
                         f"`cnncodes train CODES.h5 -o model.joblib`.{hint}")
    try:
        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"Cannot read model file {path}: {type(e).__name__}: {e}") from e
    return TrainedModel.from_dict(obj, source=os.fspath(path))


def store_provenance(store: FeatureStore) -> dict[str, Any]:
    """A store's provenance with ``layer_info`` (node, kind, pooling per layer) filled in from
    the per-layer dataset attributes."""
    info = store.info()
    prov = dict(info["provenance"])
    prov["layer_info"] = {k: {a: v[a] for a in ("node", "kind", "depth", "pooling") if a in v}
                          for k, v in info["layers"].items()}
    prov["dims"] = {k: int(v["dim"]) for k, v in info["layers"].items()}
    return prov


def _weights_identity(prov: Mapping[str, Any]) -> str:
    """The checksum when known (a file moved elsewhere is the same weights), else the id."""
    sha = prov.get("weights_sha256") or ""
    return f"sha256:{sha}" if sha else str(prov.get("weights"))


def _layer_pooling(prov: Mapping[str, Any], layer: str) -> Any:
    info = (prov.get("layer_info") or {}).get(layer) or {}
    return info.get("pooling", prov.get("pooling"))


def _show(v: Any) -> str:
    import json

    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) < 160 else s[:157] + "..."


def weights_argument(prov: Mapping[str, Any]) -> str:
    """The ``weights=`` value that reproduces ``prov["weights"]`` (``IMAGENET1K_V1``, a path...)."""
    wid = str(prov.get("weights", "auto"))
    if wid.startswith("file:"):
        return wid[len("file:"):]
    if wid == "random":
        return "random"
    return wid.split(".", 1)[1] if "." in wid else wid
