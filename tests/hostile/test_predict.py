"""Honest predict results and quiet pipes: a single image file, a fine-tuning checkpoint.pt, folder
classes the model does not know, and `cnncodes ... | head` without a BrokenPipe traceback."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnncodes.cli.main import BROKEN_PIPE
from cnncodes.finetuning.run import finetune

from ._data import TINY, run, trained  # noqa: F401 - module fixture

REPO = Path(__file__).resolve().parents[2]


def test_predict_a_single_image_file(trained, tmp_path, capsys):  # noqa: F811
    img = trained.photos / "bee" / "img002.png"
    out_csv = tmp_path / "one.csv"
    rc, out, err = run(capsys, "predict", trained.model, img, "-o", out_csv, *TINY)
    assert rc == 0, err
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 1 and rows[0]["path"] == str(img) and rows[0]["label"] in \
        ("ant", "bee", "cow") and rows[0]["error"] == ""
    assert f"{out_csv}: 1 image labelled" in out
    rc, out, err = run(capsys, "predict", trained.model, img, "-o", out_csv, "--top-k", "2",
                       *TINY)
    assert rc == 0, err
    row = next(csv.DictReader(open(out_csv)))
    assert [row[f"top{i}_label"] for i in (1, 2)][0] == row["label"]
    assert float(row["top1_prob"]) >= float(row["top2_prob"])
    assert sum(float(row[f"prob_{c}"]) for c in ("ant", "bee", "cow")) == pytest.approx(1,
                                                                                          abs=1e-4)
    assert "prob_<class> columns" in out
    with pytest.raises(SystemExit):
        run(capsys, "predict", trained.model, img, "-o", out_csv, "--top-k", "0", *TINY)
    assert "--top-k: must be a whole number of at least 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ft_run(trained, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("ft") / "run"
    finetune(trained.photos, out, backbone="resnet18", weights="random", input_size=32,
             batch_size=8, num_workers=0, threads=1, epochs=1, val_fraction=0.2,
             test_fraction=0.2)
    return out


def test_predict_with_a_checkpoint_names_the_model(trained, ft_run, tmp_path, capsys):  # noqa: F811
    ckpt = ft_run / "checkpoint.pt"
    rc, out, err = run(capsys, "predict", ckpt, trained.photos, "-o", tmp_path / "p.csv", *TINY)
    assert rc == 1 and "UnpicklingError" not in err
    assert f"{ckpt} is a fine-tuning checkpoint" in err and f"{ft_run / 'model.pt'}" in err
    assert not (tmp_path / "p.csv").exists()
    # the model it names works
    rc, out, err = run(capsys, "predict", ft_run / "model.pt", trained.photos / "ant" /
                       "img000.png", "-o", tmp_path / "p.csv", *TINY)
    assert rc == 0, err
    # a run without model.pt yet: the message says how to get one
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(ckpt, lone / "checkpoint.pt")
    rc, out, err = run(capsys, "predict", lone / "checkpoint.pt", trained.photos, "-o",
                       tmp_path / "q.csv", *TINY)
    assert rc == 1 and f"no {lone / 'model.pt'} yet" in err and "--resume" in err


def _foreign(trained, tmp_path: Path, *, with_known: bool) -> Path:  # noqa: F811
    other = tmp_path / "other"
    shutil.copytree(trained.photos / "ant", other / "dog")
    shutil.copytree(trained.photos / "bee", other / "eel")
    if with_known:
        shutil.copytree(trained.photos / "cow", other / "cow")
    return other


def test_foreign_class_names_warn_instead_of_zero_accuracy(trained, tmp_path,  # noqa: F811
                                                           capsys, caplog):
    other = _foreign(trained, tmp_path, with_known=False)
    rc, out, err = run(capsys, "predict", trained.model, other, "-o", tmp_path / "p.csv", *TINY)
    assert rc == 0, err
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "folder classes dog, eel are not classes of the model (ant, bee, cow)" in warned
    assert "0.0000" not in out and "accuracy against" not in out
    assert "no accuracy: none of the folder classes (dog, eel)" in out


def test_foreign_classes_are_left_out_of_the_accuracy(trained, tmp_path, capsys,  # noqa: F811
                                                       caplog):
    other = _foreign(trained, tmp_path, with_known=True)
    rc, out, err = run(capsys, "predict", trained.model, other, "-o", tmp_path / "p.csv", *TINY)
    assert rc == 0, err
    rows = [r for r in csv.DictReader(open(tmp_path / "p.csv")) if r["true_label"] == "cow"]
    acc = sum(r["label"] == "cow" for r in rows) / len(rows)
    assert f"accuracy against the folder labels: {acc:.3f} (95% CI " in out
    assert "n=6), over the images of the model's classes only; 12 images of dog, eel left " \
           "out" in out
    assert any("dog, eel" in r.getMessage() for r in caplog.records)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("command", ["models", "info"])
def test_closed_pipe_exits_quietly(trained, command):  # noqa: F811
    """The reader is gone before the first write: deterministic EPIPE, no traceback, 141."""
    argv = [sys.executable, "-m", "cnncodes", command] + \
        ([str(trained.store)] if command == "info" else [])
    r, w = os.pipe()
    os.close(r)  # nobody will read
    try:
        p = subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, cwd=REPO, env=_env(),
                           timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_pipe_into_head(trained):  # noqa: F811
    cmd = (f"{sys.executable} -m cnncodes models | head -1; "
           f"{sys.executable} -m cnncodes info {trained.store} | head -1")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO, env=_env(),
                       timeout=120)
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("backbone") and str(trained.store) in lines[1]
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
