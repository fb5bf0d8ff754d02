"""Read access to a ``codes.h5`` store (:class:`FeatureStore`) and what identifies one.

A store is one of two layouts (:mod:`cnncodes.codes.store` describes both): a *single file*
(formats 1 and 2: every row in ``codes.h5``), or *segments* (format 3: ``codes.h5`` is a small
index naming immutable segment files in ``codes.h5.segments/`` and the order of the rows in them).
:class:`FeatureStore` shows either as one logical store; every read goes through :class:`_View`.
Writing goes through :mod:`cnncodes.codes.store` (journal + fold); this module only reads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import h5py
import numpy as np

from ..backbones.catalog import missing_layer_fix
from ..errors import (
    AccessDeniedError,
    IncompleteStoreError,
    NotFoundError,
    OptionError,
    StoreDamagedError,
    StoreMismatchError,
)
from .identity import FILE_COLUMNS, UNKNOWN, store_sources
from .integrity import is_checksummed
from .journal import Journal
from .unfinished import first_run_text, incomplete_message, missing_text
from .view import SEGMENTED_FORMAT, Reader, View, segments_dir
from .view import text as _text

_View = View

log = logging.getLogger(__name__)


#: Format 2 added per-row file identity (``/files``) and the list of sources; format 1 stores
#: are read and appended to (their old rows count as unverified). Format 3 is the segment index.
FORMAT_VERSION = 2

READABLE_FORMATS = (1, 2, 3)


def store_bytes(path: str | os.PathLike[str]) -> int:
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_commit(method: Callable[Concatenate[FeatureStore, _P], _R]
                ) -> Callable[Concatenate[FeatureStore, _P], _R]:
    """Run a :class:`FeatureStore` method inside one :meth:`FeatureStore.snapshot`."""
    @functools.wraps(method)
    def call(self: FeatureStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.snapshot():
            return method(self, *args, **kwargs)
    return call


class FeatureStore:
    """Read access to a ``codes.h5`` store (either layout).

    >>> store = FeatureStore("codes.h5")
    >>> X, y = store.load(layer="pool")        # numpy float32 (N, D), int64 (N,)
    >>> store.paths[:3], store.classes, store.failures

    A store object holds no file handle between calls. Each call reads one commit: the store as
    it was when the call began, its files held open until it returns, so a fold that lands
    meanwhile (an extraction writing the store) cannot mix two commits in one result.
    ``with store.snapshot():`` makes several calls read the same commit.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"No code store at {self.path}."
                                f"{first_run_text(Journal(self.path).progress())}")
        check_is_store(self.path)
        self._local = threading.local()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[FeatureStore]:
        """Every read of this store inside the block sees the commit current when it began
        (its files are held open: a fold meanwhile changes nothing read here)."""
        if getattr(self._local, "snap", None) is not None:
            yield self
            return
        view, version = View.snapshot(self.path)
        self._local.snap = (view, version)
        try:
            yield self
        finally:
            self._local.snap = None
            view.close()

    @property
    def format_version(self) -> int:
        snap = getattr(self._local, "snap", None)
        if snap is not None:
            return int(snap[1])
        with h5py.File(self.path, "r") as f:
            return int(f.attrs.get("format_version", -1))

    @property
    def verified(self) -> bool:
        """Whether rows carry their file's identity (stores of format 2 and later)."""
        return self.format_version >= 2

    @property
    def segmented(self) -> bool:
        """Whether the store is an index of segment files (format 3) rather than one file."""
        return self.format_version >= SEGMENTED_FORMAT

    def _open(self) -> Any:
        snap = getattr(self._local, "snap", None)
        if snap is not None:
            return contextlib.nullcontext(snap[0].index)
        return h5py.File(self.path, "r")

    def _view(self) -> _View:
        snap = getattr(self._local, "snap", None)
        if snap is not None:
            return cast(_View, snap[0])  # set by snapshot(); threading.local is untyped
        return _View.open(self.path) if self.segmented else _View.single(self.path)

    @_one_commit
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
    @_one_commit
    def dims(self) -> dict[str, int]:
        view = self._view()
        with view.file(0) as f:
            return {k: int(f["codes"][k].shape[1]) for k in self.layers}

    @_one_commit
    def layer_attrs(self, layer: str) -> dict[str, Any]:
        """The attributes of one layer's codes (``node``, ``kind``, ``pooling``)."""
        return self._layer_meta(layer)[1]

    def _layer_meta(self, layer: str) -> tuple[str, dict[str, Any]]:
        view = self._view()
        with view.file(0) as f:
            ds = f["codes"][layer]
            return str(ds.dtype), _attrs_to_dict(ds.attrs)

    @_one_commit
    def layout(self) -> dict[str, Any]:
        """``kind`` (``single`` or ``segments``), the number of segment files and bytes on disk."""
        view = self._view()
        return {"kind": "segments" if self.segmented else "single",
                "segments": len(view.files) if self.segmented else 0,
                "runs": int(view.runs), "bytes": view.nbytes() or store_bytes(self.path)}

    @property
    def classes(self) -> list[str]:
        with self._open() as f:
            return list(_text(f["classes"])[()])

    @property
    @_one_commit
    def paths(self) -> np.ndarray:
        return self._view().gather(lambda f, k, sel: np.asarray(_text(f["paths"])[sel],
                                                                 dtype=object))

    @property
    def root(self) -> Path:
        return Path(self.provenance.get("root", "."))

    @_one_commit
    def abspaths(self) -> list[Path]:
        root = self.root
        return [Path(p) if os.path.isabs(p) else root / p for p in self.paths]

    @property
    @_one_commit
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
        """The sources the rows came from (``path``, ``kind``, ``root``); index =
        ``/files/source``."""
        return store_sources(self.provenance)

    @_one_commit
    def file_table(self) -> dict[str, np.ndarray]:
        """Per row: ``size``, ``mtime_ns``, ``hash`` of its file when it was read, ``source``
        (index into :attr:`sources`), ``missing`` (file gone, row kept by ``keep_missing``).
        Rows of a format-1 store have size -1 (unverified)."""
        view = self._view()
        out = {key: view.gather(_files_column(key)) for key in (c.name for c in FILE_COLUMNS)}
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

    @_one_commit
    def nonfinite_rows(self, block: int = 8192) -> list[int]:
        """Rows whose codes hold NaN or inf in any layer (read block by block)."""
        bad: set[int] = set()
        view = self._view()
        for name in self.layers:
            for s in range(0, view.n, block):
                x = view.gather(_codes_of(name), slice(s, min(view.n, s + block)))
                bad.update((np.flatnonzero(~np.isfinite(x).all(axis=1)) + s).tolist())
        return sorted(bad)

    @_one_commit
    def checksummed(self) -> str:
        """``all`` when every file's codes carry a checksum, ``none`` (a store written before
        cnncodes checksummed codes), or ``some`` (older segments without, newer ones with)."""
        have = [is_checksummed(p) for p in self._view().files]
        return "all" if all(have) else ("some" if any(have) else "none")

    @_one_commit
    def verify(self) -> list[StoreDamagedError]:
        """Read every chunk of every file's codes and labels (``cnncodes info --verify``); one
        error per damaged file, naming its rows (empty: everything reads back)."""
        view = self._view()
        return [e for k in range(len(view.files)) if (e := view.damage(k)) is not None]

    @_one_commit
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

    @_one_commit
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
                    self.path, missing_text(note), note["rows"])
        return note

    def _layer(self, layer: str | None) -> str:
        layers = self.layers
        if layer is None:
            return layers[0] if len(layers) == 1 else self.provenance.get("default_layer",
                                                                          layers[-1])
        if layer not in layers:
            fix = missing_layer_fix(self.provenance.get("backbone"), layer)
            raise OptionError(f"layer must be one of the layers in {self.path} "
                              f"({', '.join(layers)}). Got {layer!r} instead; {fix}.")
        return layer

    @_one_commit
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

    def export(self, path: str | os.PathLike[str], layer: str | None = None, *,
               allow_incomplete: bool = False) -> dict[str, Any]:
        """Write one layer's codes, labels, paths, classes and provenance to ``.npz``, ``.csv``
        or ``.parquet`` (by extension; see :mod:`cnncodes.codes.export_codes`), all of one
        commit."""
        from .export_codes import export_store

        with self.snapshot():
            return export_store(self, path, layer=layer, allow_incomplete=allow_incomplete)

    @_one_commit
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


def _files_column(key: str) -> Reader:
    """A segment reader of one ``/files`` identity column (:func:`_column`)."""
    return lambda f, k, sel: _column(f, "files", key, sel)


def _codes_of(layer: str) -> Reader:
    """A segment reader of one layer's codes."""
    return lambda f, k, sel: f["codes"][layer][sel]


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
    """Identity columns of ``/files`` or ``/failures`` (defaults where a format-1 file lacks
    them)."""
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

