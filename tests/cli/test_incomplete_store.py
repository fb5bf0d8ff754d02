"""An extraction stopped early (Ctrl-C) leaves a store marked incomplete: every consumer refuses
it by default, naming how many images are missing and the command that finishes it;
``--allow-incomplete`` / ``allow_incomplete=True`` reads it and the report says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cnncodes.codes.extract_run as extract_run
from cnncodes import CNNCodes, FeatureStore, evaluate, train
from cnncodes.cli import main
from cnncodes.errors import CnnCodesError, IncompleteStoreError

from ..linear.digits import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def stop_after(monkeypatch, batches: int) -> None:
    """The next extraction is interrupted (KeyboardInterrupt, as Ctrl-C) after ``batches``
    (or after its last batch when it has no more)."""
    real = extract_run.iter_codes

    def stopping(*a, **k):
        for n, item in enumerate(real(*a, **k)):
            if n == batches:
                raise KeyboardInterrupt
            yield item
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_run, "iter_codes", stopping)


def interrupted(monkeypatch, capsys, data, folder, out, batches=3):
    """``cnncodes extract`` of ``folder`` stopped after ``batches`` batches of 16: status 130."""
    argv = ["extract", folder, "-o", out, "--backbone", BACKBONE, "--weights", data.weights,
            "--input-size", SIZE, "--layers", "layer3,pool", "--batch-size", "16",
            "--workers", "0", "--no-progress"]
    stop_after(monkeypatch, batches)
    rc, _, err = run(capsys, *argv)
    monkeypatch.undo()
    assert rc == 130, err
    return argv


def test_train_refuses_an_interrupted_store_and_allow_incomplete_reports_it(
        digits_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    store = tmp_path / "part.h5"
    argv = interrupted(monkeypatch, capsys, digits_data, digits_data.train_dir, store)
    st = FeatureStore(store)
    assert len(st) == 48 and st.provenance["complete"] is False
    assert st.incomplete()["missing"] == 140 - 48
    rc, out, _ = run(capsys, "info", store)
    assert rc == 0 and "interrupted with 92 images not extracted yet" in out
    model = tmp_path / "m.joblib"
    rc, out, err = run(capsys, "train", store, "--layer", "pool", "-o", model, "--cv", "3",
                       "--c-grid", "0.1")
    assert rc == 1 and not model.exists()
    line = err.strip()
    assert "\n" not in line and f"{store} is incomplete: it holds 48 rows, 92 images not " \
        "extracted yet" in line
    # the command that finishes it
    assert "cnncodes extract" in line and "--allow-incomplete" in line
    with pytest.raises(IncompleteStoreError, match="92 images not extracted yet"):
        train(store, layer="pool")
    with pytest.raises(IncompleteStoreError):
        FeatureStore(store).load("pool")
    X, y = FeatureStore(store).load("pool", allow_incomplete=True)
    assert X.shape == (48, 512)

    rep_dir = tmp_path / "rep"
    rc, out, err = run(capsys, "train", store, "--layer", "pool", "-o", model, "--cv", "3",
                       "--c-grid", "0.1", "--holdout", "0.25", "--report", rep_dir,
                       "--allow-incomplete")
    assert rc == 0, err
    assert "WARNING" in out and "92 images were not extracted" in out
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["incomplete_stores"] == [{"store": str(store), "rows": 48, "missing": 92,
                                         "command": rep["incomplete_stores"][0]["command"]}]
    assert "extract" in rep["incomplete_stores"][0]["command"]
    assert rep["split"]["incomplete_store"]["missing"] == 92
    assert "92 images were not extracted" in (rep_dir / "report.html").read_text()

    # the recorded command finishes the store; then nothing is refused or reported
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    st = FeatureStore(store)
    assert len(st) == 140 and st.incomplete() is None
    assert np.allclose(st.load("pool")[0], FeatureStore(digits_data.train_h5).load("pool")[0],
                       atol=1e-5)
    rc, out, err = run(capsys, "train", store, "--layer", "pool", "-o", model, "--cv", "3",
                       "--c-grid", "0.1", "--report", rep_dir)
    assert rc == 0 and "WARNING" not in out
    assert "incomplete_stores" not in json.loads((rep_dir / "report.json").read_text())


def test_evaluate_refuses_an_interrupted_store(digits_data, tmp_path, monkeypatch,
                                               capsys):  # noqa: F811
    model = tmp_path / "m.joblib"
    assert run(capsys, "train", digits_data.train_h5, "--layer", "pool", "-o", model, "--cv",
               "3", "--c-grid", "0.1")[0] == 0
    store = tmp_path / "test-part.h5"
    interrupted(monkeypatch, capsys, digits_data, digits_data.test_dir, store, batches=2)
    rc, out, err = run(capsys, "evaluate", model, store)
    assert rc == 1 and "is incomplete: it holds 32 rows, 28 images not extracted yet" in err
    with pytest.raises(IncompleteStoreError):
        evaluate(model, store)
    rc, out, err = run(capsys, "evaluate", model, store, "--allow-incomplete", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["test"]["n"] == 32 and rep["incomplete_stores"][0]["missing"] == 28
    assert evaluate(model, store, allow_incomplete=True).incomplete_store["rows"] == 32


def test_a_store_interrupted_after_its_last_batch_is_marked_complete_by_the_rerun(
        digits_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Stopped when every batch was done: nothing is left to extract, and the rerun (with no
    batch to run) still marks the store complete."""
    store = tmp_path / "s.h5"
    argv = interrupted(monkeypatch, capsys, digits_data, digits_data.test_dir, store, batches=4)
    assert FeatureStore(store).incomplete() == {
        "store": str(store), "rows": 60, "missing": 0, "command": FeatureStore(store)
        .provenance["command"], "running": None}
    assert run(capsys, *argv)[0] == 0
    assert FeatureStore(store).incomplete() is None


