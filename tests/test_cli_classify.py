"""`cnncodes train / evaluate / predict / baseline`, called in-process through cli.main."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from cnncodes import FeatureStore, extract, load_model
from cnncodes.cli import main

from .test_classify import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_evaluate_predict(digits_data, tmp_path, capsys):  # noqa: F811
    model = tmp_path / "m.joblib"
    rc, out, err = run(capsys, "train", digits_data.train_h5, "--layer", "pool", "-o", model,
                       "--c-grid", "1e-3:1e-1:3", "--cv", "3", "--class-weight", "balanced")
    assert rc == 0, err
    assert "best C" in out and "3-fold stratified CV over 3 C values" in out
    assert f"model written to {model}" in out
    m = load_model(model)
    assert m.selection["class_weight"] == "balanced" and m.selection["c_grid"] == \
        pytest.approx([1e-3, 1e-2, 1e-1])

    rc, out, err = run(capsys, "evaluate", model, digits_data.test_h5, "--report",
                       tmp_path / "rep", "--raw-baseline")
    assert rc == 0, err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["test"]["n"] == 60 and rep["test"]["accuracy"] > 0.5
    assert [r["name"] for r in rep["rows"]][1] == "raw pixels 32x32 rgb"
    assert "raw pixels 32x32 rgb" in out and "test acc" in out
    assert (tmp_path / "rep" / "confusion.png").is_file()

    photos = tmp_path / "photos"
    shutil.copytree(digits_data.test_dir, photos)
    (photos / "0" / "bad.png").write_bytes(b"garbage")
    rc, out, err = run(capsys, "predict", model, photos, "-o", tmp_path / "p.csv",
                       "--workers", "0", "--no-progress")
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 61 and rows[0].keys() >= {"path", "label", "probability", "error"}
    assert "1 files could not be read" in out and "bad.png" in out
    acc = sum(r["label"] == r["true_label"] for r in rows if not r["error"]) / 60
    assert acc == pytest.approx(rep["test"]["accuracy"])
    assert f"accuracy against the folder labels: {acc:.4f}" in out


def test_train_with_holdout_writes_report_and_json(digits_data, tmp_path, capsys):  # noqa: F811
    rc, out, err = run(capsys, "train", digits_data.train_h5, "-o", tmp_path / "m.joblib",
                       "--holdout", "0.2", "--c-grid", "0.01,0.1", "--cv", "3", "--model",
                       "linearsvc", "--report", tmp_path / "rep", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["split"]["kind"] == "holdout" and rep["test"]["n"] == 30  # round(0.2 * 14) x 10
    assert rep["model"]["model"] == "linearsvc" and rep["model"]["layer"] == "pool"
    assert (tmp_path / "rep" / "cv_scores.png").is_file()


def test_errors_are_one_line_and_name_the_problem(digits_data, tmp_path, capsys):  # noqa: F811
    rc, _, err = run(capsys, "train", digits_data.train_h5, "--c-grid", "1e-4:1e2",
                     "-o", tmp_path / "m.joblib")
    assert rc == 1 and err.startswith("error: Bad C grid '1e-4:1e2'")
    rc, _, err = run(capsys, "train", digits_data.train_h5, "--layer", "fc7",
                     "-o", tmp_path / "m.joblib")
    assert rc == 1 and "Layer 'fc7' is not in" in err and "layer3, pool" in err
    rc, _, err = run(capsys, "train", digits_data.train_h5, "--holdout", "0.2", "--test",
                     digits_data.test_h5)
    assert rc == 1 and "not both" in err
    # a store from other preprocessing is refused, naming the field
    model = tmp_path / "m.joblib"
    assert run(capsys, "train", digits_data.train_h5, "-o", model, "--c-grid", "0.1",
               "--cv", "3")[0] == 0
    other = tmp_path / "other.h5"
    extract(digits_data.test_dir, other, layers="pool", pooling="max",
            **{**digits_data.opts, "input_size": 48})
    rc, _, err = run(capsys, "evaluate", model, other)
    assert rc == 1 and "do not match the model" in err and "preprocessing: model has" in err


def test_train_refuses_a_class_with_one_image(digits_data, tmp_path, capsys):  # noqa: F811
    photos = tmp_path / "photos"
    for c in ("1", "2"):
        shutil.copytree(digits_data.test_dir / c, photos / c)
    (photos / "solo").mkdir()
    shutil.copy(next((digits_data.test_dir / "3").glob("*.png")), photos / "solo" / "x.png")
    extract(photos, tmp_path / "s.h5", layers="pool", **digits_data.opts)
    rc, _, err = run(capsys, "train", tmp_path / "s.h5", "-o", tmp_path / "m.joblib")
    assert rc == 1 and "'solo' (1)" in err and "at least 2 per class" in err


def test_baseline_command_prints_codes_and_raw_pixel_rows(digits_data, tmp_path,  # noqa: F811
                                                          capsys):
    rc, out, err = run(capsys, "baseline", digits_data.split_dir, "--report", tmp_path / "rep",
                       "--backbone", BACKBONE, "--weights", digits_data.weights, "--input-size",
                       SIZE, "--workers", "0", "--no-progress", "--c-grid", "1e-3:1e-1:3",
                       "--cv", "3")
    assert rc == 0, err
    assert "resnet18 pool codes (32 px)" in out and "raw pixels 32x32 rgb" in out
    assert "train/ and test/ folders: 140 train" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["split"]["kind"] == "predefined" and rep["test"]["n"] == 60
    assert FeatureStore(tmp_path / "rep" / "cache" / "test.h5").layers == ["pool"]
    assert load_model(tmp_path / "rep" / "model.joblib").layer == "pool"
    rc, _, err = run(capsys, "baseline", digits_data.split_dir, "--report", tmp_path / "rep",
                     "--backbone", BACKBONE, "--weights", digits_data.weights, "--input-size",
                     "40", "--workers", "0", "--no-progress")
    assert rc == 1 and "preprocessing: file has" in err  # the cache holds 32 px codes
    assert "--overwrite" in err


def test_help_warns_that_model_files_run_code(capsys):
    for cmd in ("train", "evaluate", "predict", "baseline"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "joblib pickles" in capsys.readouterr().out
