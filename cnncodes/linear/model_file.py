"""The model file: :class:`TrainedModel` (a fitted pipeline bound to the provenance of the codes it
was trained on), :func:`save_model` / :func:`load_model` (a zip of arrays and JSON that holds no
code: :mod:`~cnncodes.linear.model_format`, written atomically) and the provenance checks every
reader of codes runs first (:meth:`TrainedModel.check_compatible` names each differing field).

Model files of cnncodes before format 2 are joblib pickles: :func:`load_model` reads them only
with ``trust_pickle=True`` (``--trust-pickle``), since unpickling runs code.
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

from .._version import __version__
from ..codes.numerics import COMPAT_DEFAULTS, compat_value
from ..codes.store import FeatureStore, canonical
from ..errors import ModelFileError, ModelMismatchError, NotFoundError
from ..outputs import check_output, sniff
from .model_format import (
    FORMAT_VERSION,
    _Decoder,
    _Encoder,
    check,
    decode_pipeline,
    encode_pipeline,
    pipeline_outputs,
    probe_rows,
    read_archive,
    write_archive,
)
from .options import MODEL_FILE

log = logging.getLogger(__name__)


MODEL_FORMAT = "cnncodes-model"


#: The format :func:`save_model` writes (1: the joblib pickle of cnncodes before; 2: the zip of
#: arrays and JSON of :mod:`~cnncodes.linear.model_format`).
MODEL_FORMAT_VERSION = FORMAT_VERSION
#: The format of the joblib model files of older cnncodes (read only with ``trust_pickle``).
PICKLE_FORMAT_VERSION = 1


#: Provenance fields copied from the store into the model file (the first four are checked).
BINDING_FIELDS = ("backbone", "weights", "pooling", "preprocessing")


_COPIED_FIELDS = BINDING_FIELDS + ("numerics", "decoding", "family", "weights_sha256",
                                   "input_size", "dtype", "root", "source_kind",
                                   "default_layer", "versions")


TRUST_WARNING = ("Unpickling runs any code the file holds: load only files you made or that come "
                 "from a source you trust, and save the model again to get the safe format.")


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
        """The model as the plain dict an old (format 1) joblib model file holds; the pipeline
        is the live object. :func:`save_model` never pickles it."""
        return {
            "format": MODEL_FORMAT, "format_version": PICKLE_FORMAT_VERSION,
            "pipeline": self.pipeline, "classes": list(self.classes), "layer": self.layer,
            "provenance": dict(self.provenance), "split": dict(self.split),
            "selection": dict(self.selection), "train_paths": list(self.train_paths),
            "train_labels": np.asarray(self.train_labels, np.int64), "store": self.store,
            "created": self.created, "versions": {k: str(v) for k, v in self.versions.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "model") -> TrainedModel:
        """The model of a :meth:`to_dict` dict (an old joblib model file holds one).

        Raises:
            ModelFileError: not a cnncodes model dict, a newer format, a field missing or of
                the wrong type (one line naming it).
        """
        if not isinstance(d, Mapping) or d.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{source} is not a cnncodes model file (no 'format': "
                                 f"'{MODEL_FORMAT}' entry); make one with `cnncodes train`.")
        version = d.get("format_version", -1)
        if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
            raise ModelFileError(f"{source} has model format {version!r}, not one this "
                                 f"cnncodes reads (up to {MODEL_FORMAT_VERSION}); upgrade "
                                 "cnncodes.")
        return cls(**_check_fields(d, source))


def save_model(model: TrainedModel, path: str | os.PathLike, *, overwrite: bool = False,
               inputs: Sequence[Any] = ()) -> Path:
    """Write ``model`` as a cnncodes model file (:mod:`~cnncodes.linear.model_format`: a zip of
    ``.npy`` arrays and JSON that holds no code), whatever the name's extension: ``model.joblib``
    given by an older script gets the safe format too (loading recognises it by content).

    The file is written to a temporary name and moved into place atomically; the same model
    gives the same bytes.

    Args:
        overwrite: replace an existing file that is not a cnncodes model (never an input, a
            folder or a special file: :func:`cnncodes.outputs.check_output`).
        inputs: files the model was made from (the training store is always one).

    Raises:
        OutputError: ``path`` is an input, not a regular file, or another kind of file.
        ModelFileError: the model holds something the format cannot (another estimator class,
            an object array...): the step and attribute are named; nothing is written.
    """
    path = check_output(path, inputs=(model.store or None, *inputs), expect="model",
                        overwrite=overwrite, option="-o")
    document, arrays = encode_model(model)  # refuses before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    write_archive(path, document, arrays)
    if path.suffix.lower() in (".joblib", ".pkl", ".pickle"):
        log.info("%s: written as a cnncodes model file (a zip of arrays and JSON, no pickle) "
                 "despite its extension; read it with cnncodes.load_model, not joblib.load",
                 path)
    return path


def encode_model(model: TrainedModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(model.json document, arrays)`` of ``model`` in the format of
    :mod:`~cnncodes.linear.model_format`, with the probe rows' outputs for the load check."""
    import sklearn

    enc = _Encoder()
    fields = {
        "classes": [str(c) for c in model.classes], "layer": str(model.layer),
        "provenance": model.provenance, "split": model.split, "selection": model.selection,
        "train_paths": [os.fspath(p) for p in model.train_paths],
        "train_labels": np.asarray(model.train_labels, np.int64), "store": os.fspath(model.store),
        "created": model.created, "versions": {k: str(v) for k, v in model.versions.items()},
    }
    _check_fields({**fields, "pipeline": model.pipeline}, "the model to save")
    pipeline = encode_pipeline(model.pipeline, enc)
    X = probe_rows(model.n_features)
    try:
        outputs = pipeline_outputs(model.pipeline, X)
    except Exception as e:  # noqa: BLE001 - a pipeline that does not run is not saved
        raise ModelFileError(f"The model's pipeline does not run on {model.n_features} features "
                             f"({type(e).__name__}: {e}); it is not saved.") from e
    document = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
        "written_by": {"cnncodes": __version__, "scikit-learn": sklearn.__version__,
                       "numpy": np.__version__},
        "model": {k: enc(v, k) for k, v in fields.items()},
        "pipeline": pipeline,
        "check": enc({"X": X, **outputs}, "check"),
    }
    return document, enc.arrays


