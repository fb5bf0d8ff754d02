"""Read access to a ``codes.h5`` store (:class:`FeatureStore`) and what identifies one.

Writing goes through :mod:`cnncodes.codes.store` (journal + fold); this module only reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import OptionError, StoreMismatchError
from .identity import UNKNOWN, FileId, store_sources
from .journal import Journal, describe_holder

#: Format 2 added per-row file identity (``/files``) and the list of sources; format 1 stores
#: are read and appended to (their old rows count as unverified).
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


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
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", -1))
            layout = "codes" in f and "paths" in f and "labels" in f
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
            hint = ""
            if journal.exists() and journal.n_parts():
                holder = journal.lock_holder()
                hint = (f" An extraction into it is in progress ({describe_holder(holder)}; "
                        f"{journal.n_parts()} batches done so far in {journal.dir}); the store "
                        "appears at its next commit point or when it ends." if holder else
                        f" An unfinished extraction left {journal.n_parts()} part files in "
                        f"{journal.dir}; rerun the same `cnncodes extract` command to finish it.")
            raise FileNotFoundError(f"No code store at {self.path}.{hint}")
        self.format_version = check_is_store(self.path)

    @property
    def verified(self) -> bool:
        """Whether rows carry their file's identity (stores of format 2 and later)."""
        return self.format_version >= 2

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

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The sources the rows came from (``path``, ``kind``, ``root``); index = ``/files/source``."""
        return store_sources(self.provenance)

    def file_table(self) -> dict[str, np.ndarray]:
        """Per row: ``size``, ``mtime_ns``, ``hash`` of its file when it was read, ``source``
        (index into :attr:`sources`), ``missing`` (file gone, row kept by ``keep_missing``).
        Rows of a format-1 store have size -1 (unverified)."""
        with self._open() as f:
            return _file_table(f, "files", int(f["paths"].shape[0]))

    def failure_table(self) -> dict[str, np.ndarray]:
        """The same per recorded failure (``paths``, ``reasons`` and identity)."""
        with self._open() as f:
            g = f["failures"]
            out = _file_table(f, "failures", int(g["paths"].shape[0]))
            out["paths"] = np.asarray(g["paths"].asstr()[()], dtype=object)
            out["reasons"] = np.asarray(g["reasons"].asstr()[()], dtype=object)
            return out

    def nonfinite_rows(self, block: int = 8192) -> list[int]:
        """Rows whose codes hold NaN or inf in any layer (read block by block)."""
        bad: set[int] = set()
        with self._open() as f:
            n = int(f["paths"].shape[0])
            for name in self.layers:
                ds = f["codes"][name]
                for s in range(0, n, block):
                    x = ds[s:min(n, s + block)]
                    bad.update((np.flatnonzero(~np.isfinite(x).all(axis=1)) + s).tolist())
        return sorted(bad)

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
        table = self.file_table()
        paths = self.paths
        bad = self.nonfinite_rows()
        missing = np.flatnonzero(table["missing"])
        return {
            "path": os.fspath(self.path), "images": int(labels.shape[0]),
            "unlabelled": int((labels < 0).sum()), "classes": counts, "layers": layers,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "pending_parts": journal.n_parts() if journal.exists() else 0,
            "in_progress": journal.lock_holder() if journal.exists() else None,
            "format_version": self.format_version,
            "verify": prov.get("verify", "stat") if self.verified else None,
            "unverified_rows": int((table["size"] == UNKNOWN).sum()),
            "missing_rows": {"count": int(missing.size),
                             "first": [str(paths[i]) for i in missing[:10]]},
            "nonfinite_rows": {"count": len(bad), "first": [str(paths[i]) for i in bad[:10]]},
            "sources": self.sources,
            "provenance": prov,
        }



def _file_table(f: h5py.File, group: str, n: int) -> dict[str, np.ndarray]:
    """Identity columns of ``/files`` or ``/failures`` (defaults where a format-1 file lacks them)."""
    g = f.get(group)
    out: dict[str, np.ndarray] = {}
    for key, dt, fill in (("size", np.int64, UNKNOWN), ("mtime_ns", np.int64, UNKNOWN),
                          ("hash", object, ""), ("source", np.int64, 0), ("missing", bool, False)):
        if g is not None and key in g:
            ds = g[key]
            out[key] = np.asarray(ds.asstr()[()] if dt is object else ds[()], dtype=dt)
        else:
            out[key] = np.full(n, fill, dtype=dt)
    return out


def row_ids(table: Mapping[str, np.ndarray]) -> list[FileId]:
    """The :class:`FileId` of each entry of a :meth:`FeatureStore.file_table`."""
    return [FileId(int(a), int(b), str(c)) for a, b, c in
            zip(table["size"], table["mtime_ns"], table["hash"], strict=True)]
