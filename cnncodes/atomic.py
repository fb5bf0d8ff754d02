"""Atomic file writes: a file is written under a temporary name, flushed to disk and renamed over
its destination, so a crash or ``kill -9`` leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


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
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
