"""The HDF5 code cache: one file holding codes per layer, paths, labels, classes, failures and
the provenance needed to trust them.

Layout of ``codes.h5``::

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
a store is :mod:`cnncodes.codes.reader` (:class:`FeatureStore`, re-exported here).

This module is the only door to an existing store: :func:`fold` (new rows) and
:func:`update_provenance` (metadata such as the advisor's evidence) both rebuild it under a
temporary name; :func:`check_store_compatible` is the one compatibility check of a store (and of an
unfinished journal) against the settings a caller wants.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_path, fsync_dir
from ..errors import StoreMismatchError
from .journal import Journal
from .reader import (
    FORMAT_VERSION,
    STR,
    FeatureStore,
    _attrs_to_dict,
)

log = logging.getLogger(__name__)


#: Provenance fields that must agree for codes to be appended to or resumed in the same file.
CONFIG_FIELDS = ("backbone", "weights", "weights_sha256", "layers", "pooling", "preprocessing",
                 "dtype")


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                fields: Sequence[str] = CONFIG_FIELDS) -> list[str]:
    """Human-readable list of fields where ``old`` and ``new`` disagree."""
    out = []
    for f in fields:
        a, b = old.get(f), new.get(f)
        if canonical(a) != canonical(b):
            out.append(f"{f}: file has {_short(a)}, requested {_short(b)}")
    return out


def canonical(v: Any) -> Any:
    """Comparable form of a provenance value (lists for tuples, floats rounded to 6 places)."""
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, Mapping):
        return {k: canonical(x) for k, x in v.items()}
    if isinstance(v, float):
        return round(v, 6)
    return v


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) < 120 else s[:117] + "..."


# --------------------------------------------------------------------------------------------
# Compatibility: the one check of a store (and its journal) against requested settings


def check_store_compatible(path: str | os.PathLike, config: Mapping[str, Any], *,
                           fields: Sequence[str] = CONFIG_FIELDS, layer: str | None = None,
                           journal: bool = True, what: str | None = None,
                           fix: str | None = None) -> None:
    """Raise :class:`StoreMismatchError` if the store at ``path`` (or, with ``journal``, the
    manifest of its unfinished extraction) was made with other settings than ``config``.

    Args:
        path: the ``.h5`` store; a missing file (and an empty journal) passes.
        config: requested provenance values (at least ``fields``; with ``layer`` also
            ``layer_info[layer]["pooling"]`` when known).
        fields: provenance fields that must agree (:data:`CONFIG_FIELDS` for appending codes).
        layer: one layer that must be in the store with the same effective pooling (the check a
            reader of a single layer needs) instead of comparing the whole layer list.
        journal: also check an unfinished extraction's manifest.
        what: who asks, prefixed to the message (e.g. ``CNNCodes(cache='x.h5')``).
        fix: the advice that ends the message (default: another file or ``--overwrite``).

    Raises:
        StoreMismatchError: naming every differing field, the file's value and the requested one.
    """
    path = Path(path)
    fix = fix or (f"Use another output file, or --overwrite (overwrite=True) to discard {path} "
                  "and extract again.")
    lead = f"{what}: " if what else ""
    if path.is_file():
        store = FeatureStore(path)
        prov = store.provenance
        diff = config_diff(prov, config, fields)
        if layer is not None:
            diff += _layer_diff(store, layer, config)
        if diff:
            raise StoreMismatchError(f"{lead}{path} was extracted with a different configuration "
                                     "(" + "; ".join(diff) + "). " + fix)
    if journal:
        j = Journal(path)
        manifest = j.manifest()
        if manifest is not None and j.part_files():
            diff = config_diff(manifest, config, fields)
            if diff:
                raise StoreMismatchError(f"{lead}An unfinished extraction into {path} used a "
                                         "different configuration (" + "; ".join(diff) + "). "
                                         "Rerun it with its own options to finish it, or: " + fix)


def _layer_diff(store: FeatureStore, layer: str, config: Mapping[str, Any]) -> list[str]:
    """The layer is in the store and pooled the same way (its per-layer attrs)."""
    layers = store.layers
    if layer not in layers:
        return [f"layers: file has {layers}, requested {layer}"]
    want = ((config.get("layer_info") or {}).get(layer) or {}).get("pooling")
    with store._open() as f:
        have = _attrs_to_dict(f["codes"][layer].attrs).get("pooling")
    if want is not None and have is not None and have != want:
        return [f"pooling of {layer}: file has {have}, requested {want}"]
    return []


# --------------------------------------------------------------------------------------------
# Folding the journal into the HDF5 file


class _DamagedPart(Exception):
    """A part became unreadable between the fold's two passes (it is quarantined; fold again)."""


