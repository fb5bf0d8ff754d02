"""A baseline that cannot train is refused before any extraction (issue 26: a folder holding
only train/ was read as one class named 'train', extracted in full for 10 minutes, then refused);
the data-set helper never writes a short or empty split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnncodes import baseline, datasets
from cnncodes.errors import SourceError


def _tree(root, classes, n=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")


def _no_extraction(monkeypatch):
    import cnncodes.workflows.baseline as b

    def boom(*a, **k):
        raise AssertionError("extraction started")
    monkeypatch.setattr(b, "extract_split", boom)
    monkeypatch.setattr(b, "choose_training_layer", boom)


def test_folder_with_only_train_is_refused_before_extraction(tmp_path, monkeypatch):
    _no_extraction(monkeypatch)
    _tree(tmp_path / "data" / "train", ["a", "b"])
    with pytest.raises(SourceError, match=r"holds only train/ .* train/ and test/") as e:
        baseline(tmp_path / "data", report=tmp_path / "out", weights="random")
    assert str(tmp_path / "data" / "train") in str(e.value)  # the way forward, spelled out
    assert not (tmp_path / "out" / "cache").exists()


@pytest.mark.parametrize("classes", [["only"], []])
def test_single_class_tree_is_refused_before_extraction(tmp_path, monkeypatch, classes):
    _no_extraction(monkeypatch)
    (tmp_path / "data").mkdir()
    _tree(tmp_path / "data", classes)
    if not classes:
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / "loose.png")
    with pytest.raises(SourceError, match="at least two"):
        baseline(tmp_path / "data", report=tmp_path / "out", weights="random")


def test_stratified_subset_refuses_a_short_class():
    labels = np.array([0] * 5 + [1] * 3)
    assert datasets.stratified_subset(labels, 3).size == 6
    with pytest.raises(ValueError, match="class 1 has 3 items left, fewer than the 4"):
        datasets.stratified_subset(labels, 4)


def test_official_test_split_feeds_test_tree(tmp_path, monkeypatch):
    """A data set with its own test file (Fashion-MNIST's t10k) fills test/ from it, even when
    train/ takes every training image."""
    imgs = np.zeros((6, 4, 4), np.uint8)
    train = (imgs, np.array([0, 0, 0, 1, 1, 1]), ["x", "y"])
    test = (imgs[:4] + 7, np.array([0, 0, 1, 1]), ["x", "y"])
    monkeypatch.setitem(datasets.LOADERS, "fake", lambda: train)
    monkeypatch.setitem(datasets.TEST_LOADERS, "fake", lambda: test)
    tr, te = datasets.make_split_tree("fake", tmp_path, train_per_class=3, test_per_class=2)
    assert sorted(p.name for p in tr.iterdir()) == ["x", "y"]
    assert sum(1 for _ in te.rglob("*.png")) == 4
    assert np.asarray(Image.open(next(te.rglob("*.png")))).max() == 7


@pytest.mark.parametrize("predefined", [False, True])
def test_baseline_walks_each_source_folder_once(tmp_path, monkeypatch, predefined):
    """check_split's listing is the one extraction uses (sources.folders.listed_once): each
    folder is walked once per baseline, not once to check and again to extract."""
    from collections import Counter

    from cnncodes.sources import folders

    walked: Counter = Counter()
    real = folders._from_folder

    def counting(root, classes):
        walked[root] += 1
        return real(root, classes)

    monkeypatch.setattr(folders, "_from_folder", counting)
    data = tmp_path / "data"
    if predefined:
        _tree(data / "train", ["a", "b"], n=4)
        _tree(data / "test", ["a", "b"], n=2)
    else:
        _tree(data, ["a", "b"], n=6)
    res = baseline(data, report=tmp_path / "out", weights="random", input_size=32,
                   num_workers=0, c_grid=[0.1], cv=2, holdout=0.3, raw_baseline=False)
    assert len(res.evaluation.y_true) == 4
    expected = {(data / p).resolve() for p in (("train", "test") if predefined else ("",))}
    assert set(walked) == expected and set(walked.values()) == {1}, walked
    assert folders._LISTINGS is None  # nothing cached once baseline returns
