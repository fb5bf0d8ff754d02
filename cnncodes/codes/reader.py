"""Read access to a ``codes.h5`` store (:class:`FeatureStore`) and what identifies one.

A store is one of two layouts (:mod:`cnncodes.codes.store` describes both): a *single file*
(formats 1 and 2: every row in ``codes.h5``), or *segments* (format 3: ``codes.h5`` is a small
index naming immutable segment files in ``codes.h5.segments/`` and the order of the rows in them).
:class:`FeatureStore` shows either as one logical store; every read goes through :class:`_View`.
Writing goes through :mod:`cnncodes.codes.store` (journal + fold); this module only reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import (
    AccessDeniedError,
    IncompleteStoreError,
    NotFoundError,
    OptionError,
    StoreDamagedError,
    StoreMismatchError,
)
from .identity import FILE_COLUMNS, UNKNOWN, store_sources
from .integrity import damage_message, damaged_rows, is_checksummed
from .journal import Journal, describe_holder

log = logging.getLogger(__name__)


def _text(ds: Any) -> Any:
    """A string dataset read as ``str``; a name stored as non-UTF-8 bytes (a file named in
    Latin-1, see :func:`cnncodes.codes.store.fs_bytes`) comes back as ``os.fsdecode`` gives it."""
    return ds.asstr(errors="surrogateescape")

#: Format 2 added per-row file identity (``/files``) and the list of sources; format 1 stores
#: are read and appended to (their old rows count as unverified). Format 3 is the segment index.
FORMAT_VERSION = 2
SEGMENTED_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)


def segments_dir(path: str | os.PathLike) -> Path:
    """The folder of a store's segment files: ``codes.h5.segments/`` beside ``codes.h5``."""
    path = Path(path)
    return path.with_name(path.name + ".segments")


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes of a store on disk: the file plus its segment folder (0 when there is none)."""
    path = Path(path)
    total = path.stat().st_size if path.is_file() else 0
    seg = segments_dir(path)
    if seg.is_dir():
        total += sum(p.stat().st_size for p in seg.glob("*.h5"))
    return total


STR = h5py.string_dtype("utf-8")


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


def check_is_store(path: Path) -> int:
    """The format version of the cnncodes store at ``path``; :class:`StoreMismatchError` saying
    "not a cnncodes store" for any other file (not HDF5, HDF5 of another program, newer format)."""
    fix = ("Pass a .h5 file written by `cnncodes extract` (for `extract -o`: choose another output "
           "file; cnncodes never replaces a file it did not write).")
    try:
        with open(path, "rb"):  # permission denied said as such, not as "not a store"
            pass
    except PermissionError as e:
        raise AccessDeniedError(f"{path} cannot be read: permission denied. Check its owner and "
                                "mode (ls -l), or run as a user who may read it.") from e
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            layout = ("codes" in f and "paths" in f and "labels" in f) if version < 3 else (
                "segments" in f and "runs" in f and "classes" in f)
    except OSError as e:
        raise StoreMismatchError(f"{path} is not a cnncodes store: it must be an HDF5 file written "
                                 f"by `cnncodes extract`. Got a file HDF5 cannot open instead "
                                 f"({e}). {fix}") from e
    if version < 0 or not layout:
        raise StoreMismatchError(f"{path} is not a cnncodes store: it is an HDF5 file without "
                                 f"cnncodes' layout and provenance. {fix}")
    if version not in READABLE_FORMATS:
        raise StoreMismatchError(
            f"{path} must be a cnncodes store of format {', '.join(map(str, READABLE_FORMATS))}. "
            f"Got format_version={version} instead (a newer cnncodes wrote it); upgrade cnncodes.")
    return version


class FeatureStore:
    """Read access to a ``codes.h5`` store (either layout).

    >>> store = FeatureStore("codes.h5")
    >>> X, y = store.load(layer="pool")        # numpy float32 (N, D), int64 (N,)
    >>> store.paths[:3], store.classes, store.failures

    Files are opened per call, so a store object holds no file handle, and every call sees the
    store's latest commit.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"No code store at {self.path}."
                                f"{first_run_text(Journal(self.path).progress())}")
        self.format_version = check_is_store(self.path)

    @property
    def verified(self) -> bool:
        """Whether rows carry their file's identity (stores of format 2 and later)."""
        return self.format_version >= 2

    @property
    def segmented(self) -> bool:
        """Whether the store is an index of segment files (format 3) rather than one file."""
        return self.format_version >= SEGMENTED_FORMAT

    def _open(self) -> h5py.File:
        return h5py.File(self.path, "r")

    def _view(self) -> _View:
        return _View.open(self.path) if self.segmented else _View.single(self.path)

    def __len__(self) -> int:
        return self._view().n

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
        view = self._view()
        with h5py.File(view.files[0], "r") as f:
            return {k: int(f["codes"][k].shape[1]) for k in self.layers}

    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """The attributes of one layer's codes (``node``, ``kind``, ``pooling``)."""
        return self._layer_meta(layer)[1]

    def _layer_meta(self, layer: str) -> tuple[str, dict[str, Any]]:
        view = self._view()
        with h5py.File(view.files[0], "r") as f:
            ds = f["codes"][layer]
            return str(ds.dtype), _attrs_to_dict(ds.attrs)

    def layout(self) -> dict[str, Any]:
        """``kind`` (``single`` or ``segments``), the number of segment files and bytes on disk."""
        view = self._view()
        return {"kind": "segments" if self.segmented else "single",
                "segments": len(view.files) if self.segmented else 0,
                "runs": int(view.runs), "bytes": store_bytes(self.path)}

    @property
    def classes(self) -> list[str]:
        with self._open() as f:
            return list(_text(f["classes"])[()])

    @property
    def paths(self) -> np.ndarray:
        return self._view().gather(lambda f, k, sel: np.asarray(_text(f["paths"])[sel],
                                                                 dtype=object))

    @property
    def root(self) -> Path:
        return Path(self.provenance.get("root", "."))

    def abspaths(self) -> list[Path]:
        root = self.root
        return [Path(p) if os.path.isabs(p) else root / p for p in self.paths]

    @property
    def labels(self) -> np.ndarray:
        return self._labels(self._view())

    def _labels(self, view: _View, rows: Any = None) -> np.ndarray:
        return view.gather(lambda f, k, sel: view.remap_labels(k, f["labels"][sel]), rows)

    @property
    def failures(self) -> list[tuple[str, str]]:
        with self._open() as f:
            g = f["failures"]
            return list(zip(_text(g["paths"])[()], _text(g["reasons"])[()], strict=True))

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The sources the rows came from (``path``, ``kind``, ``root``); index = ``/files/source``."""
        return store_sources(self.provenance)

    def file_table(self) -> dict[str, np.ndarray]:
        """Per row: ``size``, ``mtime_ns``, ``hash`` of its file when it was read, ``source``
        (index into :attr:`sources`), ``missing`` (file gone, row kept by ``keep_missing``).
        Rows of a format-1 store have size -1 (unverified)."""
        view = self._view()
        out = {key: view.gather(lambda f, k, sel, key=key: _column(f, "files", key, sel))
               for key in (c.name for c in FILE_COLUMNS)}
        view.apply_flags(out["missing"])
        return out

    def failure_table(self) -> dict[str, np.ndarray]:
        """The same per recorded failure (``paths``, ``reasons`` and identity)."""
        with self._open() as f:
            g = f["failures"]
            out = _file_table(f, "failures", int(g["paths"].shape[0]))
            out["paths"] = np.asarray(_text(g["paths"])[()], dtype=object)
            out["reasons"] = np.asarray(_text(g["reasons"])[()], dtype=object)
            return out

    def nonfinite_rows(self, block: int = 8192) -> list[int]:
        """Rows whose codes hold NaN or inf in any layer (read block by block)."""
        bad: set[int] = set()
        view = self._view()
        for name in self.layers:
            for s in range(0, view.n, block):
                x = view.gather(lambda f, k, sel, name=name: f["codes"][name][sel],
                                slice(s, min(view.n, s + block)))
                bad.update((np.flatnonzero(~np.isfinite(x).all(axis=1)) + s).tolist())
        return sorted(bad)

    def checksummed(self) -> str:
        """``all`` when every file's codes carry a checksum, ``none`` (a store written before
        cnncodes checksummed codes), or ``some`` (older segments without, newer ones with)."""
        have = [is_checksummed(p) for p in self._view().files]
        return "all" if all(have) else ("some" if any(have) else "none")

    def verify(self) -> list[StoreDamagedError]:
        """Read every chunk of every file's codes and labels (``cnncodes info --verify``); one
        error per damaged file, naming its rows (empty: everything reads back)."""
        view = self._view()
        return [e for k in range(len(view.files)) if (e := view.damage(k)) is not None]

    def incomplete(self) -> dict[str, Any] | None:
        """None when the store's last extraction finished; else what is known of the unfinished
        one: ``store``, ``rows`` (in the store), ``missing`` (images still to extract; None when
        the store does not record it), ``command`` (the extract command that finishes it) and
        ``running`` (the writing process when an extraction is writing the store now)."""
        prov = self.provenance
        if prov.get("complete", True) is not False:
            return None
        journal = Journal(self.path)
        missing = prov.get("remaining")
        return {"store": os.fspath(self.path), "rows": len(self),
                "missing": int(missing) if missing is not None else None,
                "command": prov.get("command"),
                "running": journal.lock_holder() if journal.exists() else None}

    def check_complete(self, allow_incomplete: bool = False) -> dict[str, Any] | None:
        """:meth:`incomplete`'s record, after refusing an unfinished store unless
        ``allow_incomplete`` (then a warning says what is missing).

        Raises:
            IncompleteStoreError: naming how many images are missing and the command that
                finishes the store.
        """
        note = self.incomplete()
        if note is None:
            return None
        if not allow_incomplete:
            raise IncompleteStoreError(incomplete_message(note))
        log.warning("%s is incomplete (%s); reading its %d rows as asked (--allow-incomplete)",
                    self.path, _missing_text(note), note["rows"])
        return note

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
             device: str | None = None, allow_incomplete: bool = False) -> tuple[Any, Any]:
        """Codes ``X`` (N, D) and labels ``y`` (N,) of one layer.

        Args:
            layer: layer name; default the only layer, else the backbone's default layer.
            rows: optional row selection (sorted index array or slice).
            dtype: numpy dtype of ``X`` (float32 default, whatever the storage dtype).
            as_torch: return torch tensors (on ``device``) instead of numpy arrays.
            allow_incomplete: read a store whose extraction was stopped before it finished
                (refused by default: :class:`~cnncodes.errors.IncompleteStoreError`).
        """
        if not allow_incomplete:
            self.check_complete()
        name = self._layer(layer)
        view = self._view()
        if view.pieces is not None and (rows is None or (isinstance(rows, slice)
                                                         and rows.step in (None, 1))):
            X = view.read_codes(name, rows or slice(None))
        else:
            X = view.gather(lambda f, k, sel: f["codes"][name][sel], rows)
        y = self._labels(view, rows)
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
        layers = {}
        dims = self.dims
        for name in prov["layers"]:
            dtype, attrs = self._layer_meta(name)
            layers[name] = {"dim": dims[name], "dtype": dtype, **attrs}
        journal = Journal(self.path)
        table = self.file_table()
        paths = self.paths
        try:
            bad, damaged = self.nonfinite_rows(), None
        except StoreDamagedError as e:
            bad, damaged = [], str(e)
        missing = np.flatnonzero(table["missing"])
        return {
            "path": os.fspath(self.path), "images": int(labels.shape[0]),
            "unlabelled": int((labels < 0).sum()), "classes": counts, "layers": layers,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "pending_parts": journal.n_parts() if journal.exists() else 0,
            "in_progress": journal.lock_holder() if journal.exists() else None,
            "format_version": self.format_version,
            "layout": self.layout(),
            "verify": prov.get("verify", "stat") if self.verified else None,
            "unverified_rows": int((table["size"] == UNKNOWN).sum()),
            "missing_rows": {"count": int(missing.size),
                             "first": [str(paths[i]) for i in missing[:10]]},
            "nonfinite_rows": {"count": len(bad), "first": [str(paths[i]) for i in bad[:10]]},
            "checksummed": self.checksummed(), "damaged": damaged,
            "sources": self.sources,
            "provenance": prov,
        }


def first_run_text(progress: Mapping[str, Any] | None) -> str:
    """What to say of a store not created yet whose journal exists (:meth:`Journal.progress`):
    an extraction in progress (process, rows so far) or an unfinished one; '' when neither."""
    if not progress:
        return ""
    n, k, where = progress["rows"], progress["parts"], progress["dir"]
    failed = f" and {progress['failed']} failed files" if progress["failed"] else ""
    if progress["running"]:
        return (f" A first extraction into it is in progress ({describe_holder(progress['running'])}"
                f"): {n} rows{failed} journaled so far in {k} batches in {where}; the store "
                "appears at its first commit point (--commit-every) or when the run ends.")
    if k:
        return (f" An unfinished extraction left {n} rows in {k} part files in {where}; rerun "
                "the same `cnncodes extract` command to finish it.")
    return ""


def _missing_text(note: Mapping[str, Any]) -> str:
    n = note.get("missing")
    return (f"{n} images not extracted yet" if n is not None
            else "an unrecorded number of images not extracted yet")


def incomplete_message(note: Mapping[str, Any]) -> str:
    """The one line refusing an unfinished store (:meth:`FeatureStore.incomplete`'s record)."""
    path, running, command = note["store"], note.get("running"), note.get("command")
    head = f"{path} is incomplete: it holds {note['rows']} rows, {_missing_text(note)}"
    allow = ("or pass --allow-incomplete (allow_incomplete=True) to use the rows it has "
             "(the report then says so).")
    if running:
        return (f"{head}: an extraction is writing it now ({describe_holder(running)}). Wait "
                f"for it to finish, {allow}")
    if command and not str(command).startswith("python:"):
        how = f"finish it by running the command that made it again: {command}"
    else:
        how = ("finish it by calling cnncodes.extract again with the same source, store and "
               "options")
    return f"{head} (its extraction was stopped). {how[0].upper()}{how[1:]}; {allow}"


#: A reader of one segment: ``(open file, segment number, selection) -> array``.
Reader = Callable[[h5py.File, int, Any], np.ndarray]


@dataclass
class _View:
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

    @property
    def n(self) -> int:
        return int(self.offsets[-1]) if self.phys is None else len(self.phys)

    @classmethod
    def single(cls, path: Path) -> _View:
        with h5py.File(path, "r") as f:
            n = int(f["paths"].shape[0])
            command = _attr_str(f, "command")
        return cls([path], np.array([0, n], np.int64), None, store=path, command=command)

    @classmethod
    def open(cls, path: Path) -> _View:
        """Read a segment index and check that every segment it names is there, whole."""
        with h5py.File(path, "r") as f:
            names = list(_text(f["segments/files"])[()])
            counts = f["segments/rows"][()].astype(np.int64)
            sizes = f["segments/bytes"][()].astype(np.int64)
            starts = f["runs/start"][()].astype(np.int64)
            lengths = f["runs/length"][()].astype(np.int64)
            classes = list(_text(f["classes"])[()])
            flags = dict(zip(f["flags/rows"][()].tolist(), f["flags/missing"][()].tolist(),
                             strict=True))
            command = _attr_str(f, "command")
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
        remaps = []
        for p in files:
            with h5py.File(p, "r") as f:
                local = list(_text(f["classes"])[()])
            remaps.append(np.array([index.get(c, -1) for c in local] + [-1], np.int64))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        pieces = []
        for ls, ps, n_run in zip(first.tolist(), starts.tolist(), lengths.tolist(), strict=True):
            while n_run > 0:  # a run that crosses the end of a segment goes on in the next one
                k = int(np.searchsorted(offsets, ps, side="right") - 1)
                take = min(n_run, int(offsets[k + 1]) - ps)
                pieces.append((ls, ps, take, k))
                ls, ps, n_run = ls + take, ps + take, n_run - take
        return cls(files, offsets, phys, len(starts), remaps, flags,
                   np.array(pieces, np.int64).reshape(-1, 4), store=path, command=command)

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
        with h5py.File(self.files[k], "r") as f:
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
            with h5py.File(self.files[0], "r") as f, self.guard(0):
                return read(f, 0, slice(None) if rows is None else rows)
        if self.pieces is not None and (rows is None or (isinstance(rows, slice)
                                                         and rows.step in (None, 1))):
            return self._gather_range(read, *(slice(None) if rows is None else rows)
                                      .indices(self.n)[:2])
        phys = self.phys if rows is None else self.phys[rows]
        if not len(phys):
            with h5py.File(self.files[0], "r") as f:
                return read(f, 0, slice(0, 0))
        seg = np.searchsorted(self.offsets, phys, side="right") - 1
        out: np.ndarray | None = None
        for k in np.unique(seg).tolist():
            pos = np.flatnonzero(seg == k)
            local = phys[pos] - self.offsets[k]
            sel, back = _selection(local)
            with self.segment(k) as f, self.guard(k):
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
        with h5py.File(self.files[0], "r") as f:
            ds = f["codes"][name]
            out = np.empty((hi - lo, ds.shape[1]), dtype=ds.dtype)
        for k in np.unique(seg[hit]).tolist():
            with self.segment(k) as f:
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
            with h5py.File(self.files[0], "r") as f:
                return read(f, 0, slice(0, 0))
        out: np.ndarray | None = None
        for k in np.unique(seg[hit]).tolist():
            with self.segment(k) as f:
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


def _column(f: h5py.File, group: str, key: str, sel: Any) -> np.ndarray:
    """One identity column of a file for the selection (its default where a format-1 file has
    none)."""
    col = next(c for c in FILE_COLUMNS if c.name == key)
    dt, fill = col.dtype(), col.fill
    g = f.get(group)
    if g is not None and key in g:
        ds = g[key]
        return np.asarray(_text(ds)[sel] if dt is object else ds[sel], dtype=dt)
    n = len(np.arange(int(f["paths"].shape[0]))[sel])
    return np.full(n, fill, dtype=dt)


def _file_table(f: h5py.File, group: str, n: int) -> dict[str, np.ndarray]:
    """Identity columns of ``/files`` or ``/failures`` (defaults where a format-1 file lacks them)."""
    g = f.get(group)
    out: dict[str, np.ndarray] = {}
    for col in FILE_COLUMNS:
        key, dt, fill = col.name, col.dtype(), col.fill
        if g is not None and key in g:
            ds = g[key]
            out[key] = np.asarray(_text(ds)[()] if dt is object else ds[()], dtype=dt)
        else:
            out[key] = np.full(n, fill, dtype=dt)
    return out

