"""Reports: JSON that parses and says what was measured, PNG figures, per-class CSV, text table."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnncodes.linear.evaluation import Evaluation, score_predictions
from cnncodes.linear.model_file import TrainedModel
from cnncodes.linear.selection import fit_codes
from cnncodes.report.files import build_report, load_report, write_report
from cnncodes.report.plots import plot_confusion
from cnncodes.report.text import describe_compute, format_table
from cnncodes.sources.splits import stratified_holdout
from cnncodes.stats import format_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted():
    """A logistic regression chosen by CV on real digits features, and its held-out scores."""
    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    tr, te = stratified_holdout(y, test_size=0.3, seed=0)
    classes = [f"digit{i}" for i in range(10)]
    pipe, sel = fit_codes(X[tr], y[tr], classes=classes, c_grid="1e-4:1e1:6", cv=3)
    model = TrainedModel(pipe, classes, "pixels",
                         {"backbone": "none", "weights": "n/a", "input_size": 8},
                         {"kind": "holdout", "test_size": 0.3, "seed": 0, "n_train": len(tr),
                          "n_test": len(te)}, sel, store="digits")
    pred, _ = model.scores(X[te])
    ev = Evaluation("digits", "pixels", classes, [f"img{i}" for i in te], y[te], pred,
                    score_predictions(y[te], pred, classes))
    return model, ev


def test_report_json_parses_and_holds_the_measurements(fitted, tmp_path):
    model, ev = fitted
    rows = [{"name": "digits pixels", "features": 64, "selection": model.selection,
             **{k: ev.metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}},
            {"name": "skipped one", "skipped": "not cheap"}]
    rep = build_report(model=model, task="evaluate", evaluation=ev, rows=rows,
                       extra={"note": float("nan")})
    files = write_report(rep, tmp_path / "rep", evaluation=ev)
    data = load_report(tmp_path / "rep").to_dict()
    assert data == json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["format"] == "cnncodes-report" and data["note"] is None  # NaN -> null
    sel = data["selection"]
    assert sel["best_C"] in sel["c_grid"] and len(sel["cv_mean"]) == 6
    assert sel["train_time_s"] > 0 and sel["cv"] == 3
    test = data["test"]
    assert test["n"] == len(ev.y_true) and test["accuracy"] == pytest.approx(ev.accuracy)
    assert test["accuracy"] > 0.9 and 0 < test["balanced_accuracy"] <= 1
    cm = np.array(test["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == test["n"]
    assert np.trace(cm) / cm.sum() == pytest.approx(test["accuracy"])
    per = {r["class"]: r for r in test["per_class"]}
    assert set(per) == set(model.classes)
    assert sum(r["support"] for r in per.values()) == test["n"]
    for i, c in enumerate(model.classes):
        assert per[c]["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert per[c]["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    assert data["files"] == {"cv_plot": "cv_scores.png", "confusion": "confusion.png",
                             "per_class": "per_class.csv", "predictions": "predictions.csv",
                             "json": "report.json", "html": "report.html"}
    for name in ("cv_plot", "confusion"):
        assert files[name].read_bytes()[:8] == PNG_MAGIC and files[name].stat().st_size > 5000
    with open(files["per_class"]) as f:
        table = list(csv.DictReader(f))
    assert [r["class"] for r in table] == model.classes
    assert math.isclose(float(table[3]["f1"]), per["digit3"]["f1"], abs_tol=1e-4)


def test_format_table_shows_rows_and_per_class(fitted):
    model, ev = fitted
    rows = [{"name": "codes", "features": 64, "selection": model.selection, "accuracy": 0.9321,
             "balanced_accuracy": 0.93, "macro_f1": 0.93},
            {"name": "raw pixels 32x32 rgb", "skipped": "over budget"}]
    text = format_table(build_report(model=model, task="evaluate", evaluation=ev,
                                     rows=rows))
    assert "stratified hold-out 0.3 (seed 0)" in text
    assert f"best C {model.selection['best_C']:.3g}" in text
    assert "0.932" in text and "skipped: over budget" in text
    assert "digit9" in text and "precision" in text
    only_test = format_table(build_report(model=model, task="train", evaluation=ev),
                             per_class=False)
    assert f"accuracy {format_accuracy(ev.accuracy, len(ev.y_true))}" in only_test
    assert "(95% CI " in only_test and "digit9" not in only_test


def test_report_without_test_part_has_cv_plot_only(fitted, tmp_path):
    model, _ = fitted
    files = write_report(build_report(model=model, task="train"), tmp_path)
    assert set(files) == {"cv_plot", "json", "html"}
    assert load_report(tmp_path / "report.json").test is None


def test_confusion_plot_for_many_classes(tmp_path):
    k = 40
    cm = np.eye(k, dtype=int) * 5 + 1
    p = plot_confusion(cm, [f"class_{i}" for i in range(k)], tmp_path / "cm.png")
    assert p.read_bytes()[:8] == PNG_MAGIC


def test_plotting_leaves_the_pyplot_backend_alone(fitted, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    write_report(build_report(model=fitted[0], task="train", evaluation=fitted[1]), tmp_path)
    assert matplotlib.get_backend() == before


def test_report_says_where_the_grid_search_ran(fitted):
    model, ev = fitted
    assert model.selection["compute"]["engine"] == "numpy"  # fit_codes records it
    text = format_table(build_report(model=model, task="train", evaluation=ev))
    assert f"compute    NumPy on CPU, {model.selection['compute']['dtype']}" in text
    gpu = {"engine": "array-api", "device": "cuda:0", "requested": "auto", "dtype": "float32"}
    assert describe_compute(gpu) == "scikit-learn array API on torch cuda:0, float32"
    fallback = {"engine": "numpy", "device": "cpu", "requested": "cuda",
                "reason": "LinearSVC has no array API support"}
    assert describe_compute(fallback) == ("NumPy on CPU (not the array API: LinearSVC has no "
                                          "array API support)")


def test_report_predictions_csv_and_codes_not_beating_pixels(fitted, tmp_path):
    """A constructed baseline whose codes row does worse than the raw-pixel row: the verdict is
    said on the terminal table, in report.json and report.html, pointing to advise; the report
    folder holds every test image's prediction with per-class probabilities."""
    model, ev0 = fitted
    d = load_digits()
    X = d.data.astype(np.float32)
    te = [int(p[3:]) for p in ev0.paths]
    pred, scores = model.scores(X[te])
    ev = Evaluation("digits", "pixels", model.classes, list(ev0.paths), ev0.y_true, pred,
                    score_predictions(ev0.y_true, pred, model.classes),
                    confidence=scores.max(axis=1), confidence_kind="probability",
                    all_scores=scores)
    n = len(ev.y_true)
    codes = {"name": "resnet18 pool codes (224 px)", "features": 512, "selection": model.selection,
             "n_test": n, "accuracy": 0.80, "balanced_accuracy": 0.8, "macro_f1": 0.8}
    raw = {"name": "raw pixels 32x32 rgb", "features": 3072, "n_test": n, "accuracy": 0.85,
           "balanced_accuracy": 0.85, "macro_f1": 0.85}
    rep = build_report(model=model, task="evaluate", evaluation=ev, rows=[codes, raw],
                       extra={"source": "my photos"})
    verdict = rep["codes_vs_pixels"]
    assert verdict["verdict"] == "not_better"
    assert "The codes do not beat raw pixels" in verdict["message"]
    assert "`cnncodes advise 'my photos'`" in verdict["message"]
    assert rep["rows"][0]["accuracy_ci95"] and rep["test"]["accuracy_ci95"]
    text = format_table(rep)
    assert f"WARNING    {verdict['message']}" in text
    assert format_accuracy(0.80, n) in text and format_accuracy(0.85, n) in text
    files = write_report(rep, tmp_path / "rep", evaluation=ev)
    page = files["html"].read_text()
    assert 'id="codes-vs-pixels"' in page and "do not beat raw pixels" in page
    with open(files["predictions"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert list(rows[0])[:5] == ["path", "true_label", "predicted", "correct", "probability"]
    for r in rows[:20]:
        probs = np.array([float(r[f"prob_{c}"]) for c in model.classes])
        assert probs.sum() == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == model.classes[int(np.argmax(probs))]
        assert float(r["probability"]) == pytest.approx(probs.max(), rel=1e-5)
    # codes clearly better: no warning
    better = build_report(model=model, task="evaluate", evaluation=ev,
                          rows=[{**codes, "accuracy": 0.99}, {**raw, "accuracy": 0.5}])
    assert better["codes_vs_pixels"]["verdict"] == "better"
    assert "WARNING" not in format_table(better)
