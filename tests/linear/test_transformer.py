"""The CNNCodes transformer: inside Pipeline and GridSearchCV, its memory and store caches, bad
images, scikit-learn's clone/set_params, and codes equal to the extract -> store path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from cnncodes import CNNCodes, FeatureStore
from cnncodes.linear.transformer import STATS, clear_memory_cache
from cnncodes.options import RuntimeOptions

from .digits import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


def _paths_labels(folder: Path) -> tuple[list[str], np.ndarray]:
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    return paths, np.array([int(Path(p).parent.name) for p in paths])


def test_cnncodes_in_pipeline_and_grid_search_computes_each_image_once(digits_data):  # noqa: F811
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


def test_cnncodes_bad_images_raise_or_get_zero_rows(digits_data, tmp_path):  # noqa: F811
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


def test_cnncodes_store_cache_is_reused(digits_data, tmp_path):  # noqa: F811
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


def test_cnncodes_random_weights_are_one_network_and_cacheable(digits_data, tmp_path):  # noqa: F811
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


def test_clone_gives_an_unfitted_copy_with_equal_params(digits_data):  # noqa: F811
    paths, _ = _paths_labels(digits_data.test_dir)
    t = CNNCodes(BACKBONE, weights=str(digits_data.weights), layer="pool", input_size=SIZE,
                 cache=None, num_workers=0).fit(paths[:4])
    c = clone(t)
    assert c.get_params() == t.get_params()
    assert not hasattr(c, "provenance_") and not hasattr(c, "_extractor")
    with pytest.raises(Exception, match="not fitted"):
        c.transform(paths[:2])
    assert np.allclose(c.fit_transform(paths[:4]), t.transform(paths[:4]), atol=1e-6)


def test_set_params_layer_changes_the_codes_after_refit(digits_data):  # noqa: F811
    paths, _ = _paths_labels(digits_data.test_dir)
    t = CNNCodes(BACKBONE, weights=str(digits_data.weights), layer="pool", input_size=SIZE,
                 cache="memory", num_workers=0)
    assert t.fit_transform(paths[:5]).shape == (5, 512)
    assert t.set_params(layer="layer3") is t and t.layer == "layer3"
    codes = t.fit_transform(paths[:5])
    assert t.layer_ == "layer3" and codes.shape == (5, 256) == (5, t.n_features_out_)
    X_store, _ = FeatureStore(digits_data.test_h5).load("layer3")
    assert np.allclose(codes, X_store[:5], atol=1e-5)  # the layer3 codes, not stale pool ones
    assert list(t.get_feature_names_out()[:2]) == ["layer3_0", "layer3_1"]


def test_defaults_are_the_shared_runtime_options():
    params, runtime = CNNCodes().get_params(), RuntimeOptions()
    for name in ("batch_size", "num_workers", "device", "precision", "threads", "decoder",
                 "max_pixels"):
        assert params[name] == getattr(runtime, name), name


@pytest.mark.parametrize("cache", [None, "memory", "store"])
def test_cnncodes_every_image_unreadable_gives_zero_rows_or_names_the_files(
        digits_data, tmp_path, cache):  # noqa: F811
    """All images still to compute fail: zero rows with on_error="zeros" (no broadcast error),
    the files named with "raise"; also after some rows came from a cache (mixed) and for none."""
    bad = [tmp_path / f"bad{i}.png" for i in range(3)]
    for b in bad:
        b.write_bytes(b"not an image")
    X = [str(b) for b in bad]
    where = tmp_path / "c.h5" if cache == "store" else cache
    kw = dict(weights=str(digits_data.weights), input_size=SIZE, cache=where)
    z = CNNCodes(BACKBONE, on_error="zeros", **kw).fit_transform(X)
    assert z.shape == (3, 512) and z.dtype == np.float32 and not z.any()
    with pytest.raises(ValueError, match=r"3 of 3 images could not be read \(.*bad0.png.*bad1"):
        CNNCodes(BACKBONE, **kw).fit_transform(X)
    good, _ = _paths_labels(digits_data.test_dir)
    t = CNNCodes(BACKBONE, on_error="zeros", **kw).fit(good[:2])
    first = t.transform(good[:2])  # computed (and cached when there is a cache)
    mixed = t.transform(good[:2] + X)  # the good rows cached, every image left to compute bad
    assert np.array_equal(mixed[:2], first) and not mixed[2:].any() and first.any(axis=1).all()
    assert t.transform([]).shape == (0, 512)


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every network build from now on (a fresh process: no network or description shared)."""
    import cnncodes.codes.extractor as extractor
    from cnncodes.linear.transformer import clear_network_cache

    clear_network_cache()
    clear_memory_cache()
    builds: list[str] = []
    real = extractor.create_backbone

    def counting(name, **kw):
        builds.append(name)
        return real(name, **kw)

    monkeypatch.setattr(extractor, "create_backbone", counting)
    return builds


