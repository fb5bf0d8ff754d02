"""The model file format (``cnncodes.linear.model_format``): every pipeline shape ``train`` can
fit comes back as the same ``Pipeline`` (same attributes, bit-identical outputs), what the format
cannot hold is refused at save time, pickles load only with ``trust_pickle=True`` and damaged files
give one line naming what is wrong, without running anything."""

from __future__ import annotations

import io
import itertools
import json
import logging
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from cnncodes import ModelFileError, TrainedModel, fit_codes, load_model, save_model
from cnncodes.linear.model_format import MAGIC_MEMBER
from cnncodes.linear.pixels import RAW_BASELINE_MODEL
from cnncodes.outputs import sniff

from ..conftest import requires_scipy_array_api

# ------------------------------------------------------------------------------------ helpers


def _data(n_classes: int, d: int = 12, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centres = rng.normal(size=(n_classes, d)) * 2
    X = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def _model(pipe: Pipeline, sel: dict, n_classes: int, n: int) -> TrainedModel:
    classes = [f"class {i}" for i in range(n_classes)]
    return TrainedModel(
        pipe, classes, "pool",
        {"backbone": "resnet18", "weights": "random", "input_size": 32, "dims": {"pool": 12},
         "layer_info": {"pool": {"node": "avgpool", "pooling": "avg"}}, "mean": (0.485, 0.456),
         "nested": {"__array__": "not a tag", 3: "int key"}, "nan": float("nan"),
         "inf": [float("inf"), np.float32("-inf")]},
        {"kind": "holdout", "seed": 0, "test_size": 0.2}, sel,
        # a name that is not UTF-8 (surrogate-escaped) and one with a newline: kept exactly
        train_paths=[f"/data/img {i}.png" for i in range(n - 2)] + ["/data/caf\udce9.png",
                                                                    "/data/a\nb.png"],
        train_labels=np.arange(n, dtype=np.int64) % n_classes, store="/data/codes.h5",
        created="2026-12-04T12:00:00+0000", versions={"scikit-learn": "1.9.1"})


def _same_state(a, b) -> None:
    """Two fitted estimators have the same attributes: keys, types, dtypes, values, layout."""
    assert type(a) is type(b)
    va, vb = vars(a), vars(b)
    assert sorted(va) == sorted(vb)
    for k, x in va.items():
        y = vb[k]
        assert type(x) is type(y), k
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            if x.flags.c_contiguous or x.flags.f_contiguous:  # a strided view comes back packed
                assert (x.flags.c_contiguous, x.flags.f_contiguous) == \
                    (y.flags.c_contiguous, y.flags.f_contiguous), k
            assert np.array_equal(x, y), k
        else:
            assert x == y or (x != x and y != y), k


def _same_outputs(p1: Pipeline, p2: Pipeline, X: np.ndarray) -> None:
    for Xv in (X, X.astype(np.float64), np.zeros_like(X)):
        assert np.array_equal(p1.predict(Xv), p2.predict(Xv))
        assert np.array_equal(p1.decision_function(Xv), p2.decision_function(Xv))
        if hasattr(p1, "predict_proba") and isinstance(p1[-1], LogisticRegression):
            assert np.array_equal(p1.predict_proba(Xv), p2.predict_proba(Xv))


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a model zip member by member, letting ``change(name, bytes)`` replace or drop
    (None) each one; the magic member stays first."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dst


def _json_edit(edit):
    def change(name, data):
        if name != "model.json":
            return data
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc).encode()
    return change


