"""Small real data sets that exist offline, written out as class-folder trees of PNG files.

Used by the demo and the benchmarks (not by the library's core): Animal-MNIST (``pip install
--no-deps animal-mnist``; similar to ImageNet), Fashion-MNIST (Debian ``dataset-fashion-mnist``;
dissimilar) and scikit-learn's digits (very dissimilar). Files are read directly; the packages'
Python modules are never imported.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: Animal-MNIST's label order is not documented; classes are named by index.
ANIMAL_CLASSES = [f"animal{i}" for i in range(10)]
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (the package's data files are pickles)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package {pkg!r} is not installed; pip install --no-deps "
                                f"{pkg.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """10,000 28x28 uint8 grey animal silhouettes, labels 0..9, class names."""
    d = _package_dir("animal_mnist") / "data" / "Animal_MNIST"
    out = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        with gzip.open(d / name, "rb") as f:
            out.append(np.asarray(_NumpyOnlyUnpickler(io.BytesIO(f.read())).load()))
    return out[0].astype(np.uint8), out[1].astype(np.int64), ANIMAL_CLASSES


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``."""
    prefix = "train" if split == "train" else "t10k"
    files = {p.name: p for p in FASHION_DIR.rglob("*.gz")} if FASHION_DIR.is_dir() else {}
    img = files.get(f"{prefix}-images-idx3-ubyte.gz")
    lab = files.get(f"{prefix}-labels-idx1-ubyte.gz")
    if img is None or lab is None:
        raise FileNotFoundError(f"Fashion-MNIST not found under {FASHION_DIR}; "
                                "apt-get install dataset-fashion-mnist")
    return _read_idx(img), _read_idx(lab).astype(np.int64), FASHION_CLASSES


def load_digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits scaled to uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64), \
        [str(i) for i in range(10)]


LOADERS = {"animal-mnist": load_animal_mnist, "fashion-mnist": load_fashion_mnist,
           "digits": load_digits_images}
#: Data sets with an official test split: ``make_split_tree`` draws test/ from it (Fashion-MNIST's
#: 10,000 t10k images), train/ from the training file.
TEST_LOADERS = {"fashion-mnist": lambda: load_fashion_mnist("test")}


def stratified_subset(labels: np.ndarray, n_per_class: int, *, seed: int = 0,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``n_per_class`` random items of every class.

    Raises:
        ValueError: a class has fewer than ``n_per_class`` items left (after ``exclude``); a
            short class is never silently made smaller.
    """
    rng = np.random.default_rng(seed)
    mask = np.ones(len(labels), bool)
    if exclude is not None:
        mask[exclude] = False
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & mask)
        if idx.size < n_per_class:
            raise ValueError(f"class {int(c)} has {idx.size} items left"
                             f"{' after the training rows' if exclude is not None else ''}, "
                             f"fewer than the {n_per_class} per class asked for; ask for at most "
                             f"{idx.size}.")
        out.append(rng.choice(idx, size=n_per_class, replace=False))
    return np.sort(np.concatenate(out))


def write_tree(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], out: Path,
               indices: np.ndarray) -> int:
    """Write ``images[indices]`` as ``out/<class>/<index>.png``; returns files written."""
    n = 0
    for i in indices:
        d = out / classes[int(labels[i])]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{int(i):05d}.png"
        if not p.exists():
            Image.fromarray(images[i]).save(p)
            n += 1
    return n


def make_split_tree(name: str, out: str | os.PathLike, *, train_per_class: int,
                    test_per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """``out/train`` and ``out/test`` class-folder trees, disjoint, stratified, seeded.

    A data set with an official test split (:data:`TEST_LOADERS`) takes train/ from its training
    file and test/ from its test file; the others split one file. Both trees are checked to be
    complete before anything is written.
    """
    if name not in LOADERS:
        raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(LOADERS)}.")
    images, labels, classes = LOADERS[name]()
    out = Path(out)
    train_idx = stratified_subset(labels, train_per_class, seed=seed)
    if name in TEST_LOADERS:
        t_images, t_labels, _ = TEST_LOADERS[name]()
        test_idx = stratified_subset(t_labels, test_per_class, seed=seed + 1)
    else:
        t_images, t_labels = images, labels
        test_idx = stratified_subset(labels, test_per_class, seed=seed + 1, exclude=train_idx)
    written = write_tree(images, labels, classes, out / "train", train_idx)
    written += write_tree(t_images, t_labels, classes, out / "test", test_idx)
    log.info("%s: %d train + %d test images under %s (%d new files)", name, len(train_idx),
             len(test_idx), out, written)
    return out / "train", out / "test"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="write a small real data set as class folders")
    p.add_argument("name", choices=sorted(LOADERS))
    p.add_argument("out")
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train, test = make_split_tree(a.name, a.out, train_per_class=a.train_per_class,
                                  test_per_class=a.test_per_class, seed=a.seed)
    print(f"{train}\n{test}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
