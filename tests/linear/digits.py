"""Shared data of the linear, workflow and CLI tests: scikit-learn's digits as PNG class trees
(train/ + test/), a randomly initialised ResNet-18 saved to a checkpoint file (so that model files
are bound to a weights checksum like with real weights) and the code stores of both parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from cnncodes import extract

BACKBONE = "resnet18"
SIZE = 32
CLASSES = [str(i) for i in range(10)]


# ------------------------------------------------------------------------------------ fixtures


def write_digits_tree(root: Path, indices: np.ndarray) -> Path:
    """digits[indices] as ``root/<digit>/<index>.png`` (8x8 grey scaled to 0..255)."""
    d = load_digits()
    for i in indices:
        folder = root / str(int(d.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * (255.0 / 16.0)).round().astype(np.uint8)).save(
            folder / f"{int(i):04d}.png")
    return root


def digits_split(per_class_train: int = 14, per_class_test: int = 6) -> tuple[np.ndarray, ...]:
    y = load_digits().target
    rng = np.random.default_rng(0)
    tr, te = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr.append(idx[:per_class_train])
        te.append(idx[per_class_train:per_class_train + per_class_test])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


class DigitsData:
    """A train/test split of digits PNGs, a fixed-weights checkpoint, and their code stores."""

    def __init__(self, root: Path):
        self.root = root
        tr, te = digits_split()
        self.split_dir = root / "digits"
        self.train_dir = write_digits_tree(self.split_dir / "train", tr)
        self.test_dir = write_digits_tree(self.split_dir / "test", te)
        torch.manual_seed(0)
        import torchvision

        self.weights = root / "resnet18-random.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), self.weights)
        self.opts = dict(backbone=BACKBONE, weights=str(self.weights), input_size=SIZE,
                         num_workers=0, progress=False)
        self.train_h5 = root / "train.h5"
        self.test_h5 = root / "test.h5"
        extract(self.train_dir, self.train_h5, layers="layer3,pool", **self.opts)
        extract(self.test_dir, self.test_h5, layers="layer3,pool", **self.opts)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> DigitsData:
    return DigitsData(tmp_path_factory.mktemp("digits-data"))
