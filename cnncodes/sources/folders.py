"""Image sources: which files, in which order, with which labels.

A tree of class folders (labels = folder names, like torchvision's ImageFolder), a flat folder of
images (unlabelled), or a list file (``.txt``/``.lst``/``.csv``/``.tsv``: one path per row,
optionally with a label; the rules are in :mod:`cnncodes.sources.listfile`). Folder order is
deterministic and sorted; a list keeps its own order.

Walking a folder: links to folders are followed (also out of the tree), each real folder at most
once per class (a link loop or a second link to a folder already walked is skipped with a
warning; the source folder itself is never walked again through a link). Every entry named like an
image that is not a folder becomes a row, whatever it is: a link to a file outside the tree is read
through the link; a dangling link, a link loop, a FIFO, a socket or a device becomes a recorded
per-file failure with the reason (decoding opens nothing but regular files, so nothing can block).
A folder that cannot be listed is left out with a warning.

Inside :func:`listed_once` (a workflow that checks its inputs before extracting them), a folder is
walked once: later :func:`open_source` calls of the same folder get the same listing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..atomic import file_kind
from ..errors import NotFoundError, SourceError
# ImageSource is re-exported (``as``): callers import it from here
from .base import IMAGE_EXTENSIONS, UNLABELLED, label_index
from .base import ImageSource as ImageSource
from .listfile import ListRow, read_list, resolve_path, warn_if_relative_to_cwd
from ..stats import plural

log = logging.getLogger(__name__)


LIST_EXTENSIONS = (".txt", ".csv", ".tsv", ".lst")

#: (resolved folder, classes) -> its listing while :func:`listed_once` is active, else None
_LISTINGS: dict[tuple[Path, tuple[str, ...] | None], ImageSource] | None = None


@contextlib.contextmanager
def listed_once() -> Iterator[None]:
    """Within the block each folder is walked once: :func:`open_source` of a folder already
    opened (same ``classes``) returns that listing (``baseline`` checks its split, then extracts
    it: one walk, not two, ~0.5 s at 60,000 files). Nested blocks share the outer one's."""
    global _LISTINGS
    outer = _LISTINGS
    _LISTINGS = {} if outer is None else outer
    try:
        yield
    finally:
        _LISTINGS = outer


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _dir_key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_images(folder: Path, skip: set[tuple[int, int]] | None = None) -> list[Path]:
    """Image-named entries under ``folder``, following links to folders; each real folder once
    (``skip``: folders never to walk, e.g. the source root), so link loops end."""
    out: list[Path] = []
    seen = set(skip or ())

    def unreadable(e: OSError) -> None:
        log.warning("%s: folder cannot be listed (%s); its images are left out", e.filename,
                    e.strerror or e)

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        key = _dir_key(dirpath)
        if key is None or key in seen:
            if key is not None:
                log.warning("%s: folder already walked (a link loop, or a second link to the same "
                            "folder); skipped", dirpath)
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if _is_image(f))
    return sorted(out, key=lambda p: p.as_posix())


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links; a link loop raises ELOOP
    except OSError:
        return False


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def open_source(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | ImageSource,
                *, classes: Sequence[str] | None = None) -> ImageSource:
    """Find the images of ``source`` in a deterministic order.

    Args:
        source: a folder (class tree or flat), a list file, tar shards
            (``shards/train-{000000..000099}.tar``, :mod:`cnncodes.sources.tarshards`), a sequence
            of paths, or an :class:`ImageSource` (returned as is).
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
        if len(set(paths)) != len(paths):  # one row per file (identity: the resolved path)
            log.warning("%d of %d paths name a file already given (one row per file, identity = "
                        "the resolved path); each is kept once", len(paths) - len(set(paths)),
                        len(paths))
            paths = list(dict.fromkeys(paths))
        root = Path(os.sep)
        return ImageSource(root, [p.as_posix() for p in paths],
                           np.full(len(paths), UNLABELLED, np.int64), list(classes or []), "list")
    from .tarshards import is_tar_source, open_tar_shards

    if is_tar_source(source):
        return open_tar_shards(source, classes=classes)
    check_source_exists(source)
    src = Path(source).expanduser()
    if src.is_file():
        if src.suffix.lower() not in LIST_EXTENSIONS:
            raise ValueError(f"{src} is a file but not a list ({', '.join(LIST_EXTENSIONS)}); pass "
                             "the folder that contains the images, or a list file of paths.")
        return _from_list(src, classes)
    if not src.is_dir():
        raise SourceError(f"Image source {src} must be a folder or a list file. Got "
                          f"{special_file_kind(src)} instead; pass a folder of images, a folder "
                          "of class folders, or a .txt/.csv list.")
    folder = src.resolve()
    if _LISTINGS is None:
        return _from_folder(folder, classes)
    key = (folder, tuple(classes) if classes is not None else None)
    if key not in _LISTINGS:
        _LISTINGS[key] = _from_folder(folder, classes)
    return _LISTINGS[key]


def check_source_exists(source: str | os.PathLike[str]) -> None:
    """Refuse a folder or list source that does not exist (tar shard patterns are checked when
    they are expanded). Cheap: the CLI calls it before importing torch.

    Raises:
        NotFoundError: naming the source and what may be passed.
    """
    from .tarshards import is_tar_source

    if is_tar_source(source) or Path(source).expanduser().exists():
        return
    raise NotFoundError(f"Image source {os.fspath(source)!r} does not exist; pass a folder "
                        "of images, a folder of class folders, or a .txt/.csv list.")


def special_file_kind(path: str | os.PathLike[str]) -> str:
    """What ``path`` is, in words, when it is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"an unreadable path ({e.strerror or e})"
    return file_kind(mode)



