"""Where the rows of a store are, as of one commit (:class:`View`): its files, the order of its rows
in them, and the open handles a snapshot reads through.

A :class:`View` made by :meth:`View.snapshot` keeps every file of the commit it read open until
:meth:`View.close`: a fold that renames a new index over the store, or deletes a segment no row of
the new index points at, changes nothing this view reads (POSIX keeps an open file's inode), so
every read of one operation (:class:`~cnncodes.codes.reader.FeatureStore`) sees one commit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreDamagedError
from .integrity import damage_message, damaged_rows

#: the index of a segmented store (format 3); formats 1 and 2 are one file
SEGMENTED_FORMAT = 3


def text(ds: Any) -> Any:
    """A string dataset read as ``str``; a name stored as non-UTF-8 bytes (a file named in
    Latin-1, see :func:`cnncodes.codes.store_layout.fs_bytes`) comes back as ``os.fsdecode``
    gives it."""
    return ds.asstr(errors="surrogateescape")


def segments_dir(path: str | os.PathLike[str]) -> Path:
    """The folder of a store's segment files: ``codes.h5.segments/`` beside ``codes.h5``."""
    path = Path(path)
    return path.with_name(path.name + ".segments")



#: A reader of one segment: ``(open file, segment number, selection) -> array``.
Reader = Callable[[h5py.File, int, Any], np.ndarray]


