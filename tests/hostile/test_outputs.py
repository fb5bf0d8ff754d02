"""Outputs over inputs: every command refuses, before any work, an output that is one of its inputs
(also through links), that is not a regular file (device, FIFO, folder), or that is another kind
of file (without --overwrite); the inputs stay byte-identical."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from cnncodes.atomic import atomic_write_bytes, atomic_write_text
from cnncodes.errors import OutputError
from cnncodes.linear.model_file import load_model, save_model
from cnncodes.outputs import check_output, sniff
from cnncodes.report.files import write_report

from ._data import TINY, digest, run, trained  # noqa: F401 - module fixture

TRAIN = ["--cv", "2", "--c-grid", "0.1,1"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def test_train_onto_its_store_is_refused(trained, tmp_path, capsys):  # noqa: F811
    store = _copy(trained.store, tmp_path / "codes.h5")
    before = digest(store)
    rc, out, err = run(capsys, "train", store, "-o", store, *TRAIN)
    assert rc == 1
    assert f"-o {store} is one of the command's inputs" in err and "pass another path" in err
    assert digest(store) == before


@pytest.mark.parametrize("target", ["store", "model"])
def test_predict_onto_an_input_is_refused(trained, tmp_path, capsys, target):  # noqa: F811
    store = _copy(trained.store, tmp_path / "codes.h5")
    model = _copy(trained.model, tmp_path / "model.joblib")
    out_path = store if target == "store" else model
    before = digest(store), digest(model)
    rc, out, err = run(capsys, "predict", model, store, "-o", out_path)
    assert rc == 1 and str(out_path) in err and "one of the command's inputs" in err
    assert (digest(store), digest(model)) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_output_through_a_link_to_an_input_is_refused(trained, tmp_path, capsys,  # noqa: F811
                                                      link):
    store = _copy(trained.store, tmp_path / "codes.h5")
    alias = tmp_path / "alias.h5"
    (os.symlink if link == "symlink" else os.link)(store, alias)
    before = digest(store)
    rc, out, err = run(capsys, "train", store, "-o", alias, *TRAIN)
    assert rc == 1 and str(alias) in err and "one of the command's inputs" in err
    if link == "symlink":
        assert "through a link" in err and alias.is_symlink()
    assert digest(store) == before and digest(alias) == before
    rc, out, err = run(capsys, "predict", trained.model, alias, "-o", store)
    assert rc == 1 and "one of the command's inputs" in err and digest(store) == before


def _device(tmp_path: Path) -> Path:
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except (PermissionError, OSError) as e:
        pytest.skip(f"os.mknod is not permitted here ({e})")
    return dev


def test_device_node_output_is_never_replaced(trained, tmp_path, capsys):  # noqa: F811
    dev = _device(tmp_path)
    rc, out, err = run(capsys, "train", trained.store, "-o", dev, *TRAIN)
    assert rc == 1 and f"-o {dev} is a character device, not a regular file" in err
    assert "never replaced" in err and "pass another path" in err
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", dev)
    assert rc == 1 and stat.S_ISCHR(os.lstat(dev).st_mode)


def test_atomic_writes_refuse_special_files_even_unchecked(tmp_path):
    """A caller that forgot check_output still cannot rename over a device, FIFO or folder."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    targets = [fifo, folder]
    try:
        targets.append(_device(tmp_path))
    except pytest.skip.Exception:
        pass
    for t in targets:
        with pytest.raises(OutputError, match="not a regular file: it is never replaced"):
            atomic_write_bytes(t, b"x")
        assert not stat.S_ISREG(os.lstat(t).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)
    # a symlink is replaced itself, its target is left alone
    target = tmp_path / "target.txt"
    target.write_text("mine")
    (tmp_path / "link.txt").symlink_to(target)
    atomic_write_text(tmp_path / "link.txt", "new")
    assert target.read_text() == "mine" and (tmp_path / "link.txt").read_text() == "new"


def test_fifo_output_is_refused_before_the_work(trained, tmp_path, capsys):  # noqa: F811
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    rc, out, err = run(capsys, "predict", trained.model, trained.photos, "-o", fifo, *TINY)
    assert rc == 1 and f"-o {fifo} is a FIFO (named pipe), not a regular file" in err
    assert out == "" and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_report_over_an_existing_file_is_refused_up_front(trained, tmp_path, capsys):  # noqa: F811
    report = tmp_path / "notes"
    report.write_text("my notes\n")
    model = tmp_path / "new.joblib"
    rc, out, err = run(capsys, "train", trained.store, "-o", model, "--report", report, *TRAIN)
    assert rc == 1 and f"--report {report} must be a folder" in err
    assert not model.exists()  # refused before training: nothing written
    assert report.read_text() == "my notes\n"
    rc, out, err = run(capsys, "evaluate", trained.model, trained.store, "--report", report)
    assert rc == 1 and "must be a folder" in err and report.read_text() == "my notes\n"


