"""Model files from elsewhere, through the command line: a pickle with a payload is refused by
every command that loads a model, without the payload running; an old joblib model loads with
--trust-pickle and a printed warning; a damaged file is one ``error:`` line; a fine-tuned ``.pt``
whose pickle holds a payload is refused by ``weights_only=True`` without running it."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest

from cnncodes import ModelFileError, load_model
from cnncodes.errors import ModelMismatchError
from cnncodes.outputs import sniff

from ._data import TINY, run, trained  # noqa: F401 - module fixture


class _Payload:
    """Unpickling this writes ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _commands(model: Path, trained_: object, tmp_path: Path) -> list[list]:  # noqa: F811
    return [["predict", model, trained_.store, "-o", tmp_path / "p.csv"],
            ["predict", model, trained_.photos, "-o", tmp_path / "q.csv", *TINY],
            ["evaluate", model, trained_.store]]


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("name", ["model.joblib", "model.npz", "model.pt"])
def test_a_malicious_pickle_runs_under_no_command(trained, tmp_path, capsys, name):  # noqa: F811
    marker = tmp_path / "marker"
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps({"format": "cnncodes-model", "x": _Payload(marker)}, 4))
    for argv in _commands(evil, trained, tmp_path):
        rc, out, err = run(capsys, *argv)
        line = _one_error_line(err)
        assert rc == 1 and str(evil) in line and "--trust-pickle" in line, (argv, err)
        assert not marker.exists(), argv
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "q.csv").exists()


def test_an_old_joblib_model_needs_the_flag_and_prints_the_warning(trained, tmp_path,  # noqa: F811
                                                                    capsys):
    m = load_model(trained.model)
    old = tmp_path / "old.joblib"
    joblib.dump(m.to_dict() | {"format_version": 1}, old)  # what `cnncodes train` wrote before
    rc, _, err = run(capsys, "evaluate", old, trained.store)
    assert rc == 1 and "--trust-pickle" in _one_error_line(err)
    # loaded (the warning is printed); the store then has no rows the model did not train on
    rc, out, err = run(capsys, "evaluate", old, trained.store, "--trust-pickle")
    assert f"{old}: a cnncodes model file in the old joblib (pickle) format" in err
    assert "runs any code the file holds" in err
    assert rc == 1 and "no labelled rows the model was not trained on" in err
    rc, _, err = run(capsys, "predict", old, trained.store, "-o", tmp_path / "old.csv",
                     "--trust-pickle")
    assert rc == 0 and "runs any code" in err
    rc, _, _ = run(capsys, "predict", trained.model, trained.store, "-o", tmp_path / "new.csv")
    assert rc == 0
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "new.csv").read_text()
    # a new model over the old file: it is a model, so it is replaced without --overwrite
    rc, _, err = run(capsys, "train", trained.store, "-o", old, "--cv", "2", "--c-grid", "0.1,1")
    assert rc == 0, err
    assert sniff(old)[0] == "model" and zipfile.is_zipfile(old)


def test_the_safe_format_needs_no_flag_and_prints_no_warning(trained, tmp_path,  # noqa: F811
                                                            capsys):
    assert sniff(trained.model)[0] == "model"  # `train -o model.joblib` wrote the safe format
    rc, _, err = run(capsys, "predict", trained.model, trained.store, "-o", tmp_path / "p.csv",
                     "--trust-pickle")
    assert rc == 0 and "pickle" not in err


def test_a_damaged_model_file_is_one_error_line(trained, tmp_path, capsys):  # noqa: F811
    data = trained.model.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    for argv in _commands(cut, trained, tmp_path):
        rc, _, err = run(capsys, *argv)
        line = _one_error_line(err)
        assert rc == 1 and str(cut) in line and "truncated or damaged" in line, (argv, err)


def test_a_pt_file_with_a_pickle_payload_is_refused_without_running(trained, tmp_path,  # noqa: F811
                                                                    capsys):
    """torch.save of an object whose pickle runs code: ``weights_only=True`` refuses it."""
    torch = pytest.importorskip("torch")
    from cnncodes.finetuning.model_file import is_finetuned_model, read_model_file

    marker = tmp_path / "marker"
    evil = tmp_path / "run" / "model.pt"
    evil.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)},
                "cnncodes": {"kind": "cnncodes-finetuned-model", "x": _Payload(marker)}}, evil)
    assert not marker.exists()
    with pytest.raises(ModelMismatchError, match=f"Cannot load {evil}: it holds objects") as e:
        read_model_file(evil)
    assert "Unsupported global" in str(e.value) and "\n" not in str(e.value)
    assert not is_finetuned_model(evil)
    with pytest.raises(ModelFileError, match="torch archive"):
        load_model(evil)
    rc, _, err = run(capsys, "predict", evil, trained.photos, "-o", tmp_path / "p.csv", *TINY)
    line = _one_error_line(err)
    assert rc == 1 and str(evil) in line and "weights_only=True" in line
    assert not marker.exists()


def test_the_file_is_a_zip_of_npy_arrays_and_json(trained):  # noqa: F811
    with zipfile.ZipFile(trained.model) as z:
        names = z.namelist()
        assert names[:2] == ["cnncodes-model", "model.json"]
        assert all(n.startswith("arrays/") and n.endswith(".npy") for n in names[2:])
    with np.load(trained.model, allow_pickle=False) as z:
        assert any(k.endswith("coef_") for k in z.files)
