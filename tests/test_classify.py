"""Classifiers on cached codes: grids, pipelines, splits, fold reduction, the model file and its
provenance checks, evaluation, predict on images, baseline, and the CNNCodes transformer.

Real data throughout: scikit-learn's digits (as 64-d pixel features, and as PNG class trees pushed
through a randomly initialised ResNet-18 saved to a checkpoint file, so that the model files are
bound to a weights checksum like with real weights; ``weights="random"``, the fixed seeded
network, is used where no checksum is needed).
"""

from __future__ import annotations

import csv
import logging
import pickle
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from cnncodes import (
    CNNCodes,
    FeatureStore,
    ModelMismatchError,
    baseline,
    evaluate,
    extract,
    fit_codes,
    load_model,
    parse_c_grid,
    predict,
    save_model,
    train,
)
from cnncodes.linear.classify import (
    build_pipeline,
    find_split,
    resolve_cv,
    store_provenance,
    stratified_holdout,
)
from cnncodes.linear.transformer import STATS, clear_memory_cache

BACKBONE = "resnet18"
SIZE = 32
CLASSES = [str(i) for i in range(10)]


# ------------------------------------------------------------------------------------ fixtures


def write_digits_tree(root: Path, indices: np.ndarray) -> Path:
    """digits[indices] as ``root/<digit>/<index>.png`` (8x8 grey scaled to 0..255)."""
    d = load_digits()
    for i in indices:
        folder = root / str(int(d.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * (255.0 / 16.0)).round().astype(np.uint8)).save(
            folder / f"{int(i):04d}.png")
    return root


def digits_split(per_class_train: int = 14, per_class_test: int = 6) -> tuple[np.ndarray, ...]:
    y = load_digits().target
    rng = np.random.default_rng(0)
    tr, te = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr.append(idx[:per_class_train])
        te.append(idx[per_class_train:per_class_train + per_class_test])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


class DigitsData:
    """A train/test split of digits PNGs, a fixed-weights checkpoint, and their code stores."""

    def __init__(self, root: Path):
        self.root = root
        tr, te = digits_split()
        self.split_dir = root / "digits"
        self.train_dir = write_digits_tree(self.split_dir / "train", tr)
        self.test_dir = write_digits_tree(self.split_dir / "test", te)
        torch.manual_seed(0)
        import torchvision

        self.weights = root / "resnet18-random.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), self.weights)
        self.opts = dict(backbone=BACKBONE, weights=str(self.weights), input_size=SIZE,
                         num_workers=0, progress=False)
        self.train_h5 = root / "train.h5"
        self.test_h5 = root / "test.h5"
        extract(self.train_dir, self.train_h5, layers="layer3,pool", **self.opts)
        extract(self.test_dir, self.test_h5, layers="layer3,pool", **self.opts)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> DigitsData:
    return DigitsData(tmp_path_factory.mktemp("digits-data"))


@pytest.fixture(scope="session")
def digits_model(digits_data):
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


def test_fit_codes_rejects_nan_codes_and_too_many_pca_components(digits_xy):
    X, y = digits_xy
    Xb = X[:200].copy()
    Xb[3, 5] = np.nan
    with pytest.raises(ValueError, match="1 rows .* NaN"):
        fit_codes(Xb, y[:200], cv=3)
    with pytest.raises(ValueError, match="pca=500"):
        fit_codes(X[:200], y[:200], cv=3, pca=500)


# ------------------------------------------------------------------- stores, model file, checks


def test_train_evaluate_on_separate_test_store(digits_data, digits_model, tmp_path):
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

    path = save_model(m, tmp_path / "m.joblib")
    raw = joblib.load(path)
    assert isinstance(raw, dict) and raw["format"] == "cnncodes-model"
    for key in ("pipeline", "classes", "layer", "provenance", "split", "selection"):
        assert key in raw
    m2 = load_model(path)
    X, _ = FeatureStore(digits_data.test_h5).load("pool")
    assert list(m2.predict(X)) == list(m.predict(X))


def test_holdout_never_evaluates_training_rows(digits_data):
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


def test_evaluate_refuses_codes_from_other_preprocessing(digits_data, digits_model, tmp_path):
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
def test_check_compatible_names_the_differing_field(digits_data, field, change):
    m = train(digits_data.train_h5, layer="layer3", c_grid=[0.1], cv=3)
    prov = store_provenance(FeatureStore(digits_data.test_h5))
    m.check_compatible(prov)  # the untouched store is fine
    change(prov)
    with pytest.raises(ModelMismatchError, match=rf"{field}: model (has|reads)"):
        m.check_compatible(prov, what="the codes")


def test_same_weights_file_elsewhere_is_compatible(digits_data, digits_model):
    prov = store_provenance(FeatureStore(digits_data.test_h5))
    prov["weights"] = "file:/somewhere/else/resnet18-random.pth"  # moved file, same checksum
    digits_model.check_compatible(prov)


