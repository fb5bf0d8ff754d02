"""What the classifier and its C are, and why: the advised classifier recorded in a store, ties
and grid edges in the C search, and the raw-pixel reference row (always logistic regression)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnncodes import FeatureStore, fit_codes, parse_c_grid, train
from cnncodes.cli import main
from cnncodes.codes.store import update_provenance
from cnncodes.linear.pixels import RAW_BASELINE_MODEL, RawPixelOptions, pixel_baseline
from cnncodes.linear.selection import describe_choice
from cnncodes.report.files import build_report
from cnncodes.report.text import format_table

from .digits import digits_data  # noqa: F401 - session fixture

ADVICE = {"version": 1, "layer": "pool", "classifier": "linearsvc",
          "quadrant": "small-dissimilar", "similarity": "dissimilar", "size_class": "small",
          "explanation": "pool: recorded by a --layers auto extraction"}


@pytest.fixture(scope="module")
def zeros_ones():
    """digits 0 and 1: two classes any linear model separates perfectly."""
    d = load_digits()
    keep = np.flatnonzero(d.target < 2)[:120]
    return d.data[keep].astype(np.float32), d.target[keep].astype(np.int64)


@pytest.fixture
def advised_store(digits_data, tmp_path):  # noqa: F811
    path = tmp_path / "train.h5"
    shutil.copy(digits_data.train_h5, path)
    assert update_provenance(path, {"advice": ADVICE})
    return path


# ----------------------------------------------------------------- the classifier of `train`


def test_train_follows_the_advised_classifier_unless_a_model_is_named(advised_store):
    m = train(advised_store, layer="pool", c_grid=[0.01, 0.1], cv=3)
    assert m.kind == "linearsvc" and m.selection["model"] == "linearsvc"
    assert m.selection["model_source"] == "advice"
    assert "advised for pool (small-dissimilar)" in m.selection["model_reason"]
    named = train(advised_store, layer="pool", model="logreg", c_grid=[0.01, 0.1], cv=3)
    assert named.kind == "logreg" and named.selection["model_source"] == "given"
    # the advice is for another layer than the one trained on: the default, saying why
    other = train(advised_store, layer="layer3", c_grid=[0.01, 0.1], cv=3)
    assert other.kind == "logreg" and other.selection["model_source"] == "default"
    assert "is for layer pool, not layer3" in other.selection["model_reason"]


def test_train_without_recorded_advice_uses_logistic_regression(digits_data):  # noqa: F811
    assert "advice" not in FeatureStore(digits_data.train_h5).provenance
    m = train(digits_data.train_h5, layer="pool", c_grid=[0.01, 0.1], cv=3)
    assert m.kind == "logreg" and m.selection["model_source"] == "default"


def test_train_command_says_which_classifier_and_why(advised_store, tmp_path, capsys):
    rc = main(["train", str(advised_store), "--layer", "pool", "-o", str(tmp_path / "m.joblib"),
               "--c-grid", "0.01,0.1", "--cv", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "model      linearsvc on resnet18/pool codes" in out
    assert "classifier linearsvc: advised for pool (small-dissimilar) by the --layers auto " \
           "advice recorded in the store (pass --model to choose another)" in out
    rc = main(["train", str(advised_store), "--layer", "pool", "-o", str(tmp_path / "m.joblib"),
               "--c-grid", "0.01,0.1", "--cv", "3", "--model", "logreg"])
    out = capsys.readouterr().out
    assert rc == 0 and "model      logreg on" in out and "classifier " not in out


# ------------------------------------------------------------------------ ties and grid edges


@pytest.mark.parametrize("model", ["logreg", "linearsvc"])
def test_a_tie_over_c_is_explained_and_the_smallest_tied_c_is_chosen(model, zeros_ones, caplog):
    X, y = zeros_ones
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        _, sel = fit_codes(X, y, model=model, c_grid="full", cv=3)
    best = max(sel["cv_mean"])
    assert best == 1.0  # separable: the score saturates
    tied = [c for c, m in zip(sel["c_grid"], sel["cv_mean"], strict=True) if m == best]
    assert len(tied) > 1 and sel["best_C"] == min(tied)
    note = sel["c_note"]
    assert "the smallest tied C (strongest regularisation, widest margin) is chosen" in note
    assert "saturates" in note and "widen" not in note and "--c-grid full" not in note
    assert note in caplog.text
    if len(tied) == len(sel["c_grid"]):
        assert sel["c_tie"] == "all" and "separable at every C" in note
    else:
        assert sel["c_tie"] == tied


def test_describe_choice_names_the_tie_and_never_suggests_the_grid_already_searched():
    full = parse_c_grid("full").tolist()
    flat = describe_choice(full, [0.7] * 45, full[0], model="logreg")
    assert flat["c_tie"] == "all" and "the score is flat over the grid" in flat["c_note"]
    assert "neg_log_loss" in flat["c_note"] and "widen" not in flat["c_note"]
    svc = describe_choice(full, [1.0] * 45, full[0], model="linearsvc")
    assert "separable at every C" in svc["c_note"] and "neg_log_loss" not in svc["c_note"]
    # a unique best at the edge of the full grid: a grid beyond it, not `full` again
    edge = describe_choice(full, [0.5] * 44 + [0.9], full[-1])
    assert edge["c_at_grid_edge"] == "largest" and "--c-grid full" not in edge["c_note"]
    assert "--c-grid 1e-6:1e8:57" in edge["c_note"]
    low = describe_choice(full, [0.9] + [0.5] * 44, full[0])
    assert "--c-grid 1e-9:1e5:57" in low["c_note"]
    # the default grid does not reach the full one's edges: `full` is the suggestion there
    default = parse_c_grid(None).tolist()
    assert "--c-grid full" in describe_choice(default, [0.9] + [0.5] * 6, default[0])["c_note"]
    assert describe_choice(default, [0.5, 0.9] + [0.5] * 5, default[1]) == {}


def test_the_report_table_prints_the_tie_note(zeros_ones):
    X, y = zeros_ones
    _, sel = fit_codes(X, y, model="linearsvc", c_grid="1e-2:1:3", cv=3)
    report = {"model": {"model": "linearsvc", "backbone": "x", "layer": "pool",
                        "n_features": 64, "classes": ["0", "1"]},
              "selection": sel, "split": {"kind": "all", "n_train": len(y)}}
    text = format_table(report)
    assert f"note       {sel['c_note']}" in text and "all 3 C values" in text


# ------------------------------------------------------------------- the raw-pixel reference


def test_the_raw_pixel_row_is_logistic_regression_whatever_the_codes_use(digits_data):  # noqa: F811
    m = train(digits_data.train_h5, layer="pool", model="linearsvc", c_grid=[0.01, 0.1], cv=3)
    st = FeatureStore(digits_data.test_h5)
    test_paths = [str(p) for p in st.abspaths()]
    row = pixel_baseline(m.train_paths, m.train_labels, test_paths, st.labels,
                         classes=m.classes, raw=RawPixelOptions(size=8), classifier=None,
                         model="linearsvc", c_grid=[0.01, 0.1], cv=3)
    assert row["model"] == RAW_BASELINE_MODEL == "logreg"
    assert row["selection"]["model"] == "logreg" and row["selection"]["c_grid"] == [0.01, 0.1]
    assert "whatever the codes use (here linearsvc)" in row["model_note"]
    assert 0.5 < row["accuracy"] <= 1
    codes = {"name": "codes", "model": "linearsvc", "selection": m.selection, "accuracy": 0.9,
             "balanced_accuracy": 0.9, "features": m.n_features}
    text = format_table(build_report(model=m, task="evaluate", evaluation=None,
                                     rows=[codes, row]))
    line = next(x for x in text.splitlines() if x.startswith("raw pixels 8x8 rgb"))
    assert line.split()[4] == "logreg"
    assert f"note: raw pixels 8x8 rgb is {row['model_note']}" in text
