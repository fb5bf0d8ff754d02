"""The model file format: a zip archive of ``.npy`` arrays and one JSON document, holding no code.

Members, in this order (``unzip -l model.npz`` lists them; ``numpy.load(path)`` reads the arrays):

* ``cnncodes-model`` (stored uncompressed, always first): a short text naming the format and its
  version. Its name sits at byte 30 of the file, so the format is recognised from the first
  bytes (:func:`is_model_archive`), whatever the file's extension.
* ``model.json``: the fields of :class:`~cnncodes.linear.model_file.TrainedModel` (classes, layer,
  provenance, split, selection, training paths, versions) and the pipeline: for each step its
  class name (one of :data:`ESTIMATORS`), its constructor parameters and every fitted attribute.
  Arrays appear as ``{"__array__": NAME, "dtype": ..., "shape": [...]}``.
* ``arrays/NAME.npy``: each array in NumPy's ``.npy`` format; only bool, integer and float dtypes.
* ``check``: two probe rows and the pipeline's ``predict`` / ``decision_function`` on them at save
  time; the rebuilt pipeline must reproduce them (a scikit-learn whose estimators changed their
  fitted attributes is caught at load, not by wrong predictions).

Loading never unpickles: arrays are read with ``allow_pickle=False`` after their header's shape x
item size was checked against the member's size (a header cannot make the reader allocate more
than the file holds), estimator classes come from the fixed list :data:`ESTIMATORS` (nothing is
imported by a name found in the file), and the uncompressed total is bounded. What the format
cannot represent (another estimator class, an object array, a value of another type) is refused
at save time with the step and attribute named; nothing is ever pickled instead.

Why this format (compared)
--------------------------
* **joblib / pickle** (cnncodes' format before): stores anything, but loading runs whatever code
  the file names. Still readable, only with ``trust_pickle=True``.
* **skops** (``skops.io``): a restricted pickle-like object graph with a trusted-type list. A new
  dependency, its schema follows scikit-learn's internals, and loading still walks an object graph
  whose type list must be audited; five fixed estimator classes do not need a general mechanism.
* **safetensors**: arrays plus a flat string-to-string header. Safe, but a new (compiled)
  dependency, and the pipeline's structure would still need its own JSON encoding; it adds
  nothing over ``.npy`` here.
* **ONNX** (skl2onnx): a float32 graph, so predictions are not identical, and a heavy dependency.
* **zip of ``.npy`` + JSON** (chosen): only the standard library and NumPy (already required);
  bit-exact arrays, so predictions and decision values are identical; readable with standard
  tools (``unzip``, ``numpy.load``, any JSON viewer).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_path
from ..errors import ModelFileError
from ..outputs import MODEL_MAGIC_MEMBER as MAGIC_MEMBER
from ..outputs import is_model_archive  # noqa: F401  (re-exported: the format's magic)

#: The model format this cnncodes writes (1 was the joblib pickle).
FORMAT_VERSION = 2
_MAGIC_TEXT = (f"{MAGIC_MEMBER} format {FORMAT_VERSION}\nA cnncodes linear model: arrays in "
               "arrays/*.npy, everything else in model.json. It holds no code.\n")
_JSON_MEMBER = "model.json"
_ARRAY_DIR = "arrays/"
#: The estimator classes a pipeline step may be: name in the file -> (module, class).
ESTIMATORS = {
    "Normalizer": ("sklearn.preprocessing", "Normalizer"),
    "StandardScaler": ("sklearn.preprocessing", "StandardScaler"),
    "PCA": ("sklearn.decomposition", "PCA"),
    "LogisticRegression": ("sklearn.linear_model", "LogisticRegression"),
    "LinearSVC": ("sklearn.svm", "LinearSVC"),
}
_DTYPE_KINDS = "biuf"  # bool, int, uint, float: nothing else is stored or read
_TAGS = ("__array__", "__scalar__", "__tuple__", "__dict__", "__float__")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The uncompressed members may total at most this, or this many times the file's size.
_MIN_BUDGET = 1 << 30
_RATIO = 200


# --------------------------------------------------------------------------------- encoding


class _Encoder:
    """Values -> JSON with tagged arrays, NumPy scalars, tuples and non-string-keyed dicts."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def __call__(self, value: Any, where: str) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if isinstance(value, str):  # numpy.str_ and other str subclasses: their text
            return str.__str__(value)
        if type(value) is float:  # repr round-trips exactly; JSON has no NaN/inf: tagged
            return value if np.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, np.ndarray):
            return self._array(value, where)
        if isinstance(value, np.generic):
            if value.dtype.kind not in _DTYPE_KINDS:
                raise _unstorable(where, f"a NumPy {value.dtype} scalar")
            item = value.item()
            if isinstance(item, float) and not np.isfinite(item):
                item = repr(item)  # 'nan', 'inf', '-inf'
            return {"__scalar__": value.dtype.str, "value": item}
        if type(value) is tuple:
            return {"__tuple__": [self(v, f"{where}[{i}]") for i, v in enumerate(value)]}
        if type(value) is list:
            return [self(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if type(value) is dict:
            if all(type(k) is str for k in value) and not any(t in value for t in _TAGS):
                return {k: self(v, f"{where}.{k}") for k, v in value.items()}
            return {"__dict__": [[self(k, f"{where} key"), self(v, f"{where}[{k!r}]")]
                                 for k, v in value.items()]}
        raise _unstorable(where, f"a {type(value).__module__}.{type(value).__name__}")

    def _array(self, a: np.ndarray, where: str) -> dict[str, Any]:
        if a.dtype.kind not in _DTYPE_KINDS or a.dtype.hasobject:
            raise _unstorable(where, f"an array of dtype {a.dtype}")
        if type(a) is not np.ndarray:
            raise _unstorable(where, f"a {type(a).__name__} (an ndarray subclass)")
        name = f"{len(self.arrays):03d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", where)[:60]
        self.arrays[name] = a
        return {"__array__": name, "dtype": a.dtype.str, "shape": list(a.shape)}


def _unstorable(where: str, what: str) -> ModelFileError:
    return ModelFileError(
        f"Cannot store {where} ({what}) in a cnncodes model file: the format holds only "
        "numbers, strings, lists, dicts and bool/int/float arrays (no pickled objects). "
        "Train with the pipelines cnncodes builds.")


def encode_pipeline(pipe: Any, enc: _Encoder) -> dict[str, Any]:
    """A fitted ``Pipeline`` of :data:`ESTIMATORS` steps as JSON (arrays go to ``enc``).

    Raises:
        ModelFileError: another class, a pipeline with ``memory``, an attribute of another type.
    """
    from sklearn.pipeline import Pipeline

    if type(pipe) is not Pipeline:
        raise ModelFileError(f"Cannot store a {type(pipe).__name__} as a cnncodes model: the "
                             "format holds a scikit-learn Pipeline of "
                             f"{', '.join(ESTIMATORS)} steps.")
    params = pipe.get_params(deep=False)
    steps = params.pop("steps")
    extra = sorted(set(vars(pipe)) - set(params) - {"steps"})
    if extra or params.get("memory") is not None:
        raise _unstorable("the pipeline", f"a Pipeline with {extra or 'memory'} set")
    out = []
    for name, est in steps:
        where = f"step {name!r}"
        if est is None or (isinstance(est, str) and est == "passthrough"):
            out.append({"name": name, "passthrough": True})
            continue
        cls = type(est).__name__
        if cls not in ESTIMATORS or _estimator_class(cls) is not type(est):
            raise ModelFileError(
                f"Cannot store {where} ({type(est).__module__}.{cls}) in a cnncodes model file: "
                f"the format holds only {', '.join(ESTIMATORS)} steps (never a pickle).")
        p = est.get_params(deep=False)
        state = {k: v for k, v in vars(est).items() if k not in p}
        out.append({"name": name, "class": cls, "params": enc(p, f"{where} parameter"),
                    "state": enc(state, f"{where} attribute")})
    return {"params": enc(params, "pipeline parameter"), "steps": out}


def _estimator_class(name: str) -> type[Any]:
    import importlib

    module, cls = ESTIMATORS[name]
    return getattr(importlib.import_module(module), cls)


def probe_rows(n_features: int) -> np.ndarray:
    """Two rows the model's scores are recorded on at save time (standard normal, seed 0)."""
    return np.random.default_rng(0).standard_normal((2, n_features)).astype(np.float32)


def pipeline_outputs(pipe: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    """``predict`` and ``decision_function`` of ``pipe`` on ``X`` (what :func:`check` compares)."""
    return {"predict": np.asarray(pipe.predict(X)),
            "decision_function": np.asarray(pipe.decision_function(X), np.float64)}


def write_archive(path: str | os.PathLike, document: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray]) -> None:
    """Write the zip (magic member first, then ``model.json``, then the arrays), atomically; the
    same model gives the same bytes (fixed member times)."""
    body = json.dumps(document, indent=1, ensure_ascii=True, allow_nan=False).encode("ascii")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(_info(MAGIC_MEMBER, zipfile.ZIP_STORED), _MAGIC_TEXT.encode("ascii"))
        zf.writestr(_info(_JSON_MEMBER), body)
        for name, a in arrays.items():
            fortran = a.flags.f_contiguous and not a.flags.c_contiguous
            order: Literal["C", "F"] = "F" if fortran else "C"
            a = np.require(a, a.dtype.newbyteorder("<"), order)  # little-endian on any machine
            with zf.open(_info(f"{_ARRAY_DIR}{name}.npy"), "w",
                         force_zip64=a.nbytes > (1 << 31)) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)


