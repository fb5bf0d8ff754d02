"""What a fold does, named: its options (:class:`FoldOptions`) and its plan (:class:`FoldPlan`),
made by pass 1 (:func:`plan_fold`, which reads the store and the journal's paths but no codes)
before :func:`cnncodes.codes.store.fold` writes anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .identity import FileIdentity, from_columns
from .journal import Journal
from .reader import FeatureStore


@dataclass(frozen=True, kw_only=True)
class FoldOptions:
    """How a fold writes (:func:`cnncodes.codes.store.fold`; every field has its default).

    Attributes:
        compression: HDF5 compression of new code datasets (``gzip``, ``lzf`` or None).
        run_record: appended to the provenance's ``runs``.
        copy_block: rows copied per block from the old file.
        keep_journal: a commit point in the middle of a run: remove only the folded parts.
        drop: paths whose rows and failures are removed (files deleted from the source).
        flags: path -> missing flag to set on its row (``keep_missing``).
        dims: each layer's code dimension, used when no row says it.
        compact: write one file whatever the size.
    """

    compression: str | None = None
    run_record: Mapping[str, Any] | None = None
    copy_block: int = 4096
    keep_journal: bool = False
    drop: Collection[str] = ()
    flags: Mapping[str, bool] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)
    compact: bool = False

    def __post_init__(self) -> None:  # None (the old keywords' default) means empty
        for name in ("flags", "dims"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, {})
        if self.drop is None:
            object.__setattr__(self, "drop", ())


class Failure(NamedTuple):
    """A recorded failure: why, the file's identity when it failed, and its source's index."""

    reason: str
    identity: FileIdentity
    source: int


@dataclass(kw_only=True)
class FoldPlan:
    """What pass 1 found: which old rows stay (in order), the new paths (appended in commit
    order), classes, dims and failures."""

    old: FeatureStore | None
    #: old row indices that stay, in order
    keep: np.ndarray
    new_paths: list[str]
    #: path -> row of the new store
    row_of: dict[str, int]
    classes: list[str]
    dims: dict[str, int]
    fail: dict[str, Failure]
    replaced: int
    drop: set[str]
    #: journal rows that get a row (new and changed files): path -> label, in new-row order
    written: dict[str, str]
    old_paths: list[str]

    @property
    def total(self) -> int:
        return len(self.keep) + len(self.new_paths)

    def segment_plan(self) -> FoldPlan:
        """The plan of a new segment: the journal rows that get a row, labels indexing its own
        classes."""
        return FoldPlan(old=None, keep=np.zeros(0, np.int64), new_paths=list(self.written),
                        row_of={p: j for j, p in enumerate(self.written)},
                        classes=sorted({lab for lab in self.written.values() if lab}),
                        dims=self.dims, fail={}, replaced=0, drop=self.drop,
                        written=self.written, old_paths=[])


def plan_fold(store_path: Path, journal: Journal, files: Sequence[Path], layers: Sequence[str],
              drop: set[str], dims_hint: Mapping[str, int]) -> FoldPlan:
    """Pass 1, without reading codes: rows kept, new paths, class names, dims and failures."""
    old = FeatureStore(store_path) if store_path.is_file() else None
    old_paths = list(old.paths) if old is not None else []
    dims: dict[str, int] = {k: d for k, d in (old.dims if old is not None else {}).items() if d}
    fail: dict[str, Failure] = {}
    if old is not None:
        ft = old.failure_table()
        fail = {p: Failure(r, fid, int(s)) for p, r, fid, s in zip(
            ft["paths"].tolist(), ft["reasons"].tolist(), from_columns(ft),
            ft["source"].tolist(), strict=True)}
    part_rows: dict[str, str] = {}   # path -> label, last part wins
    part_fail: set[str] = set()
    for part in journal.read_parts(files, codes=False, layers=layers):
        for p, lab in zip(part.paths.tolist(), part.labels.tolist(), strict=True):
            part_rows[p] = lab
        for k, shape in part.codes.items():
            if shape[0] and not dims.get(k):
                dims[k] = int(shape[1])
        for p, r, fid in zip(part.fail_paths.tolist(), part.fail_reasons.tolist(),
                             part.fail_ids(), strict=True):
            fail[p] = Failure(r, fid, part.source)
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
    written = {p: part_rows[p] for p in sorted((p for p in part_rows if p in row_of),
                                               key=row_of.__getitem__)}
    return FoldPlan(old=old, keep=keep, new_paths=new_paths, row_of=row_of,
                    classes=sorted(names), dims=dims, fail=fail, replaced=replaced, drop=drop,
                    written=written, old_paths=old_paths)
