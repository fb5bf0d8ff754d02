"""Shared, session-scoped runs behind the report.html tests: a train/test tree whose class
folders and one file name are markup (real folders on disk), and ``cnncodes baseline`` on it."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cnncodes import cli

from ..conftest import make_image, write_tree

#: class folders as given to mkdir: "/" cannot be part of a Linux file name, so the first makes
#: the class folder "<script>alert(1)<" holding a folder "script>" (paths then hold the full
#: "<script>alert(1)</script>"); the others are single folders
HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", 'cow & "calf"')
CLASSES = sorted(["<script>alert(1)<", "<img src=x onerror=alert(1)>", 'cow & "calf"'])
#: a test image whose file name would break out of an HTML attribute if it were not escaped
QUOTED = 'x" onerror="alert(2) .png'
FAST = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--workers", "0",
        "--no-progress"]


def run_cli(*args: object) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main([str(a) for a in args])
    return rc, out.getvalue()


@dataclass
class BaselineRun:
    tree: Path
    report: Path
    stdout: str


@pytest.fixture(scope="session")
def hostile_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html") / "photos"
    write_tree(root / "train", classes=HOSTILE, per_class=10, seed=0)
    write_tree(root / "test", classes=HOSTILE, per_class=4, seed=1)
    make_image(np.random.default_rng(2), 2, (40, 48)).save(root / "test" / HOSTILE[2] / QUOTED)
    return root


@pytest.fixture(scope="session")
def baseline_run(hostile_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> BaselineRun:
    rep = tmp_path_factory.mktemp("html-rep") / "baseline"
    rc, out = run_cli("baseline", hostile_tree, "--report", rep, *FAST, "--c-grid",
                      "1e-3:1e1:5", "--cv", "3", "--raw-size", "16")
    assert rc == 0, out
    return BaselineRun(hostile_tree, rep, out)
