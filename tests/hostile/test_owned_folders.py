"""Run and report folders are owned: the command that wrote one is recorded in it
(``.cnncodes-owner.json``); another command writing into it, or an output folder full of source
images, is refused before any work without --overwrite; with it only that command's own files are
replaced (the others stay byte-identical)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cnncodes.errors import OutputError
from cnncodes.outputs import OWNER_FILE, check_output, claim_folder, folder_owner

from ..conftest import write_tree
from ._data import TINY, run, trained  # noqa: F401 - module fixture

TRAIN = ["--cv", "2", "--c-grid", "0.1,1"]
FINETUNE = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32",
            "--epochs", "1", "--batch-size", "8", "--threads", "1", *TINY]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def fake_run(folder: Path) -> Path:
    """A fine-tune run folder as `cnncodes finetune -o` leaves it (the bytes do not matter)."""
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 hours of training")
    (folder / "report.json").write_text('{"kind": "cnncodes-finetune"}')
    claim_folder(folder, "finetune", files=("checkpoint.pt", "report.json"),
                 command="cnncodes finetune photos -o run")
    return folder


def test_train_report_records_its_owner_and_reruns_and_evaluate_may_rewrite_it(
        trained, tmp_path, capsys):  # noqa: F811
    rep = tmp_path / "rep"
    rc, _, err = run(capsys, "train", trained.store, "-o", tmp_path / "m.joblib", "--holdout",
                     "0.3", "--report", rep, *TRAIN)
    assert rc == 0, err
    owner = json.loads((rep / OWNER_FILE).read_text())
    assert owner["command"] == "train" and "report.json" in owner["files"]
    assert run(capsys, "train", trained.store, "-o", tmp_path / "m.joblib", "--holdout", "0.3",
               "--report", rep, *TRAIN)[0] == 0  # its own folder: rewritten as before
    rc, _, err = run(capsys, "evaluate", tmp_path / "m.joblib", trained.store, "--report", rep)
    assert rc == 0, err  # the same report files: evaluate writes a train report folder
    assert folder_owner(rep)["command"] == "evaluate"


def test_finetune_over_a_train_report_is_refused_before_any_work(trained, tmp_path,
                                                                   capsys):  # noqa: F811
    rep = tmp_path / "rep"
    assert run(capsys, "train", trained.store, "-o", tmp_path / "m.joblib", "--report", rep,
               *TRAIN)[0] == 0
    before = tree_bytes(rep)
    rc, _, err = run(capsys, "finetune", trained.photos, "-o", rep, *FINETUNE)
    assert rc == 1 and f"Output -o {rep} holds the output of `cnncodes train`" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert tree_bytes(rep) == before


def test_train_report_over_a_finetune_run_needs_overwrite_and_keeps_the_run(
        trained, tmp_path, capsys):  # noqa: F811
    run_dir = fake_run(tmp_path / "run")
    before = tree_bytes(run_dir)
    argv = ["train", trained.store, "-o", tmp_path / "m.joblib", "--report", run_dir, *TRAIN]
    rc, _, err = run(capsys, *argv)
    assert rc == 1 and "holds the output of `cnncodes finetune` (cnncodes finetune photos -o " \
        "run)" in err
    assert tree_bytes(run_dir) == before and not (tmp_path / "m.joblib").exists()
    rc, _, err = run(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert (run_dir / "checkpoint.pt").read_bytes() == before["checkpoint.pt"]  # not train's
    assert json.loads((run_dir / "report.json").read_text())["format"] == "cnncodes-report"
    assert folder_owner(run_dir)["command"] == "train"


def test_baseline_report_over_a_finetune_run_is_refused(trained, tmp_path, capsys):  # noqa: F811
    run_dir = fake_run(tmp_path / "run")
    before = tree_bytes(run_dir)
    rc, _, err = run(capsys, "baseline", trained.photos, "--report", run_dir, "--backbone",
                     "resnet18", "--weights", "random", "--input-size", "32", *TINY, *TRAIN)
    assert rc == 1 and "holds the output of `cnncodes finetune`" in err
    assert tree_bytes(run_dir) == before


def test_output_into_a_folder_of_source_images_is_refused(trained, tmp_path,
                                                           capsys):  # noqa: F811
    other = write_tree(tmp_path / "holiday", per_class=2)  # not this command's input
    before = tree_bytes(other)
    rc, _, err = run(capsys, "finetune", trained.photos, "-o", other, *FINETUNE)
    assert rc == 1 and f"Output -o {other} holds images" in err and "source images" in err
    rc, _, err = run(capsys, "train", trained.store, "-o", tmp_path / "m.joblib", "--report",
                     other, *TRAIN)
    assert rc == 1 and "holds images" in err
    assert tree_bytes(other) == before and not (tmp_path / "m.joblib").exists()


def test_folders_written_before_markers_are_recognised_by_their_files(tmp_path):
    legacy = tmp_path / "old-run"
    legacy.mkdir()
    (legacy / "checkpoint.pt").write_bytes(b"PK\x03\x04")
    assert folder_owner(legacy) == {"command": "finetune", "guessed": True}
    with pytest.raises(OutputError, match="holds the output of `cnncodes finetune`"):
        check_output(legacy, kind="folder", owner="baseline", files=("report.json",))
    check_output(legacy, kind="folder", owner="finetune", files=("checkpoint.pt",))
    check_output(legacy, kind="folder", owner="baseline", overwrite=True)
    report = tmp_path / "old-report"
    report.mkdir()
    (report / "report.json").write_text("{}")
    assert folder_owner(report)["command"] == "train"
    check_output(report, kind="folder", owner="evaluate")  # the same report files
    (report / "model.joblib").write_bytes(b"")
    assert folder_owner(report)["command"] == "baseline"
    assert folder_owner(tmp_path / "none") is None


def test_claim_is_atomic_and_only_rewritten_when_it_changes(tmp_path):
    d = tmp_path / "rep"
    marker = claim_folder(d, "train", files=("report.json",), command="cnncodes train a")
    first = marker.stat().st_mtime_ns, marker.stat().st_ino
    claim_folder(d, "train", files=("report.json",), command="cnncodes train a")
    assert (marker.stat().st_mtime_ns, marker.stat().st_ino) == first  # no write on a rerun
    claim_folder(d, "advise", files=("advice.json",), command="cnncodes advise a")
    assert json.loads(marker.read_text())["command"] == "advise"
    assert [p.name for p in d.iterdir()] == [OWNER_FILE]  # no temporary file left behind


def test_an_empty_or_unowned_folder_without_images_is_fine(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    check_output(d, kind="folder", owner="finetune", files=("report.json",))
    shutil.rmtree(d)
    check_output(d, kind="folder", owner="finetune")