#: Identity columns of ``/files`` (per row) and ``/failures`` (per failure).
_ID_COLUMNS = (("size", np.int64), ("mtime_ns", np.int64), ("hash", STR), ("source", np.int64))


@dataclass
class _Plan:
    """What the fold's first pass found: which old rows stay (in order), the new paths (appended
    in commit order), classes, dims and failures."""

    old: FeatureStore | None
    keep: np.ndarray                 # old row indices that stay, in order
    new_paths: list[str]
    row_of: dict[str, int]           # path -> row of the new file
    classes: list[str]
    dims: dict[str, int]
    fail: dict[str, tuple[str, int, int, str, int]]  # path -> reason, size, mtime, hash, source
    replaced: int
    drop: set[str]

    @property
    def total(self) -> int:
        return len(self.keep) + len(self.new_paths)


def fold(store_path: str | os.PathLike, journal: Journal, provenance: Mapping[str, Any],
         *, compression: str | None = None, run_record: Mapping[str, Any] | None = None,
         copy_block: int = 4096, keep_journal: bool = False, drop: Collection[str] = (),
         flags: Mapping[str, bool] | None = None,
         dims: Mapping[str, int] | None = None) -> dict[str, int]:
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
        drop: paths whose rows and failures are removed (files deleted from the source).
        flags: path -> missing flag to set on its row (``keep_missing``: file gone, row kept).
        dims: each layer's code dimension (from the backbone), used when neither the old file nor
            the journal has a row (a first run in which every file failed): never a 0-d layer.

    Returns counts: ``rows`` (total), ``new`` (rows added), ``replaced`` (rows rewritten in place),
    ``dropped`` (rows removed), ``failures`` (total).
    """
    store_path = Path(store_path)
    files = journal.part_files()
    for _attempt in range(3):
        try:
            counts = _build(store_path, journal, files, provenance, compression=compression,
                            run_record=run_record, copy_block=copy_block, drop=set(drop),
                            flags=dict(flags or {}), dims=dict(dims or {}))
            break
        except _DamagedPart:  # the temporary file is gone; fold the intact parts again
            files = [p for p in files if p.exists()]
    else:
        raise RuntimeError(f"Journal parts of {store_path} keep getting damaged while folding; "
                           "check the disk, then rerun the extract command.")
    fsync_dir(store_path.parent)
    if keep_journal:
        for p in files:
            with contextlib.suppress(OSError):
                p.unlink()
    else:
        journal.clear()
    return counts


def _scan(store_path: Path, journal: Journal, files: Sequence[Path], layers: Sequence[str],
          drop: set[str], dims_hint: Mapping[str, int]) -> _Plan:
    """Pass 1, without reading codes: rows kept, new paths, class names, dims and failures."""
    old = FeatureStore(store_path) if store_path.is_file() else None
    old_paths = list(old.paths) if old is not None else []
    dims: dict[str, int] = {k: d for k, d in (old.dims if old is not None else {}).items() if d}
    fail: dict[str, tuple[str, int, int, str, int]] = {}
    if old is not None:
        ft = old.failure_table()
        fail = {p: (r, int(a), int(b), str(c), int(s)) for p, r, a, b, c, s in zip(
            ft["paths"], ft["reasons"], ft["size"], ft["mtime_ns"], ft["hash"], ft["source"],
            strict=True)}
    part_rows: dict[str, str] = {}   # path -> label, last part wins
    part_fail: set[str] = set()
    for part in journal.read_parts(files, codes=False, layers=layers):
        for p, lab in zip(part.paths.tolist(), part.labels.tolist(), strict=True):
            part_rows[p] = lab
        for k, shape in part.codes.items():
            if shape[0] and not dims.get(k):
                dims[k] = int(shape[1])
        for p, r, a, b, c in zip(part.fail_paths.tolist(), part.fail_reasons.tolist(),
                                 part.fail_sizes.tolist(), part.fail_mtimes.tolist(),
                                 part.fail_hashes.tolist(), strict=True):
            fail[p] = (r, int(a), int(b), str(c), part.source)
            part_fail.add(p)
    part_fail -= set(part_rows)
    keep = np.array([i for i, p in enumerate(old_paths)
                     if p not in drop and p not in part_fail], np.int64)
    row_of = {old_paths[i]: r for r, i in enumerate(keep.tolist())}
    new_paths = [p for p in part_rows if p not in row_of and p not in drop]
    row_of.update({p: len(keep) + j for j, p in enumerate(new_paths)})
    names = {lab for p, lab in part_rows.items() if lab and p not in drop}
    if old is not None and len(keep):
        old_cls, old_lab = old.classes, old.labels[keep]
        stays = np.array([old_paths[i] not in part_rows for i in keep.tolist()], bool)
        names.update(old_cls[i] for i in np.unique(old_lab[stays]).tolist() if i >= 0)
    for layer in layers:
        if not dims.get(layer):
            dims[layer] = int(dims_hint.get(layer) or 0)
        if dims[layer] <= 0:
            raise RuntimeError(f"The code dimension of layer {layer} of {store_path} is unknown "
                               "(no rows and no backbone dimension); this is a bug in cnncodes.")
    for p in drop:
        fail.pop(p, None)
    replaced = sum(1 for p in part_rows if p in row_of and row_of[p] < len(keep))
    return _Plan(old, keep, new_paths, row_of, sorted(names), dims, fail, replaced, drop)


def _build(store_path: Path, journal: Journal, files: Sequence[Path],
           provenance: Mapping[str, Any], *, compression: str | None,
           run_record: Mapping[str, Any] | None, copy_block: int, drop: set[str],
           flags: dict[str, bool], dims: dict[str, int]) -> dict[str, int]:
    """One fold attempt: pass 1 (:func:`_scan`), then the new file under a temporary name."""
    layers = list(provenance["layers"])
    dtype = np.dtype(provenance.get("dtype", "float32"))
    plan = _scan(store_path, journal, files, layers, drop, dims)
    files = [p for p in files if p.exists()]  # without the parts pass 1 set aside
    n_bad = len(journal.bad_parts)
    cls_index = {c: i for i, c in enumerate(plan.classes)}
    with atomic_path(store_path, tmp=store_path.with_name(store_path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        _create_datasets(f, layers, plan, dtype, compression,
                         provenance.get("layer_info") or {})
        if plan.old is not None:
            _copy_old_rows(f, plan, cls_index, layers, copy_block)
        seen = _write_parts(f, journal, files, plan, cls_index, layers, dtype)
        if len(journal.bad_parts) != n_bad:
            raise _DamagedPart
        _set_flags(f, plan, flags)
        fp = sorted(p for p in plan.fail if p not in seen)
        _write_failures(f, fp, plan.fail)
        old_prov = plan.old.provenance if plan.old is not None else {}
        _write_attrs(f.attrs, _new_provenance(provenance, old_prov, run_record))
        f.flush()
    n_old = len(plan.old.paths) if plan.old is not None else 0
    return {"rows": plan.total, "new": len(plan.new_paths), "replaced": plan.replaced,
            "dropped": n_old - len(plan.keep), "failures": len(fp)}


def _create_datasets(f: h5py.File, layers: Sequence[str], plan: _Plan, dtype: np.dtype,
                     compression: str | None, layer_info: Mapping[str, Any]) -> None:
    total = plan.total
    g = f.create_group("codes")
    for layer in layers:
        d = plan.dims[layer]
        chunk_rows = max(1, min(max(total, 1), (1 << 20) // max(d * dtype.itemsize, 1)))
        ds = g.create_dataset(
            layer, shape=(total, d), maxshape=(None, d), dtype=dtype, chunks=(chunk_rows, d),
            compression=compression if compression not in (None, "none") else None)
        for k, v in (layer_info.get(layer) or {}).items():
            ds.attrs[k] = v
    f.create_dataset("paths", shape=(total,), maxshape=(None,), dtype=STR)
    f.create_dataset("labels", shape=(total,), maxshape=(None,), dtype=np.int64)
    f.create_dataset("classes", data=np.array(plan.classes, dtype=object), dtype=STR)
    files = f.create_group("files")
    for key, dt in _ID_COLUMNS:
        files.create_dataset(key, shape=(total,), maxshape=(None,), dtype=dt)
    files.create_dataset("missing", shape=(total,), maxshape=(None,), dtype=bool)


def _copy_old_rows(f: h5py.File, plan: _Plan, cls_index: Mapping[str, int],
                   layers: Sequence[str], copy_block: int) -> None:
    """Copy the kept old rows block by block (in order), remapping labels to the new classes."""
    assert plan.old is not None
    n_old = len(plan.old.paths)
    keep = np.zeros(n_old, bool)
    keep[plan.keep] = True
    remap = np.array([cls_index.get(c, -1) for c in plan.old.classes] + [-1], np.int64)
    table = plan.old.file_table()
    with plan.old._open() as src:
        dst = 0
        for s in range(0, n_old, copy_block):
            e = min(n_old, s + copy_block)
            m = keep[s:e]
            n = int(m.sum())
            if not n:
                continue
            for layer in layers:
                f["codes"][layer][dst:dst + n] = src["codes"][layer][s:e][m]
            f["paths"][dst:dst + n] = src["paths"][s:e][m]
            f["labels"][dst:dst + n] = remap[src["labels"][s:e][m]]  # -1: the trailing -1
            for key, _ in _ID_COLUMNS:
                vals = table[key][s:e][m]
                f["files"][key][dst:dst + n] = vals.astype(object) if key == "hash" else vals
            f["files"]["missing"][dst:dst + n] = table["missing"][s:e][m]
            dst += n


def _write_parts(f: h5py.File, journal: Journal, files: Sequence[Path], plan: _Plan,
                 cls_index: Mapping[str, int], layers: Sequence[str],
                 dtype: np.dtype) -> set[str]:
    """Pass 2: each journal row into its row (appended, or in place of the old one); returns
    every row's path."""
    seen = {str(p) for p in (plan.old.paths[plan.keep] if plan.old is not None else [])}
    written_new: set[int] = set()
    n_keep = len(plan.keep)
    for part in journal.read_parts(files, layers=layers):
        paths = part.paths.tolist()
        if not paths:
            continue
        if any(p not in plan.row_of and p not in plan.drop for p in paths):
            raise _DamagedPart  # a path pass 1 did not see: the part changed since
        sel = [j for j, p in enumerate(paths) if p in plan.row_of]
        if not sel:
            continue
        rows = np.array([plan.row_of[paths[j]] for j in sel], np.int64)
        order = np.argsort(rows, kind="stable")
        rows, sel_a = rows[order], np.asarray(sel, np.int64)[order]
        if len(np.unique(rows)) != len(rows):
            raise _DamagedPart
        idx: Any = slice(int(rows[0]), int(rows[-1]) + 1) \
            if rows[-1] - rows[0] + 1 == len(rows) else rows
        for layer in layers:
            f["codes"][layer][idx] = part.codes[layer][sel_a].astype(dtype, copy=False)
        f["paths"][idx] = np.array([paths[j] for j in sel_a], dtype=object)
        f["labels"][idx] = np.array([cls_index[x] if x else -1
                                     for x in part.labels[sel_a].tolist()], np.int64)
        g = f["files"]
        g["size"][idx] = part.sizes[sel_a]
        g["mtime_ns"][idx] = part.mtimes[sel_a]
        g["hash"][idx] = np.array(part.hashes[sel_a].tolist(), dtype=object)
        g["source"][idx] = np.full(len(sel_a), part.source, np.int64)
        g["missing"][idx] = np.zeros(len(sel_a), bool)
        seen.update(paths[j] for j in sel_a)
        written_new.update(int(r) for r in rows if r >= n_keep)
    if len(written_new) != len(plan.new_paths):
        raise _DamagedPart
    return seen


