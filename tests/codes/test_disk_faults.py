"""Faults of the disk and workflow around a store: `info` during a first run, read-only stores,
a real full disk (issue 25)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cnncodes.cli import main
from cnncodes.codes.journal import Journal, Part

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
        assert rc == 1 and f"{ro} is not writable" in err and "1 images to extract" in err
    assert _tree_bytes(rw) == before  # every input byte-identical
