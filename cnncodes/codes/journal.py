"""The journal: append-only part files next to a store, each committed atomically.

Extraction appends each finished batch to ``codes.h5.parts/part-<seq>-r<rank>.npz`` (written to a
temporary name and moved into place with ``os.replace``), guarded by a writer lock that the OS drops
when the process dies. :func:`cnncodes.codes.store.fold` turns parts into the HDF5 store.

A part that cannot be read (truncated by a full disk, garbage from a broken file system) is
moved aside to ``codes.h5.parts/bad/`` with a log warning and its images are extracted again by
the next run: the other parts' rows are never lost and a rerun never crashes on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import StoreLockedError
from .identity import ID_COLUMNS, Column, FileIdentity, from_columns, to_columns

log = logging.getLogger(__name__)


@dataclass
class Part:
    """One committed batch. ``seq`` orders parts in the fold (the source index of the batch's
    first image, so parts of any rank fold in source order); ``rank`` is the writer's rank."""

    seq: int
    paths: np.ndarray
    labels: np.ndarray  # class names ('' = unlabelled)
    codes: dict[str, np.ndarray]
    fail_paths: np.ndarray
    fail_reasons: np.ndarray
    rank: int = 0
    #: index of the run's source in the store's ``sources`` (all rows of a part share it)
    source: int = 0
    #: per row and per failure: the file's size, mtime_ns, hash before it was read (-1/-1/"" in
    #: parts written before cnncodes recorded them: unverified)
    sizes: np.ndarray | None = None
    mtimes: np.ndarray | None = None
    hashes: np.ndarray | None = None
    fail_sizes: np.ndarray | None = None
    fail_mtimes: np.ndarray | None = None
    fail_hashes: np.ndarray | None = None
    #: the file it was read from (set by :meth:`Journal.read_parts`)
    file: Path | None = None

    def ids(self) -> list[FileIdentity]:
        """The identity of each row's file."""
        return from_columns({c.name: getattr(self, str(c.part_key)) for c in ID_COLUMNS})

    def fail_ids(self) -> list[FileIdentity]:
        """The identity of each failed file."""
        return from_columns({c.name: getattr(self, f"fail_{c.part_key}") for c in ID_COLUMNS})


