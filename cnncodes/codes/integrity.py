"""Bit rot: finding the rows of a store file whose stored bytes no longer read back.

Stores written since checksums were added carry HDF5's fletcher32 filter on every chunk of the
codes and labels (:data:`cnncodes.codes.store_layout.CHECKSUM`): HDF5 checks it on every read,
so one flipped bit is a read error, not a wrong number. A damaged compressed chunk fails to inflate
whether or not it is checksummed. Either way the read raises ``OSError``; this module scans the
file chunk by chunk to say which rows are damaged, and words the one error
(:class:`~cnncodes.errors.StoreDamagedError`) naming the store, the file and the rows.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np

from ..errors import StoreDamagedError

#: The datasets holding numbers of each row that a checksum covers (besides ``codes/<layer>``).
_ROW_DATASETS = ("labels",)


def checked_datasets(f: h5py.File) -> list[str]:
    """The per-row numeric datasets of an open store file: ``codes/<layer>`` and ``labels``."""
    names = [f"codes/{k}" for k in f["codes"]] if "codes" in f else []
    return names + [n for n in _ROW_DATASETS if n in f]


def is_checksummed(path: str | os.PathLike[str]) -> bool:
    """Whether every code dataset of a store file carries a fletcher32 checksum."""
    with h5py.File(path, "r") as f:
        names = [n for n in checked_datasets(f) if n.startswith("codes/")]
        return bool(names) and all(f[n].fletcher32 for n in names)


def damaged_rows(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """``(dataset, first row, end row)`` of every chunk of ``path`` that cannot be read back
    (checksum mismatch, a compressed chunk that does not inflate, an unreadable chunk)."""
    out: list[tuple[str, int, int]] = []
    with h5py.File(path, "r") as f:
        for name in checked_datasets(f):
            ds = f[name]
            n = int(ds.shape[0])
            step = int(ds.chunks[0]) if ds.chunks else max(n, 1)
            for s in range(0, n, step):
                e = min(n, s + step)
                try:
                    ds[s:e]
                except OSError:
                    out.append((name, s, e))
    return out


def row_ranges(rows: Sequence[int]) -> str:
    """``3-7, 12, 40-41`` for sorted rows."""
    parts: list[str] = []
    rows = sorted(set(int(r) for r in rows))
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        parts.append(str(rows[i]) if i == j else f"{rows[i]}-{rows[j]}")
        i = j + 1
    return ", ".join(parts)


def damage_message(store: Path, file: Path, rows: Sequence[int], paths: Sequence[str],
                   datasets: Collection[str], command: str | None,
                   repairable: bool = False) -> str:
    """The one line of a damaged store: where, which rows (and their files), and the repair."""
    where = "" if Path(file) == Path(store) else f" in its segment {file}"
    first = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    flag, kw = ("--repair", "repair") if repairable else ("--overwrite", "overwrite")
    if command and not str(command).startswith("python:"):
        cmd = str(command).replace(" --overwrite", "").replace(" --repair", "")
        fix = f"re-extract them: run `{cmd} {flag}`"
    else:
        fix = (f"re-extract them: call cnncodes.extract again with the same source and store and "
               f"{kw}=True")
    fix += (" (only these rows are extracted again and replaced in place)" if repairable else
            " (the store is rebuilt from the source: the damaged labels cannot be trusted)")
    what = ", ".join(sorted(datasets)) if datasets else "its data"
    return (f"{store} is damaged: {len(rows)} rows{where} (store rows {row_ranges(rows)}: "
            f"{first}) fail their checksum or cannot be read back ({what}; bit rot or a damaged "
            f"copy). Restore the store from a good copy, or {fix}.")


def old_codes(view: Any, layer: str, s: int, e: int, redone: np.ndarray) -> np.ndarray:
    """Codes of a store's rows ``s:e`` for a fold's copy (``view``: its ``_View``); where a
    chunk fails its checksum, row by row, leaving zeros in
    the rows the journal replaces (``--repair``) and raising for any other."""
    def read(a: int, b: int) -> np.ndarray:
        # view: Any, as importing View here would make an import cycle (view imports us)
        return cast(np.ndarray, view.gather(lambda g, k, sel: g["codes"][layer][sel], slice(a, b)))
    try:
        return read(s, e)
    except StoreDamagedError:
        if not redone.any():
            raise
    rows = []
    for r in range(s, e):
        try:
            rows.append(read(r, r + 1)[0])
        except StoreDamagedError:
            if not redone[r - s]:
                raise
            rows.append(None)
    ref = next((x for x in rows if x is not None), None)
    dim, dt = (ref.shape, ref.dtype) if ref is not None else ((0,), np.float32)
    if ref is None:  # every row of the block is replaced
        with h5py.File(view.files[0], "r") as g:
            dim, dt = g["codes"][layer].shape[1:], g["codes"][layer].dtype
    return np.stack([x if x is not None else np.zeros(dim, dt) for x in rows])