def test_baseline_finishes_an_interrupted_cache_before_training(
        digits_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    """``baseline`` extracts into its cache before it trains: a cache left incomplete by a
    stopped run is finished (never trained on as it is)."""
    from cnncodes import baseline

    cache = tmp_path / "cache"
    cache.mkdir()
    interrupted(monkeypatch, capsys, digits_data, digits_data.train_dir, cache / "train.h5")
    assert FeatureStore(cache / "train.h5").incomplete()["missing"] == 92
    res = baseline(digits_data.split_dir, report=tmp_path / "rep", cache=cache,
                   backbone=BACKBONE, weights=str(digits_data.weights), input_size=SIZE,
                   num_workers=0, raw_baseline=False, cv=3, c_grid="0.1")
    assert FeatureStore(cache / "train.h5").incomplete() is None
    assert len(FeatureStore(cache / "train.h5")) == 140
    assert "incomplete_stores" not in res.report


def test_cnncodes_reads_an_incomplete_store_and_computes_the_rest(
        digits_data, tmp_path, monkeypatch, capsys):  # noqa: F811
    """CNNCodes computes every image the store lacks, so an incomplete store gives the same
    codes as a complete one (nothing to refuse)."""
    store = tmp_path / "s.h5"
    interrupted(monkeypatch, capsys, digits_data, digits_data.test_dir, store, batches=1)
    paths = [str(p) for p in FeatureStore(digits_data.test_h5).abspaths()]
    codes = CNNCodes(BACKBONE, weights=str(digits_data.weights), input_size=SIZE, layer="pool",
                     cache=store).fit_transform(paths)
    assert np.allclose(codes, FeatureStore(digits_data.test_h5).load("pool")[0], atol=1e-5)
    assert len(FeatureStore(store)) == 16  # read, not written (a store made by extract)


def test_incomplete_store_error_is_a_value_error_and_a_cnncodes_error():
    assert issubclass(IncompleteStoreError, ValueError)
    assert issubclass(IncompleteStoreError, CnnCodesError)


def test_an_extract_in_progress_is_named_instead_of_the_command(digits_data, tmp_path,
                                                                monkeypatch, capsys):  # noqa: F811
    from cnncodes.codes.unfinished import incomplete_message

    note = {"store": "s.h5", "rows": 3, "missing": 5, "command": "cnncodes extract a -o s.h5",
            "running": {"pid": 4242, "host": "h", "since": "t"}}
    msg = incomplete_message(note)
    assert "an extraction is writing it now (process 4242" in msg and "Wait" in msg
    msg = incomplete_message({**note, "running": None})
    assert "Finish it by running the command that made it again: cnncodes extract a -o s.h5" \
        in msg
    msg = incomplete_message({**note, "running": None, "command": "python: cnncodes.extract(...)",
                              "missing": None})
    assert "calling cnncodes.extract again" in msg and "an unrecorded number of images" in msg
