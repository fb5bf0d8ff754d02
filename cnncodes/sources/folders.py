"""Image sources: which files, in which order, with which labels.

A tree of class folders (labels = folder names, like torchvision's ImageFolder), a flat folder of
images (unlabelled), or a list file (``.txt``: one path per line, optionally ``path<TAB>label``;
``.csv``: ``path[,label]`` with an optional header). Order is deterministic and sorted.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif")


LIST_EXTENSIONS = (".txt", ".csv", ".tsv", ".lst")


#: Label of an unlabelled image (flat folders, unlabelled list files).
UNLABELLED = -1


@dataclass
class ImageSource:
    """An ordered list of image files with optional labels.

    Attributes:
        root: folder the relative ``paths`` are relative to.
        paths: file paths as stored (posix, relative to ``root`` where possible).
        labels: int64 array, class index per path, ``-1`` where unlabelled.
        classes: class names, index = label.
        kind: ``tree``, ``flat`` or ``list``.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    kind: str
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if _is_image(f))
    return sorted(out, key=lambda p: p.as_posix())


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def open_source(source: str | os.PathLike | Sequence[str | os.PathLike] | ImageSource,
                *, classes: Sequence[str] | None = None) -> ImageSource:
    """Find the images of ``source`` in a deterministic order.

    Args:
        source: a folder (class tree or flat), a list file, a sequence of paths, or an
            :class:`ImageSource` (returned as is).
        classes: fix the class list (e.g. a model's classes, so label indices match); labels not in
            it raise.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: no images found, or a malformed list file (the line is named).
    """
    if isinstance(source, ImageSource):
        return source
    if not isinstance(source, (str, os.PathLike)):
        # absolute paths, root "/": stable whatever other paths a later call passes
        paths = [Path(p).resolve() for p in source]
        root = Path(os.sep)
        return ImageSource(root, [p.as_posix() for p in paths],
                           np.full(len(paths), UNLABELLED, np.int64), list(classes or []), "list")
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"Image source {os.fspath(source)!r} does not exist; pass a folder "
                                "of images, a folder of class folders, or a .txt/.csv list.")
    if src.is_file():
        if src.suffix.lower() not in LIST_EXTENSIONS:
            raise ValueError(f"{src} is a file but not a list ({', '.join(LIST_EXTENSIONS)}); pass "
                             "the folder that contains the images, or a list file of paths.")
        return _from_list(src, classes)
    return _from_folder(src.resolve(), classes)


def _label_index(names: list[str | None], classes: Sequence[str] | None,
                 where: str) -> tuple[np.ndarray, list[str]]:
    if classes is None:
        classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({n for n in names if n is not None and n not in index})
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:5]} are not among the classes "
                         f"{list(classes)[:10]}.")
    labels = np.array([index[n] if n is not None else UNLABELLED for n in names], np.int64)
    return labels, list(classes)


def _from_folder(root: Path, classes: Sequence[str] | None) -> ImageSource:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    per_class = {d.name: _walk_images(Path(d.path)) for d in subdirs}
    per_class = {k: v for k, v in per_class.items() if v}
    if per_class:
        empty = [d.name for d in subdirs if d.name not in per_class]
        if empty:
            log.warning("%s: class folders without images are ignored: %s", root, empty)
        if top_images:
            log.warning("%s: %d images directly in the root are ignored (not in a class folder)",
                        root, len(top_images))
        names: list[str | None] = []
        paths: list[str] = []
        for cls in sorted(per_class):
            for p in per_class[cls]:
                paths.append(_rel(p, root))
                names.append(cls)
        labels, cls_list = _label_index(names, classes, os.fspath(root))
        return ImageSource(root, paths, labels, cls_list, "tree",
                           [_rel(p, root) for p in top_images])
    if not top_images:
        raise ValueError(f"No images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} "
                         "directly inside it and in class sub-folders).")
    paths = [_rel(p, root) for p in sorted(top_images, key=lambda p: p.name)]
    return ImageSource(root, paths, np.full(len(paths), UNLABELLED, np.int64),
                       list(classes or []), "flat")


def _from_list(path: Path, classes: Sequence[str] | None) -> ImageSource:
    root = path.resolve().parent
    rows: list[tuple[str, str | None]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            lines = [r for r in reader if r and not r[0].startswith("#")]
            if lines and lines[0][0].strip().lower() in ("path", "file", "filename", "image"):
                header = [h.strip().lower() for h in lines[0]]
                lab_col = next((header.index(h) for h in ("label", "class", "target")
                                if h in header), None)
                lines = [[r[0]] + ([r[lab_col]] if lab_col is not None and lab_col < len(r)
                                   else []) for r in lines[1:]]
            for lineno, r in enumerate(lines, 1):
                rows.append((r[0].strip(), r[1].strip() if len(r) > 1 and r[1].strip() else None))
        else:
            for line in f:
                line = line.rstrip("\n").strip()
                if not line or line.startswith("#"):
                    continue
                p, _, lab = line.partition("\t")
                rows.append((p.strip(), lab.strip() or None))
    if not rows:
        raise ValueError(f"List file {path} names no images.")
    names = [lab for _, lab in rows]
    if any(n is None for n in names) and any(n is not None for n in names):
        first = next(i for i, n in enumerate(names) if n is None)
        raise ValueError(f"{path}: row {first + 1} ({rows[first][0]!r}) has no label while other "
                         "rows do; label every row or none.")
    labels, cls_list = _label_index(names, classes, os.fspath(path))
    paths = []
    for p, _ in rows:
        pp = Path(p).expanduser()
        paths.append(_rel(pp if pp.is_absolute() else root / pp, root))
    return ImageSource(root, paths, labels, cls_list, "list")