def load_model(path: str | os.PathLike | TrainedModel, *,
               trust_pickle: bool = False) -> TrainedModel:
    """Load a model file written by :func:`save_model`, without running any code from it.

    The format is recognised from the file's first bytes, not its name. A model file of an
    older cnncodes (a joblib pickle) is refused unless ``trust_pickle=True``: unpickling runs
    whatever code the file holds, so it is only done when asked, after logging a warning; save
    the loaded model again to convert it. Nothing is unpickled before that decision.

    Raises:
        FileNotFoundError: no file at ``path``.
        ModelFileError: a pickle without ``trust_pickle``, another kind of file, or a damaged,
            truncated or incomplete model file (one line naming what is wrong).
    """
    if isinstance(path, TrainedModel):
        return path
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"No model file at {path}; train one with `cnncodes train "
                            f"CODES.h5 -o {MODEL_FILE}`.")
    kind, what = sniff(path)
    if kind == "model":
        return _load_archive(path)
    if kind in ("pickle-model", "pickle"):
        if not trust_pickle:
            raise ModelFileError(
                f"{path} is {what}: loading it would run any code it holds, so it is not "
                "loaded. If you made it or trust its source, pass --trust-pickle "
                "(trust_pickle=True); save it again to get the safe format.")
        log.warning("%s: %s (trusted with --trust-pickle / trust_pickle=True). %s", path, what,
                    TRUST_WARNING)
        return _load_pickle(path)
    hint = (" For a fine-tuned network pass its RUN/model.pt to `cnncodes predict`."
            if kind == "torch" else "")
    raise ModelFileError(f"{path} is {what}, not a cnncodes model file; pass the file written "
                         f"by `cnncodes train CODES.h5 -o {MODEL_FILE}`.{hint}")


