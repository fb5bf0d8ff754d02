"""Faults of the disk and workflow around a store: `info` during a first run, read-only stores,
a real full disk (issue 25)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes import FeatureStore
from cnncodes.cli import main
from cnncodes.codes import compat
from cnncodes.codes import store as store_mod
from cnncodes.codes.journal import Journal, Part
from cnncodes.codes.reader import segments_dir
from cnncodes.codes.store import fold
from cnncodes.errors import DiskFullError

from ..conftest import write_tree


def _part(seq, n, dim=8):
    return Part(seq=seq, paths=np.array([f"a/{i}.png" for i in range(seq, seq + n)]),
                labels=np.array(["ant"] * n), codes={"pool": np.ones((n, dim), np.float32)},
                fail_paths=np.array(["a/bad.png"]), fail_reasons=np.array(["cannot decode"]))


def test_info_during_a_first_run_says_an_extraction_is_in_progress(tmp_path, capsys):
    store = tmp_path / "codes.h5"
    j = Journal(store)
    j.lock()  # this process plays the running extraction
    try:
        assert main(["info", str(store)]) == 0
        out = capsys.readouterr().out
        assert "A first extraction into it is in progress" in out
        assert f"process {os.getpid()}" in out and "0 rows" in out
        j.write_part(_part(0, 5))
        j.write_part(_part(5, 7))
        assert main(["info", str(store), "--json"]) == 0
        prog = json.loads(capsys.readouterr().out)["in_progress"]
        assert (prog["rows"], prog["parts"], prog["running"]["pid"]) == (12, 2, os.getpid())
        assert main(["info", str(store)]) == 0
        assert "12 rows and 2 failed files journaled so far in 2 batches" in \
            capsys.readouterr().out
    finally:
        j.unlock()
    # the run died: no process holds the lock, the parts stay
    assert main(["info", str(store)]) == 1
    err = capsys.readouterr().err
    assert "No code store" in err and "unfinished extraction left 12 rows" in err


# --------------------------------------------------------------------------- read-only store

EXTRACT = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--workers",
           "0", "--no-progress", "--batch-size", "4"]


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@contextlib.contextmanager
def _readonly_view(src, dst):
    """``dst``: a read-only bind mount of ``src`` (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (chmod alone does not stop root)")
    dst.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode:
        pytest.skip("mount --bind failed here (no mount permission in this container)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)],
                          capture_output=True).returncode:
            pytest.skip("remount read-only failed here")
        yield dst
    finally:
        subprocess.run(["umount", str(dst)], check=False)


@pytest.mark.slow
def test_a_read_only_store_is_read_by_every_reading_command_and_refused_by_writers(
        tmp_path, capsys):
    photos = write_tree(tmp_path / "photos", per_class=4)
    rw = tmp_path / "rw"
    rw.mkdir()
    torch.manual_seed(0)
    assert main(["extract", str(photos), "-o", str(rw / "codes.h5"), *EXTRACT]) == 0
    assert main(["train", str(rw / "codes.h5"), "-o", str(rw / "model.npz"), "--cv", "2",
                 "--c-grid", "0.1,1", "--holdout", "0.5"]) == 0
    before = _tree_bytes(rw)
    out = tmp_path / "out"
    capsys.readouterr()
    with _readonly_view(rw, tmp_path / "ro") as ro:
        store, model = str(ro / "codes.h5"), str(ro / "model.npz")

        def run(*argv):
            torch.manual_seed(0)
            rc = main([str(a) for a in argv])
            return rc, *capsys.readouterr()

        assert run("info", store)[0] == 0
        assert run("info", store, "--verify")[0] == 0
        assert run("train", store, "-o", out / "m.npz", "--cv", "2", "--c-grid", "0.1,1")[0] == 0
        assert run("evaluate", model, store)[0] == 0
        assert run("predict", model, photos, "-o", out / "pred.csv")[0] == 0
        rc, text, _ = run("extract", photos, "-o", store, *EXTRACT)  # nothing to do: no write
        assert rc == 0 and "12 images; 0 extracted now, 12 unchanged" in text
        # writers fail before any work, naming the folder
        rc, _, err = run("compact", store)
        assert rc == 1 and f"its folder {ro} is not writable" in err
        rc, _, err = run("train", store, "-o", ro / "m2.npz", "--cv", "2", "--c-grid", "0.1,1")
        assert rc == 1 and f"{ro} is not writable" in err and "best C" not in err
        shutil.copy(photos / "ant" / os.listdir(photos / "ant")[0], photos / "ant" / "new.png")
        rc, _, err = run("extract", photos, "-o", store, *EXTRACT)
        assert rc == 1 and f"{ro} is not writable" in err and "1 image to extract" in err
    assert _tree_bytes(rw) == before  # every input byte-identical


# --------------------------------------------------------------------------- a real full disk

PY = [sys.executable, "-m", "cnncodes"]
MOBILE = ["--backbone", "mobilenet_v2", "--weights", "random", "--input-size", "32", "--workers",
          "0", "--no-progress", "--batch-size", "8"]


def _extract_proc(photos, out):
    """Extract in a subprocess (a crash of HDF5 must not take pytest with it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run([*PY, "extract", str(photos), "-o", str(out), *MOBILE],
                          capture_output=True, text=True, env=env, timeout=300)


@contextlib.contextmanager
def _tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("mount -t tmpfs failed here (no mount permission in this container)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["400k", "900k"])  # full while writing batches / before folding
def test_a_real_full_disk_is_one_line_and_a_rerun_after_freeing_space_completes(tmp_path, size):
    photos = write_tree(tmp_path / "photos", per_class=40)  # 120 rows x 1280 floats: 620 KiB
    ref = tmp_path / "ref.h5"
    assert _extract_proc(photos, ref).returncode == 0
    with _tmpfs(tmp_path / "small", size) as disk:
        out = disk / "codes.h5"
        r = _extract_proc(photos, out)
        assert r.returncode == 1, r.stderr[-2000:]  # not 139: no crash
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and str(disk) in err[0] and "Traceback" not in r.stderr
        assert "Free" in err[0] and "run the same command again" in err[0]
        if size == "900k":  # the batches fitted; the fold was refused before writing
            assert "needs up to" in err[0] and "MiB" in err[0] and not out.exists()
        assert Journal(out).n_parts() > 0
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        r = _extract_proc(photos, out)
        assert r.returncode == 0, r.stderr[-2000:]
        a, b = FeatureStore(out), FeatureStore(ref)
        assert list(a.paths) == list(b.paths)
        np.testing.assert_array_equal(a.load()[0], b.load()[0])
        assert not Journal(out).exists()


def test_a_fold_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    """The free-space check, for a new single file and for a segment (disk_usage faked)."""
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)
    out = tmp_path / "codes.h5"
    prov = {"backbone": "t", "weights": "random", "weights_sha256": "", "layers": ["pool"],
            "pooling": "avg", "preprocessing": {}, "dtype": "float32", "root": "/data"}
    j = Journal(out)
    j.dir.mkdir()
    j.write_part(_part(0, 50, dim=4096))
    fold(out, j, prov)
    before = out.read_bytes()
    j.dir.mkdir()
    j.write_part(_part(50, 300, dim=4096))  # 4.7 MiB of codes
    real = shutil.disk_usage
    monkeypatch.setattr(compat.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=2 * 2**20))
    with pytest.raises(DiskFullError) as e:
        fold(out, j, prov)
    assert "a segment of 300 new rows" in str(e.value) and "has 2.0 MiB free" in str(e.value)
    assert out.read_bytes() == before and j.n_parts() == 1
    assert not list(segments_dir(out).glob("seg-*.h5.tmp"))
    monkeypatch.setattr(compat.shutil, "disk_usage", real)
    fold(out, j, prov)
    assert len(FeatureStore(out)) == 350
