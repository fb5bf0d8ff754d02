"""How a store file's datasets are laid out and written (:mod:`cnncodes.codes.store` decides
what a fold writes and where; this module writes it): the datasets of a single-file store or a
segment, the kept old rows copied block by block, the journal's rows, the missing flags, the
failures and the provenance attributes. Every function writes into an ``h5py.File`` open under a
temporary name (:func:`cnncodes.codes.store.fold`), never into a store in place."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .fold_plan import Failure, FoldPlan
from .identity import FAILURE_COLUMNS, FILE_COLUMNS, ID_COLUMNS, to_columns
from .integrity import old_codes
from .journal import Journal
from .reader import FORMAT_VERSION, STR

#: Every chunk of the codes and labels carries HDF5's fletcher32 checksum, checked by HDF5 on every
#: read (a flipped bit is :class:`StoreDamagedError` naming the rows, never a silently wrong code).
#: Measured on a 20,000 x 1,280 float32 store (benchmarks/bench_checksum.py): see README.
CHECKSUM = True


def fs_bytes(paths: Any) -> np.ndarray:
    """Paths as the bytes of their names (``os.fsencode``: UTF-8, and the original bytes of a
    name that is not UTF-8), for the UTF-8 string datasets: the same bytes as before for any UTF-8
    name, and a file named in Latin-1 is stored and read back (``errors="surrogateescape"``)
    exactly instead of failing the fold."""
    return np.array([os.fsencode(str(p)) for p in paths], dtype=object)


class DamagedPart(Exception):
    """A part became unreadable between the fold's two passes (it is quarantined; fold again)."""


def create_datasets(f: h5py.File, layers: Sequence[str], plan: FoldPlan, dtype: np.dtype,
                    compression: str | None, layer_info: Mapping[str, Any]) -> None:
    total = plan.total
    g = f.create_group("codes")
    for layer in layers:
        d = plan.dims[layer]
        chunk_rows = max(1, min(max(total, 1), (1 << 20) // max(d * dtype.itemsize, 1)))
        ds = g.create_dataset(
            layer, shape=(total, d), maxshape=(None, d), dtype=dtype, chunks=(chunk_rows, d),
            compression=compression if compression not in (None, "none") else None,
            fletcher32=CHECKSUM)
        for k, v in (layer_info.get(layer) or {}).items():
            ds.attrs[k] = v
    f.create_dataset("paths", shape=(total,), maxshape=(None,), dtype=STR)
    f.create_dataset("labels", shape=(total,), maxshape=(None,), dtype=np.int64,
                     fletcher32=CHECKSUM)
    f.create_dataset("classes", data=np.array(plan.classes, dtype=object), dtype=STR)
    files = f.create_group("files")
    for c in FILE_COLUMNS:
        files.create_dataset(c.name, shape=(total,), maxshape=(None,), dtype=c.dtype(STR))


def copy_old_rows(f: h5py.File, plan: FoldPlan, cls_index: Mapping[str, int],
                  layers: Sequence[str], copy_block: int) -> None:
    """Copy the kept old rows block by block (in order), remapping labels to the new classes."""
    assert plan.old is not None
    n_old = len(plan.old.paths)
    keep = np.zeros(n_old, bool)
    keep[plan.keep] = True
    remap = np.array([cls_index.get(c, -1) for c in plan.old.classes] + [-1], np.int64)
    table = plan.old.file_table()
    labels = plan.old.labels
    paths = np.asarray(plan.old_paths, dtype=object)
    view = plan.old._view()
    redone = np.array([p in plan.written for p in plan.old_paths], bool)
    dst = 0
    for s in range(0, n_old, copy_block):
        e = min(n_old, s + copy_block)
        m = keep[s:e]
        n = int(m.sum())
        if not n:
            continue
        for layer in layers:
            block = old_codes(view, layer, s, e, redone[s:e])
            f["codes"][layer][dst:dst + n] = block[m]
        f["paths"][dst:dst + n] = fs_bytes(paths[s:e][m])
        f["labels"][dst:dst + n] = remap[labels[s:e][m]]  # -1: the trailing -1
        for c in FILE_COLUMNS:
            f["files"][c.name][dst:dst + n] = table[c.name][s:e][m]
        dst += n


def write_parts(f: h5py.File, journal: Journal, files: Sequence[Path], plan: FoldPlan,
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
            raise DamagedPart  # a path pass 1 did not see: the part changed since
        sel = [j for j, p in enumerate(paths) if p in plan.row_of]
        if not sel:
            continue
        rows = np.array([plan.row_of[paths[j]] for j in sel], np.int64)
        order = np.argsort(rows, kind="stable")
        rows, sel_a = rows[order], np.asarray(sel, np.int64)[order]
        if len(np.unique(rows)) != len(rows):  # not damage: one path twice in what was written
            twice = sorted({paths[j] for j in sel if paths.count(paths[j]) > 1})
            raise RuntimeError(f"A journal batch names {twice[:3]} twice "
                               "(the source listed one file twice). This is a defect of cnncodes, "
                               "not of the disk: report it with the command line; the journal is "
                               "kept, nothing was lost.")
        idx: Any = slice(int(rows[0]), int(rows[-1]) + 1) \
            if rows[-1] - rows[0] + 1 == len(rows) else rows
        for layer in layers:
            f["codes"][layer][idx] = part.codes[layer][sel_a].astype(dtype, copy=False)
        f["paths"][idx] = fs_bytes([paths[j] for j in sel_a])
        f["labels"][idx] = np.array([cls_index[x] if x else -1
                                     for x in part.labels[sel_a].tolist()], np.int64)
        g = f["files"]
        for c in ID_COLUMNS:
            g[c.name][idx] = np.asarray(getattr(part, str(c.part_key))[sel_a].tolist(),
                                        dtype=c.dtype())
        g["source"][idx] = np.full(len(sel_a), part.source, np.int64)
        g["missing"][idx] = np.zeros(len(sel_a), bool)
        seen.update(paths[j] for j in sel_a)
        written_new.update(int(r) for r in rows if r >= n_keep)
    if len(written_new) != len(plan.new_paths):
        raise DamagedPart
    return seen


def set_flags(f: h5py.File, plan: FoldPlan, flags: Mapping[str, bool]) -> None:
    """Set the ``missing`` flag of the rows named in ``flags``."""
    rows = sorted((plan.row_of[p], v) for p, v in flags.items() if p in plan.row_of)
    ds = f["files"]["missing"]
    for r, v in rows:
        ds[r] = bool(v)


def write_failures(f: h5py.File, paths: Sequence[str], fail: Mapping[str, Failure]) -> None:
    fg = f.create_group("failures")
    fg.create_dataset("paths", data=fs_bytes(list(paths)), dtype=STR)
    fg.create_dataset("reasons", data=np.array([fail[p].reason for p in paths], dtype=object),
                      dtype=STR)
    cols = {**to_columns([fail[p].identity for p in paths]),
            "source": np.array([fail[p].source for p in paths], np.int64)}
    for c in FAILURE_COLUMNS:
        fg.create_dataset(c.name, data=cols[c.name], dtype=c.dtype(STR))


def new_provenance(provenance: Mapping[str, Any], old_prov: Mapping[str, Any],
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


def write_attrs(attrs: h5py.AttributeManager, prov: Mapping[str, Any]) -> None:
    for k, v in prov.items():
        if isinstance(v, (dict, list, tuple)) or v is None:
            attrs[f"{k}_json"] = json.dumps(v)
        else:
            attrs[k] = v
