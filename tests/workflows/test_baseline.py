"""``baseline`` on a predefined train/test split and on one tree with a hold-out share: the
cache reused, the raw-pixel row, the files written, the options it takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cnncodes import BaselineOptions, ClassifierOptions, FeatureStore, baseline
from cnncodes.options import BackboneOptions, RuntimeOptions
from cnncodes.workflows.inputs import find_split

from ..linear.digits import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


def test_find_split_detects_train_test_trees(digits_data, tmp_path):  # noqa: F811
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


def test_baseline_predefined_split_reuses_cache_and_reports(digits_data, tmp_path):  # noqa: F811
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
    for f in ("report.json", "cv_scores.png", "confusion.png", "model.npz"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    runs = len(FeatureStore(cache / "test.h5").provenance["runs"])
    # the same run given as options objects instead of keywords; cached: no extraction
    again = baseline(digits_data.split_dir, report=tmp_path / "rep", cache=cache,
                     backbone=BackboneOptions(BACKBONE, weights=str(digits_data.weights),
                                              input_size=SIZE),
                     runtime=RuntimeOptions(num_workers=0),
                     classifier=ClassifierOptions(c_grid="1e-3:1e-1:3", cv=3),
                     steps=BaselineOptions(raw_baseline=False))
    assert len(FeatureStore(cache / "test.h5").provenance["runs"]) == runs
    assert again.rows[0]["accuracy"] == codes["accuracy"] and len(again.rows) == 1
    assert again.model.selection["c_grid"] == res.model.selection["c_grid"]


def test_baseline_rejects_unknown_options_naming_the_valid_ones(tmp_path):
    with pytest.raises(TypeError, match=r"baseline\(\) got an unexpected option 'colour'.*"
                                        r"c_grid.*fall_through.*input_size.*num_workers"):
        baseline(tmp_path, report=tmp_path / "rep", colour="red")
    with pytest.raises(ValueError, match="model must be one of logreg, linearsvc"):
        baseline(tmp_path, report=tmp_path / "rep", model="svm")


def test_baseline_single_tree_holds_out_and_lists_bad_images(digits_data, tmp_path):  # noqa: F811
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


def test_overwrite_keeps_codes_made_with_the_same_settings(digits_data, tmp_path,  # noqa: F811
                                                            caplog):
    """``--overwrite`` discards cached codes made with *other* settings only (as its help says):
    a rerun with the same settings keeps 200 rows of codes instead of extracting them again."""
    cache = tmp_path / "cache"
    kw = dict(report=tmp_path / "rep", cache=cache, backbone=BACKBONE,
              weights=str(digits_data.weights), num_workers=0, c_grid="1e-2", cv=2,
              raw_baseline=False, layer="pool")
    baseline(digits_data.split_dir, input_size=SIZE, **kw)
    runs = {k: FeatureStore(cache / f"{k}.h5").provenance["runs"] for k in ("train", "test")}
    baseline(digits_data.split_dir, input_size=SIZE, overwrite=True, **kw)
    for k in ("train", "test"):  # nothing extracted again
        assert FeatureStore(cache / f"{k}.h5").provenance["runs"] == runs[k]
    with caplog.at_level("WARNING", logger="cnncodes"):
        baseline(digits_data.split_dir, input_size=SIZE + 8, overwrite=True, **kw)
    st = FeatureStore(cache / "train.h5")
    assert st.provenance["input_size"] == SIZE + 8 and len(st.provenance["runs"]) == 1
    assert "discarding the cached codes in" in caplog.text