def test_load_model_refuses_other_files(tmp_path):
    joblib.dump({"hello": 1}, tmp_path / "x.joblib")
    with pytest.raises(ValueError, match="not a cnncodes model file"):
        load_model(tmp_path / "x.joblib")
    with pytest.raises(FileNotFoundError, match="cnncodes train"):
        load_model(tmp_path / "missing.joblib")


def test_train_on_unlabelled_store_is_refused(digits_data, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(digits_data.test_dir.glob("*/*.png"))[:6]:
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    extract(flat, tmp_path / "flat.h5", layers="pool", **digits_data.opts)
    with pytest.raises(ValueError, match="no labelled rows"):
        train(tmp_path / "flat.h5")


# --------------------------------------------------------------------------------------- predict


def test_predict_images_end_to_end_with_a_broken_file(digits_data, digits_model, tmp_path):
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
    assert list(rows[0]) == ["path", "label", "true_label", "probability", "error"]
    assert len(rows) == 61 and sum(bool(r["error"]) for r in rows) == 1
    bad = next(r for r in rows if r["error"])
    assert bad["label"] == "" and "not a recognised image" in bad["error"]
    acc = np.mean([r["label"] == r["true_label"] for r in rows if not r["error"]])
    assert acc == pytest.approx(ev.accuracy)


def test_predict_from_a_store_and_linearsvc_scores(digits_data):
    m = train(digits_data.train_h5, layer="pool", model="linearsvc", c_grid=[0.01, 0.1], cv=3)
    pred = predict(m, digits_data.test_h5)
    assert pred.score_kind == "score" and len(pred.paths) == 60
    ev = evaluate(m, digits_data.test_h5)
    assert np.mean(np.array(pred.labels) == np.array(pred.true_labels)) == \
        pytest.approx(ev.accuracy)


def test_predict_refuses_changed_weights(digits_data, digits_model, tmp_path):
    m = load_model(save_model(digits_model, tmp_path / "m.joblib"))
    m.provenance["weights_sha256"] = "f" * 64  # as if the checkpoint file had been replaced
    with pytest.raises(ModelMismatchError, match="weights: model has sha256:ffff"):
        predict(m, digits_data.test_dir, num_workers=0)


# -------------------------------------------------------------------------------------- baseline


def test_find_split_detects_train_test_trees(digits_data, tmp_path):
    s = find_split(digits_data.split_dir)
    assert s == {"train": digits_data.train_dir, "test": digits_data.test_dir}
    assert find_split(digits_data.train_dir) == {"all": digits_data.train_dir}
    odd = tmp_path / "odd"
    (odd / "train" / "a").mkdir(parents=True)
    (odd / "test" / "a").mkdir(parents=True)
    (odd / "extra").mkdir()
    assert find_split(odd) == {"all": odd}  # three sub-folders: a class tree called train/test
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    (flat / "val").mkdir()
    assert find_split(flat) == {"all": flat}  # train/ and val/ are not class trees


def test_baseline_predefined_split_reuses_cache_and_reports(digits_data, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(digits_data.train_h5, cache / "train.h5")  # holds layer3 and pool
    kw = dict(report=tmp_path / "rep", cache=cache, backbone=BACKBONE,
              weights=str(digits_data.weights), input_size=SIZE, num_workers=0,
              c_grid="1e-3:1e-1:3", cv=3)
    res = baseline(digits_data.split_dir, raw_size=16, **kw)
    assert res.model.split["kind"] == "predefined"
    assert len(res.model.train_paths) == 140 and len(res.evaluation.y_true) == 60
    assert FeatureStore(cache / "train.h5").layers == ["layer3", "pool"]  # reused, not redone
    codes, raw = res.rows
    assert codes["accuracy"] == pytest.approx(res.evaluation.accuracy) and codes["accuracy"] > 0.5
    assert raw["name"] == "raw pixels 16x16 rgb" and raw["features"] == 768
    assert 0.5 < raw["accuracy"] <= 1  # digits pixels are a strong baseline
    for f in ("report.json", "cv_scores.png", "confusion.png", "model.joblib"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    runs = len(FeatureStore(cache / "test.h5").provenance["runs"])
    again = baseline(digits_data.split_dir, raw_baseline=False, **kw)  # cached: no extraction
    assert len(FeatureStore(cache / "test.h5").provenance["runs"]) == runs
    assert again.rows[0]["accuracy"] == codes["accuracy"]


def test_baseline_single_tree_holds_out_and_lists_bad_images(digits_data, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(digits_data.train_dir, photos)
    (photos / "7" / "empty.png").write_bytes(b"")
    res = baseline(photos, report=tmp_path / "rep", backbone=BACKBONE,
                   weights=str(digits_data.weights), input_size=SIZE, num_workers=0,
                   c_grid=[0.01, 0.1], cv=3, holdout=0.3, raw_baseline=False)
    assert res.model.split["kind"] == "holdout" and res.model.split["test_size"] == 0.3
    assert len(res.evaluation.y_true) == 40 and len(res.rows) == 1
    assert [Path(p).name for p, _ in res.failures] == ["empty.png"]
    assert (tmp_path / "rep" / "cache" / "codes.h5").is_file()
    with pytest.raises(ValueError, match="one layer"):
        baseline(photos, report=tmp_path / "rep", backbone=BACKBONE, layer="layer3,pool")


# ----------------------------------------------------------------------- CNNCodes transformer


def _paths_labels(folder: Path) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    return paths, np.array([int(Path(p).parent.name) for p in paths])


def test_cnncodes_in_pipeline_and_grid_search_computes_each_image_once(digits_data):
    clear_memory_cache()
    Xtr, ytr = _paths_labels(digits_data.train_dir)
    Xte, yte = _paths_labels(digits_data.test_dir)
    pipe = Pipeline([("codes", CNNCodes(BACKBONE, weights=str(digits_data.weights),
                                        layer="pool", input_size=SIZE)),
                     ("clf", LogisticRegression(max_iter=1000))])
    search = GridSearchCV(pipe, {"clf__C": [0.01, 0.1, 1.0], "codes__pooling": ["avg"]}, cv=3)
    with threadpool_limits(1):  # tiny BLAS problems: threads only add contention
        search.fit(Xtr, ytr)
    assert search.best_params_["clf__C"] in (0.01, 0.1, 1.0)
    assert search.score(Xte, yte) > 0.5
    # 3 C values x 3 folds + refit = 10 pipelines, yet every image went through the CNN once
    assert STATS["extracted"] == len(Xtr) + len(Xte) and STATS["hits"] > 5 * len(Xtr)
    codes = search.best_estimator_.named_steps["codes"]
    assert codes.n_features_out_ == 512 and codes.layer_ == "pool"
    # the same codes as the extract -> store path
    X_store, _ = FeatureStore(digits_data.test_h5).load("pool")
    assert np.allclose(codes.transform(Xte), X_store, atol=1e-5)
    # picklable (the torch module is rebuilt on demand) and equal after the round trip
    clone = pickle.loads(pickle.dumps(search.best_estimator_))
    clear_memory_cache()
    assert list(clone.predict(Xte)) == list(search.predict(Xte))


def test_cnncodes_bad_images_raise_or_get_zero_rows(digits_data, tmp_path):
    good, _ = _paths_labels(digits_data.test_dir)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    X = good[:3] + [str(bad)]
    t = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE, cache=None)
    with pytest.raises(ValueError, match="1 of 4 images could not be read.*bad.png"):
        t.fit_transform(X)
    z = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE, cache=None,
                 on_error="zeros").fit_transform(X)
    assert z.shape == (4, 512) and not z[3].any() and z[:3].any(axis=1).all()
    with pytest.raises(ValueError, match="single path"):
        t.fit(str(bad))


def test_cnncodes_store_cache_is_reused(digits_data, tmp_path):
    paths, _ = _paths_labels(digits_data.test_dir)
    cache = tmp_path / "t.h5"
    t = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE, cache=cache)
    a = t.fit_transform(paths[:30])
    b = t.transform(paths[20:])  # 10 cached + 30 new
    st = FeatureStore(cache)
    assert len(st) == 60 and [r["new"] for r in st.provenance["runs"]] == [30, 30]
    X_store, _ = FeatureStore(digits_data.test_h5).load("pool")
    assert np.allclose(np.vstack([a, b[10:]]), X_store, atol=1e-5)
    c = t.transform(paths[::-1])  # all cached, any order
    assert len(FeatureStore(cache).provenance["runs"]) == 2
    assert np.allclose(c[::-1], X_store, atol=1e-5)
    # a store made by `cnncodes extract` from the folder is read (not written) by the transformer
    r = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE,
                 cache=digits_data.test_h5).fit_transform(paths)
    assert np.allclose(r, X_store, atol=1e-5)


