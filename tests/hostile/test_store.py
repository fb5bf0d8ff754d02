"""Hostile cases for the code store: stale files, another source, all-failed first runs, a store
in use, corrupt rows, foreign files, a full disk. Each asserts the exit status or error, that the
message names the file and the fix, that nothing is lost, and that the store matches the files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cnncodes import FeatureStore, StoreMismatchError, extract
from cnncodes.cli import main
from cnncodes.codes import store as store_mod
from cnncodes.codes.journal import Journal
from cnncodes.errors import DiskFullError

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4)
CLI = ["--weights", "random", "--input-size", "32", "--workers", "0", "--no-progress",
       "--batch-size", "4"]


def _extract(src, out, **kw):
    torch.manual_seed(0)  # random-init weights: the same in every call
    return extract(src, out, **{**OPTS, **kw})


def _cli(capsys, *args):
    torch.manual_seed(0)
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _codes(path) -> dict[str, np.ndarray]:
    st = FeatureStore(path)
    X, _ = st.load()
    return {str(p): X[i] for i, p in enumerate(st.paths)}


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in _files(root)}


def _assert_matches_fresh(out: Path, src: Path, tmp_path: Path) -> None:
    """Every row of ``out`` is the code of its file now: the same as a fresh extraction."""
    ref = tmp_path / f"fresh-{time.monotonic_ns()}.h5"
    _extract(src, ref)
    a, b = _codes(ref), _codes(out)
    assert sorted(a) == sorted(b)
    for p, x in a.items():
        np.testing.assert_allclose(b[p], x, rtol=1e-4, atol=1e-5 * np.abs(x).max(), err_msg=p)


# --------------------------------------------------------------------------- a stale cache


def test_changed_deleted_and_added_files_are_refreshed(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=3)
    out = tmp_path / "c.h5"
    assert _cli(capsys, "extract", src, "-o", out, *CLI)[0] == 0
    before = list(FeatureStore(out).paths)
    other = write_tree(tmp_path / "other", classes=("x",), per_class=1, seed=9)
    shutil.copy(other / "x" / "img000.png", src / "ant" / "img001.png")   # replaced image
    (src / "bee" / "img000.png").unlink()                                  # deleted image
    shutil.copy(other / "x" / "img000.png", src / "cow" / "new.png")       # added image
    inputs = _snapshot(src)

    rc, text, _ = _cli(capsys, "extract", src, "-o", out, *CLI)

    assert rc == 0
    assert "extracted now (of 1 new files, 1 changed), 1 removed (file gone)" in text, text
    st = FeatureStore(out)
    # row order: a changed row keeps its place, a deleted one is dropped, new files are appended
    want = [p for p in before if p != "bee/img000.png"] + ["cow/new.png"]
    assert list(st.paths) == want
    assert sorted(st.paths) == _files(src) and _snapshot(src) == inputs
    _assert_matches_fresh(out, src, tmp_path)
    table = st.file_table()
    for p, size, mtime in zip(st.paths, table["size"], table["mtime_ns"], strict=True):
        s = os.stat(src / p)
        assert (size, mtime) == (s.st_size, s.st_mtime_ns), p
    run = st.provenance["runs"][-1]
    assert (run["added"], run["changed"], run["removed"]) == (1, 1, 1)
    assert main(["info", str(out)]) == 0
    assert "2 extracted (of 1 new files, 1 changed), 1 removed" in capsys.readouterr().out
    res = _extract(src, out)  # and now nothing is stale
    assert (res.new, res.changed, res.removed, res.added) == (0, 0, 0, 0)


def test_a_relabelled_list_row_is_extracted_again(tmp_path):
    src = write_tree(tmp_path / "photos", per_class=2)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"photos/{c}/img00{i}.png\t{c}\n" for c in ("ant", "bee")
                           for i in range(2)))
    out = tmp_path / "c.h5"
    _extract(lst, out)
    lst.write_text(lst.read_text().replace("photos/ant/img000.png\tant",
                                           "photos/ant/img000.png\tbee"))
    res = _extract(lst, out)
    st = FeatureStore(out)
    assert res.changed == 1 and len(st) == 4
    assert st.classes[st.labels[list(st.paths).index("photos/ant/img000.png")]] == "bee"
    lst.write_text("photos/bee/img001.png\tbee\n")     # a line removed from the list
    res = _extract(lst, out)
    assert res.removed == 3 and list(FeatureStore(out).paths) == ["photos/bee/img001.png"]
    assert FeatureStore(out).classes == ["bee"] and src.is_dir()


def test_same_size_and_mtime_change_is_seen_only_in_hash_mode(tmp_path):
    src = write_tree(tmp_path / "photos", classes=("a",), per_class=3, ext=".bmp")
    out = tmp_path / "c.h5"
    _extract(src, out, verify="hash")
    old = _codes(out)
    a, b = src / "a" / "img000.bmp", src / "a" / "img001.bmp"
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_size == sb.st_size
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))    # an mtime that lies
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    res = _extract(src, out, verify="stat")             # the documented limit of stat mode
    assert res.changed == 0 and res.new == 0
    assert FeatureStore(out).provenance["verify"] == "hash"
    res = _extract(src, out)                           # the store's own mode: hash
    assert res.changed == 2
    new = _codes(out)
    np.testing.assert_allclose(new["a/img000.bmp"], old["a/img001.bmp"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new["a/img001.bmp"], old["a/img000.bmp"], rtol=1e-4, atol=1e-4)
    assert FeatureStore(out).file_table()["hash"][0].startswith("sha256:")


def test_keep_missing_keeps_and_flags_rows_of_deleted_files(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out)
    (src / "ant" / "img001.png").unlink()
    res = _extract(src, out, keep_missing=True)
    st = FeatureStore(out)
    assert res.missing == 1 and res.removed == 0 and len(st) == 6
    assert st.file_table()["missing"].tolist() == [False, True, False, False, False, False]
    assert main(["info", str(out)]) == 0
    assert "1 row kept (--keep-missing) although its file is gone: ant/img001.png" in \
        capsys.readouterr().out
    res = _extract(src, out)  # without the option the row goes
    assert res.removed == 1 and "ant/img001.png" not in set(FeatureStore(out).paths)


def test_a_format_1_store_keeps_working_and_is_reported_unverified(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out)
    with h5py.File(out, "a") as f:  # what cnncodes 1 wrote: no /files, no sources
        del f["files"]
        for k in ("sources_json", "verify"):
            del f.attrs[k]
        f.attrs["format_version"] = 1
    assert main(["info", str(out)]) == 0
    assert "verified   no: a store of format 1" in capsys.readouterr().out
    shutil.copy(src / "ant" / "img000.png", src / "cow" / "new.png")
    res = _extract(src, out)
    assert res.added == 1 and res.unverified == 6 and len(FeatureStore(out)) == 7
    assert FeatureStore(out).format_version == 2
    assert main(["info", str(out)]) == 0
    assert "6 rows made before identity was recorded" in capsys.readouterr().out


# --------------------------------------------------------------------------- another source


def test_another_source_is_refused_unless_added(tmp_path, capsys):
    photos = write_tree(tmp_path / "photos", per_class=2)
    other = write_tree(tmp_path / "other", classes=("ant", "dog"), per_class=2, seed=5)
    out = tmp_path / "c.h5"
    _extract(photos, out)
    kept = out.read_bytes()
    rc, _, err = _cli(capsys, "extract", other, "-o", out, *CLI)
    assert rc == 1
    assert str(photos) in err and str(other) in err and "--add-source" in err
    assert out.read_bytes() == kept
    with pytest.raises(StoreMismatchError, match="add_source=True"):
        _extract(other, out)

    res = _extract(other, out, add_source=True)
    st = FeatureStore(out)
    assert res.added == 4 and len(st) == 10
    assert [s["path"] for s in st.sources] == [photos.as_posix(), other.as_posix()]
    # same relative names in both folders stay distinct rows, each pointing at its own file
    assert sorted(map(str, st.abspaths())) == sorted(
        str(p) for p in [*photos.rglob("*.png"), *other.rglob("*.png")])
    assert st.classes == ["ant", "bee", "cow", "dog"]
    # a rerun of one source touches only its rows
    (other / "dog" / "img000.png").unlink()
    res = _extract(photos, out)
    assert (res.new, res.removed) == (0, 0) and len(FeatureStore(out)) == 10
    res = _extract(other, out)
    assert res.removed == 1 and len(FeatureStore(out)) == 9
    _cli(capsys, "info", out)


# --------------------------------------------------------------------------- all failed


def test_a_first_run_where_every_file_fails_exits_1_and_a_later_good_image_works(tmp_path,
                                                                                   capsys):
    src = tmp_path / "photos"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.png").write_bytes(b"")
    (src / "a" / "y.jpg").write_text("not a jpeg")
    out = tmp_path / "c.h5"
    rc, text, err = _cli(capsys, "extract", src, "-o", out, *CLI)
    assert rc == 1
    assert "nothing was extracted" in err and "a/x.png" in text and "a/y.jpg" in text
    st = FeatureStore(out)
    assert st.dims == {"pool": 1280} and len(st) == 0 and len(st.failures) == 2
    write_tree(src, classes=("a",), per_class=1)
    rc, text, _ = _cli(capsys, "extract", src, "-o", out, *CLI)
    assert rc == 0 and "1 extracted now" in text
    assert list(FeatureStore(out).paths) == ["a/img000.png"] and not Journal(out).exists()


# --------------------------------------------------------------------------- honest info

HOLD = ("import sys, time; from cnncodes.codes.journal import Journal; "
        "j = Journal(sys.argv[1]); j.lock(); print('locked', flush=True); time.sleep(120)")


def test_info_and_extract_say_an_extraction_is_in_progress(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=1)
    out = tmp_path / "c.h5"
    _extract(src, out)
    (Journal(out).dir).mkdir()
    np.savez(Journal(out).dir / "part-0000000001-r0000.npz", seq=1)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout.readline().strip() == "locked"
        rc, text, _ = _cli(capsys, "info", out)
        assert rc == 0 and f"IN PROGRESS an extraction is writing this store now (process " \
            f"{proc.pid}" in text and "rerun the extract command" not in text
        rc, _, err = _cli(capsys, "extract", src, "-o", out, *CLI)
        assert rc == 1 and f"Another process is writing {out} by process {proc.pid}" in err
        fresh = tmp_path / "new.h5"
        Journal(fresh).dir.mkdir()
        np.savez(Journal(fresh).dir / "part-0000000001-r0000.npz", seq=1)
        shutil.copy(Journal(out).dir / "lock", Journal(fresh).dir / "lock")
        rc, text, _ = _cli(capsys, "info", fresh)  # a first run: no store yet, said as such
        assert rc == 0 and f"A first extraction into it is in progress (process {proc.pid}" \
            in text and "0 rows journaled so far" in text
    finally:
        proc.kill()
        proc.wait()
    rc, text, _ = _cli(capsys, "info", out)  # the writer died: now it is an unfinished run
    assert "IN PROGRESS" not in text and "rerun the extract command" in text


def test_nan_codes_are_reported_as_possibly_corrupt_rows(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out, dtype="float16")
    with h5py.File(out, "a") as f:  # bit rot in two rows
        f["codes/pool"][1, 3] = np.nan
        f["codes/pool"][4, 0] = np.inf
    rc, text, _ = _cli(capsys, "info", out)
    assert rc == 0
    assert "2 rows hold NaN or inf codes: possibly corrupt rows" in text
    assert "ant/img001.png, cow/img000.png" in text and "float16" not in text.split("CORRUPT?")[1]
    rc, text, _ = _cli(capsys, "info", out, "--json")
    assert json.loads(text)["nonfinite_rows"] == {"count": 2,
                                                  "first": ["ant/img001.png", "cow/img000.png"]}


@pytest.mark.parametrize("kind", ["hdf5", "text"])
def test_a_foreign_h5_is_not_a_cnncodes_store(tmp_path, capsys, kind):
    foreign = tmp_path / "data.h5"
    if kind == "hdf5":
        with h5py.File(foreign, "w") as f:
            f["x"] = np.arange(3)
    else:
        foreign.write_text("my notes\n")
    kept = foreign.read_bytes()
    src = write_tree(tmp_path / "photos", classes=("a", "b"), per_class=1)
    for args in (["info", foreign], ["train", foreign, "-o", tmp_path / "m.joblib"],
                 ["extract", src, "-o", foreign, *CLI],
                 ["extract", src, "-o", foreign, "--overwrite", *CLI]):
        rc, _, err = _cli(capsys, *args)
        assert rc == 1, args
        # the output check may refuse first ("... is a text file, not a cnncodes code store")
        assert (f"{foreign} is not a cnncodes store" in err
                or f"{foreign} already exists and is a text file, not a cnncodes code store"
                in err), (args, err)
        assert foreign.read_bytes() == kept
    assert not (tmp_path / "m.joblib").exists()
    with pytest.raises(StoreMismatchError, match="not a cnncodes store"):
        FeatureStore(foreign)


# --------------------------------------------------------------------------- a full disk


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_inside_the_fold_keeps_the_store_and_the_journal(tmp_path, monkeypatch):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out)
    kept = out.read_bytes()
    write_tree(src, classes=("dog",), per_class=3, seed=7)
    monkeypatch.setattr(store_mod, "write_parts", _enospc)  # while writing the new file
    with pytest.raises(DiskFullError) as e:
        _extract(src, out)
    msg = str(e.value)
    assert "is full" in msg and str(out) in msg and "run the same command again" in msg
    assert isinstance(e.value, OSError)
    assert out.read_bytes() == kept and Journal(out).n_parts() == 1
    assert not (tmp_path / "c.h5.tmp").exists()
    monkeypatch.undo()
    res = _extract(src, out)
    assert res.new == 0 and len(FeatureStore(out)) == 9 and not Journal(out).exists()
    _assert_matches_fresh(out, src, tmp_path)


def test_disk_full_in_a_part_write_keeps_the_store_and_the_finished_parts(tmp_path,
                                                                          monkeypatch, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out)
    kept = out.read_bytes()
    write_tree(src, classes=("dog", "emu"), per_class=5, seed=7)  # 10 new: 3 batches of 4
    real = Journal.write_part
    calls = []

    def second_fails(self, part):
        calls.append(part.seq)
        if len(calls) == 2:
            with open(self.dir / "part-x.npz.tmp", "wb") as f:  # half written, then the error
                f.write(b"PK")
            os.unlink(self.dir / "part-x.npz.tmp")
            _enospc()
        return real(self, part)
    monkeypatch.setattr(Journal, "write_part", second_fails)
    rc, _, err = _cli(capsys, "extract", src, "-o", out, *CLI)
    assert rc == 1 and "is full" in err and "the 1 batches already extracted are kept" in err
    assert out.read_bytes() == kept and Journal(out).n_parts() == 1
    assert not list(Journal(out).dir.glob("*.tmp"))
    monkeypatch.undo()
    res = _extract(src, out)
    assert res.new == 6 and len(FeatureStore(out)) == 16 and not Journal(out).exists()
    _assert_matches_fresh(out, src, tmp_path)


def test_a_file_that_changed_into_garbage_loses_its_row(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    _extract(src, out)
    (src / "bee" / "img001.png").write_bytes(b"\x89PNG truncated")
    rc, text, err = _cli(capsys, "extract", src, "-o", out, *CLI)
    assert rc == 1 and "bee/img001.png" in text and "nothing was extracted" in err
    st = FeatureStore(out)
    assert "bee/img001.png" not in set(st.paths) and len(st) == 5
    assert [p for p, _ in st.failures] == ["bee/img001.png"]
