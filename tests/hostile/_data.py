"""Shared data of the hostile-output and predict tests: a tiny labelled tree, its code store and a
linear model trained on it (random-init resnet18 at 32 px: seconds, no network)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnncodes import extract
from cnncodes.cli import main

from ..conftest import write_tree

#: random-init backbone options of every extraction here
TINY = ["--workers", "0", "--no-progress"]


@dataclass
class Trained:
    photos: Path
    store: Path
    model: Path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("hostile")
    photos = write_tree(root / "photos", per_class=6)
    store = root / "codes.h5"
    extract(photos, store, backbone="resnet18", weights="random", input_size=32, num_workers=0,
            progress=False)
    model = root / "model.joblib"
    assert main(["train", str(store), "-o", str(model), "--cv", "2",
                 "--c-grid", "0.1,1"]) == 0
    return Trained(photos, store, model)
