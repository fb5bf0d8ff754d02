"""Classifiers on cached codes: grids, pipelines, splits, fold reduction, the classifier options,
the model file and its provenance checks, evaluation and a linear model's predictions.

Real data throughout: scikit-learn's digits (as 64-d pixel features, and as PNG class trees pushed
through a randomly initialised ResNet-18 saved to a checkpoint file: see ``digits.py``).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnncodes import (
    ClassifierOptions,
    FeatureStore,
    ModelMismatchError,
    evaluate,
    extract,
    fit_codes,
    load_model,
    parse_c_grid,
    predict,
    save_model,
    train,
)
from cnncodes.linear.grids import resolve_cv
from cnncodes.linear.model_file import store_provenance
from cnncodes.linear.pipelines import build_pipeline
from cnncodes.sources.splits import stratified_holdout

from .digits import BACKBONE, CLASSES, SIZE, digits_data  # noqa: F401 - session fixture


@pytest.fixture(scope="session")
def digits_model(digits_data):  # noqa: F811
    return train(digits_data.train_h5, layer="pool", c_grid="1e-3:1e1:5", cv=3)


@pytest.fixture(scope="module")
def digits_xy():
    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


# ------------------------------------------------------------------------------ grids, splits


def test_parse_c_grid_forms():
    g = parse_c_grid("1e-4:1e2:13")
    assert len(g) == 13 and g[0] == pytest.approx(1e-4) and g[-1] == pytest.approx(1e2)
    assert np.allclose(np.diff(np.log10(g)), 0.5)
    full = parse_c_grid("full")
    assert len(full) == 45 and full[0] == pytest.approx(1e-6) and full[-1] == pytest.approx(1e5)
    assert list(parse_c_grid("1, 0.1,10,1")) == [0.1, 1.0, 10.0]
    assert len(parse_c_grid(None)) == len(parse_c_grid("default")) == 7
    assert list(parse_c_grid([3.0])) == [3.0]


@pytest.mark.parametrize("bad", ["1e-4:1e2", "a:b:c", "0:1:3", "1,-2", "x"])
def test_parse_c_grid_rejects_bad_text_naming_it(bad):
    with pytest.raises(ValueError, match="C grid"):
        parse_c_grid(bad)


def test_build_pipeline_steps_and_bad_values():
    p = build_pipeline(model="linearsvc", l2=True, standardize=True, pca=10,
                       class_weight="balanced")
    assert [n for n, _ in p.steps] == ["l2", "scale", "pca", "clf"]
    assert p.named_steps["clf"].class_weight == "balanced"
    assert [n for n, _ in build_pipeline(standardize=False).steps] == ["clf"]
    with pytest.raises(ValueError, match="Unknown model 'svm'.*logreg, linearsvc"):
        build_pipeline(model="svm")
    with pytest.raises(ValueError, match="pca"):
        build_pipeline(pca=1.5)
    with pytest.raises(ValueError, match="class_weight"):
        build_pipeline(class_weight="auto")


def test_stratified_holdout_is_seeded_disjoint_and_stratified():
    y = np.repeat(np.arange(4), [10, 20, 5, 2])
    tr, te = stratified_holdout(y, test_size=0.2, seed=3)
    tr2, te2 = stratified_holdout(y, test_size=0.2, seed=3)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    assert not set(tr) & set(te) and len(tr) + len(te) == len(y)
    assert [int((y[te] == c).sum()) for c in range(4)] == [2, 4, 1, 1]
    assert not np.array_equal(te, stratified_holdout(y, test_size=0.2, seed=4)[1])
    with pytest.raises(ValueError, match="holdout"):
        stratified_holdout(y, test_size=1.5)


def test_resolve_cv_reduces_folds_for_small_classes(caplog):
    y = np.repeat([0, 1, 2], [10, 10, 3])
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        assert resolve_cv(y, 5, classes=["a", "b", "tiny"]) == 3
    assert "'tiny' has only 3 training images" in caplog.text
    assert resolve_cv(y, 3) == 3


def test_resolve_cv_errors_name_the_tiny_class():
    with pytest.raises(ValueError, match=r"'solo' \(1\).*at least 2"):
        resolve_cv(np.array([0, 0, 0, 1]), 5, classes=["many", "solo"])
    with pytest.raises(ValueError, match="at least 2 classes"):
        resolve_cv(np.zeros(5, int), 3)
    with pytest.raises(ValueError, match="cv must be >= 2"):
        resolve_cv(np.array([0, 0, 1, 1]), 1)


# ------------------------------------------------------------------------ model selection fits


@pytest.mark.parametrize("model", ["logreg", "linearsvc"])
def test_fit_codes_on_real_digits_is_accurate_and_picks_c_from_grid(model, digits_xy):
    X, y = digits_xy
    tr, te = stratified_holdout(y, test_size=0.5, seed=0)
    grid = parse_c_grid("1e-3:1e1:5")
    pipe, sel = fit_codes(X[tr], y[tr], model=model, c_grid=grid, cv=3, max_iter=2000)
    acc = float((pipe.predict(X[te]) == y[te]).mean())
    assert acc > 0.9, acc  # chance is 0.1
    assert sel["best_C"] in grid.tolist() and sel["c_grid"] == grid.tolist()
    assert len(sel["cv_mean"]) == len(sel["cv_std"]) == 5
    assert sel["best_cv_score"] == pytest.approx(max(sel["cv_mean"]))
    assert sel["cv"] == 3 and sel["n_train"] == len(tr) and sel["train_time_s"] > 0


def test_fit_codes_regularisation_matters_on_real_data(digits_xy):
    """The CV curve is not flat: a tiny C underfits the digits, so the search has to choose."""
    X, y = digits_xy
    _, sel = fit_codes(X[:600], y[:600], c_grid=[1e-6, 1.0], cv=3)
    assert sel["best_C"] == 1.0 and sel["cv_mean"][1] > sel["cv_mean"][0] + 0.1


def test_fit_codes_with_a_tiny_class_reduces_folds(digits_xy, caplog):
    X, y = digits_xy
    rows = np.concatenate([np.flatnonzero(y == 0)[:30], np.flatnonzero(y == 1)[:30],
                           np.flatnonzero(y == 2)[:2]])
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        pipe, sel = fit_codes(X[rows], np.searchsorted([0, 1, 2], y[rows]), cv=5,
                              c_grid=[0.1, 1.0], classes=["zero", "one", "two"])
    assert sel["cv"] == 2 and sel["cv_requested"] == 5
    assert "'two' has only 2 training images" in caplog.text


def test_classifier_options_object_and_keywords_are_one_thing(digits_xy):
    X, y = digits_xy[0][:300], digits_xy[1][:300]
    opts = ClassifierOptions(model="linearsvc", c_grid=(0.01, 0.1), cv=3, class_weight="balanced")
    _, a = fit_codes(X, y, classifier=opts, device="cpu")
    _, b = fit_codes(X, y, model="linearsvc", c_grid=[0.01, 0.1], cv=3, class_weight="balanced",
                     device="cpu")
    timing = ("train_time_s", "refit_time_s")
    assert {k: v for k, v in a.items() if k not in timing} == \
        {k: v for k, v in b.items() if k not in timing}
    assert a["model"] == "linearsvc" and a["class_weight"] == "balanced"
    assert ClassifierOptions.from_selection(a) == opts  # a model file says how it was chosen
    _, c = fit_codes(X, y, classifier=opts, cv=2, device="cpu")  # a keyword overrides a field
    assert c["cv"] == 2 and c["model"] == "linearsvc"
    assert fit_codes(X, y, c_grid=[0.1], cv=2, device="cpu")[1]["model"] == "logreg"
    with pytest.raises(TypeError, match="unexpected option 'Cs'; valid options are c_grid"):
        fit_codes(X, y, Cs=[1.0])
    with pytest.raises(ValueError, match="model must be one of logreg, linearsvc. Got 'svm'"):
        ClassifierOptions(model="svm")


def test_fit_codes_rejects_nan_codes_and_too_many_pca_components(digits_xy):
    X, y = digits_xy
    Xb = X[:200].copy()
    Xb[3, 5] = np.nan
    with pytest.raises(ValueError, match="1 row of the codes holds NaN"):
        fit_codes(Xb, y[:200], cv=3)
    with pytest.raises(ValueError, match="pca=500"):
        fit_codes(X[:200], y[:200], cv=3, pca=500)


# ------------------------------------------------------------------- stores, model file, checks


def test_train_evaluate_on_separate_test_store(digits_data, digits_model, tmp_path):  # noqa: F811
    m = digits_model
    assert m.layer == "pool" and m.classes == CLASSES
    assert m.selection["best_C"] in parse_c_grid("1e-3:1e1:5").tolist()
    assert m.provenance["backbone"] == BACKBONE and len(m.provenance["weights_sha256"]) == 64
    assert m.provenance["preprocessing"]["crop"] == SIZE
    assert m.split["kind"] == "all" and len(m.train_paths) == 140
    ev = evaluate(m, digits_data.test_h5)
    assert len(ev.y_true) == 60 and ev.excluded_training_rows == 0
    assert ev.accuracy > 0.5, ev.accuracy  # random-init codes of 8x8 digits; chance is 0.1
    assert sum(r["support"] for r in ev.metrics["per_class"]) == 60
    assert np.array(ev.metrics["confusion_matrix"]).sum() == 60
    assert np.trace(ev.metrics["confusion_matrix"]) == round(ev.accuracy * 60)

    path = save_model(m, tmp_path / "m.npz")
    with zipfile.ZipFile(path) as z:  # arrays and JSON, no pickle
        raw = json.loads(z.read("model.json"))
    assert raw["format"] == "cnncodes-model" and raw["format_version"] == 2
    for key in ("classes", "layer", "provenance", "split", "selection"):
        assert key in raw["model"]
    assert [s["class"] for s in raw["pipeline"]["steps"]] == ["StandardScaler",
                                                              "LogisticRegression"]
    m2 = load_model(path)
    X, _ = FeatureStore(digits_data.test_h5).load("pool")
    assert list(m2.predict(X)) == list(m.predict(X))


def test_holdout_never_evaluates_training_rows(digits_data):  # noqa: F811
    m = train(digits_data.train_h5, layer="pool", holdout=0.25, seed=1, c_grid=[0.01, 0.1],
              cv=3)
    assert m.split["kind"] == "holdout" and m.split["seed"] == 1
    assert m.split["n_train"] + m.split["n_test"] == 140 and m.split["n_test"] == 40
    ev = evaluate(m, digits_data.train_h5)
    assert len(ev.y_true) == 40 and ev.excluded_training_rows == 100
    assert not set(ev.paths) & set(m.train_paths)
    assert [int((ev.y_true == c).sum()) for c in range(10)] == [4] * 10
    # a model trained on all rows has nothing left to evaluate on its own store
    full = train(digits_data.train_h5, layer="pool", c_grid=[0.1], cv=3)
    with pytest.raises(ValueError, match="no labelled rows the model was not trained on"):
        evaluate(full, digits_data.train_h5)


def test_evaluate_refuses_codes_from_other_preprocessing(digits_data, digits_model, tmp_path):  # noqa: F811
    other = tmp_path / "test40.h5"
    extract(digits_data.test_dir, other, layers="pool", **{**digits_data.opts, "input_size": 40})
    with pytest.raises(ModelMismatchError, match=r"preprocessing: model has .*\"crop\": 32.*"
                                                 r"\"crop\": 40") as e:
        evaluate(digits_model, other)
    assert "--input-size 32" in str(e.value)  # the fix: how to extract compatible codes


@pytest.mark.parametrize("field,change", [
    ("backbone", lambda p: p.update(backbone="resnet34")),
    ("weights", lambda p: p.update(weights_sha256="0" * 64)),
    ("layer", lambda p: p.update(layers=["pool"])),
    ("pooling", lambda p: p["layer_info"]["layer3"].update(pooling="max")),
])
def test_check_compatible_names_the_differing_field(digits_data, field, change):  # noqa: F811
    m = train(digits_data.train_h5, layer="layer3", c_grid=[0.1], cv=3)
    prov = store_provenance(FeatureStore(digits_data.test_h5))
    m.check_compatible(prov)  # the untouched store is fine
    change(prov)
    with pytest.raises(ModelMismatchError, match=rf"{field}: model (has|reads)"):
        m.check_compatible(prov, what="the codes")


def test_same_weights_file_elsewhere_is_compatible(digits_data, digits_model):  # noqa: F811
    prov = store_provenance(FeatureStore(digits_data.test_h5))
    prov["weights"] = "file:/somewhere/else/resnet18-random.pth"  # moved file, same checksum
    digits_model.check_compatible(prov)


def test_load_model_refuses_other_files(tmp_path):
    joblib.dump({"hello": 1}, tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not a cnncodes model.*--trust-pickle"):
        load_model(tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not a cnncodes model file"):
        load_model(tmp_path / "x.joblib", trust_pickle=True)
    with pytest.raises(FileNotFoundError, match="cnncodes train"):
        load_model(tmp_path / "missing.joblib")


def test_train_on_unlabelled_store_is_refused(digits_data, tmp_path):  # noqa: F811
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(digits_data.test_dir.glob("*/*.png"))[:6]:
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    extract(flat, tmp_path / "flat.h5", layers="pool", **digits_data.opts)
    with pytest.raises(ValueError, match="no labelled rows"):
        train(tmp_path / "flat.h5")


# --------------------------------------------------------------------------------------- predict


def test_predict_images_end_to_end_with_a_broken_file(digits_data, digits_model, tmp_path):  # noqa: F811
    photos = tmp_path / "new"
    shutil.copytree(digits_data.test_dir, photos)
    (photos / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pred = predict(digits_model, photos, num_workers=0)
    assert len(pred.paths) == 60 and len(pred.failures) == 1
    assert pred.failures[0][0].endswith("3/broken.png")
    # codes computed here through the model's own extractor = codes in the test store
    ev = evaluate(digits_model, digits_data.test_h5)
    stored = dict(zip([Path(p).name for p in ev.paths], [CLASSES[i] for i in ev.y_pred],
                      strict=True))
    assert [stored[Path(p).name] for p in pred.paths] == pred.labels
    assert pred.score_kind == "probability"
    assert np.all((pred.scores > 0) & (pred.scores <= 1))
    assert np.allclose(pred.all_scores.sum(axis=1), 1, atol=1e-5)
    out = pred.to_csv(tmp_path / "p.csv")
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["path", "label", "true_label", "probability", "error",
                             *[f"prob_{c}" for c in pred.classes]]
    assert len(rows) == 61 and sum(bool(r["error"]) for r in rows) == 1
    bad = rows[0]  # failures first
    assert bad["error"] and all(bad[f"prob_{c}"] == "" for c in pred.classes)
    assert bad["label"] == "" and "not a recognised image" in bad["error"]
    acc = np.mean([r["label"] == r["true_label"] for r in rows if not r["error"]])
    assert acc == pytest.approx(ev.accuracy)
    for r in rows[1:]:  # probabilities per class sum to 1; the label is the most probable
        probs = {c: float(r[f"prob_{c}"]) for c in pred.classes}
        assert sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert r["label"] == max(probs, key=probs.get)
        assert float(r["probability"]) == pytest.approx(max(probs.values()), rel=1e-5)
    # --top-k: the k best classes, best first, with their probability
    k = 3
    rows = list(csv.DictReader(open(pred.to_csv(tmp_path / "top.csv", top_k=k))))
    assert rows[0]["error"] and rows[0]["top1_label"] == ""
    for r, tops in zip(rows[1:], pred.top_k(k), strict=True):
        got = [(r[f"top{i}_label"], float(r[f"top{i}_prob"])) for i in range(1, k + 1)]
        assert [g[0] for g in got] == [t[0] for t in tops] and got[0][0] == r["label"]
        assert [g[1] for g in got] == sorted((g[1] for g in got), reverse=True)
        assert got[0][1] == pytest.approx(float(r["probability"]))
        probs = {c: float(r[f"prob_{c}"]) for c in pred.classes}
        assert [g[0] for g in got] == sorted(probs, key=lambda c: -probs[c])[:k]


def test_predict_from_a_store_and_linearsvc_scores(digits_data):  # noqa: F811
    m = train(digits_data.train_h5, layer="pool", model="linearsvc", c_grid=[0.01, 0.1], cv=3)
    pred = predict(m, digits_data.test_h5)
    assert pred.score_kind == "score" and len(pred.paths) == 60
    # decision scores are labelled as scores, never as probabilities
    rows = list(csv.DictReader(open(pred.to_csv(digits_data.test_h5.parent / "svc.csv",
                                                overwrite=True, top_k=2))))
    assert list(rows[0])[:8] == ["path", "label", "true_label", "score", "error", "top1_label",
                                 "top1_score", "top2_label"]
    assert [c for c in rows[0] if "prob" in c] == []
    assert [c for c in rows[0] if c.startswith("score_")] == [f"score_{c}" for c in CLASSES]
    for r in rows:
        s = {c: float(r[f"score_{c}"]) for c in CLASSES}
        assert r["label"] == r["top1_label"] == max(s, key=s.get)
        assert float(r["top1_score"]) >= float(r["top2_score"])
    ev = evaluate(m, digits_data.test_h5)
    assert np.mean(np.array(pred.labels) == np.array(pred.true_labels)) == \
        pytest.approx(ev.accuracy)


def test_predict_takes_the_backbone_options_from_the_model(digits_data, digits_model):  # noqa: F811
    with pytest.raises(TypeError, match="from the model"):
        predict(digits_model, digits_data.test_h5, input_size=64)
    with pytest.raises(TypeError, match="unexpected option 'colour'"):
        predict(digits_model, digits_data.test_h5, colour="red")


def test_predict_refuses_changed_weights(digits_data, digits_model, tmp_path):  # noqa: F811
    m = load_model(save_model(digits_model, tmp_path / "m.joblib"))
    m.provenance["weights_sha256"] = "f" * 64  # as if the checkpoint file had been replaced
    with pytest.raises(ModelMismatchError, match="weights: model has sha256:ffff"):
        predict(m, digits_data.test_dir, num_workers=0)


