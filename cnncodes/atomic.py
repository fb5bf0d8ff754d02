"""Atomic file writes: a file is written under a temporary name, flushed to disk and renamed over
its destination, so a crash or ``kill -9`` leaves either the old file or the new one, never half.
The rename never goes over something that is not a regular file (or a symlink, which is replaced
itself, its target untouched): a device node, FIFO, socket or folder stays what it is and the
write is refused (:class:`~cnncodes.errors.OutputError`), even when a caller forgot
:func:`cnncodes.outputs.check_output`.

Every file cnncodes writes goes through here: bytes/text, JSON, CSV and matplotlib figures (the
store's HDF5 file through :func:`atomic_path` in :mod:`cnncodes.codes.store`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, tmp: str | os.PathLike | None = None,
                suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it to ``path``.

    Args:
        tmp: the temporary file (default ``.NAME.tmpPID`` + ``suffix`` beside ``path``).
        suffix: kept at the end of the default name, for writers that read the format from the
            extension (``savefig`` and ``.png``).
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(
        f".{path.name}.tmp{os.getpid()}{suffix}")
    refuse_special(path)
    refuse_special(tmp, what="temporary file")
    try:
        yield tmp
        refuse_special(tmp, what="temporary file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        refuse_special(path)  # again: it may have appeared while the file was written
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(tmp).st_mode):  # ours; never a node someone put there
                tmp.unlink()
        raise


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words (``"a FIFO (named pipe)"``...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


def refuse_special(path: Path, *, what: str = "output") -> None:
    """Raise :class:`OutputError` when ``path`` exists and is neither a regular file nor a
    symlink (``lstat``: a symlink is replaced itself, its target is left as it is)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    raise OutputError(f"The {what} {os.fspath(path)} is {file_kind(mode)}, not a regular file: "
                      "it is never replaced. Pass another path.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (best effort; not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def jsonable(v: Any) -> Any:
    """``v`` with NumPy values, paths and tuples turned into JSON types; NaN/inf become None."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist") and hasattr(v, "dtype"):  # NumPy arrays and scalars
        return jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


#: The note beside a value that came out NaN or infinite.
NOT_FINITE_NOTE = "not a finite number (NaN or infinite): it could not be computed on this sample"


def finite_json(obj: Any) -> Any:
    """``obj`` as JSON types (:func:`cnncodes.atomic.jsonable`) where a NaN/inf value under a key
    becomes null with ``<key>_note`` beside it (in a list: just null)."""
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # NumPy arrays and scalars
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if hasattr(v, "tolist") and hasattr(v, "dtype"):
                v = v.tolist()
            if isinstance(v, float) and not math.isfinite(v):
                out[str(k)] = None
                out.setdefault(f"{k}_note", NOT_FINITE_NOTE)
            else:
                out[str(k)] = finite_json(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [finite_json(x) for x in obj]
    return jsonable(obj)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` (made :func:`jsonable`; other objects as ``str``) as JSON, atomically."""
    text = json.dumps(jsonable(obj), indent=indent, default=str) + "\n"
    atomic_write_text(path, text)
    return Path(path)


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str],
                     rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file (UTF-8, one header row), atomically. Fields are quoted by the ``csv``
    rules (a file name holding a comma, a quote or a line break round-trips); a file name that
    is not UTF-8 is written as its own bytes (``surrogateescape``), as the shell would show it."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                        errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(list(header))
        w.writerows(rows)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure (PNG from the extension), atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path