def test_predict_into_an_existing_folder_is_refused(trained, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "preds"
    folder.mkdir()
    rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", folder)
    assert rc == 1 and f"-o {folder} is a folder, not a regular file" in err
    assert "a file name inside that folder" in err and list(folder.iterdir()) == []


def test_another_kind_needs_overwrite_and_same_kind_is_replaced(trained, tmp_path,  # noqa: F811
                                                                capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    rc, out, err = run(capsys, "train", trained.store, "-o", notes, *TRAIN)
    assert rc == 1 and f"-o {notes} already exists and is a text file" in err
    assert "--overwrite" in err and notes.read_text() == "not a model\n"
    rc, out, err = run(capsys, "train", trained.store, "-o", notes, "--overwrite", *TRAIN)
    assert rc == 0, err
    assert load_model(notes).classes == ["ant", "bee", "cow"]
    rc, out, err = run(capsys, "train", trained.store, "-o", notes, *TRAIN)  # a model: replaced
    assert rc == 0, err

    other_store = _copy(trained.store, tmp_path / "other.h5")  # not an input of this command
    before = digest(other_store)
    rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", other_store)
    assert rc == 1 and "is an HDF5 file (a code store), not a cnncodes predictions CSV" in err
    assert digest(other_store) == before
    model_copy = _copy(trained.model, tmp_path / "m.joblib")
    rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", model_copy)
    assert rc == 1 and "is a cnncodes model file, not a cnncodes predictions CSV" in err
    rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", other_store,
                       "--overwrite")
    assert rc == 0, err
    assert other_store.read_text().startswith("path,label,true_label,probability,error")
    csv_path = tmp_path / "p.csv"
    for _ in range(2):  # an earlier predictions CSV is replaced without --overwrite
        rc, out, err = run(capsys, "predict", trained.model, trained.store, "-o", csv_path)
        assert rc == 0, err


def test_library_writers_check_their_outputs(trained, tmp_path):  # noqa: F811
    m = load_model(trained.model)
    store = _copy(trained.store, tmp_path / "codes.h5")
    before = digest(store)
    with pytest.raises(OutputError, match="HDF5 file .* --overwrite"):
        save_model(m, store)
    assert digest(store) == before
    with pytest.raises(OutputError, match="one of the command's inputs"):
        save_model(m, trained.store)  # the model's own training store
    (tmp_path / "rep").write_text("x")
    with pytest.raises(OutputError, match="must be a folder"):
        write_report({}, tmp_path / "rep")
    fifo_dir = tmp_path / "r2"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "report.json")
    with pytest.raises(OutputError, match="report.json .* is a FIFO"):
        write_report({}, fifo_dir)


def test_folder_outputs_inside_an_input_folder_or_holding_an_input(trained, tmp_path):  # noqa: F811
    with pytest.raises(OutputError, match="lies inside the input folder"):
        check_output(trained.photos / "report", kind="folder", inputs=(trained.photos,))
    with pytest.raises(OutputError, match="is one of the command.s inputs"):
        check_output(trained.photos, kind="folder", inputs=(trained.photos,))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(b"weights")
    with pytest.raises(OutputError, match="model.pt is one of the command's inputs"):
        check_output(run_dir, kind="folder", files=("model.pt",),
                     inputs=(trained.photos, run_dir / "model.pt"))
    assert (run_dir / "model.pt").read_bytes() == b"weights"
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(OutputError, match="cannot be created: .*x.txt is a file, not a folder"):
        check_output(tmp_path / "x.txt" / "model.joblib")


def test_advise_and_finetune_refuse_outputs_before_the_work(trained, tmp_path, capsys):  # noqa: F811
    rc, out, err = run(capsys, "advise", trained.photos, "--report", trained.photos / "adv",
                       "--backbone", "resnet18", "--weights", "random", *TINY)
    assert rc == 1 and "lies inside the input folder" in err
    assert not (trained.photos / "adv").exists()
    bad = tmp_path / "run"
    bad.write_text("a file")
    rc, out, err = run(capsys, "finetune", trained.photos, "-o", bad, "--weights", "random",
                       "--backbone", "resnet18", "--epochs", "1", "--no-progress")
    assert rc == 1 and f"-o {bad} must be a folder" in err and bad.read_text() == "a file"


def test_sniff_names_the_kinds(trained, tmp_path):  # noqa: F811
    (tmp_path / "e").write_bytes(b"")
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "p.csv").write_text("\ufeffpath,label,probability,error\n")
    kinds = {p: sniff(p)[0] for p in [trained.store, trained.model, tmp_path / "e",
                                      tmp_path / "t.txt", tmp_path / "p.csv",
                                      next(trained.photos.rglob("*.png"))]}
    assert list(kinds.values()) == ["store", "model", "empty", "text", "csv", "image"]