class Journal:
    """Append-only part files next to the store; each part is committed atomically."""

    def __init__(self, store_path: str | os.PathLike[str]):
        self.store_path = Path(store_path)
        self.dir = self.store_path.with_name(self.store_path.name + ".parts")
        self._lock_fd: int | None = None
        #: damaged parts set aside by :meth:`quarantine` (``{"part", "error"}``), this process
        self.bad_parts: list[dict[str, str]] = []

    def exists(self) -> bool:
        return self.dir.is_dir()

    def part_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("part-*.npz"))

    def n_parts(self) -> int:
        return len(self.part_files())

    # locking: one writer per store; the OS drops the lock when the process dies (even kill -9)
    def lock(self, rank: int = 0) -> None:
        """Take this store's writer lock (rank > 0 of a torchrun job: a lock of its own)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = "lock" if rank == 0 else f"lock-r{rank}"
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = self.lock_holder()
                who = f" by {describe_holder(holder)}" if holder else ""
                raise StoreLockedError(
                    f"Another process is writing {self.store_path}{who} (lock {self.dir / name} "
                    "is held); wait for it to finish or stop it first.") from None
            raise
        self._lock_fd = fd
        if rank == 0:  # who holds it, for `cnncodes info` and a refused second writer
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                          .encode(), 0)

    def lock_holder(self) -> dict[str, Any] | None:
        """The process recorded in the writer lock if it is still running (same host: checked
        with ``kill(pid, 0)``; another host: assumed running), else None. Never takes the lock,
        so asking cannot get in a writer's way."""
        try:
            data = json.loads((self.dir / "lock").read_text() or "null")
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        if data.get("host") == socket.gethostname():
            try:
                os.kill(data["pid"], 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass  # alive, another user's
        return data

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)  # no holder any more
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def manifest(self) -> dict[str, Any] | None:
        p = self.dir / "manifest.json"
        if not p.is_file():
            return None
        try:
            return cast("dict[str, Any]", json.loads(p.read_text()))  # written by write_manifest
        except (OSError, ValueError):
            return None

    def write_manifest(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.dir / "manifest.json", json.dumps(dict(config)))

    def write_part(self, part: Part) -> Path:
        arrays: dict[str, np.ndarray] = {
            "seq": np.asarray(part.seq, np.int64),
            "paths": np.asarray(part.paths, dtype=np.str_),
            "labels": np.asarray(part.labels, dtype=np.str_),
            "fail_paths": np.asarray(part.fail_paths, dtype=np.str_),
            "fail_reasons": np.asarray(part.fail_reasons, dtype=np.str_),
        }
        for k, v in part.codes.items():
            arrays[f"codes__{k}"] = v
        n, nf = len(part.paths), len(part.fail_paths)
        arrays["source"] = np.asarray(part.source, np.int64)
        for key, col, size in _identity_keys(n, nf):
            v = getattr(part, key)
            dt = col.dtype(np.str_)
            arrays[key] = np.asarray(v if v is not None else _unknown(col, size), dtype=dt)
        final = self.dir / f"part-{part.seq:010d}-r{part.rank:04d}.npz"
        with atomic_path(final, tmp=final.with_suffix(".npz.tmp")) as tmp, open(tmp, "wb") as f:
            # allow_pickle=True is numpy's default, named so mypy sees **arrays cannot be it
            np.savez(f, allow_pickle=True, **arrays)
        return final

    def read_parts(self, files: Sequence[Path] | None = None, *, codes: bool = True,
                   layers: Sequence[str] | None = None) -> Iterator[Part]:
        """Parts (of ``files``, default all) in commit order.

        ``codes=False`` reads only paths, labels and failures (``.codes`` then maps each layer to
        its shape from the ``.npy`` header, without reading the data). A part that cannot be read
        or is inconsistent (rows of a layer != paths, a layer of ``layers`` missing) is moved aside
        by :meth:`quarantine` and skipped, so its images count as not done.
        """
        for p in self.part_files() if files is None else files:
            try:
                part = _load_part(p, codes=codes, layers=layers)
            except Exception as e:  # noqa: BLE001 - any damage: set the part aside, redo its images
                self.quarantine(p, e)
                continue
            yield part

    def verify(self, layers: Sequence[str] | None = None) -> int:
        """Read every part in full (codes included) and quarantine the damaged ones; returns how
        many were set aside. Run before a resume, so the images of a damaged part are extracted
        again in the same run and the fold cannot meet a damaged part."""
        before = len(self.bad_parts)
        for _ in self.read_parts(layers=layers):
            pass
        return len(self.bad_parts) - before

    def quarantine(self, path: Path, error: BaseException) -> None:
        """Move a damaged part to ``<store>.bad-parts/`` (kept for inspection), log it and record
        it in :attr:`bad_parts` (extraction puts that list in the store's run record)."""
        dest = self.store_path.with_name(self.store_path.name + ".bad-parts")
        reason = f"{type(error).__name__}: {error}"
        log.warning("journal part %s is damaged (%s); it is moved to %s and its images will be "
                    "extracted again", path.name, reason, dest)
        try:
            dest.mkdir(exist_ok=True)
            os.replace(path, dest / path.name)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
        self.bad_parts.append({"part": path.name, "error": reason[:300]})

    def progress(self) -> dict[str, Any] | None:
        """What an extraction has journaled so far, for a reader (``cnncodes info``): ``running``
        (the writing process, None when no process holds the lock), ``parts``, ``rows`` and
        ``failed``. None when there is no journal. Reads only; a damaged part is not counted (and
        not moved: that is the writer's job)."""
        if not self.exists():
            return None
        rows = failed = parts = 0
        for p in self.part_files():
            try:
                part = _load_part(p, codes=False, layers=None)
            except Exception:  # noqa: BLE001 - damaged or being replaced: not counted
                continue
            parts += 1
            rows += len(part.paths)
            failed += len(part.fail_paths)
        return {"running": self.lock_holder(), "parts": parts, "rows": rows, "failed": failed,
                "dir": str(self.dir)}

    def done_paths(self) -> tuple[set[str], set[str]]:
        """Paths with codes and paths recorded as failed, across all parts."""
        ok: set[str] = set()
        failed: set[str] = set()
        for part in self.read_parts(codes=False):
            ok.update(part.paths.tolist())
            failed.update(part.fail_paths.tolist())
        return ok, failed

    def clear(self) -> None:
        """Delete the journal folder (after a successful fold, or for --overwrite)."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _load_part(path: Path, *, codes: bool, layers: Sequence[str] | None) -> Part:
    """One part file, checked for consistency (raises on any damage)."""
    with np.load(path, allow_pickle=False) as z:
        names = [k for k in z.files if k.startswith("codes__")]
        if codes:
            arrays: dict[str, Any] = {k[len("codes__"):]: z[k] for k in names}
            shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        else:  # the shapes from the .npy headers, without reading the data
            arrays = shapes = {k[len("codes__"):]: _npz_member_shape(z, k) for k in names}
        part = Part(int(z["seq"]), z["paths"], z["labels"], arrays, z["fail_paths"],
                    z["fail_reasons"], file=path)
        n, nf = len(part.paths), len(part.fail_paths)
        has = set(z.files)
        part.source = int(z["source"]) if "source" in has else 0
        for key, col, size in _identity_keys(n, nf):
            v = z[key] if key in has else _unknown(col, size)
            if len(v) != size:
                raise ValueError(f"{key} has {len(v)} entries for {size} files")
            setattr(part, key, v)
    if len(part.labels) != n or len(part.fail_paths) != len(part.fail_reasons):
        raise ValueError("paths/labels or failure lists of different lengths")
    for k, shape in shapes.items():
        if n and (len(shape) != 2 or shape[0] != n):
            raise ValueError(f"layer {k} has {shape} codes for {n} paths")
    missing = [k for k in layers or () if n and k not in shapes]
    if missing:
        raise ValueError(f"no codes for layer(s) {', '.join(missing)}")
    return part


def _identity_keys(n: int, nf: int) -> Iterator[tuple[str, Column, int]]:
    """``(part key, column, length)`` of a part's identity arrays: rows, then failures."""
    for prefix, size in (("", n), ("fail_", nf)):
        for col in ID_COLUMNS:
            yield f"{prefix}{col.part_key}", col, size


