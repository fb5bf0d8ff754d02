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
paths are already in the file, left by a kill between rename and cleanup, are skipped).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_path, atomic_write_text, fsync_dir
from ..errors import StoreMismatchError

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


# --------------------------------------------------------------------------------------------
# Reading


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
            raise ValueError(f"{self.path} is not a readable HDF5 file ({e}).") from e
        if version != FORMAT_VERSION:
            raise ValueError(f"{self.path} is not a cnncodes store of format {FORMAT_VERSION} "
                             f"(format_version={version}); re-extract it with this version.")

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
            raise ValueError(f"Layer {layer!r} is not in {self.path}; it holds "
                             f"{', '.join(layers)}. Extract it with --layers {layer}.")
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

    def iter_batches(self, layer: str | None = None, *, batch_size: int = 4096
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream ``(X, y)`` blocks of at most ``batch_size`` rows (memory flat in N)."""
        name = self._layer(layer)
        with self._open() as f:
            ds, lab = f["codes"][name], f["labels"]
            for s in range(0, ds.shape[0], batch_size):
                yield np.asarray(ds[s:s + batch_size], np.float32), lab[s:s + batch_size]

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
# The journal


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


class Journal:
    """Append-only part files next to the store; each part is committed atomically."""

    def __init__(self, store_path: str | os.PathLike):
        self.store_path = Path(store_path)
        self.dir = self.store_path.with_name(self.store_path.name + ".parts")
        self._lock_fd: int | None = None

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
                raise RuntimeError(
                    f"Another process is writing {self.store_path} (lock {self.dir / name} is "
                    "held); wait for it to finish or stop it first.") from None
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def manifest(self) -> dict[str, Any] | None:
        p = self.dir / "manifest.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
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
        final = self.dir / f"part-{part.seq:010d}-r{part.rank:04d}.npz"
        with atomic_path(final, tmp=final.with_suffix(".npz.tmp")) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return final

    def read_parts(self, files: Sequence[Path] | None = None, *, codes: bool = True
                   ) -> Iterator[Part]:
        """Parts (of ``files``, default all) in commit order; unreadable ones (should not happen)
        are logged, removed and skipped. ``codes=False`` reads only paths, labels and failures
        (``.codes`` then maps each layer to its dim, or is empty for a part without rows)."""
        for p in self.part_files() if files is None else files:
            try:
                with np.load(p, allow_pickle=False) as z:
                    names = [k for k in z.files if k.startswith("codes__")]
                    if codes:
                        arrays = {k[len("codes__"):]: z[k] for k in names}
                    else:  # the shapes from the .npy headers, without reading the data
                        arrays = {k[len("codes__"):]: _npz_member_shape(z, k) for k in names}
                    codes_out = arrays
                    yield Part(int(z["seq"]), z["paths"], z["labels"], codes_out, z["fail_paths"],
                               z["fail_reasons"])
            except Exception as e:  # noqa: BLE001
                log.warning("ignoring unreadable journal part %s (%s); its images will be redone",
                            p, e)
                with contextlib.suppress(OSError):
                    p.unlink()

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


# --------------------------------------------------------------------------------------------
# Folding the journal into the HDF5 file


def read_existing(path: Path) -> dict[str, Any] | None:
    """Provenance, paths and failures of an existing store, or None."""
    if not path.is_file():
        return None
    st = FeatureStore(path)
    return {"provenance": st.provenance, "paths": st.paths, "failures": st.failures}


def fold(store_path: str | os.PathLike, journal: Journal, provenance: Mapping[str, Any],
         *, compression: str | None = None, run_record: Mapping[str, Any] | None = None,
         copy_block: int = 4096, keep_journal: bool = False) -> dict[str, int]:
    """Build a new store from the existing one plus the journal; atomically replace; clear journal.

    ``keep_journal=True`` (a commit point in the middle of a run, with a writer still adding parts)
    removes only the parts that were folded, leaving the lock, manifest and newer parts alone.
    A path that has a row is never also listed as a failure (a retried file that now decoded).

    Returns counts: ``rows`` (total), ``new`` (rows added), ``failures`` (total).
    """
    files = journal.part_files()
    store_path = Path(store_path)
    old = FeatureStore(store_path) if store_path.is_file() else None
    old_paths = list(old.paths) if old is not None else []
    old_set = set(old_paths)
    old_classes = old.classes if old is not None else []
    old_prov = old.provenance if old is not None else {}
    layers = list(provenance["layers"])
    dtype = np.dtype(provenance.get("dtype", "float32"))

    # pass 1 over the journal, without the codes: counts, class names, dims, failures
    new_rows = 0
    names: set[str] = set(old_classes)
    dims: dict[str, int] = {}
    fail: dict[str, str] = {}
    if old is not None:
        fail.update(dict(old.failures))
        dims = old.dims
    for part in journal.read_parts(files, codes=False):
        keep = np.array([p not in old_set for p in part.paths.tolist()], bool)
        new_rows += int(keep.sum())
        names.update(x for x in part.labels.tolist() if x)
        for k, shape in part.codes.items():
            if shape[0]:
                dims.setdefault(k, int(shape[1]))
        fail.update(zip(part.fail_paths.tolist(), part.fail_reasons.tolist(), strict=True))
    classes = sorted(names)
    cls_index = {c: i for i, c in enumerate(classes)}
    n_old = len(old_paths)
    total = n_old + new_rows
    for layer in layers:
        dims.setdefault(layer, 0)

    with atomic_path(store_path, tmp=store_path.with_name(store_path.name + ".tmp")) as tmp, \
            h5py.File(tmp, "w") as f:
        g = f.create_group("codes")
        for layer in layers:
            d = dims[layer]
            chunk_rows = max(1, min(max(total, 1), (1 << 20) // max(d * dtype.itemsize, 1)))
            ds = g.create_dataset(
                layer, shape=(total, d), maxshape=(None, d), dtype=dtype,
                chunks=(chunk_rows, max(d, 1)) if d else None,
                compression=compression if compression not in (None, "none") else None)
            for k, v in (provenance.get("layer_info", {}).get(layer) or {}).items():
                ds.attrs[k] = v
        paths_ds = f.create_dataset("paths", shape=(total,), maxshape=(None,), dtype=STR)
        labels_ds = f.create_dataset("labels", shape=(total,), maxshape=(None,), dtype=np.int64)
        f.create_dataset("classes", data=np.array(classes, dtype=object), dtype=STR)

        # copy the old rows block by block, remapping labels to the new class list
        if old is not None:
            remap = np.array([cls_index[c] for c in old_classes] + [-1], np.int64)
            with old._open() as src:
                for s in range(0, n_old, copy_block):
                    e = min(n_old, s + copy_block)
                    for layer in layers:
                        g[layer][s:e] = src["codes"][layer][s:e]
                    paths_ds[s:e] = src["paths"][s:e]
                    lab = src["labels"][s:e]
                    labels_ds[s:e] = remap[lab]  # -1 indexes the trailing -1
        # append the journal's rows in commit order
        row = n_old
        seen = set(old_set)
        for part in journal.read_parts(files):
            keep = np.array([p not in seen for p in part.paths.tolist()], bool)
            if not keep.any():
                continue
            n = int(keep.sum())
            for layer in layers:
                g[layer][row:row + n] = part.codes[layer][keep].astype(dtype, copy=False)
            kept_paths = part.paths[keep].tolist()
            paths_ds[row:row + n] = np.array(kept_paths, dtype=object)
            labels_ds[row:row + n] = np.array(
                [cls_index[x] if x else -1 for x in part.labels[keep].tolist()], np.int64)
            seen.update(kept_paths)
            row += n
        assert row == total, (row, total)

        fg = f.create_group("failures")
        fp = sorted(p for p in fail if p not in seen)
        fg.create_dataset("paths", data=np.array(fp, dtype=object), dtype=STR)
        fg.create_dataset("reasons", data=np.array([fail[p] for p in fp], dtype=object), dtype=STR)

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
        _write_attrs(f.attrs, prov)
        f.flush()
    fsync_dir(store_path.parent)
    if keep_journal:
        for p in files:
            with contextlib.suppress(OSError):
                p.unlink()
    else:
        journal.clear()
    return {"rows": total, "new": new_rows, "failures": len(fp)}


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
