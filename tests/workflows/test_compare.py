"""The linear probe vs fine-tuning comparison: the one verdict, the fall-through arm on a given
train/test pair (the baseline's rows), and the escalation report (probe vs head-only vs full).
Random-init resnet18 at 32 px on tiny generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes import cli, open_source
from cnncodes.options import BackboneOptions, RuntimeOptions
from cnncodes.sources.folders import ImageSource
from cnncodes.workflows.compare import (
    escalate,
    fall_through_verdict,
    finetune_command,
    format_fall_through,
    run_fall_through,
    verdict,
)

from ..conftest import write_tree

TINY = dict(backbone="resnet18", weights="random", input_size=32, batch_size=8, num_workers=0,
            threads=1, val_fraction=0.2, test_fraction=0.2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 10 images of 40x48 px (18 train / 6 val / 6 test with TINY's fractions)."""
    return write_tree(tmp_path_factory.mktemp("cmp") / "photos", per_class=10)


def test_verdict_weighs_accuracy_gain_against_wall_time():
    probe = {"method": "linear probe", "test_accuracy": 0.80, "seconds": 10.0}
    better = {"method": "full fine-tuning", "test_accuracy": 0.90, "seconds": 50.0}
    worse = {"method": "head-only fine-tuning", "test_accuracy": 0.75, "seconds": 20.0}
    assert verdict(probe, [worse, better]) == (
        "full fine-tuning is best (0.900, +10.0 points over the linear probe's 0.800) at 5.0x "
        "its wall time.")
    # with the test size: the one 95% interval (Wilson) beside each accuracy
    assert verdict({**probe, "n_test": 100}, [{**better, "n_test": 100}]).startswith(
        "full fine-tuning is best (0.900 (95% CI 0.826-0.945, n=100), +10.0 points over the "
        "linear probe's 0.800 (95% CI 0.711-0.867, n=100))")
    text = verdict(probe, [worse])
    assert text.startswith("the linear probe is as good or better (0.800 vs 0.750 for "
                           "head-only fine-tuning") and "keep the codes" in text
    assert "no test accuracy" in verdict(probe, [{**better, "test_accuracy": None}])
    # the baseline's rows (accuracy / wall_time_s) go through the same writer
    assert fall_through_verdict({"accuracy": 0.8, "wall_time_s": 10.0},
                                {"accuracy": 0.9, "wall_time_s": 50.0}) == verdict(probe, [better])


def test_finetune_command_repeats_the_backbone_and_policy():
    cmd = finetune_command(["train/", "--test", "test/"], backbone="resnet18", weights="random",
                           input_size=32, out=Path("rep/finetune"),
                           options={"epochs": 3, "head_lr_mult": 10.0, "freeze": 1})
    assert cmd == ("cnncodes finetune train/ --test test/ --backbone resnet18 --weights random "
                   "--input-size 32 -o rep/finetune --epochs 3 --head-lr-mult 10 --freeze 1")
    assert "--weights" not in finetune_command(["x"], backbone="mobilenet_v2", weights="auto",
                                               input_size=None, out=Path("o"), options={})


def test_fall_through_fine_tunes_exactly_the_given_rows_and_restarts_a_stale_run(photos, tmp_path):
    src = open_source(photos)
    test_rows = np.arange(len(src)) % 5 == 0
    def part(mask: np.ndarray) -> ImageSource:
        idx = np.flatnonzero(mask)
        return ImageSource(src.root, [src.paths[i] for i in idx], src.labels[idx],
                           list(src.classes), "list")

    train, test = part(~test_rows), part(test_rows)
    opts = dict(seed=0, command="test", overwrite=False,
                backbone=BackboneOptions("resnet18", weights="random", input_size=32),
                runtime=RuntimeOptions(device="cpu", num_workers=0, threads=1, max_pixels=None))
    out = tmp_path / "ft"
    row, res = run_fall_through(train, test, out, options={"epochs": 1, "batch_size": 8},
                                **opts)
    assert row["status"] == "completed" and row["kind"] == "finetune"
    assert row["n_train"] + row["n_val"] == len(train) and row["n_test"] == len(test) == 6
    split = json.loads((out / "split.json").read_text())
    assert sorted(p for p, _ in split["test"]) == sorted(test.paths)
    assert row["accuracy"] == res.test_accuracy
    cm = np.array(res.report["confusion_matrix"])
    recall = np.diag(cm) / cm.sum(1)
    assert row["balanced_accuracy"] == pytest.approx(recall.mean())
    assert row["name"] == "fine-tuned resnet18 (full, 1 epoch, 32 px)"
    # an earlier run in the folder made with other options is started over, not an error
    other, res2 = run_fall_through(train, test, out, options={"epochs": 1, "batch_size": 6},
                                   **opts)
    assert res2.report["config"]["batch_size"] == 6 and res2.resumed_from is None
    assert json.loads((out / "report.json").read_text())["config"]["batch_size"] == 6
    report = {"fall_through": {"size": {"n_images": 24, "median_per_class": 8,
                                        "size_class": "large"},
                               "status": "ran", "linear_probe": {"name": "linear probe",
                                                                 "accuracy": 0.5,
                                                                 "wall_time_s": 1.0},
                               "finetune": other,
                               "verdict": fall_through_verdict({"accuracy": 0.5,
                                                                "wall_time_s": 1.0}, other)}}
    text = format_fall_through(report)
    assert "fall-through: 24 training images, median 8 per class -> large" in text
    assert "fine-tuned resnet18 (full, 1 epoch, 32 px)" in text and "verdict: " in text
    assert format_fall_through({}) == ""