def _from_folder(root: Path, classes: Sequence[str] | None) -> ImageSource:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    dirs = {e.name: _is_dir(e) for e in entries}
    subdirs = [e for e in entries if dirs[e.name] and not e.name.startswith(".")]
    # not is_file(): a FIFO, a dangling link... named like an image is a row that fails, with why
    top_images = [Path(e.path) for e in entries if not dirs[e.name] and _is_image(e.name)]
    root_key = _dir_key(root)
    skip = {root_key} if root_key else set()
    per_class = {d.name: _walk_images(Path(d.path), skip) for d in subdirs}
    per_class = {k: v for k, v in per_class.items() if v}
    if per_class:
        empty = [d.name for d in subdirs if d.name not in per_class]
        if empty:
            log.warning("%s: class folders without images are ignored: %s", root, empty)
        if top_images:
            log.warning("%s: %s directly in the root %s ignored (not in a class folder)",
                        root, plural(len(top_images), "image"),
                        "is" if len(top_images) == 1 else "are")
        names: list[str | None] = []
        paths: list[str] = []
        for cls in sorted(per_class):
            for p in per_class[cls]:
                paths.append(_rel(p, root))
                names.append(cls)
        labels, cls_list = label_index(names, classes, os.fspath(root))
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
    rows, full = one_row_per_file(path, read_list(path, IMAGE_EXTENSIONS), root)
    names = [r.label for r in rows]
    if any(n is None for n in names) and any(n is not None for n in names):
        first = next(r for r in rows if r.label is None)
        raise SourceError(f"{path}: row {rows.index(first) + 1} (line {first.line}, "
                          f"{first.path!r}) has no label while other rows do; label every row "
                          "or none.")
    labels, cls_list = label_index(names, classes, os.fspath(path))
    warn_if_relative_to_cwd(rows, root, path)
    paths = [_rel(p, root) for p in full]
    return ImageSource(root, paths, labels, cls_list, "list")


def one_row_per_file(list_file: Path, rows: list[ListRow], root: Path
                     ) -> tuple[list[ListRow], list[Path]]:
    """The rows of a list file, one per file, with the path each names (:func:`resolve_path`).

    A file's identity is its fully resolved path (``os.path.realpath``: ``./a.png``, ``a.png``,
    ``sub/../a.png`` and a symbolic link to ``a.png`` are one file). A file named again keeps its
    first row (a warning names the lines); named again with another label, it is refused.

    Raises:
        SourceError: one file under two labels (both lines and labels are named).
    """
    first: dict[str, int] = {}
    kept: list[ListRow] = []
    full: list[Path] = []
    repeats: list[str] = []
    for r in rows:
        p = resolve_path(r.path, root)
        key = os.path.realpath(p)
        k = first.get(key)
        if k is None:
            first[key] = len(kept)
            kept.append(r)
            full.append(p)
            continue
        was = kept[k]
        if was.label != r.label:
            raise SourceError(
                f"{list_file}: line {was.line} ({was.path!r}, label {was.label!r}) and line "
                f"{r.line} ({r.path!r}, label {r.label!r}) name one file ({key}) with two labels; "
                "keep one of the two lines.")
        repeats.append(f"line {r.line} ({r.path!r}) repeats line {was.line} ({was.path!r})")
    if repeats:
        log.warning("%s: %d line(s) name a file already listed (one row per file, identity = the "
                    "resolved path); %s%s", list_file, len(repeats), "; ".join(repeats[:5]),
                    "; ..." if len(repeats) > 5 else "")
    return kept, full
