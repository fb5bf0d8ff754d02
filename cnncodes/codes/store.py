"""The HDF5 code cache: codes per layer, paths, labels, classes, failures and the provenance
needed to trust them, in one of two layouts.

*Single file* (formats 1 and 2; what a first extraction and :func:`compact` write): ``codes.h5``::

    /codes/<layer>      float32|float16 (N, D), chunked, resizable; attrs: node, kind, pooling
    /paths              utf-8 strings (N,), relative to attrs["root"] where possible
    /labels             int64 (N,), index into /classes, -1 = unlabelled
    /classes            utf-8 strings (C,)
    /files/size, /files/mtime_ns   int64 (N,) the file's identity just before it was read
                                   (-1: a row of a format-1 store, unverified)
    /files/hash         utf-8 (N,) ``sha256:<hex>`` in the hash verify mode, else ''
    /files/source       int64 (N,) index into the provenance's ``sources``
    /files/missing      bool (N,)  file gone, row kept (``keep_missing``)
    /failures/paths     utf-8 strings (F,)   files that could not be decoded ...
    /failures/reasons   utf-8 strings (F,)   ... and why
    /failures/{size,mtime_ns,hash,source}    ... and their identity (a changed file is retried)
    attrs               provenance (backbone, weights id + sha256, layers, pooling, preprocessing,
                        dtype, root, sources, verify, versions, created/updated, command line,
                        run history)

*Segments* (format 3; what a fold into a store over :data:`REWRITE_BELOW` bytes writes): the
rows live in immutable *segment* files ``codes.h5.segments/seg-<id>.h5`` (each laid out like a
single-file store of its rows, labels indexing its own ``/classes``), and ``codes.h5`` is a small
index, replaced atomically at every commit::

    /segments/files     utf-8 (S,) segment files, relative to the index's folder
    /segments/rows, /segments/bytes   int64 (S,) rows and bytes of each (checked on every read)
    /runs/start, /runs/length   int64 (R,) the store's rows in order: physical rows (segments one
                        after another) [start, start + length)
    /flags/rows, /flags/missing   missing flags set after their segment was written
    /classes, /failures/..., attrs   as in a single file (format_version 3)

A fold then writes only the journal's rows (new files, and the new version of changed files) as one
new segment and a new index: a changed file's row points at the new segment, a deleted file's row
leaves the runs, and a segment no row points at any more is deleted. Its cost is that of the new
rows plus the index (16 bytes per run, a few per failure), never a copy of the old rows. A store
that shrinks to :data:`REWRITE_BELOW` bytes is rewritten as a single file again. The first fold
into a large single-file store turns it into segment 0 by a hard link (no copy).

Row order: old rows keep their order; a row whose file changed is replaced in place; rows of
deleted files are removed; new files are appended in source order (see :func:`fold`).

Crash safety. HDF5 files are not safe against ``kill -9`` while open for writing, so the HDF5 file
is never written in place. Extraction appends each finished batch to a *journal*: a folder
``codes.h5.parts/`` of small ``.npz`` part files, each written to a temporary name and moved into
place with an atomic ``os.replace``. At the end of a run (or on Ctrl-C) the journal is *folded*:
a new HDF5 file is built from the previous file plus the parts, written to ``codes.h5.tmp`` and
atomically renamed over ``codes.h5``; only then are the parts deleted. A kill at any moment leaves
either complete parts or the previous complete file, and a rerun picks up from there (parts whose
paths are already in the file, left by a kill between rename and cleanup, replace those rows with
the same data). A full disk leaves the previous file and the parts (:func:`disk_full_message`).
The journal itself (parts, lock, manifest, damaged parts) is :mod:`cnncodes.codes.journal`; reading
a store is :mod:`cnncodes.codes.reader` (:class:`FeatureStore`, re-exported here); the datasets of
each file a fold writes are :mod:`cnncodes.codes.store_layout`.

In the segment layout the same holds: a segment is written under a temporary name, fsynced and
renamed, its folder fsynced, and only then is the index that names it renamed over ``codes.h5``.
A kill before that rename leaves the previous index (the new segment, named by no index, is
deleted by the next fold); no file an index names is ever written again.

This module is the only door to an existing store: :func:`fold` (new rows),
:func:`update_provenance` (metadata such as the advisor's evidence) and :func:`compact` (one file
again) all write under temporary names; :func:`check_store_compatible`
(:mod:`cnncodes.codes.compat`) is the one compatibility check of a store (and of an unfinished
journal) against the settings a caller wants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_path, fsync_dir
from ..errors import AccessDeniedError, StoreDamagedError, StoreMismatchError
from .compat import (
    CONFIG_FIELDS,
    canonical,
    check_free_space,
    check_store_compatible,
    config_diff,
    disk_full_message,
    is_disk_full,
    space_needed,
)
from .fold_plan import FoldOptions, FoldPlan, plan_fold
from .journal import Journal
from .reader import STR, FeatureStore, store_bytes
from .store_layout import (
    DamagedPart,
    copy_old_rows,
    create_datasets,
    new_provenance,
    set_flags,
    write_attrs,
    write_failures,
    write_parts,
)
from .view import SEGMENTED_FORMAT, segments_dir

__all__ = ["CONFIG_FIELDS", "FeatureStore", "FoldOptions", "canonical", "check_store_compatible",
           "compact",
           "config_diff", "disk_full_message", "fold", "is_disk_full", "remove_store",
           "update_provenance"]

log = logging.getLogger(__name__)

#: A fold rewrites a store of at most this many bytes (files and segments) as one file (cheap, and
#: one file to copy); a larger store takes the new rows as a segment, whatever its size.
REWRITE_BELOW = 8 * 2**20
#: A fold that leaves more segments than this suggests ``cnncodes compact`` in the log.
MANY_SEGMENTS = 64


# --------------------------------------------------------------------------------------------
# Folding the journal into the HDF5 file


def fold(store_path: str | os.PathLike[str], journal: Journal, provenance: Mapping[str, Any],
         options: FoldOptions | None = None, **changes: Any) -> dict[str, int]:
    """Build a new store from the existing one plus the journal; atomically replace; clear journal.

    Row order: the old rows keep their order (a row whose file changed is replaced *in place*
    by the journal's newer row), rows of ``drop`` paths are removed, and paths new to the store
    are appended in commit (source) order. A journal row for a path the file already holds (a
    changed file, or a part left by a kill between rename and cleanup) replaces that row; a path
    the journal lists as failed loses its old row (the file changed and no longer decodes).
    A path that has a row is never also listed as a failure (a retried file that now decoded).

    ``keep_journal=True`` (a commit point in the middle of a run, with a writer still adding parts)
    removes only the parts that were folded, leaving the lock, manifest and newer parts alone.
    A damaged part is quarantined (:meth:`Journal.quarantine`) and left out: its images are not in
    the new store, so the next run extracts them again.

    Args:
        options: a :class:`~cnncodes.codes.fold_plan.FoldOptions`; ``changes``: its fields as
            keywords (``drop=``, ``flags=``, ``dims=``, ``compact=``...) overriding it. ``dims``
            is used when neither the old file nor the journal has a row (a first run in which
            every file failed): never a 0-d layer. Without ``compact`` a store over
            :data:`REWRITE_BELOW` bytes takes the new rows as a segment (module docstring).

    Returns counts: ``rows`` (total), ``new`` (rows added), ``replaced`` (rows rewritten in place),
    ``dropped`` (rows removed), ``failures`` (total), ``written`` (bytes of the files written).
    """
    opts = dataclasses.replace(options or FoldOptions(), **changes)
    store_path = Path(store_path)
    files = journal.part_files()
    _collect_garbage(store_path)  # segments of a fold killed before its index was renamed
    for _attempt in range(3):
        try:
            plan = plan_fold(store_path, journal, files, list(provenance["layers"]),
                             set(opts.drop), opts.dims)
            files = [p for p in files if p.exists()]  # without the parts pass 1 set aside
            counts = _execute(store_path, journal, files, provenance, plan, opts)
            break
        except DamagedPart:  # the temporary file is gone; fold the intact parts again
            files = [p for p in files if p.exists()]
    else:
        raise StoreDamagedError(f"Journal parts of {store_path} keep getting damaged while "
                                "folding; check the disk, then rerun the extract command.")
    fsync_dir(store_path.parent)
    _collect_garbage(store_path)  # segments no row points at any more
    if opts.keep_journal:
        for p in files:
            with contextlib.suppress(OSError):
                p.unlink()
    else:
        journal.clear()
    return counts


def _execute(store_path: Path, journal: Journal, files: Sequence[Path],
             provenance: Mapping[str, Any], plan: FoldPlan, opts: FoldOptions) -> dict[str, int]:
    """Write what ``plan`` says, under temporary names: a new segment and index, or a new file."""
    layers = list(provenance["layers"])
    dtype = np.dtype(provenance.get("dtype", "float32"))
    if (plan.old is not None and not opts.compact and plan.total
            and store_bytes(store_path) > REWRITE_BELOW):
        counts = _build_segmented(store_path, journal, files, provenance, plan, opts)
        if counts is not None:
            return counts
    check_free_space(store_path, journal, space_needed(plan.total, plan.dims, dtype.itemsize),
                     f"writing {store_path} ({plan.total} rows)")
    n_bad = len(journal.bad_parts)
    cls_index = {c: i for i, c in enumerate(plan.classes)}
    with atomic_path(store_path, tmp=store_path.with_name(store_path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        create_datasets(f, layers, plan, dtype, opts.compression,
                        provenance.get("layer_info") or {})
        if plan.old is not None:
            copy_old_rows(f, plan, cls_index, layers, opts.copy_block)
        seen = write_parts(f, journal, files, plan, cls_index, layers, dtype)
        if len(journal.bad_parts) != n_bad:
            raise DamagedPart
        set_flags(f, plan, opts.flags)
        fp = sorted(p for p in plan.fail if p not in seen)
        write_failures(f, fp, plan.fail)
        old_prov = plan.old.provenance if plan.old is not None else {}
        write_attrs(f.attrs, new_provenance(provenance, old_prov, opts.run_record))
        f.flush()
    return _counts(plan, len(fp), store_path.stat().st_size)


def _counts(plan: FoldPlan, failures: int, written: int) -> dict[str, int]:
    return {"rows": plan.total, "new": len(plan.new_paths), "replaced": plan.replaced,
            "dropped": len(plan.old_paths) - len(plan.keep), "failures": failures,
            "written": written}


def _build_segmented(store_path: Path, journal: Journal, files: Sequence[Path],
                     provenance: Mapping[str, Any], plan: FoldPlan,
                     opts: FoldOptions) -> dict[str, int] | None:
    """The journal's rows as one new segment, then a new index over the old segments and it.
    None when a single-file store cannot become segment 0 (no hard links here): rewrite it."""
    assert plan.old is not None
    old = plan.old
    view = old._view()
    seg_dir = segments_dir(store_path)
    if not seg_dir.is_dir():
        seg_dir.mkdir()
        fsync_dir(store_path.parent)
    seg_files = list(view.files)
    if not old.segmented:  # the single file becomes segment 0: a second name, no copy
        base = seg_dir / _segment_name()
        try:
            os.link(store_path, base)
        except OSError as e:
            log.info("cannot hard-link %s into %s (%s); rewriting it as one file", store_path,
                     seg_dir, e)
            return None
        fsync_dir(seg_dir)  # the second name is on disk before an index names it
        seg_files = [base]
    old_phys = view.phys if view.phys is not None else np.arange(view.n, dtype=np.int64)
    offsets = list(view.offsets.tolist())
    phys = np.empty(plan.total, np.int64)
    phys[:len(plan.keep)] = old_phys[plan.keep]
    written = 0
    check_free_space(store_path, journal, space_needed(
        len(plan.written), plan.dims, np.dtype(provenance.get("dtype", "float32")).itemsize),
        f"writing a segment of {len(plan.written)} new rows and the index of {store_path}")
    if plan.written:
        seg = _write_segment(seg_dir, journal, files, provenance, plan, opts.compression)
        written = seg.stat().st_size
        rows = np.array([plan.row_of[p] for p in plan.written], np.int64)
        phys[rows] = offsets[-1] + np.arange(len(rows), dtype=np.int64)
        seg_files.append(seg)
        offsets.append(offsets[-1] + len(plan.written))
    new_flags = dict(view.flags or {})
    for p, v in opts.flags.items():
        if p in plan.row_of:
            new_flags[int(phys[plan.row_of[p]])] = bool(v)
    kept_paths = {plan.old_paths[i] for i in plan.keep.tolist()} | set(plan.written)
    fp = sorted(p for p in plan.fail if p not in kept_paths)
    seg_files, offsets_a, phys, new_flags = _drop_dead(seg_files, np.asarray(offsets, np.int64),
                                                       phys, new_flags)
    if len(seg_files) > MANY_SEGMENTS:
        log.warning("%s now has %d segment files; every read opens each of them: run `cnncodes "
                    "compact %s` (one copy of the store) when no extraction is running",
                    store_path, len(seg_files), store_path)
    prov = {**new_provenance(provenance, old.provenance, opts.run_record),
            "format_version": SEGMENTED_FORMAT}
    with atomic_path(store_path, tmp=store_path.with_name(store_path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        _write_index(f, store_path, seg_files, offsets_a, phys, new_flags, plan.classes)
        write_failures(f, fp, plan.fail)
        write_attrs(f.attrs, prov)
    return _counts(plan, len(fp), written + store_path.stat().st_size)


def _segment_name() -> str:
    return f"seg-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.h5"


def _write_segment(seg_dir: Path, journal: Journal, files: Sequence[Path],
                   provenance: Mapping[str, Any], plan: FoldPlan,
                   compression: str | None) -> Path:
    """The journal rows that get a row, as an immutable single-file store of their own (labels
    indexing its own classes), fsynced with its folder before any index names it."""
    layers = list(provenance["layers"])
    dtype = np.dtype(provenance.get("dtype", "float32"))
    seg_plan = plan.segment_plan()
    classes = seg_plan.classes
    n_bad = len(journal.bad_parts)
    path = seg_dir / _segment_name()
    with atomic_path(path, tmp=path.with_name(path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        create_datasets(f, layers, seg_plan, dtype, compression,
                        provenance.get("layer_info") or {})
        write_parts(f, journal, files, seg_plan, {c: i for i, c in enumerate(classes)}, layers,
                    dtype)
        if len(journal.bad_parts) != n_bad:
            raise DamagedPart
        write_failures(f, [], {})
        write_attrs(f.attrs, {**new_provenance(provenance, {}, None), "segment": True})
    fsync_dir(seg_dir)
    return path


def _drop_dead(files: list[Path], offsets: np.ndarray, phys: np.ndarray,
               flags: dict[int, bool]) -> tuple[list[Path], np.ndarray, np.ndarray,
                                                dict[int, bool]]:
    """Leave out the segments no row points at (deleted after the new index is in place) and
    number the physical rows of the others again."""
    seg = np.searchsorted(offsets, phys, side="right") - 1
    live = np.zeros(len(files), bool)
    live[np.unique(seg)] = True
    counts = np.diff(offsets)
    shift = np.cumsum(np.where(live, 0, counts)) - np.where(live, 0, counts)  # dead rows before
    new_phys = phys - shift[seg]
    referenced = set(phys.tolist()) if flags else set()
    new_flags = {}
    for r, v in flags.items():
        if r in referenced:
            k = int(np.searchsorted(offsets, r, side="right") - 1)
            new_flags[int(r - shift[k])] = v
    kept = [p for p, a in zip(files, live.tolist(), strict=True) if a]
    new_offsets = np.concatenate([[0], np.cumsum(counts[live])]).astype(np.int64)
    return kept, new_offsets, new_phys, new_flags


def _write_index(f: h5py.File, store_path: Path, files: Sequence[Path], offsets: np.ndarray,
                 phys: np.ndarray, flags: Mapping[int, bool], classes: Sequence[str]) -> None:
    """The segment index: segment files, runs of physical rows in store order, flags, classes."""
    g = f.create_group("segments")
    rel = [p.relative_to(store_path.parent).as_posix() for p in files]
    g.create_dataset("files", data=np.array(rel, dtype=object), dtype=STR)
    g.create_dataset("rows", data=np.diff(offsets).astype(np.int64))
    g.create_dataset("bytes", data=np.array([p.stat().st_size for p in files], np.int64))
    starts = np.concatenate([[0], np.flatnonzero(np.diff(phys) != 1) + 1]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [len(phys)]])).astype(np.int64)
    r = f.create_group("runs")
    r.create_dataset("start", data=phys[starts].astype(np.int64))
    r.create_dataset("length", data=lengths)
    fl = f.create_group("flags")
    keys = sorted(flags)
    fl.create_dataset("rows", data=np.array(keys, np.int64))
    fl.create_dataset("missing", data=np.array([flags[k] for k in keys], bool))
    f.create_dataset("classes", data=np.array(list(classes), dtype=object), dtype=STR)


def _collect_garbage(store_path: Path) -> None:
    """Delete the segment files the store's index does not name (all of them when the store is
    one file or absent): left by a killed fold, or no longer pointed at. Under the writer lock."""
    seg_dir = segments_dir(store_path)
    if not seg_dir.is_dir():
        return
    named: set[str] = set()
    if store_path.is_file():
        try:
            st = FeatureStore(store_path)
            if st.segmented:
                named = {p.name for p in st._view().files}
        except Exception:  # noqa: BLE001 - a store that cannot be read: delete nothing
            return
    for p in list(seg_dir.glob("seg-*.h5")) + list(seg_dir.glob("seg-*.h5.tmp")):
        if p.name not in named:
            with contextlib.suppress(OSError):
                p.unlink()
    if not named:
        with contextlib.suppress(OSError):
            seg_dir.rmdir()  # only when empty: a file someone else put there stays


def remove_store(store_path: str | os.PathLike[str]) -> None:
    """Delete a store: its file and its segments (``--overwrite``); the journal is not touched."""
    store_path = Path(store_path)
    if store_path.is_file() or store_path.is_symlink():
        store_path.unlink()
    _collect_garbage(store_path)


def update_provenance(store_path: str | os.PathLike[str], updates: Mapping[str, Any]) -> bool:
    """Set provenance fields of a complete store (e.g. the advisor's evidence under ``advice``).

    Under the writer lock, by :func:`fold` with no journal parts: a segmented store (or a single
    file over :data:`REWRITE_BELOW` bytes, which becomes one) gets a new index only, a smaller one
    is rewritten; either is written under a temporary name and renamed, so a kill at any moment
    leaves the old store or the new one. Meant for small metadata written once (never per row).

    Returns:
        Whether the store changed (False when every field already holds that value).

    Raises:
        StoreMismatchError: ``store_path`` is not a store, or an unfinished extraction left journal
            parts (finish it first by running its command again).
    """
    updates = json.loads(json.dumps(dict(updates), default=str))

    def same(prov: Mapping[str, Any]) -> bool:
        return all(canonical(prov.get(k)) == canonical(v) for k, v in updates.items())

    return _refold(store_path, updates, compact=False, skip=same) is not None


def compact(store_path: str | os.PathLike[str]) -> dict[str, int]:
    """Rewrite a store as one file (``cnncodes compact``): every segment's live rows copied in
    order into a new single-file store, renamed over the index, then the segments deleted. Costs
    one copy of the store (and that much free disk); the rows, labels, failures and provenance
    stay the same. Returns :func:`fold`'s counts (``written``: bytes of the new file).

    Raises:
        StoreMismatchError: not a store, or an unfinished extraction left journal parts.
    """
    counts = _refold(store_path, {}, compact=True, skip=None)
    assert counts is not None
    return counts


def _refold(store_path: str | os.PathLike[str], updates: Mapping[str, Any], *, compact: bool,
            skip: Any) -> dict[str, int] | None:
    """Fold a complete store with no journal parts under the writer lock (provenance updated);
    None when ``skip(provenance)`` says there is nothing to do."""
    store_path = Path(store_path)
    if not store_path.is_file():
        raise StoreMismatchError(f"{store_path} is not a codes store (no such file); extract it "
                                 "first with `cnncodes extract`.")
    if skip is not None and skip(FeatureStore(store_path).provenance):
        return None
    if not os.access(store_path.parent, os.W_OK | os.X_OK):
        raise AccessDeniedError(f"{store_path} cannot be rewritten: its folder {store_path.parent}"
                                " is not writable (a read-only disk, or no write permission); "
                                "nothing was done. Remount it read-write, or copy the store to "
                                "a writable folder.")
    journal = Journal(store_path)
    journal.lock()
    try:
        if journal.part_files():
            raise StoreMismatchError(
                f"{store_path} has an unfinished extraction ({journal.n_parts()} journal parts in "
                f"{journal.dir}); run its extract command again to finish it, then retry.")
        st = FeatureStore(store_path)  # read again under the lock
        prov = st.provenance
        if skip is not None and skip(prov):
            return None
        prov.update(updates)
        prov["layer_info"] = {layer: st.layer_attrs(layer) for layer in st.layers}
        return fold(store_path, journal, prov, FoldOptions(compact=compact))
    finally:
        journal.unlock()
        if journal.exists() and not journal.part_files():
            journal.clear()