def _npy(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


class _Payload:
    """Unpickling this writes ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


# ---------------------------------------------------------------- every pipeline shape round-trips

SHAPES = [dict(model=m, l2=l2, standardize=s, pca=p, n_classes=c)
          for m, l2, s, p, c in itertools.product(("logreg", "linearsvc"), (False, True),
                                                  (True, False), (None, 3, 0.9), (2, 3))]
SHAPES += [dict(model="logreg", class_weight="balanced", n_classes=3),
           dict(model="linearsvc", class_weight="balanced", pca=4, n_classes=2),
           dict(model="logreg", class_weight={0: 1.0, 1: 2.5, 2: 0.5}, n_classes=3),
           # the raw-pixel baseline's shape: standardised pixels in [0, 1], logistic regression
           dict(model=RAW_BASELINE_MODEL, raw_pixels=True, n_classes=3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}={v}" for k, v in
                                                                s.items()))
def test_every_pipeline_shape_round_trips_exactly(shape, tmp_path):
    shape = dict(shape)
    n_classes, raw = shape.pop("n_classes"), shape.pop("raw_pixels", False)
    X, y = _data(n_classes)
    if raw:
        X = np.clip(X / 8 + 0.5, 0, 1).astype(np.float32)
    pipe, sel = fit_codes(X, y, c_grid=[0.1, 1.0], cv=2, device="cpu", **shape)
    m = _model(pipe, sel, n_classes, len(y))
    path = save_model(m, tmp_path / "m.npz")
    assert sniff(path)[0] == "model"
    m2 = load_model(path)
    assert [n for n, _ in m2.pipeline.steps] == [n for n, _ in pipe.steps] == sel["steps"]
    for (_, a), (_, b) in zip(pipe.steps, m2.pipeline.steps, strict=True):
        _same_state(a, b)
    _same_outputs(pipe, m2.pipeline, X)
    assert np.array_equal(m2.scores(X)[1], m.scores(X)[1])
    for f in ("classes", "layer", "provenance", "split", "selection", "train_paths", "store",
              "created", "versions"):  # repr: NaN == NaN, and types are compared too
        assert repr(getattr(m2, f)) == repr(getattr(m, f)), f
    text = zipfile.ZipFile(path).read("model.json").decode()
    assert type(m2.provenance["inf"][1]) is np.float32
    assert "NaN" not in text and "Infinity" not in text  # plain JSON
    assert m2.train_labels.dtype == np.int64 and np.array_equal(m2.train_labels, m.train_labels)
    # the same model gives the same bytes; numpy reads the arrays without pickle
    assert save_model(m2, tmp_path / "again.npz").read_bytes() == path.read_bytes()
    with np.load(path, allow_pickle=False) as z:
        assert MAGIC_MEMBER in z.files and "model.json" in z.files
        assert any(k.endswith("coef_") for k in z.files)


@requires_scipy_array_api
def test_array_api_trained_model_round_trips(tmp_path):
    pytest.importorskip("torch")
    X, y = _data(3)
    pipe, sel = fit_codes(X, y, c_grid=[0.1, 1.0], cv=2, device="cpu-torch")
    m2 = load_model(save_model(_model(pipe, sel, 3, len(y)), tmp_path / "m.npz"))
    for (_, a), (_, b) in zip(pipe.steps, m2.pipeline.steps, strict=True):
        _same_state(a, b)
    _same_outputs(pipe, m2.pipeline, X)


def test_the_extension_does_not_decide_the_format(tmp_path):
    X, y = _data(2)
    m = _model(*fit_codes(X, y, c_grid=[1.0], cv=2, device="cpu"), 2, len(y))
    path = save_model(m, tmp_path / "model.joblib")  # an old name: the safe format all the same
    assert sniff(path)[0] == "model" and zipfile.is_zipfile(path)
    assert np.array_equal(load_model(path).pipeline.predict(X), m.pipeline.predict(X))


# ------------------------------------------------------------------------ refused at save time


@pytest.mark.parametrize("spoil,named", [
    (lambda p: p.steps.insert(0, ("minmax", MinMaxScaler().fit(np.zeros((2, 12))))),
     "step 'minmax' (sklearn.preprocessing._data.MinMaxScaler)"),
    (lambda p: setattr(p[-1], "feature_names_in_", np.array(["a"] * 12, dtype=object)),
     "step 'clf' attribute.feature_names_in_ (an array of dtype object)"),
    (lambda p: setattr(p[-1], "callback_", lambda: 0), "step 'clf' attribute.callback_"),
    (lambda p: setattr(p[0], "mean_", np.ma.masked_array(p[0].mean_)), "(a MaskedArray"),
])
def test_what_the_format_cannot_hold_is_refused_at_save_time(spoil, named, tmp_path):
    X, y = _data(3)
    pipe, sel = fit_codes(X, y, c_grid=[1.0], cv=2, device="cpu")
    spoil(pipe)
    with pytest.raises(ModelFileError) as e:
        save_model(_model(pipe, sel, 3, len(y)), tmp_path / "m.npz")
    assert named in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing pickled instead


def test_an_estimator_subclass_is_refused(tmp_path):
    class MyLogReg(LogisticRegression):
        pass

    X, y = _data(2)
    pipe = Pipeline([("scale", StandardScaler()), ("clf", MyLogReg())]).fit(X, y)
    sel = {"model": "logreg", "n_features": 12}
    with pytest.raises(ModelFileError, match=r"step 'clf' \(.*MyLogReg\).*only Normalizer"):
        save_model(_model(pipe, sel, 2, len(y)), tmp_path / "m.npz")


# ----------------------------------------------------------------------- pickles need the flag


@pytest.fixture
def saved(tmp_path) -> tuple[TrainedModel, Path, np.ndarray]:
    X, y = _data(3)
    m = _model(*fit_codes(X, y, c_grid=[1.0], cv=2, device="cpu"), 3, len(y))
    return m, save_model(m, tmp_path / "good.npz"), X


@pytest.mark.parametrize("with_key", [False, True], ids=["plain-pickle", "cnncodes-lookalike"])
@pytest.mark.parametrize("name", ["evil.joblib", "evil.npz", "evil"])
def test_a_malicious_pickle_is_refused_without_running(tmp_path, with_key, name):
    marker = tmp_path / "marker"
    obj = {"format": "cnncodes-model", "x": _Payload(marker)} if with_key else _Payload(marker)
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(ModelFileError, match=r"--trust-pickle \(trust_pickle=True\)") as e:
        load_model(evil)
    assert "would run any code" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_an_old_joblib_model_loads_only_with_trust_pickle(saved, tmp_path, caplog):
    m, _, X = saved
    old = tmp_path / "old.joblib"
    joblib.dump(m.to_dict() | {"format_version": 1}, old)  # what cnncodes wrote before
    assert sniff(old)[0] == "pickle-model"
    with pytest.raises(ModelFileError, match="--trust-pickle"):
        load_model(old)
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        m2 = load_model(old, trust_pickle=True)
    assert str(old) in caplog.text and "runs any code" in caplog.text
    assert np.array_equal(m2.pipeline.decision_function(X), m.pipeline.decision_function(X))
    # converting it: save it again, and it loads without the flag
    m3 = load_model(save_model(m2, tmp_path / "new.npz"))
    assert np.array_equal(m3.pipeline.decision_function(X), m.pipeline.decision_function(X))


def test_trust_pickle_does_not_make_a_broken_dict_a_traceback(tmp_path):
    bad = tmp_path / "bad.joblib"
    joblib.dump({"format": "cnncodes-model", "format_version": 1, "classes": ["a"]}, bad)
    with pytest.raises(ModelFileError, match=r"without 'pipeline' .*'layer' .*'selection'"):
        load_model(bad, trust_pickle=True)


def test_safe_files_ignore_the_flag(saved):
    _, path, _ = saved
    assert load_model(path, trust_pickle=True).layer == "pool"


# ----------------------------------------------------------------- damaged files: one line each


def _one_line(path: Path, match: str) -> str:
    with pytest.raises(ModelFileError, match=match) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1, 40 / 1e9])
def test_a_truncated_file_is_one_line(saved, tmp_path, keep):
    _, path, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:max(40, int(len(data) * keep))])
    _one_line(cut, "truncated or damaged")


def test_a_flipped_byte_in_an_array_is_caught(saved, tmp_path):
    _, path, _ = saved
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("coef_.npy"))
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # inside its compressed data
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(data))
    _one_line(bad, "cannot be read|damaged")


@pytest.mark.parametrize("field", ["classes", "layer", "provenance", "split", "selection"])
def test_json_missing_a_field_names_it(saved, tmp_path, field):
    _, path, _ = saved
    bad = _rewrite(path, tmp_path / "bad.npz", _json_edit(lambda d: d["model"].pop(field)))
    _one_line(bad, rf"without '{field}' \(")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("pipeline"), "model.json has no pipeline"),
    (lambda d: d.pop("check"), "no 'check' record"),
    (lambda d: d.pop("format_version"), "no 'format_version'"),
    (lambda d: d.update(format_version=99), "newer than this cnncodes"),
    (lambda d: d["pipeline"]["steps"][-1].update({"class": "os.system"}),
     "names the class 'os.system'"),
    (lambda d: d["pipeline"]["steps"][-1]["state"].update({"__class__": 1}),
     "an attribute named '__class__'"),
    (lambda d: d["model"].update(classes="abc"), "'classes' is not a non-empty list"),
    (lambda d: d["model"]["selection"].pop("n_features"), "'selection' is not a dict with"),
    (lambda d: d["model"].update(train_labels=[1, 2]), "'train_labels' is not an integer array"),
    (lambda d: d["model"]["provenance"].update(x={"__scalar__": "|i1", "value": 1000}),
     r"model.provenance.x is a int8 scalar with value 1000"),
    (lambda d: d["model"]["provenance"].update(x={"__scalar__": "|O", "value": 1}),
     "of dtype object"),
    (lambda d: d["model"]["provenance"].update(x={"__float__": "1e999"}), "the float '1e999'"),
    (lambda d: d["model"]["provenance"].update(
        x={"__dict__": [[{"__tuple__": [[1]]}, 2]]}), "a dict key"),
    (lambda d: d["pipeline"]["steps"][-1]["state"]["coef_"].update(shape=5),
     r"but model.json says float\d+ 5"),
])
def test_json_damage_is_one_line(saved, tmp_path, edit, match):
    _, path, _ = saved
    _one_line(_rewrite(path, tmp_path / "bad.npz", _json_edit(edit)), match)


def test_missing_members_are_named(saved, tmp_path):
    _, path, _ = saved
    no_json = _rewrite(path, tmp_path / "a.npz", lambda n, b: None if n == "model.json" else b)
    _one_line(no_json, "no model.json member")
    no_coef = _rewrite(path, tmp_path / "b.npz",
                       lambda n, b: None if n.endswith("coef_.npy") else b)
    _one_line(no_coef, r"step 'clf' attribute\.coef_ is the array .*which the file lacks")


def test_an_array_whose_shape_differs_from_the_json_is_named(saved, tmp_path):
    _, path, _ = saved
    bad = _rewrite(path, tmp_path / "bad.npz", lambda n, b: _npy(np.zeros((3, 5)))
                   if n.endswith("coef_.npy") else b)
    _one_line(bad, r"coef_.*is float64 \(3, 5\), but model.json says float\d+ \(3, 12\)")


def test_arrays_that_do_not_fit_together_are_one_line(saved, tmp_path):
    """JSON and array agree, but the scaler's mean no longer chains with the classifier."""
    _, path, _ = saved

    def change(name, data):
        if name.endswith("mean_.npy") and "scale" in name:
            return _npy(np.zeros(7))
        if name == "model.json":
            doc = json.loads(data)
            doc["pipeline"]["steps"][0]["state"]["mean_"]["shape"] = [7]
            return json.dumps(doc).encode()
        return data
    _one_line(_rewrite(path, tmp_path / "bad.npz", change), "does not run|do not fit together")


def test_changed_coefficients_are_caught_by_the_recorded_scores(saved, tmp_path):
    _, path, _ = saved
    bad = _rewrite(path, tmp_path / "bad.npz", lambda n, b: _npy(
        np.lib.format.read_array(io.BytesIO(b)) * 2) if n.endswith("coef_.npy") else b)
    _one_line(bad, "does not reproduce the scores recorded")


@pytest.mark.parametrize("array", ["coef_", "check"])
def test_an_object_array_is_refused_without_unpickling(saved, tmp_path, array):
    _, path, _ = saved
    marker = tmp_path / "marker"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    blob = _npy(payload, allow_pickle=True)  # an .npy whose data is a pickle
    bad = _rewrite(path, tmp_path / "bad.npz", lambda n, b: blob
                   if n.endswith(".npy") and array in n else b)
    _one_line(bad, "has dtype object; a model file holds only bool, integer and float")
    assert not marker.exists()


def test_an_npy_header_larger_than_its_data_is_refused(saved, tmp_path):
    _, path, _ = saved
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**12,)})
    bad = _rewrite(path, tmp_path / "bad.npz", lambda n, b: header.getvalue() + b"\0" * 64
                   if n.endswith("coef_.npy") else b)
    _one_line(bad, r"declares shape \(1000000000000,\) of float64 .* but holds 64 bytes")


def test_a_zip_bomb_is_refused_before_decompressing(saved, tmp_path):
    _, path, _ = saved
    bomb = tmp_path / "bomb.npz"
    _rewrite(path, bomb, lambda n, b: b)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("arrays/zz.npy", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 24)
            for _ in range(70):  # 1.1 GiB of zeros, ~1 MiB compressed
                f.write(chunk)
    _one_line(bomb, "once uncompressed, more than")


def test_other_files_are_named_not_loaded(tmp_path):
    (tmp_path / "notes.npz").write_text("hello")
    _one_line(tmp_path / "notes.npz", "is a text file, not a cnncodes model file")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    _one_line(tmp_path / "plain.npz", "is a zip archive, not a cnncodes model file")
    with pytest.raises(FileNotFoundError, match="cnncodes train"):
        load_model(tmp_path / "missing.npz")