def test_grid_search_over_c_with_cached_codes_builds_the_network_at_most_once(
        digits_data, monkeypatch):  # noqa: F811
    paths, y = _paths_labels(digits_data.train_dir)
    builds = _count_builds(monkeypatch)
    pipe = Pipeline([("codes", CNNCodes(BACKBONE, weights=str(digits_data.weights), layer="pool",
                                        input_size=SIZE, engine="torch")),
                     ("clf", LogisticRegression(max_iter=2000))])
    pipe.fit(paths, y)  # computes (and caches) the codes: the one build
    assert builds == [BACKBONE]
    search = GridSearchCV(pipe, {"clf__C": [0.001, 0.01, 0.1, 1.0, 10.0]}, cv=3)
    with threadpool_limits(1):
        search.fit(paths, y)
    assert builds == [BACKBONE]  # 16 clones fitted, every code a memory hit, no other build
    # a store that already holds the codes: no build at all, even in a fresh process
    builds = _count_builds(monkeypatch)
    test_paths, yte = _paths_labels(digits_data.test_dir)
    pipe.set_params(codes__cache=digits_data.test_h5)
    search = GridSearchCV(pipe, {"clf__C": [0.01, 1.0]}, cv=2).fit(test_paths, yte)
    assert builds == []
    X_store, _ = FeatureStore(digits_data.test_h5).load("pool")
    codes = search.best_estimator_.named_steps["codes"]
    assert np.array_equal(codes.transform(test_paths), X_store) and builds == []
    assert codes.n_features_out_ == 512
    # a new image in the same call: the network is built then, once
    codes.set_params(cache="memory")
    out = codes.transform(paths[:2] + test_paths[:1])
    assert builds == [BACKBONE] and out.shape == (3, 512)
    assert np.allclose(out[2], X_store[0], atol=1e-5)


def test_shared_networks_are_bounded_and_keyed_by_the_configuration(digits_data, monkeypatch):  # noqa: F811
    from cnncodes.codes import shared

    paths, _ = _paths_labels(digits_data.test_dir)
    builds = _count_builds(monkeypatch)
    kw = dict(weights=str(digits_data.weights), input_size=SIZE, engine="torch", cache=None)
    for layer in ("pool", "layer3", "layer2", "pool"):
        CNNCodes(BACKBONE, layer=layer, **kw).fit_transform(paths[:1])
    # three configurations, two kept: "pool" was evicted by layer2 and built again
    assert builds == [BACKBONE] * 4 and len(shared._SHARED) == shared.SHARED_SIZE == 2
    CNNCodes(BACKBONE, layer="layer2", **kw).fit_transform(paths[:1])
    CNNCodes(BACKBONE, layer="pool", batch_size=7, **kw).fit_transform(paths[:1])
    assert len(builds) == 4  # both still held; the batch size is not part of the network


@pytest.mark.parametrize("cache", [None, "memory", "store"])
def test_transform_rows_follow_the_callers_order_with_cached_new_and_repeated_paths(
        digits_data, tmp_path, cache):  # noqa: F811
    paths, _ = _paths_labels(digits_data.test_dir)
    ref, _ = FeatureStore(digits_data.test_h5).load("pool")
    clear_memory_cache()
    where = tmp_path / "c.h5" if cache == "store" else cache
    t = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE, cache=where,
                 engine="torch")
    first = t.fit_transform([paths[3], paths[1], paths[3]])  # repeated before any cache
    assert first.shape == (3, 512) and first.dtype == np.float32
    assert np.allclose(first, ref[[3, 1, 3]], atol=1e-5)
    order = [7, 1, 5, 7, 3, 0, 0, 1, 9]  # cached (1, 3) and new ones, repeats, any order
    out = t.transform([paths[i] for i in order])
    assert out.shape == (len(order), 512) and np.allclose(out, ref[order], atol=1e-5)
    assert np.array_equal(out[0], out[3]) and np.array_equal(out[5], out[6])
    empty = t.transform([])
    assert empty.shape == (0, 512) and empty.dtype == np.float32
    assert t.transform(np.array([], dtype=object)).shape == (0, 512)
    if cache == "store":
        assert len(FeatureStore(where)) == 6  # each distinct image stored once
