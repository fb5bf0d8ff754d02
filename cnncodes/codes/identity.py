"""What identifies a cached file's content, and which source a store came from.

Every row (and every recorded failure) of a store carries the identity of its file as it was
*before* it was read: size and ``st_mtime_ns`` (cheap: one ``stat``), and in the opt-in hash mode
(``verify="hash"``) a SHA-256 of the bytes, for file systems where mtimes lie (some network and
FUSE mounts, copies that keep mtimes, edits within the mtime resolution). A rerun compares the
recorded identity with the file now; a file that differs is extracted again.

A source is described by the folder or list file it was opened from (resolved), or, for a list of
paths passed from Python (and :class:`~cnncodes.sources.folders.ImageSource` objects), as a path
list under its root: path lists only add or refresh rows, they never remove any.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: ``verify`` modes: ``stat`` (size + mtime_ns) and ``hash`` (size + SHA-256 of the bytes).
VERIFY_MODES = ("stat", "hash")

#: Size recorded for rows of stores made before format 2 (identity unknown: unverified).
UNKNOWN = -1


@dataclass(frozen=True)
class FileIdentity:
    """A file's identity: size in bytes, ``st_mtime_ns`` and (hash mode) ``sha256:<hex>``.

    Made by :func:`file_id`, stored as the columns of :data:`ID_COLUMNS` (:func:`to_columns`),
    read back by :func:`from_columns` and compared by :func:`changed`: this module only."""

    size: int
    mtime_ns: int
    hash: str = ""

    @property
    def known(self) -> bool:
        return self.size != UNKNOWN


#: the name the code used before issue 27 (kept for callers outside cnncodes.codes)
FileId = FileIdentity

#: Identity of a row whose identity was never recorded (a store of format 1).
UNVERIFIED = FileIdentity(UNKNOWN, UNKNOWN, "")
#: Identity recorded for a file that could not be stat'ed before it was read: never matches a
#: real file, so the next run looks at it again.
UNSTATABLE = FileIdentity(0, 0, "")


@dataclass(frozen=True)
class Column:
    """One per-file column of a store (``/files/<name>``, ``/failures/<name>``) and, for the
    identity, of a journal part (``<part_key>``, ``fail_<part_key>``)."""

    name: str
    kind: str                      # "int" (int64), "text" or "bool"
    fill: Any                      # the value where an older store or part has none
    part_key: str | None = None

    def dtype(self, text: Any = object) -> Any:
        """The numpy dtype (``text``: how the caller holds strings: object, np.str_, h5's)."""
        return {"int": np.int64, "bool": bool}.get(self.kind, text)


#: The identity columns, in :class:`FileIdentity`'s field order: one table for the store's
#: writer and reader and the journal (on-disk names unchanged since format 2).
ID_COLUMNS = (Column("size", "int", UNKNOWN, "sizes"), Column("mtime_ns", "int", UNKNOWN, "mtimes"),
              Column("hash", "text", "", "hashes"))
#: ``/failures``' columns besides paths and reasons: the identity and the source index.
FAILURE_COLUMNS = (*ID_COLUMNS, Column("source", "int", 0))
#: ``/files``' columns: the same and the ``missing`` flag (``keep_missing``).
FILE_COLUMNS = (*FAILURE_COLUMNS, Column("missing", "bool", False))


def to_columns(ids: Sequence[FileIdentity], *, text: Any = object) -> dict[str, np.ndarray]:
    """The identity columns (by :data:`ID_COLUMNS` name) of ``ids``."""
    return {c.name: np.array([getattr(i, c.name) for i in ids], dtype=c.dtype(text))
            for c in ID_COLUMNS}


def from_columns(columns: Mapping[str, Any]) -> list[FileIdentity]:
    """The :class:`FileIdentity` of each entry of identity ``columns`` (by column name)."""
    size, mtime, hashes = (columns[c.name] for c in ID_COLUMNS)
    return [FileIdentity(int(a), int(b), str(c))
            for a, b, c in zip(np.asarray(size).tolist(), np.asarray(mtime).tolist(),
                               np.asarray(hashes).tolist(), strict=True)]


def _sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def file_id(path: str | os.PathLike[str], *, hashed: bool = False) -> FileIdentity | None:
    """The identity of the regular file at ``path`` (links followed), None if there is none."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileIdentity(int(st.st_size), int(st.st_mtime_ns), _sha256(path) if hashed else "")
    except OSError:
        return None


def file_ids(paths: Sequence[str | os.PathLike[str]], *, hashed: bool = False,
             threads: int = 8) -> list[FileIdentity | None]:
    """:func:`file_id` of many files (hashes computed by a few threads: hashlib frees the GIL)."""
    if not hashed or len(paths) < 2:
        return [file_id(p, hashed=hashed) for p in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda p: file_id(p, hashed=True), paths, chunksize=64))


def changed(recorded: FileIdentity, now: FileIdentity | None, verify: str) -> bool:
    """Whether the file differs from what was recorded (an unknown recorded identity: no)."""
    if not recorded.known:
        return False
    if now is None:
        return True
    if verify == "hash":
        return not recorded.hash or recorded.size != now.size or recorded.hash != now.hash
    return recorded.size != now.size or recorded.mtime_ns != now.mtime_ns


# --------------------------------------------------------------------------------------------
# Sources


def describe_source(source: Any, root: Path, kind: str) -> dict[str, Any]:
    """The provenance entry of one source: ``path`` (resolved folder or list file; None for a
    path list), ``kind`` (tree, flat, list, paths) and ``root`` (its paths are relative to it)."""
    if isinstance(source, (str, os.PathLike)):
        return {"path": Path(source).expanduser().resolve().as_posix(), "kind": kind,
                "root": Path(root).as_posix()}
    return {"path": None, "kind": "paths", "root": Path(root).as_posix()}


def store_sources(prov: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sources of a store; a store of format 1 recorded only its root and kind."""
    if prov.get("sources"):
        return [dict(s) for s in prov["sources"]]
    root, kind = prov.get("root"), prov.get("source_kind")
    if root is None:
        return []
    return [{"path": root if kind in ("tree", "flat") else None,
             "kind": kind if kind in ("tree", "flat") or root != "/" else "paths",
             "root": root, "inferred": True}]


def same_source(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two source entries name the same source."""
    if a.get("path") and b.get("path"):
        return bool(a["path"] == b["path"])
    if a.get("inferred") and a.get("kind") == "list" and b.get("kind") == "list":
        return a.get("root") == b.get("root")  # format 1 recorded only the list's folder
    if a.get("kind") == "paths" and b.get("kind") == "paths":
        return a.get("root") == b.get("root")
    return False


def source_label(s: Mapping[str, Any]) -> str:
    """How a message names a source."""
    if s.get("path"):
        return f"{s['path']} ({s.get('kind')})"
    return f"a list of paths under {s.get('root')}"
