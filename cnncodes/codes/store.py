"""The HDF5 code cache: one file holding codes per layer, paths, labels, classes, failures and
the provenance needed to trust them.

Layout of ``codes.h5``::

    /codes/<layer>      float32|float16 (N, D), chunked, resizable; attrs: node, kind, pooling
    /paths              utf-8 strings (N,), relative to attrs["root"] where possible
    /labels             int64 (N,), index into /classes, -1 = unlabelled
    /classes            utf-8 strings (C,)
    /failures/paths     utf-8 strings (F,)   files that could not be decoded ...
    /failures/reasons   utf-8 strings (F,)   ... and why
    attrs               provenance (backbone, weights id + sha256, layers, pooling, preprocessing,
                        dtype, versions, created/updated, command line, run history)

Crash safety. HDF5 files are not safe against ``kill -9`` while open for writing, so the HDF5 file
is never written in place. Extraction appends each finished batch to a *journal*: a folder
``codes.h5.parts/`` of small ``.npz`` part files, each written to a temporary name and moved into
place with an atomic ``os.replace``. At the end of a run (or on Ctrl-C) the journal is *folded*:
a new HDF5 file is built from the previous file plus the parts, written to ``codes.h5.tmp`` and
atomically renamed over ``codes.h5``; only then are the parts deleted. A kill at any moment leaves
either complete parts or the previous complete file, and a rerun picks up from there (parts whose
paths are already in the file, left by a kill between rename and cleanup, are skipped). The journal
itself (parts, lock, manifest, damaged parts) is :mod:`cnncodes.codes.journal`.

This module is the only door to an existing store: :func:`fold` (new rows) and
:func:`update_provenance` (metadata such as the advisor's evidence) both rebuild it under a
temporary name; :func:`check_store_compatible` is the one compatibility check of a store (and of an
unfinished journal) against the settings a caller wants.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_path, fsync_dir
from ..errors import OptionError, StoreMismatchError
from .journal import Journal

log = logging.getLogger(__name__)


FORMAT_VERSION = 1


STR = h5py.string_dtype("utf-8")


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


def _attrs_to_dict(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str) and k.endswith("_json"):
            out[k[:-5]] = json.loads(v)
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


class FeatureStore:
    """Read access to a ``codes.h5`` file.

    >>> store = FeatureStore("codes.h5")
    >>> X, y = store.load(layer="pool")        # numpy float32 (N, D), int64 (N,)
    >>> store.paths[:3], store.classes, store.failures

    The file is opened per call, so a store object holds no file handle.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            journal = Journal(self.path)
            hint = (f" An unfinished extraction left {journal.n_parts()} part files in "
                    f"{journal.dir}; rerun the same `cnncodes extract` command to finish it."
                    if journal.exists() and journal.n_parts() else "")
            raise FileNotFoundError(f"No code store at {self.path}.{hint}")
        try:
            with self._open() as f:
                version = int(f.attrs.get("format_version", -1))
        except OSError as e:
            raise StoreMismatchError(f"{self.path} must be a readable HDF5 file. Got an error "
                                     f"instead ({e}); extract it again.") from e
        if version != FORMAT_VERSION:
            raise StoreMismatchError(
                f"{self.path} must be a cnncodes store of format {FORMAT_VERSION}. Got "
                f"format_version={version} instead; re-extract it with this version.")

    def _open(self) -> h5py.File:
        return h5py.File(self.path, "r")

    def __len__(self) -> int:
        with self._open() as f:
            return int(f["paths"].shape[0])

    def __repr__(self) -> str:
        return f"FeatureStore({os.fspath(self.path)!r})"

    @property
    def provenance(self) -> dict[str, Any]:
        with self._open() as f:
            return _attrs_to_dict(f.attrs)

    @property
    def layers(self) -> list[str]:
        return list(self.provenance["layers"])

    @property
    def dims(self) -> dict[str, int]:
        with self._open() as f:
            return {k: int(f["codes"][k].shape[1]) for k in self.layers}

    @property
    def classes(self) -> list[str]:
        with self._open() as f:
            return list(f["classes"].asstr()[()])

    @property
    def paths(self) -> np.ndarray:
        with self._open() as f:
            return np.asarray(f["paths"].asstr()[()], dtype=object)

    @property
    def root(self) -> Path:
        return Path(self.provenance.get("root", "."))

    def abspaths(self) -> list[Path]:
        root = self.root
        return [Path(p) if os.path.isabs(p) else root / p for p in self.paths]

    @property
    def labels(self) -> np.ndarray:
        with self._open() as f:
            return f["labels"][()].astype(np.int64)

    @property
    def failures(self) -> list[tuple[str, str]]:
        with self._open() as f:
            g = f["failures"]
            return list(zip(g["paths"].asstr()[()], g["reasons"].asstr()[()], strict=True))

    def _layer(self, layer: str | None) -> str:
        layers = self.layers
        if layer is None:
            return layers[0] if len(layers) == 1 else self.provenance.get("default_layer",
                                                                          layers[-1])
        if layer not in layers:
            raise OptionError(f"layer must be one of the layers in {self.path} "
                              f"({', '.join(layers)}). Got {layer!r} instead; extract it with "
                              f"--layers {layer}.")
        return layer

    def load(self, layer: str | None = None, *, rows: np.ndarray | slice | None = None,
             dtype: Any = np.float32, as_torch: bool = False,
             device: str | None = None) -> tuple[Any, Any]:
        """Codes ``X`` (N, D) and labels ``y`` (N,) of one layer.

        Args:
            layer: layer name; default the only layer, else the backbone's default layer.
            rows: optional row selection (sorted index array or slice).
            dtype: numpy dtype of ``X`` (float32 default, whatever the storage dtype).
            as_torch: return torch tensors (on ``device``) instead of numpy arrays.
        """
        name = self._layer(layer)
        with self._open() as f:
            ds = f["codes"][name]
            if rows is None:
                X = ds[()]
                y = f["labels"][()]
            else:
                X = ds[rows]
                y = f["labels"][rows]
        X = np.asarray(X, dtype=dtype)
        y = np.asarray(y, dtype=np.int64)
        if as_torch:
            import torch
            return torch.from_numpy(X).to(device or "cpu"), torch.from_numpy(y).to(device or "cpu")
        return X, y

    def info(self) -> dict[str, Any]:
        """Summary for ``cnncodes info``: counts, classes, layers, dims, provenance, failures."""
        prov = self.provenance
        labels = self.labels
        classes = self.classes
        counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
        with self._open() as f:
            layers = {}
            for name in prov["layers"]:
                ds = f["codes"][name]
                layers[name] = {"dim": int(ds.shape[1]), "dtype": str(ds.dtype),
                                **_attrs_to_dict(ds.attrs)}
        journal = Journal(self.path)
        return {
            "path": os.fspath(self.path), "images": int(labels.shape[0]),
            "unlabelled": int((labels < 0).sum()), "classes": counts, "layers": layers,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "pending_parts": journal.n_parts() if journal.exists() else 0,
            "provenance": prov,
        }



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


