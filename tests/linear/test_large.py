"""Model selection at scale (issue 26): the choice rule between k-fold and one validation split,
the warm-started float32 C path on synthetic codes (threshold lowered), progress per fit, and
the raw-pixel row on a subsample when the full set is over budget."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cnncodes import FeatureStore, fit_codes, train
from cnncodes.linear import large
from cnncodes.linear.large import VAL_FRACTION, choose_search, validation_split
from cnncodes.linear.options import LARGE_SET_VALUES, ClassifierOptions
from cnncodes.linear.pixels import RawPixelOptions, pixel_baseline
from cnncodes.report.files import build_report
from cnncodes.report.text import format_table

from .digits import digits_data  # noqa: F401 - session fixture


@pytest.fixture(scope="module")
def codes():
    """6,000 x 64 float32 'codes' of 10 overlapping Gaussian classes (not separable)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)) * 0.35
    y = rng.integers(0, 10, 6000)
    X = (centers[y] + rng.normal(size=(6000, 64))).astype(np.float32)
    return X, y


# ------------------------------------------------------------------------- the rule (pure)


def test_small_sets_keep_the_exhaustive_k_fold():
    plan = choose_search(1000, 1280, cv=5)
    assert (plan.kind, plan.folds, plan.warm_start) == ("kfold", 5, False)
    assert "exhaustive stratified 5-fold" in plan.reason
    at = choose_search(LARGE_SET_VALUES // 1280, 1280, cv=5)  # at the threshold: still k-fold
    assert at.kind == "kfold"


def test_large_sets_use_one_split_and_say_why():
    plan = choose_search(48_000, 1280, cv=5)
    assert plan.kind == "holdout" and plan.folds == 1 and plan.warm_start
    assert plan.val_fraction == VAL_FRACTION
    assert "61,440,000" in plan.reason and "20,000,000" in plan.reason
    assert "instead of 5 folds" in plan.reason and "warm starts" in plan.reason
    assert "9,600 rows" in plan.reason


@pytest.mark.parametrize("kw, why", [({"model": "linearsvc"}, "LinearSVC"),
                                     ({"pca": 0.95}, "PCA"),
                                     ({"array_api": True}, "array API")])
def test_the_warm_path_only_where_the_solver_allows_it(kw, why):
    plan = choose_search(48_000, 1280, cv=5, **kw)
    assert plan.kind == "holdout" and not plan.warm_start and why in plan.reason


@pytest.mark.parametrize("off", [None, 0])
def test_large_set_off_means_always_k_fold(off):
    assert choose_search(10**6, 4096, cv=3, large_set=off).kind == "kfold"


def test_the_validation_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    tr, va = validation_split(y, 0.2, seed=3)
    assert len(va) == 200 and not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [20, 40, 60, 80]
    assert np.array_equal(va, validation_split(y, 0.2, seed=3)[1])


# ------------------------------------------------------------ the large-set path, synthetic


def test_the_large_path_matches_k_fold_and_reports_each_fit(codes):
    X, y = codes
    calls = []
    pipe, sel = fit_codes(X, y, large_set=100_000, device="cpu", seed=0,
                          progress=lambda done, total, info: calls.append((done, total, info)))
    assert sel["search"]["kind"] == "holdout" and sel["search"]["warm_start"]
    assert sel["cv"] == 1 and sel["n_val"] == 1200 and sel["large_set"] == 100_000
    n = len(sel["cv_mean"])
    assert n == len(sel["fit_s"]) == len(sel["c_grid"])
    assert n + len(sel["c_not_tried"]) == 7 and sel["c_grid"] + sel["c_not_tried"] == \
        sorted(sel["c_grid"] + sel["c_not_tried"])
    # progress: one call per C tried, then the refit; done counts up to the (final) total
    assert [c[0] for c in calls] == list(range(1, n + 2)) and calls[-1][1] == n + 1
    assert [c[2]["C"] for c in calls[:n]] == sel["c_grid"]
    assert [c[2]["score"] for c in calls[:n]] == sel["cv_mean"]
    assert calls[-1][2]["stage"] == "refit" and calls[-1][2]["eta_s"] == 0
    # float32 end to end, and the same choice quality as the exhaustive search
    assert pipe.named_steps["clf"].coef_.dtype == np.float32
    assert pipe.named_steps["clf"].get_params()["warm_start"] is False
    _, ref = fit_codes(X, y, large_set=None, device="cpu", seed=0)
    assert ref["search"]["kind"] == "kfold" and ref["cv"] == 5
    assert abs(sel["best_cv_score"] - ref["best_cv_score"]) < 0.03
    rng = np.random.default_rng(1)
    X2 = (np.asarray(pipe.named_steps["scale"].mean_)[None] * 0
          + X[rng.choice(len(X), 500)]).astype(np.float32)
    assert pipe.predict(X2).shape == (500,)


def test_the_large_path_copies_the_codes_once(codes, monkeypatch):
    """Peak traced memory of the warm path: one float32 copy of X plus small change (no
    per-C copies, no float64 copy that would alone be 2x X). The scaling chunk is shrunk to
    the share of X it has at full size (48,000 x 1,280 codes: 409 rows, under 1 %)."""
    X, y = codes
    X = np.repeat(X, 4, axis=1)  # 6,000 x 256: X dominates the solver's own arrays
    monkeypatch.setattr(large, "CHUNK_VALUES", 60 * 256)
    tracemalloc.start()
    try:
        fit_codes(X, y, large_set=100_000, device="cpu", c_grid="1e-2:1:3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * X.nbytes, f"peak {peak / X.nbytes:.2f} x the codes"


def test_k_fold_progress_counts_every_fit(codes):
    X, y = codes
    calls = []
    fit_codes(X[:600], y[:600], c_grid="1e-2:1:3", cv=3, n_jobs=1, device="cpu",
              progress=lambda done, total, info: calls.append((done, total)))
    assert calls == [(i, 10) for i in range(1, 11)]  # 3 C x 3 folds + the refit


def test_the_report_says_which_search_and_why(codes):
    X, y = codes
    _, sel = fit_codes(X, y, large_set=100_000, device="cpu", c_grid="1e-2:1:3")
    report = {"model": {"model": "logreg", "backbone": "x", "layer": "pool", "n_features": 64,
                        "classes": [str(i) for i in range(10)]},
              "selection": sel, "split": {"kind": "all", "n_train": len(y)}}
    text = format_table(report)
    assert "one stratified validation split (1200 rows)" in text
    assert f"why        {sel['search']['reason']}" in text


def test_cli_train_large_set_option(digits_data, tmp_path, capsys):  # noqa: F811
    from cnncodes.cli import main

    out = tmp_path / "m.joblib"
    assert main(["train", str(digits_data.train_h5), "-o", str(out), "--large-set", "1000",
                 "--c-grid", "0.01,0.1", "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "validation split" in text and "--large-set 1,000" in text


# ------------------------------------------------------------------- raw pixels, subsampled


def test_an_over_budget_raw_pixel_row_runs_on_a_subsample(digits_data):  # noqa: F811
    m = train(digits_data.train_h5, layer="pool", c_grid=[0.1], cv=3)
    st = FeatureStore(digits_data.test_h5)
    test_paths = [str(p) for p in st.abspaths()]
    n = len(m.train_paths)
    budget = (n // 2) * 8 * 8 * 3
    row = pixel_baseline(m.train_paths, m.train_labels, test_paths, st.labels,
                         classes=m.classes, c_grid=[0.1], cv=5,
                         raw=RawPixelOptions(size=8, budget=budget, subsample=True))
    sub = row["subsample"]
    assert sub["cv"] == 3 and row["selection"]["cv"] == 3  # fewer folds for the cheap row
    assert sub["of"] == n and abs(sub["n_train"] - n // 2) <= len(m.classes)
    assert row["selection"]["n_train"] == sub["n_train"] and row["n_test"] == len(test_paths)
    assert "stratified subsample" in sub["note"] and 0 < row["accuracy"] <= 1
    skipped = pixel_baseline(m.train_paths, m.train_labels, test_paths, st.labels,
                             classes=m.classes, c_grid=[0.1], cv=3,
                             raw=RawPixelOptions(size=8, budget=budget))
    assert "skipped" in skipped
    codes = {"name": "codes", "model": "logreg", "selection": m.selection, "accuracy": 0.9,
             "balanced_accuracy": 0.9, "features": m.n_features}
    text = format_table(build_report(model=m, task="evaluate", evaluation=None,
                                     rows=[codes, row]))
    assert f"note: {row['name']} {sub['note']}" in text


def test_in_place_gives_the_same_model_and_train_leaves_the_store_intact(codes, digits_data):  # noqa: F811
    X, y = codes
    own = X.copy()
    p1, s1 = fit_codes(X, y, large_set=100_000, device="cpu", c_grid="1e-2:1:3")
    p2, s2 = fit_codes(own, y, large_set=100_000, device="cpu", c_grid="1e-2:1:3",
                       overwrite_X=True)
    assert s2["in_place"] and not s1["in_place"] and s1["cv_mean"] == s2["cv_mean"]
    assert np.array_equal(p1.predict(X), p2.predict(X))
    st = FeatureStore(digits_data.train_h5)
    before = st.load("pool")[0].copy()
    m1 = train(st, layer="pool", c_grid=[0.1], large_set=1000)
    m2 = train(st, layer="pool", c_grid=[0.1], large_set=1000)
    assert m1.selection["in_place"] and np.array_equal(st.load("pool")[0], before)
    assert m1.selection["cv_mean"] == m2.selection["cv_mean"]


def test_permute_rows_in_place():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    order = rng.permutation(50)
    want = X[order]
    large.permute_rows(X, order)
    assert np.array_equal(X, want)


def test_the_warm_path_stops_once_the_score_falls(codes):
    """Two C values in a row clearly below the best end the path (the slow large-C fits are not
    run); the choice equals the full path's whenever the score does not rise again."""
    X, y = codes
    grid = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    scores = iter([0.5, 0.6, 0.7, 0.65, 0.64, 0.9, 0.95])  # would rise again: never reached
    calls = []
    few = ClassifierOptions(max_iter=5)

    def fake_scorer(clf, Xv, yv):
        return next(scores)
    import sklearn.metrics as m
    orig = m.check_scoring
    try:
        m.check_scoring = lambda *a, **k: fake_scorer
        _, rec = large.warm_path_search(X, y, grid, seed=0, classifier=few,
                                        progress=lambda d, t, i: calls.append((d, t)))
        scores = iter([0.5, 0.6, 0.7, 0.65, 0.64, 0.9, 0.95])
        _, full = large.warm_path_search(X, y, grid, seed=0, classifier=few,
                                         stop=large.PathStop(patience=0))
    finally:
        m.check_scoring = orig
    assert rec["c_grid"] == grid[:5] and rec["c_not_tried"] == grid[5:]
    assert rec["best_C"] == 1e-2 and rec["cv_mean"] == [0.5, 0.6, 0.7, 0.65, 0.64]
    assert calls[-1] == (6, 6)  # 5 fits + the refit; the total shrank from 8
    assert full["c_grid"] == grid and full["best_C"] == 100.0 and full["c_not_tried"] == []
