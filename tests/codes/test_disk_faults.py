"""Faults of the disk and workflow around a store: `info` during a first run, read-only stores,
a real full disk (issue 25)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cnncodes.cli import main
from cnncodes.codes.journal import Journal, Part


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