@dataclass
class _Plan:
    """What the fold's first pass found: the new file's size, classes, dims and failures."""

    old: FeatureStore | None
    old_paths: list[str]
    classes: list[str]
    dims: dict[str, int]
    fail: dict[str, str]
    new_rows: int

    @property
    def total(self) -> int:
        return len(self.old_paths) + self.new_rows


def fold(store_path: str | os.PathLike, journal: Journal, provenance: Mapping[str, Any],
         *, compression: str | None = None, run_record: Mapping[str, Any] | None = None,
         copy_block: int = 4096, keep_journal: bool = False) -> dict[str, int]:
    """Build a new store from the existing one plus the journal; atomically replace; clear journal.

    ``keep_journal=True`` (a commit point in the middle of a run, with a writer still adding parts)
    removes only the parts that were folded, leaving the lock, manifest and newer parts alone.
    A path that has a row is never also listed as a failure (a retried file that now decoded).
    A damaged part is quarantined (:meth:`Journal.quarantine`) and left out: its images are not in
    the new store, so the next run extracts them again.

    Returns counts: ``rows`` (total), ``new`` (rows added), ``failures`` (total).
    """
    store_path = Path(store_path)
    files = journal.part_files()
    for _attempt in range(3):
        try:
            counts = _build(store_path, journal, files, provenance, compression=compression,
                            run_record=run_record, copy_block=copy_block)
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


def _scan(store_path: Path, journal: Journal, files: Sequence[Path],
          layers: Sequence[str]) -> _Plan:
    """Pass 1, without reading codes: counts, class names, dims and failures."""
    old = FeatureStore(store_path) if store_path.is_file() else None
    old_paths = list(old.paths) if old is not None else []
    names: set[str] = set(old.classes if old is not None else [])
    dims: dict[str, int] = old.dims if old is not None else {}
    fail: dict[str, str] = dict(old.failures) if old is not None else {}
    new_rows = 0
    seen = set(old_paths)
    for part in journal.read_parts(files, codes=False, layers=layers):
        fresh = [p for p in part.paths.tolist() if p not in seen]
        new_rows += len(fresh)
        seen.update(fresh)
        names.update(x for x in part.labels.tolist() if x)
        for k, shape in part.codes.items():
            if shape[0]:
                dims.setdefault(k, int(shape[1]))
        fail.update(zip(part.fail_paths.tolist(), part.fail_reasons.tolist(), strict=True))
    for layer in layers:
        dims.setdefault(layer, 0)
    return _Plan(old, old_paths, sorted(names), dims, fail, new_rows)