def _unknown(col: Column, n: int) -> np.ndarray:
    """Identity values of files whose identity was not recorded (-1, or '' for hashes)."""
    return np.full(n, col.fill, col.dtype(np.str_))


def identity_arrays(rows: Sequence[FileIdentity],
                    failures: Sequence[FileIdentity]) -> dict[str, np.ndarray]:
    """The :class:`Part` keyword arguments (``sizes=``... ``fail_hashes=``) holding the
    identities of a batch's rows and failures."""
    out: dict[str, np.ndarray] = {}
    for prefix, ids in (("", rows), ("fail_", failures)):
        cols = to_columns(ids, text=np.str_)
        out.update({f"{prefix}{c.part_key}": cols[c.name] for c in ID_COLUMNS})
    return out


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``process 1234 on host (since ...)``."""
    return (f"process {holder.get('pid')} on {holder.get('host')} (since "
            f"{holder.get('since')})")


def _npz_member_shape(z: Any, key: str) -> tuple[int, ...]:
    """Shape of one array of an open ``.npz`` from its ``.npy`` header (the data is not read)."""
    fmt = np.lib.format
    try:
        with z.zip.open(f"{key}.npy") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, _ = read(f)
        return tuple(shape)
    except Exception:  # noqa: BLE001 - an unusual header: read the array instead
        return tuple(z[key].shape)
