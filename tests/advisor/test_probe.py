"""cnncodes.advisor.probe: the cross-validated linear probe of every candidate layer."""

from __future__ import annotations

import numpy as np
import pytest

from cnncodes.advisor.probe import probe_layers
from cnncodes.errors import OptionError


def _blobs(n_per: int, d: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (3, d)) * sep
    y = np.repeat(np.arange(3), n_per)
    return centers[y] + rng.normal(0, 1, (y.size, d)), y


@pytest.mark.parametrize("method", ["logreg", "ridge"])
def test_probe_ranks_informative_codes_first(method):
    good, y = _blobs(30, 20, 2.0, 0)
    noise = np.random.default_rng(1).normal(size=(90, 40))
    codes = {"early": noise, "late": good, "late_copy": good.copy()}
    depths = {"early": "earlier", "late": "last", "late_copy": "last"}
    r = probe_layers(codes, y, depths=depths, method=method, folds=5, seed=0,
                     raw=noise[:, :10])
    assert r.layers["late"].mean > 0.9
    assert r.layers["early"].mean < 0.6  # chance is 1/3
    assert r.layers["late_copy"].same_as == "late"
    assert r.layers["late_copy"].fold_scores == r.layers["late"].fold_scores
    assert r.folds == 5 and r.n_images == 90 and len(r.layers["late"].fold_scores) == 5
    again = probe_layers(codes, y, depths=depths, method=method, folds=5, seed=0)
    assert again.layers["early"].fold_scores == r.layers["early"].fold_scores


@pytest.mark.parametrize("method,strongest", [("logreg", 0.01), ("ridge", 100.0)])
def test_probe_grid_ties_go_to_the_strongest_regularisation(method, strongest):
    X, y = _blobs(20, 4, 50.0, 0)  # far apart: every grid value scores 100%
    r = probe_layers({"a": X}, y, depths={"a": "last"}, method=method, folds=4)
    assert set(r.layers["a"].grid_scores) == {1.0}
    assert r.layers["a"].param == strongest


def test_probe_reduces_folds_and_drops_singleton_classes():
    X, y = _blobs(10, 5, 3.0, 0)
    y = y.copy()
    keep = np.r_[0:10, 10:13, 20:30]  # class 1 has 3 images
    X, y = np.vstack([X[keep], X[:1]]), np.r_[y[keep], 7]  # class 7 has a single image
    r = probe_layers({"a": X, "b": X * 2 + 1}, y, depths={"a": "earlier", "b": "last"},
                     folds=5, class_names={0: "zero", 1: "one", 2: "two", 7: "seven"})
    assert r.folds == 3 and r.excluded_classes == ["seven"] and r.n_images == 23
    with pytest.raises(OptionError, match="at least 2 classes"):
        probe_layers({"a": X[:11]}, np.r_[np.zeros(10, int), 1], depths={"a": "last"})


def test_probe_rejects_unknown_methods_and_bad_grids():
    X, y = _blobs(5, 3, 3.0, 0)
    with pytest.raises(OptionError, match="probe must be one of ridge, logreg. Got 'svm'"):
        probe_layers({"a": X}, y, depths={"a": "last"}, method="svm")
    with pytest.raises(OptionError, match="positive"):
        probe_layers({"a": X}, y, depths={"a": "last"}, grid=[0.0, 1.0])
