"""`cnncodes train / evaluate / predict / baseline`, called in-process through cli.main."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest

from cnncodes import FeatureStore, extract, load_model
from cnncodes.cli import main

from ..linear.digits import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


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
    assert "1 file could not be read" in out and "bad.png" in out
    acc = sum(r["label"] == r["true_label"] for r in rows if not r["error"]) / 60
    assert acc == pytest.approx(rep["test"]["accuracy"])
    assert f"accuracy against the folder labels: {acc:.3f} (95% CI " in out


def test_train_with_holdout_writes_report_and_json(digits_data, tmp_path, capsys):  # noqa: F811
    rc, out, err = run(capsys, "train", digits_data.train_h5, "-o", tmp_path / "m.joblib",
                       "--holdout", "0.2", "--c-grid", "0.01,0.1", "--cv", "3", "--model",
                       "linearsvc", "--report", tmp_path / "rep", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["split"]["kind"] == "holdout" and rep["test"]["n"] == 30  # round(0.2 * 14) x 10
    assert rep["model"]["model"] == "linearsvc" and rep["model"]["layer"] == "pool"
    assert (tmp_path / "rep" / "cv_scores.png").is_file()


def test_train_device_option_picks_and_reports_the_compute_path(digits_data, tmp_path,  # noqa: F811
                                                                capsys):
    args = ["train", digits_data.train_h5, "--layer", "pool", "--c-grid", "1e-3:1e-1:3", "--cv",
            "3", "--holdout", "0.2"]
    rc, out, err = run(capsys, *args, "-o", tmp_path / "xp.joblib", "--device", "cpu-torch")
    assert rc == 0, err
    assert "compute    scikit-learn array API on torch cpu, float32" in out
    xp = load_model(tmp_path / "xp.joblib")
    assert xp.selection["compute"]["engine"] == "array-api"
    rc, out, err = run(capsys, *args, "-o", tmp_path / "np.joblib", "--device", "cpu")
    assert rc == 0, err
    assert "compute    NumPy on CPU, float32" in out
    assert load_model(tmp_path / "np.joblib").selection["best_C"] == xp.selection["best_C"]
    rc, out, err = run(capsys, *args, "-o", tmp_path / "svc.joblib", "--device", "cpu-torch",
                       "--model", "linearsvc")
    assert rc == 0, err
    assert "NumPy on CPU, float32 (not the array API: LinearSVC has no array API support" in out
    rc, _, err = run(capsys, *args, "--device", "tpu")
    assert rc == 1 and "Unknown training device 'tpu'" in err


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
    assert load_model(tmp_path / "rep" / "model.npz").layer == "pool"
    rc, _, err = run(capsys, "baseline", digits_data.split_dir, "--report", tmp_path / "rep",
                     "--backbone", BACKBONE, "--weights", digits_data.weights, "--input-size",
                     "40", "--workers", "0", "--no-progress")
    assert rc == 1 and "preprocessing: file has" in err  # the cache holds 32 px codes
    assert "--overwrite" in err


def test_help_warns_that_model_files_run_code(capsys):
    for cmd in ("train", "evaluate", "predict", "baseline"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "loading one runs no code" in " ".join(out.split())
        # the option itself, on the commands that load a model file
        assert bool(re.search(r"^\s+--trust-pickle\s", out, re.M)) == \
            (cmd in ("evaluate", "predict"))


def test_train_help_says_linearsvc_stays_on_the_cpu(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE" in text and "cpu-torch" in text
    assert "--model linearsvc always runs on the CPU" in text


# ------------------------------------------------------------------ predict with a fine-tuned model


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny fine-tuned model: random-init resnet18 at 32 px, one epoch on 3 x 6 images."""
    from cnncodes.finetuning.run import finetune

    from ..conftest import write_tree

    root = tmp_path_factory.mktemp("finetuned")
    photos = write_tree(root / "photos", per_class=6)
    finetune(photos, root / "run", backbone="resnet18", weights="random", input_size=32,
             epochs=1, batch_size=4, num_workers=0, threads=1, val_fraction=0.2,
             test_fraction=0.2)
    return root / "run" / "model.pt", photos


def test_predict_dispatches_to_a_finetuned_model(finetuned, tmp_path, capsys):
    from cnncodes.finetuning.model_file import is_finetuned_model
    from cnncodes.finetuning.predict import predict_images

    model, photos = finetuned
    assert is_finetuned_model(model)
    new = tmp_path / "new"
    shutil.copytree(photos, new)
    (new / "bee" / "broken.png").write_bytes(b"not an image")
    rc, out, err = run(capsys, "predict", model, new, "-o", tmp_path / "p.csv", "--workers", "0",
                       "--no-progress", "--device", "cpu")
    assert rc == 0, err
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the columns of a linear model's predictions on a labelled folder
    assert list(rows[0]) == ["path", "label", "true_label", "probability", "error",
                             "prob_ant", "prob_bee", "prob_cow"]
    assert len(rows) == 19 and [r["path"].endswith("bee/broken.png") for r in rows if
                                r["error"]] == [True]
    assert rows[0]["error"]  # the failure first
    ok = [r for r in rows if not r["error"]]
    # the same predictions as the fine-tuning module's own predict_images
    ref = predict_images(model, new, device="cpu", num_workers=0)
    by_path = {str(ref.root / p): (ref.classes[int(c)], ref.probabilities[i, int(c)])
               for i, (p, c) in enumerate(zip(ref.paths, ref.predicted, strict=True))}
    assert len(ok) == len(by_path) == 18
    for r in ok:
        label, prob = by_path[r["path"]]
        assert r["label"] == label and float(r["probability"]) == pytest.approx(prob, rel=1e-5)
        assert r["true_label"] == r["path"].split("/")[-2]
        assert 0 < float(r["probability"]) <= 1
    assert "fine-tuned resnet18" in out and "18 images labelled" in out
    acc = sum(r["label"] == r["true_label"] for r in ok) / 18
    assert f"accuracy against the folder labels: {acc:.3f} (95% CI " in out
    assert "1 file could not be read" in out and "broken.png" in out


def test_finetuned_predict_on_flat_folder_and_store_refused(finetuned, tmp_path):
    from cnncodes import predict

    model, photos = finetuned
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(photos.glob("*/*.png"))[::4]:
        shutil.copy(p, flat / f"{p.parent.name}-{p.name}")
    pred = predict(model, flat, num_workers=0, device="cpu")
    assert pred.true_labels is None and len(pred.paths) == 5
    assert pred.score_kind == "probability" and pred.classes == ["ant", "bee", "cow"]
    assert np.allclose(pred.all_scores.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(pred.scores, pred.all_scores.max(axis=1))
    out = pred.to_csv(tmp_path / "flat.csv")
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == ["path", "label", "probability", "error", "prob_ant",
                                       "prob_bee", "prob_cow"]
    fake_store = tmp_path / "codes.h5"
    fake_store.write_bytes(b"")
    with pytest.raises(ValueError, match="fine-tuned network: it predicts from images"):
        predict(model, fake_store)