def _load_pickle(path: Path) -> TrainedModel:
    """An old joblib model file (the caller decided to trust it)."""
    import joblib

    try:
        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ModelFileError(f"Cannot read model file {path}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return TrainedModel.from_dict(obj, source=os.fspath(path))


def _load_archive(path: Path) -> TrainedModel:
    src = os.fspath(path)
    doc, arrays = read_archive(path)
    if doc.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{src}: model.json has no 'format': '{MODEL_FORMAT}' entry; "
                             "not a cnncodes model file.")
    version = doc.get("format_version")
    if type(version) is not int:
        raise ModelFileError(f"{src}: model.json has no 'format_version' number; a damaged "
                             "model file.")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{src} has model format {version}, newer than this cnncodes "
                             f"reads ({MODEL_FORMAT_VERSION}); upgrade cnncodes.")
    dec = _Decoder(arrays, src)
    fields = dec(doc.get("model"), "model")
    if not isinstance(fields, dict):
        raise ModelFileError(f"{src}: model.json has no 'model' object (classes, layer, "
                             "provenance...); a damaged model file.")
    pipeline = decode_pipeline(doc.get("pipeline"), dec)
    model = TrainedModel(**_check_fields({**fields, "pipeline": pipeline}, src))
    check(pipeline, doc.get("check"), dec, model.n_features)
    written = (doc.get("written_by") or {}).get("scikit-learn") \
        if isinstance(doc.get("written_by"), dict) else None
    import sklearn

    if written and written != sklearn.__version__:
        log.info("%s was written with scikit-learn %s (this is %s); its recorded scores were "
                 "reproduced", src, written, sklearn.__version__)
    return model


#: field -> (required, what it is), for the messages about a model file missing a field.
_FIELDS = {
    "pipeline": (True, "the fitted classifier"),
    "classes": (True, "the class names"),
    "layer": (True, "the layer whose codes it reads"),
    "provenance": (True, "the provenance of the training codes"),
    "split": (True, "how the training rows were chosen"),
    "selection": (True, "the model-selection record"),
    "train_paths": (False, "the training images"),
    "train_labels": (False, "their labels"),
    "store": (False, "the training store"),
    "created": (False, "the creation time"),
    "versions": (False, "the library versions"),
}


def _check_fields(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The :class:`TrainedModel` fields of ``d``, checked: one message naming every missing
    field, or the first one of the wrong type."""
    from sklearn.pipeline import Pipeline

    missing = [f"'{k}' ({what})" for k, (req, what) in _FIELDS.items() if req and k not in d]
    if missing:
        raise ModelFileError(f"{source} is a cnncodes model file without {', '.join(missing)}; "
                             "it is damaged or incomplete: train the model again.")
    sel = d["selection"]
    problems = [
        ("pipeline", not isinstance(d["pipeline"], Pipeline), "a scikit-learn Pipeline"),
        ("classes", not (isinstance(d["classes"], list) and d["classes"]
                         and all(isinstance(c, str) for c in d["classes"])),
         "a non-empty list of class names"),
        ("layer", not isinstance(d["layer"], str), "a layer name"),
        ("provenance", not isinstance(d["provenance"], dict), "a dict"),
        ("split", not isinstance(d["split"], dict), "a dict"),
        ("selection", not (isinstance(sel, dict) and isinstance(sel.get("model"), str)
                           and type(sel.get("n_features")) is int and sel["n_features"] > 0),
         "a dict with 'model' and 'n_features'"),
        ("train_paths", not (isinstance(d.get("train_paths", []), list)
                             and all(isinstance(p, str) for p in d.get("train_paths", []))),
         "a list of paths"),
        ("train_labels", not (isinstance(d.get("train_labels", np.zeros(0, np.int64)), np.ndarray)
                              and np.asarray(d.get("train_labels", [])).dtype.kind in "iu"
                              and len(d.get("train_labels", [])) == len(d.get("train_paths", []))),
         "an integer array with one label per training path"),
        ("store", not isinstance(d.get("store", ""), str), "a path"),
        ("created", not isinstance(d.get("created", ""), str), "a date"),
        ("versions", not isinstance(d.get("versions", {}), dict), "a dict"),
    ]
    for name, wrong, want in problems:
        if wrong:
            raise ModelFileError(f"{source}: the model's '{name}' is not {want}; a damaged model "
                                 "file: train the model again.")
    return {k: d[k] for k in _FIELDS if k in d}


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