def _set_flags(f: h5py.File, plan: _Plan, flags: Mapping[str, bool]) -> None:
    """Set the ``missing`` flag of the rows named in ``flags``."""
    rows = sorted((plan.row_of[p], v) for p, v in flags.items() if p in plan.row_of)
    ds = f["files"]["missing"]
    for r, v in rows:
        ds[r] = bool(v)


def _write_failures(f: h5py.File, paths: Sequence[str],
                    fail: Mapping[str, tuple[str, int, int, str, int]]) -> None:
    fg = f.create_group("failures")
    fg.create_dataset("paths", data=np.array(list(paths), dtype=object), dtype=STR)
    for i, (key, dt) in enumerate((("reasons", STR), *_ID_COLUMNS)):
        vals = [fail[p][i] for p in paths]
        fg.create_dataset(key, data=np.array(vals, dtype=object if dt is STR else dt), dtype=dt)


def is_disk_full(e: BaseException) -> bool:
    """Whether an error means the disk (or the user's quota) is full; HDF5 reports it in its
    message rather than in ``errno``."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota" in text


def disk_full_message(store_path: Path, journal: Journal, e: BaseException) -> str:
    """What a full disk did and did not do, and how to go on."""
    where = getattr(e, "filename", None) or store_path
    kept = (f"the {journal.n_parts()} batches already extracted are kept in {journal.dir}"
            if journal.n_parts() else "no finished batch was lost")
    size = store_path.stat().st_size if store_path.is_file() else 0
    need = (f" (finishing needs room for a new copy of the store: about {size / 2**20:.0f} MiB "
            "plus the new rows)" if size else "")
    return (f"The disk holding {store_path.parent} is full (no space left while writing "
            f"{where}). Nothing is lost: {store_path} is as it was before this run and {kept}. "
            f"Free some space{need}, then run the same command again to continue.")


def _new_provenance(provenance: Mapping[str, Any], old_prov: Mapping[str, Any],
                    run_record: Mapping[str, Any] | None) -> dict[str, Any]:
    prov = dict(provenance)
    prov.pop("layer_info", None)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    prov["created"] = old_prov.get("created", now)
    prov["updated"] = now
    runs = list(old_prov.get("runs", []))
    if run_record is not None:
        runs.append(dict(run_record))
    prov["runs"] = runs
    prov["format_version"] = FORMAT_VERSION
    return prov


def update_provenance(store_path: str | os.PathLike, updates: Mapping[str, Any]) -> bool:
    """Set provenance fields of a complete store (e.g. the advisor's evidence under ``advice``).

    The one door for changing an existing store: under the writer lock, the store is rebuilt by
    :func:`fold` (with no journal parts) under a temporary name and atomically renamed over the
    old file, so a kill at any moment leaves the old store or the new one. Costs one copy of the
    store; meant for small metadata written once (never per row).

    Returns:
        Whether the file changed (False when every field already holds that value).

    Raises:
        StoreMismatchError: ``store_path`` is not a store, or an unfinished extraction left journal
            parts (finish it first by running its command again).
    """
    store_path = Path(store_path)
    if not store_path.is_file():
        raise StoreMismatchError(f"{store_path} is not a codes store (no such file); extract it "
                                 "first with `cnncodes extract`.")

    def same(prov: Mapping[str, Any]) -> bool:
        return all(canonical(prov.get(k)) == canonical(json.loads(json.dumps(v, default=str)))
                   for k, v in updates.items())

    if same(FeatureStore(store_path).provenance):
        return False
    journal = Journal(store_path)
    journal.lock()
    try:
        if journal.part_files():
            raise StoreMismatchError(
                f"{store_path} has an unfinished extraction ({journal.n_parts()} journal parts in "
                f"{journal.dir}); run its extract command again to finish it, then retry.")
        st = FeatureStore(store_path)  # read again under the lock
        prov = st.provenance
        if same(prov):
            return False
        prov.update(json.loads(json.dumps(dict(updates), default=str)))
        with st._open() as f:
            prov["layer_info"] = {layer: {k: (v.item() if hasattr(v, "item") else v)
                                          for k, v in f["codes"][layer].attrs.items()}
                                  for layer in f["codes"]}
        fold(store_path, journal, prov, copy_block=4096)
        return True
    finally:
        journal.unlock()
        if journal.exists() and not journal.part_files():
            journal.clear()


def _write_attrs(attrs: h5py.AttributeManager, prov: Mapping[str, Any]) -> None:
    for k, v in prov.items():
        if isinstance(v, (dict, list, tuple)) or v is None:
            attrs[f"{k}_json"] = json.dumps(v)
        else:
            attrs[k] = v