def _info(name: str, method: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = method
    info.external_attr = 0o644 << 16
    return info


# --------------------------------------------------------------------------------- decoding


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(model.json as a dict, arrays by name)`` of a model file, read without unpickling.

    Raises:
        ModelFileError: not a zip, truncated, damaged, a member missing, too large once
            uncompressed, an array of another dtype or whose header does not fit its bytes.
    """
    src = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelFileError(f"{src} is a truncated or damaged cnncodes model file ({e}); "
                             "train it again (`cnncodes train`).") from e
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if not names or names[0] != MAGIC_MEMBER:
            raise ModelFileError(f"{src} is a zip archive whose first member is not "
                                 f"{MAGIC_MEMBER!r}: not a cnncodes model file.")
        if len(set(names)) != len(names):
            raise ModelFileError(f"{src} holds the same member twice: a damaged or forged "
                                 "model file; train it again.")
        budget = max(_MIN_BUDGET, _RATIO * path.stat().st_size)
        total = sum(i.file_size for i in infos)
        if total > budget:
            raise ModelFileError(f"{src} would take {total} bytes once uncompressed, more than "
                                 f"{budget} (200 x its size): not a model cnncodes wrote.")
        if _JSON_MEMBER not in names:
            raise ModelFileError(f"{src} has no {_JSON_MEMBER} member (the model's "
                                 "description): a damaged model file; train it again.")
        raw = _member(zf, _JSON_MEMBER, src)
        try:
            doc = json.loads(raw.decode("ascii"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as e:
            raise ModelFileError(f"{src}: {_JSON_MEMBER} is not valid JSON ({e}); a damaged "
                                 "model file; train it again.") from e
        if not isinstance(doc, dict):
            raise ModelFileError(f"{src}: {_JSON_MEMBER} is not a JSON object; a damaged model "
                                 "file.")
        arrays = {i.filename[len(_ARRAY_DIR):-4]: _read_npy(zf, i, src) for i in infos
                  if i.filename.startswith(_ARRAY_DIR) and i.filename.endswith(".npy")}
    return doc, arrays


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _member(zf: zipfile.ZipFile, name: str, src: str) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise ModelFileError(f"{src}: member {name} cannot be read ({e}); a truncated or "
                             "damaged model file; train it again.") from e


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: str) -> np.ndarray:
    what = f"{src}: array {info.filename}"
    buf = io.BytesIO(_member(zf, info.filename, src))
    try:
        version = np.lib.format.read_magic(buf)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = header(buf)
    except (ValueError, TypeError, EOFError, SyntaxError) as e:
        raise ModelFileError(f"{what} has no valid .npy header ({e}); a damaged model file.") \
            from e
    if dtype.hasobject or dtype.kind not in _DTYPE_KINDS:
        raise ModelFileError(f"{what} has dtype {dtype}; a model file holds only bool, integer "
                             "and float arrays (never objects, which would need pickle).")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(buf.getbuffer()) - buf.tell()
    if need != have:
        raise ModelFileError(f"{what} declares shape {tuple(shape)} of {dtype} ({need} bytes) "
                             f"but holds {have} bytes; a damaged model file.")
    buf.seek(0)
    try:
        return np.lib.format.read_array(buf, allow_pickle=False)
    except (ValueError, TypeError, EOFError) as e:
        raise ModelFileError(f"{what} cannot be read ({e}); a damaged model file.") from e


class _Decoder:
    """JSON of :class:`_Encoder` -> values; arrays looked up by name and checked."""

    def __init__(self, arrays: Mapping[str, np.ndarray], src: str) -> None:
        self.arrays, self.src = arrays, src

    def __call__(self, obj: Any, where: str) -> Any:
        if obj is None or type(obj) in (bool, int, float, str):
            return obj
        if type(obj) is list:
            return [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if type(obj) is not dict:
            raise self.bad(where, f"a {type(obj).__name__}")
        if "__array__" in obj:
            return self._array(obj, where)
        if "__scalar__" in obj:
            dtype = self._dtype(obj.get("__scalar__"), where)
            value = obj.get("value")
            if value in ("nan", "inf", "-inf") and dtype.kind == "f":
                value = float(value)
            if type(value) not in (bool, int, float):
                raise self.bad(where, f"a {dtype} scalar with value {value!r}")
            try:
                return dtype.type(value)
            except (OverflowError, ValueError, TypeError):
                raise self.bad(where, f"a {dtype} scalar with value {value!r}") from None
        if "__float__" in obj:
            if obj["__float__"] not in ("nan", "inf", "-inf"):
                raise self.bad(where, f"the float {obj['__float__']!r}")
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(self(list(_list(obj["__tuple__"], self, where)), where))
        if "__dict__" in obj:
            out = {}
            for pair in _list(obj["__dict__"], self, where):
                if type(pair) is not list or len(pair) != 2:
                    raise self.bad(where, "a dict entry that is not a [key, value] pair")
                key = self(pair[0], f"{where} key")
                if not isinstance(key, (str, int, float, bool, tuple, np.generic)) \
                        and key is not None:
                    raise self.bad(where, f"a dict key of type {type(key).__name__}")
                try:
                    out[key] = self(pair[1], f"{where}[{key!r}]")
                except TypeError:  # an unhashable key (a tuple holding a list)
                    raise self.bad(where, "a dict key that cannot be a key") from None
            return out
        return {k: self(v, f"{where}.{k}") for k, v in obj.items()}

    def bad(self, where: str, what: str) -> ModelFileError:
        return ModelFileError(f"{self.src}: {where} is {what}, which a cnncodes model file "
                              "never holds; a damaged model file.")

    def _dtype(self, s: Any, where: str) -> np.dtype:
        try:
            dtype = np.dtype(str(s))
        except TypeError:
            raise self.bad(where, f"of unknown dtype {s!r}") from None
        if dtype.hasobject or dtype.kind not in _DTYPE_KINDS:
            raise self.bad(where, f"of dtype {dtype}")
        return dtype

    def _array(self, obj: Mapping[str, Any], where: str) -> np.ndarray:
        name = obj["__array__"]
        a = self.arrays.get(name) if isinstance(name, str) else None
        if a is None:
            raise ModelFileError(f"{self.src}: {where} is the array {name!r}, which the file "
                                 f"lacks ({_ARRAY_DIR}{name}.npy); a damaged model file.")
        want_dtype = self._dtype(obj.get("dtype"), where)
        want_shape = obj.get("shape")
        if a.dtype != want_dtype or list(a.shape) != want_shape:
            said = tuple(want_shape) if isinstance(want_shape, list) else want_shape
            raise ModelFileError(
                f"{self.src}: {where} ({_ARRAY_DIR}{name}.npy) is {a.dtype} {tuple(a.shape)}, "
                f"but {_JSON_MEMBER} says {want_dtype} {said}; a damaged model file.")
        return a


def _list(obj: Any, dec: _Decoder, where: str) -> list:
    if type(obj) is not list:
        raise dec.bad(where, f"a {type(obj).__name__} where a list belongs")
    return obj


def decode_pipeline(doc: Any, dec: _Decoder) -> Any:
    """The ``Pipeline`` described by :func:`encode_pipeline`'s JSON, rebuilt step by step."""
    from sklearn.pipeline import Pipeline

    if type(doc) is not dict or type(doc.get("steps")) is not list or not doc["steps"]:
        raise ModelFileError(f"{dec.src}: {_JSON_MEMBER} has no pipeline (the fitted "
                             "classifier's steps); a damaged model file.")
    steps = []
    for i, step in enumerate(doc["steps"]):
        if type(step) is not dict or type(step.get("name")) is not str:
            raise dec.bad(f"pipeline step {i}", "not a {name, class, params, state} object")
        name, where = step["name"], f"step {step['name']!r}"
        if step.get("passthrough") is True:
            steps.append((name, "passthrough"))
            continue
        cls = step.get("class")
        if cls not in ESTIMATORS:
            raise ModelFileError(f"{dec.src}: {where} names the class {cls!r}; a cnncodes model "
                                 f"file holds only {', '.join(ESTIMATORS)} (nothing else is "
                                 "ever imported or built).")
        params, state = dec(step.get("params"), f"{where} parameter"), \
            dec(step.get("state"), f"{where} attribute")
        if type(params) is not dict or type(state) is not dict:
            raise dec.bad(where, "missing its params or state")
        try:
            est = _estimator_class(cls)(**params)
        except TypeError as e:
            raise ModelFileError(f"{dec.src}: {where} ({cls}) has parameters this scikit-learn "
                                 f"does not take ({e}).") from e
        for key, value in state.items():
            if not isinstance(key, str) or not _NAME.match(key) or key.startswith("__"):
                raise dec.bad(where, f"an attribute named {key!r}")
            setattr(est, key, value)
        steps.append((name, est))
    params = dec(doc.get("params", {}), "pipeline params")
    if type(params) is not dict or params.get("memory") is not None:
        raise dec.bad("the pipeline's params", "not a plain dict without memory")
    try:
        return Pipeline(steps, **params)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{dec.src}: the pipeline cannot be rebuilt ({e}).") from e


def check(pipe: Any, doc: Any, dec: _Decoder, n_features: int) -> None:
    """Run the rebuilt ``pipe`` on the probe rows saved with it and compare with the outputs
    recorded at save time (predictions exactly, decision values within 1e-6 relative)."""
    rec = dec(doc, "check") if doc is not None else None
    if type(rec) is not dict or not all(isinstance(rec.get(k), np.ndarray) for k in
                                         ("X", "predict", "decision_function")):
        raise ModelFileError(f"{dec.src}: {_JSON_MEMBER} has no 'check' record (probe rows "
                             "and their outputs); a damaged model file.")
    X = rec["X"]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ModelFileError(f"{dec.src}: the probe rows have shape {X.shape}, not (2, "
                             f"{n_features}) as the model's n_features says; a damaged model "
                             "file.")
    try:
        got = pipeline_outputs(pipe, X)
    except Exception as e:  # noqa: BLE001 - inconsistent arrays: shapes that do not chain
        raise ModelFileError(f"{dec.src}: the stored classifier does not run ({type(e).__name__}"
                             f": {str(e).splitlines()[0] if str(e) else ''}); its arrays do not "
                             "fit together: a damaged model file.") from e
    want = rec["decision_function"]
    same = (got["predict"].shape == rec["predict"].shape
            and np.array_equal(got["predict"], rec["predict"])
            and got["decision_function"].shape == want.shape
            and np.allclose(got["decision_function"], want, rtol=1e-6,
                            atol=1e-9 * max(1.0, float(np.abs(want).max(initial=0)))))
    if not same:
        raise ModelFileError(f"{dec.src}: the rebuilt classifier does not reproduce the scores "
                             "recorded when the file was written (a scikit-learn whose "
                             "estimators changed, or a damaged file); use the scikit-learn "
                             "recorded in the file's versions, or train again.")