@dataclass
class View:
    """Where the rows of a store are: its files, and for each logical row its *physical* row
    (the rows of the segment files one after another). A single-file store is one file read as
    it is (``phys`` None)."""

    files: list[Path]
    offsets: np.ndarray            # (S + 1,): physical row where each file starts; the total
    phys: np.ndarray | None        # (N,) logical -> physical row; None: the identity
    runs: int = 1
    remaps: list[np.ndarray] | None = None   # per segment: its class index -> the store's
    flags: dict[int, bool] | None = None     # physical row -> missing, set after the segment
    #: the runs split at segment ends: (logical start, physical start, length, segment) each
    pieces: np.ndarray | None = None
    #: the store (the index of a segmented one) and the command that made it (for the repair)
    store: Path | None = None
    command: str | None = None
    #: a snapshot's open files: the index (single file: the store) and each segment
    index: h5py.File | None = field(default=None, repr=False)
    handles: list[h5py.File] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.offsets[-1]) if self.phys is None else len(self.phys)

    @classmethod
    def single(cls, path: Path, f: h5py.File | None = None) -> View:
        """A single-file store; with ``f`` (the store opened) every read goes through it."""
        with _maybe_open(path, f) as g:
            n = int(g["paths"].shape[0])
            command = _attr_str(g, "command")
        return cls([path], np.array([0, n], np.int64), None, store=path, command=command,
                   index=f, handles=None if f is None else [f])

    @classmethod
    def open(cls, path: Path, f: h5py.File | None = None) -> View:
        """Read a segment index and check that every segment it names is there, whole. With
        ``f`` (the index opened) every segment is opened now and read through until
        :meth:`close`."""
        with _maybe_open(path, f) as g:
            names = list(text(g["segments/files"])[()])
            counts = g["segments/rows"][()].astype(np.int64)
            sizes = g["segments/bytes"][()].astype(np.int64)
            starts = g["runs/start"][()].astype(np.int64)
            lengths = g["runs/length"][()].astype(np.int64)
            classes = list(text(g["classes"])[()])
            flags = dict(zip(g["flags/rows"][()].tolist(), g["flags/missing"][()].tolist(),
                             strict=True))
            command = _attr_str(g, "command")
        files = [path.parent / n for n in names]
        for p, size in zip(files, sizes.tolist(), strict=True):
            have = p.stat().st_size if p.is_file() else None
            if have != size:
                what = "is missing" if have is None else f"has {have} bytes, not {size}"
                raise StoreDamagedError(
                    f"{path} is damaged: its segment {p} {what}. A store of this layout is the "
                    f"file {path.name} together with the folder {segments_dir(path).name}/ "
                    "(copy or move both); restore the folder from where it was copied, or "
                    "extract again with --overwrite.")
        n = int(lengths.sum())
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        phys = np.arange(n, dtype=np.int64) + np.repeat(starts - first, lengths)
        index = {c: i for i, c in enumerate(classes)}
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        view = cls(files, offsets, phys, len(starts), store=path, command=command, index=f,
                   handles=[] if f is not None else None)
        remaps = []
        try:
            for k in range(len(files)):
                seg = view.segment(k)
                if view.handles is not None:
                    view.handles.append(seg)
                local = list(text(seg["classes"])[()])
                if view.handles is None:
                    seg.close()
                remaps.append(np.array([index.get(c, -1) for c in local] + [-1], np.int64))
        except BaseException:
            view.close(keep_index=True)
            raise
        pieces = []
        for ls, ps, n_run in zip(first.tolist(), starts.tolist(), lengths.tolist(), strict=True):
            while n_run > 0:  # a run that crosses the end of a segment goes on in the next one
                k = int(np.searchsorted(offsets, ps, side="right") - 1)
                take = min(n_run, int(offsets[k + 1]) - ps)
                pieces.append((ls, ps, take, k))
                ls, ps, n_run = ls + take, ps + take, n_run - take
        view.remaps, view.flags = remaps, flags
        view.pieces = np.array(pieces, np.int64).reshape(-1, 4)
        return view

    @classmethod
    def snapshot(cls, path: Path, attempts: int = 3) -> tuple[View, int]:
        """The store's latest commit, every file of it open: ``(view, format_version)``. A fold
        that replaces the index while the segments are being opened (and deletes one of the
        old ones) is retried; :meth:`close` when done."""
        for attempt in range(attempts):
            before = _inode(path)
            f = h5py.File(path, "r")
            try:
                version = int(f.attrs.get("format_version", -1))
                view = (cls.open(path, f) if version >= SEGMENTED_FORMAT
                        else cls.single(path, f))
                return view, version
            except StoreDamagedError:
                f.close()
                if attempt + 1 == attempts or _inode(path) == before:
                    raise
            except BaseException:
                f.close()
                raise
        raise AssertionError("unreachable")

    def nbytes(self) -> int | None:
        """Bytes of the snapshot's files (the index and its segments); None when not a
        snapshot."""
        if not self.handles or self.index is None:
            return None
        files = {id(h): h for h in [self.index, *self.handles]}.values()
        return sum(os.fstat(h.id.get_vfd_handle()).st_size for h in files)

    def close(self, keep_index: bool = False) -> None:
        """Close the files a snapshot holds open (the index too unless ``keep_index``)."""
        for h in self.handles or []:
            if h is not self.index:
                h.close()
        self.handles = [] if self.handles is not None else None
        if self.index is not None and not keep_index:
            self.index.close()

    @contextlib.contextmanager
    def file(self, k: int) -> Iterator[h5py.File]:
        """File ``k`` for reading: the snapshot's open handle, else opened for this read."""
        if self.handles:
            yield self.handles[k]
            return
        f = self.segment(k) if self.phys is not None else h5py.File(self.files[k], "r")
        try:
            yield f
        finally:
            f.close()

    def damage(self, k: int) -> StoreDamagedError | None:
        """The error naming the rows of file ``k`` that do not read back (None: none found)."""
        bad = damaged_rows(self.files[k])
        if not bad:
            return None
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        hit = np.zeros(hi - lo, bool)
        for _, a, b in bad:
            hit[a:b] = True
        phys = np.arange(self.n, dtype=np.int64) if self.phys is None else self.phys
        inside = (phys >= lo) & (phys < hi)
        logical = np.flatnonzero(inside)[hit[phys[inside] - lo]]
        if not len(logical):
            return None  # only rows no longer in the store (replaced by a repair)
        local = phys[logical] - lo
        order = np.argsort(local)
        with self.file(k) as f:
            names = f["paths"].asstr()[np.sort(local)] if len(local) else []
        paths = [""] * len(local)
        for i, name in zip(order.tolist(), list(names), strict=True):
            paths[i] = str(name)
        datasets = {d for d, _, _ in bad}
        err = StoreDamagedError(damage_message(
            self.store or self.files[0], self.files[k], logical.tolist(), paths, datasets,
            self.command, repairable=all(d.startswith("codes/") for d in datasets)))
        err.rows, err.paths = logical.tolist(), paths  # type: ignore[attr-defined]
        err.datasets = sorted(d.split("/")[0] for d in datasets)  # type: ignore[attr-defined]
        return err

    @contextlib.contextmanager
    def guard(self, k: int) -> Any:
        """Turn a failed read of file ``k`` (checksum, inflate) into :meth:`damage`'s error."""
        try:
            yield
        except StoreDamagedError:
            raise
        except OSError as e:
            err = self.damage(k)
            if err is None:
                raise
            raise err from e

    def remap_labels(self, k: int, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, np.int64)
        return labels if self.remaps is None else self.remaps[k][labels]

    def apply_flags(self, missing: np.ndarray) -> None:
        """Set the ``missing`` flags changed after their segment was written."""
        if not self.flags or self.phys is None:
            return
        keys = np.fromiter(self.flags, np.int64, len(self.flags))
        pos = np.flatnonzero(np.isin(self.phys, keys))
        for i in pos.tolist():
            missing[i] = self.flags[int(self.phys[i])]

    def segment(self, k: int) -> h5py.File:
        """Segment ``k`` opened for reading, checked against the row count its index records."""
        try:
            f = h5py.File(self.files[k], "r")
        except (FileNotFoundError, OSError) as e:
            raise StoreDamagedError(
                f"Segment {self.files[k]} could not be opened ({e}). If an extraction into the "
                "store is running, a fold replaced the index while this read was going on: read "
                "the store again. Otherwise the store is damaged: restore its .segments/ folder "
                "or extract again with --overwrite.") from None
        n_rows = int(f["paths"].shape[0])
        if n_rows != self.offsets[k + 1] - self.offsets[k]:
            f.close()
            raise StoreDamagedError(
                f"Segment {self.files[k]} has {n_rows} rows, not the "
                f"{self.offsets[k + 1] - self.offsets[k]} its index records: the store is "
                "damaged; extract again with --overwrite.")
        return f

    def gather(self, read: Reader, rows: Any = None) -> np.ndarray:
        """The values of logical ``rows`` (all by default; a slice or a sorted index array),
        read from each file with ``read``."""
        if self.phys is None:
            with self.file(0) as f, self.guard(0):
                return read(f, 0, slice(None) if rows is None else rows)
        if self.pieces is not None and (rows is None or (isinstance(rows, slice)
                                                         and rows.step in (None, 1))):
            return self._gather_range(read, *(slice(None) if rows is None else rows)
                                      .indices(self.n)[:2])
        phys = self.phys if rows is None else self.phys[rows]
        if not len(phys):
            with self.file(0) as f:
                return read(f, 0, slice(0, 0))
        seg = np.searchsorted(self.offsets, phys, side="right") - 1
        out: np.ndarray | None = None
        for k in np.unique(seg).tolist():
            pos = np.flatnonzero(seg == k)
            local = phys[pos] - self.offsets[k]
            sel, back = _selection(local)
            with self.file(k) as f, self.guard(k):
                vals = read(f, k, sel)
            if back is not None:
                vals = vals[back]
            if out is None:
                out = np.empty((len(phys), *vals.shape[1:]), dtype=vals.dtype)
            out[pos] = vals
        assert out is not None
        return out

    def read_codes(self, name: str, rows: slice) -> np.ndarray:
        """The codes of logical rows ``rows`` (a slice) read straight into one array."""
        assert self.pieces is not None
        lo, hi = rows.indices(self.n)[:2]
        hi = max(lo, hi)
        ls, ps, ln, seg = self.pieces.T
        hit = np.flatnonzero((ls < hi) & (ls + ln > lo))
        with self.file(0) as f:
            ds = f["codes"][name]
            out = np.empty((hi - lo, ds.shape[1]), dtype=ds.dtype)
        for k in np.unique(seg[hit]).tolist():
            with self.file(k) as f:
                ds = f["codes"][name]
                for r in hit[seg[hit] == k].tolist():
                    a, b = max(lo, int(ls[r])), min(hi, int(ls[r] + ln[r]))
                    local = int(ps[r] - self.offsets[k]) + a - int(ls[r])
                    with self.guard(k):
                        ds.read_direct(out, np.s_[local:local + b - a], np.s_[a - lo:b - lo])
        return out

    def _gather_range(self, read: Reader, lo: int, hi: int) -> np.ndarray:
        """Logical rows ``lo:hi`` read run by run (one slice per run, each segment opened once)."""
        assert self.pieces is not None
        hi = max(lo, hi)
        ls, ps, ln, seg = self.pieces.T
        hit = np.flatnonzero((ls < hi) & (ls + ln > lo))
        if not len(hit):
            with self.file(0) as f:
                return read(f, 0, slice(0, 0))
        out: np.ndarray | None = None
        for k in np.unique(seg[hit]).tolist():
            with self.file(k) as f:
                for r in hit[seg[hit] == k].tolist():
                    a, b = max(lo, int(ls[r])), min(hi, int(ls[r] + ln[r]))
                    local = int(ps[r] - self.offsets[k]) + a - int(ls[r])
                    with self.guard(k):
                        vals = read(f, k, slice(local, local + b - a))
                    if out is None:
                        out = np.empty((hi - lo, *vals.shape[1:]), dtype=vals.dtype)
                    out[a - lo:b - lo] = vals
        assert out is not None
        return out


def _attr_str(f: h5py.File, key: str) -> str | None:
    v = f.attrs.get(key)
    return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else None)


def _selection(local: np.ndarray) -> tuple[slice | np.ndarray, np.ndarray | None]:
    """How to read ``local`` rows of one file: a slice (and the positions to take from it when
    they are not one ascending range), or a sorted index array when they are sparse."""
    lo, hi = int(local.min()), int(local.max()) + 1
    if hi - lo == len(local) and (len(local) < 2 or bool((np.diff(local) == 1).all())):
        return slice(lo, hi), None
    if hi - lo <= 4 * len(local):
        return slice(lo, hi), local - lo
    uniq, inverse = np.unique(local, return_inverse=True)
    return uniq, inverse




def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _maybe_open(path: Path, f: h5py.File | None) -> Iterator[h5py.File]:
    """``f`` as it is (left open), else ``path`` opened for this block."""
    if f is not None:
        yield f
        return
    with h5py.File(path, "r") as g:
        yield g