def test_cnncodes_random_weights_are_one_network_and_cacheable(digits_data, tmp_path):
    """weights="random" is the seeded init: separate builds share the memory cache and a store,
    and a store written by one build serves another."""
    paths, _ = _paths_labels(digits_data.test_dir)
    paths = paths[:12]
    clear_memory_cache()
    mem = CNNCodes(BACKBONE, weights="random", input_size=SIZE).fit_transform(paths)
    again = CNNCodes(BACKBONE, weights="random", input_size=SIZE).fit_transform(paths)
    assert np.array_equal(mem, again) and STATS["extracted"] == 12  # the 2nd build: all hits
    fresh = CNNCodes(BACKBONE, weights="random", input_size=SIZE, cache=None).fit_transform(paths)
    assert np.allclose(fresh, mem, atol=1e-6)  # computed again by a new network: same codes
    cache = tmp_path / "random.h5"
    a = CNNCodes(BACKBONE, weights="random", input_size=SIZE, cache=cache).fit_transform(paths)
    assert np.allclose(a, mem, atol=1e-6)
    runs = len(FeatureStore(cache).provenance["runs"])
    b = CNNCodes(BACKBONE, weights="random", input_size=SIZE, cache=cache).fit_transform(paths)
    assert np.array_equal(a, b) and len(FeatureStore(cache).provenance["runs"]) == runs
    assert FeatureStore(cache).provenance["weights"] == "random"
