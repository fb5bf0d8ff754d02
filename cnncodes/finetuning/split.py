"""The fine-tuning split: :class:`Split` (train/val/test as ``(path, class)`` rows, written to
``split.json`` and into every checkpoint) and :func:`make_split`, which cuts a labelled source with
the package's one stratified splitter (:func:`cnncodes.sources.splits.stratified_parts`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError, StaleRunError
from ..sources.folders import ImageSource, open_source
from ..sources.splits import stratified_parts


@dataclass
class Split:
    """A seeded, stratified train/val/test split as lists of ``(path, class name)`` pairs.

    Paths are relative to ``root`` (``test_root`` for the test part), as in the source.
    """

    root: str
    test_root: str
    classes: list[str]
    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    seed: int
    val_fraction: float
    test_fraction: float
    test_source: str | None = None
    #: what the run was made from (:func:`source_identity` of SOURCE and of ``--test``); None in
    #: runs made before it was recorded
    source_path: str | None = None
    test_path: str | None = None

    def source(self, part: str) -> ImageSource:
        """The ``train``/``val``/``test`` part as an :class:`ImageSource` (labels = class index)."""
        rows = getattr(self, part)
        root = Path(self.test_root if part == "test" else self.root)
        index = {c: i for i, c in enumerate(self.classes)}
        return ImageSource(root, [p for p, _ in rows],
                           np.array([index[c] for _, c in rows], np.int64), list(self.classes),
                           "list")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("train", "val", "test"):
            d[k] = [[p, c] for p, c in getattr(self, k)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        kw = dict(d)
        for k in ("train", "val", "test"):
            kw[k] = [(str(p), str(c)) for p, c in d[k]]
        return cls(**kw)


def source_identity(source: str | os.PathLike | ImageSource) -> str:
    """What identifies an image source across calls: the absolute, resolved path of the folder
    or list file (links followed), or an :class:`ImageSource`'s root."""
    if isinstance(source, ImageSource):
        return os.fspath(Path(source.root).resolve())
    return os.fspath(Path(source).expanduser().resolve())


def check_same_sources(run: str | os.PathLike, split: Split,
                       source: str | os.PathLike | ImageSource | None,
                       test: str | os.PathLike | ImageSource | None) -> None:
    """Refuse to continue the run in ``run`` (made on ``split``) with another SOURCE or test
    source than the one it was made from.

    Runs that predate the recorded ``source`` are checked against their image root (the folder,
    or the folder of a list file).

    Raises:
        StaleRunError: (an :class:`OptionError`) naming both sources and the fixes.
    """
    checks = ((source, split.source_path, split.root, "SOURCE"),
              (test, split.test_path, split.test_source, "--test source"))
    for given, recorded, root, what in checks:
        if given is None:
            continue
        now = source_identity(given)
        if recorded is not None:
            same, was = now == recorded, recorded
        elif root is None:  # the run had no separate test source
            same, was = False, "no --test source (its test part is cut from SOURCE)"
        else:
            here = Path(now)
            folder = here.parent if here.is_file() else here
            same, was = os.fspath(folder) == os.fspath(Path(root).resolve()), root
        if not same:
            raise StaleRunError(
                f"Cannot resume {run} with {what} {now}: the run was made from {was}. Resume "
                f"with the run's own {what} (or none: the saved split is used), start a new run "
                "in another -o folder, or pass --overwrite to replace this run.")


def make_split(source: str | os.PathLike | ImageSource, *, val_fraction: float = 0.15,
               test_fraction: float = 0.2, seed: int = 0,
               test: str | os.PathLike | ImageSource | None = None) -> Split:
    """Split a labelled source per class (seeded): test, validation, and the rest for training.

    Args:
        source: a class-folder tree or labelled list file.
        val_fraction, test_fraction: shares of each class (at least one image each when the class
            has three or more and the share is > 0), by
            :func:`cnncodes.sources.splits.stratified_parts`: each class is shuffled by
            ``default_rng([seed, class index])``.
        seed: the shuffle seed.
        test: a separate labelled test source; then ``test_fraction`` is not used.

    Raises:
        OptionError (a ValueError): unlabelled source, fewer than two classes, or a class too small
            to split.
    """
    src = open_source(source)
    if src.kind == "flat" or (src.labels < 0).any() or len(src.classes) < 2:
        raise OptionError(f"Fine-tuning needs labelled images of at least two classes; {src.root} "
                         f"has {len(src.classes)} class(es). Pass a folder of class folders "
                         "(photos/cat/*.jpg, photos/dog/*.jpg) or a list file with labels.")
    test_src = open_source(test, classes=src.classes) if test is not None else None
    if test_src is not None and (test_src.labels < 0).any():
        raise OptionError(f"The test source {test_src.root} must be labelled like the training "
                         "source (class folders or a list with labels).")
    tf = 0.0 if test_src is not None else float(test_fraction)
    counts = np.bincount(src.labels, minlength=len(src.classes))
    for name, n in zip(src.classes, counts, strict=True):
        if n == 0:  # stratified_parts only sees classes that have rows
            raise OptionError(f"Class {name!r} has only 0 image(s): not enough for the "
                              f"validation ({val_fraction}) and test ({tf}) shares. Add images, "
                              "lower --val-fraction / --test-fraction, or pass --test.")
    parts = stratified_parts(src.labels, val_fraction=float(val_fraction), test_fraction=tf,
                             seed=int(seed), class_names=list(src.classes))

    def rows(ids: Iterable[int], s: ImageSource) -> list[tuple[str, str]]:
        return [(s.paths[i], s.classes[int(s.labels[i])]) for i in sorted(int(i) for i in ids)]

    test_rows = (rows(range(len(test_src)), test_src) if test_src is not None
                 else rows(parts["test"], src))
    return Split(root=os.fspath(src.root),
                 test_root=os.fspath(test_src.root if test_src is not None else src.root),
                 classes=list(src.classes), train=rows(parts["train"], src),
                 val=rows(parts["val"], src), test=test_rows, seed=int(seed),
                 val_fraction=float(val_fraction), test_fraction=tf,
                 test_source=os.fspath(test_src.root) if test_src is not None else None,
                 source_path=source_identity(source),
                 test_path=source_identity(test) if test is not None else None)