# ------------------------------------------------------------------------------ escalation


@pytest.mark.slow
def test_escalation_report_compares_probe_head_only_and_full(photos, tmp_path):
    out = tmp_path / "esc"
    assert cli.main(["-q", "finetune", str(photos), "-o", str(out), "--escalation",
                     "--backbone", "resnet18", "--weights", "random", "--input-size", "32",
                     "--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads", "1",
                     "--val-fraction", "0.2", "--test-fraction", "0.2", "--no-progress"]) == 0
    rep = json.loads((out / "escalation.json").read_text())
    assert [r["method"] for r in rep["rows"]] == ["linear probe", "head-only fine-tuning",
                                                   "full fine-tuning"]
    assert all(r["seconds"] > 0 and r["status"] == "completed" for r in rep["rows"])
    probe, head, full = rep["rows"]
    for row, sub in ((head, "head-only"), (full, "full")):  # each row is its run's report
        run = json.loads((out / sub / "report.json").read_text())
        assert (row["test_accuracy"], row["epochs"]) == (run["test_accuracy"], run["epochs_run"])
        assert run["state"] == sub
    assert rep["verdict"] == verdict(probe, [head, full])
    assert probe["trainable_params"] == head["trainable_params"] < full["trainable_params"]
    assert rep["split"] == {"train": 18, "val": 6, "test": 6, "seed": 0}
    split = (out / "split.json").read_text()
    for sub in ("head-only", "full"):  # the same split for every method
        assert (out / sub / "split.json").read_text() == split
        assert (out / sub / "model.pt").is_file()
    md = (out / "escalation.md").read_text()
    assert "| linear probe |" in md and "| full fine-tuning |" in md and rep["verdict"] in md
    with Image.open(out / "escalation.png") as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="already holds an escalation report"):
        escalate(photos, out, **TINY)
    # resuming a finished escalation reuses the probe and the finished runs
    res = escalate(photos, out, resume=True, epochs=1, **TINY)
    assert [r["test_accuracy"] for r in res.rows] == [r["test_accuracy"] for r in rep["rows"]]


@pytest.mark.parametrize("error", ["option", "value", "os", "stale-without-restart"])
def test_run_arm_leaves_the_run_folder_as_it_was_on_any_error_but_a_stale_run(
        tmp_path, monkeypatch, error):
    """Only a StaleRunError with restart_stale starts the arm afresh (deleting checkpoint.pt);
    any other error leaves every file of the run folder byte-identical."""
    from types import SimpleNamespace

    import cnncodes.workflows.compare as compare
    from cnncodes.errors import OptionError, StaleRunError
    from cnncodes.finetuning.config import make_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 a checkpoint of hours of training")
    (run_dir / "report.json").write_text('{"status": "running"}')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    raised = {"option": OptionError("lr must be > 0"), "value": ValueError("a bug's ValueError"),
              "os": OSError(5, "Input/output error"),
              "stale-without-restart": StaleRunError("Cannot resume with other options")}[error]
    calls = []

    def fake_finetune(source, output, *, overwrite, **kw):
        calls.append(overwrite)
        if overwrite:
            for p in output.iterdir():
                p.unlink()
            return SimpleNamespace(status="completed", report={"status": "completed"})
        raise raised

    monkeypatch.setattr(compare, "finetune", fake_finetune)
    monkeypatch.setattr(compare, "write_finetune_html", lambda out: None)
    split = SimpleNamespace()
    with pytest.raises(type(raised)):
        compare.run_arm(split, run_dir, make_config(None, epochs=1),
                        restart_stale=error != "stale-without-restart")
    assert calls == [False]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

    # a stale run with restart_stale: started afresh (the only case that deletes the checkpoint)
    raised = StaleRunError("Cannot resume with other options")
    calls.clear()
    arm = compare.run_arm(split, run_dir, make_config(None, epochs=1), restart_stale=True)
    assert calls == [False, True] and arm.status == "completed"
    assert not (run_dir / "checkpoint.pt").exists()