def _build(store_path: Path, journal: Journal, files: Sequence[Path],
           provenance: Mapping[str, Any], *, compression: str | None,
           run_record: Mapping[str, Any] | None, copy_block: int) -> dict[str, int]:
    """One fold attempt: pass 1 (:func:`_scan`), then the new file under a temporary name."""
    layers = list(provenance["layers"])
    dtype = np.dtype(provenance.get("dtype", "float32"))
    plan = _scan(store_path, journal, files, layers)
    files = [p for p in files if p.exists()]  # without the parts pass 1 set aside
    n_bad = len(journal.bad_parts)
    cls_index = {c: i for i, c in enumerate(plan.classes)}
    with atomic_path(store_path, tmp=store_path.with_name(store_path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        _create_datasets(f, layers, plan, dtype, compression,
                         provenance.get("layer_info") or {})
        if plan.old is not None:
            _copy_old_rows(f, plan, cls_index, layers, copy_block)
        seen = _append_parts(f, journal, files, plan, cls_index, layers, dtype)
        if len(journal.bad_parts) != n_bad:
            raise _DamagedPart
        fg = f.create_group("failures")
        fp = sorted(p for p in plan.fail if p not in seen)
        fg.create_dataset("paths", data=np.array(fp, dtype=object), dtype=STR)
        fg.create_dataset("reasons", data=np.array([plan.fail[p] for p in fp], dtype=object),
                          dtype=STR)
        old_prov = plan.old.provenance if plan.old is not None else {}
        _write_attrs(f.attrs, _new_provenance(provenance, old_prov, run_record))
        f.flush()
    return {"rows": plan.total, "new": plan.new_rows, "failures": len(fp)}


def _create_datasets(f: h5py.File, layers: Sequence[str], plan: _Plan, dtype: np.dtype,
                     compression: str | None, layer_info: Mapping[str, Any]) -> None:
    total = plan.total
    g = f.create_group("codes")
    for layer in layers:
        d = plan.dims[layer]
        chunk_rows = max(1, min(max(total, 1), (1 << 20) // max(d * dtype.itemsize, 1)))
        ds = g.create_dataset(
            layer, shape=(total, d), maxshape=(None, d), dtype=dtype,
            chunks=(chunk_rows, max(d, 1)) if d else None,
            compression=compression if compression not in (None, "none") else None)
        for k, v in (layer_info.get(layer) or {}).items():
            ds.attrs[k] = v
    f.create_dataset("paths", shape=(total,), maxshape=(None,), dtype=STR)
    f.create_dataset("labels", shape=(total,), maxshape=(None,), dtype=np.int64)
    f.create_dataset("classes", data=np.array(plan.classes, dtype=object), dtype=STR)


def _copy_old_rows(f: h5py.File, plan: _Plan, cls_index: Mapping[str, int],
                   layers: Sequence[str], copy_block: int) -> None:
    """Copy the old rows block by block, remapping labels to the new class list."""
    assert plan.old is not None
    n_old = len(plan.old_paths)
    remap = np.array([cls_index[c] for c in plan.old.classes] + [-1], np.int64)
    with plan.old._open() as src:
        for s in range(0, n_old, copy_block):
            e = min(n_old, s + copy_block)
            for layer in layers:
                f["codes"][layer][s:e] = src["codes"][layer][s:e]
            f["paths"][s:e] = src["paths"][s:e]
            f["labels"][s:e] = remap[src["labels"][s:e]]  # -1 indexes the trailing -1


def _append_parts(f: h5py.File, journal: Journal, files: Sequence[Path], plan: _Plan,
                  cls_index: Mapping[str, int], layers: Sequence[str],
                  dtype: np.dtype) -> set[str]:
    """Pass 2: the journal's rows in commit order after the old ones; returns every row's path."""
    row = len(plan.old_paths)
    seen = set(plan.old_paths)
    for part in journal.read_parts(files, layers=layers):
        keep = np.array([p not in seen for p in part.paths.tolist()], bool)
        if not keep.any():
            continue
        n = int(keep.sum())
        if row + n > plan.total:  # a part changed since pass 1
            raise _DamagedPart
        for layer in layers:
            f["codes"][layer][row:row + n] = part.codes[layer][keep].astype(dtype, copy=False)
        kept_paths = part.paths[keep].tolist()
        f["paths"][row:row + n] = np.array(kept_paths, dtype=object)
        f["labels"][row:row + n] = np.array(
            [cls_index[x] if x else -1 for x in part.labels[keep].tolist()], np.int64)
        seen.update(kept_paths)
        row += n
    if row != plan.total:
        raise _DamagedPart
    return seen


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
