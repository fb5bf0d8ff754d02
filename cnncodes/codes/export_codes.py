"""Leaving the tool: one layer of a code store written as ``.npz``, ``.csv`` or ``.parquet`` for
code that does not use cnncodes (NumPy, pandas, R, Spark...).

Every format holds the same things: the codes (N, D) of one layer, the label index of each row
(-1: unlabelled), its class name and image path, the class list, and the store's provenance
(backbone, weights, layer, input size, preprocessing, versions, the command...) as JSON:

* ``.npz``: arrays ``codes`` (float32), ``labels`` (int64), ``paths``, ``classes`` (unicode) and
  ``provenance`` (a one-element unicode array holding the JSON; ``json.loads(z["provenance"][0])``).
  No pickles: ``np.load(path)`` reads it with ``allow_pickle=False``. The codes are streamed into
  the archive block by block.
* ``.csv``: columns ``path,label,class,code_0..code_{D-1}`` (floats with 9 significant digits,
  which round-trip float32 exactly), and the provenance in a sidecar ``<name>.csv.json``.
* ``.parquet`` (needs ``pyarrow``: ``pip install pyarrow`` or ``pip install cnncodes[export]``):
  columns ``path``, ``label``, ``class`` and ``codes`` (a fixed-size list of float32), the
  provenance JSON under the schema metadata key ``cnncodes``; written row group by row group
  (parquet strings are UTF-8: the bytes of a file name that is not are written as U+FFFD).

The store is read block by block (:data:`BLOCK` rows), so memory stays at one block plus the
paths, whatever the store's size. Files are written through :mod:`cnncodes.atomic`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..atomic import atomic_path, atomic_write_json, jsonable
from ..errors import OptionError

if TYPE_CHECKING:
    import numpy as np

#: a :class:`~cnncodes.codes.reader.FeatureStore` (not imported: the reader imports this module)
FeatureStore = Any

#: rows read from the store and written at a time
BLOCK = 4096
FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: the parquet schema metadata key holding the provenance JSON
PARQUET_KEY = b"cnncodes"


def export_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``npz``, ``csv`` or ``parquet``: ``fmt`` if given, else from the extension of ``path``.

    Raises:
        OptionError: an unknown extension or format (the message lists the valid ones).
    """
    if fmt is not None:
        if fmt not in ("npz", "csv", "parquet"):
            raise OptionError(f"format must be one of npz, csv, parquet. Got {fmt!r} instead.")
        return fmt
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OptionError(f"The export file {os.fspath(path)} must end in .npz, .csv or "
                          f".parquet (its extension picks the format). Got {ext or 'none'!r} "
                          "instead.")
    return FORMATS[ext]


def csv_sidecar(path: str | os.PathLike[str]) -> Path:
    """Where the provenance of a CSV export goes: ``<path>.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def require_pyarrow() -> Any:
    """``pyarrow`` (and ``pyarrow.parquet``), or :class:`OptionError` saying how to install it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise OptionError("Writing .parquet needs pyarrow, which is not installed: pip install "
                          "pyarrow (or pip install 'cnncodes[export]'); or export to .npz or "
                          ".csv instead.") from None
    return pa


def export_metadata(store: FeatureStore, layer: str) -> dict[str, Any]:
    """The provenance written beside the codes: the store's recorded settings, the exported
    layer and its attributes, the classes, and who exported it."""
    prov = jsonable(store.provenance)
    dims = store.dims
    return {"exported_by": f"cnncodes {__version__}", "store": os.fspath(store.path),
            "layer": layer, "dim": int(dims[layer]), "layer_attrs": jsonable(
                store.layer_attrs(layer)),
            "rows": len(store), "classes": store.classes, "provenance": prov}


def _blocks(store: FeatureStore, layer: str, n: int, block: int
            ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    for s in range(0, n, block):
        rows = slice(s, min(n, s + block))
        X, y = store.load(layer, rows=rows, allow_incomplete=True)
        yield rows, X, y


def export_store(store: FeatureStore, path: str | os.PathLike[str], *, layer: str | None = None,
                 fmt: str | None = None, allow_incomplete: bool = False,
                 block: int = BLOCK) -> dict[str, Any]:
    """Write one layer of ``store`` to ``path`` (see the module docstring for each format).

    Args:
        layer: the layer (default: the store's default layer, as :meth:`FeatureStore.load`).
        fmt: ``npz``, ``csv`` or ``parquet``; default from the extension of ``path``.
        allow_incomplete: export a store whose extraction did not finish (refused by default).
        block: rows per block read from the store.

    Returns:
        ``path``, ``format``, ``layer``, ``rows``, ``dim``, ``files`` (every file written).

    Raises:
        IncompleteStoreError: the store's extraction did not finish (and not ``allow_incomplete``).
        StoreDamagedError: a segment or chunk of the store does not read back.
        OptionError: an unknown format, an unknown layer, or parquet without pyarrow.
    """
    kind = export_format(path, fmt)
    pa = require_pyarrow() if kind == "parquet" else None
    store.check_complete(allow_incomplete)
    name = store._layer(layer)
    meta = export_metadata(store, name)
    n, dim = meta["rows"], meta["dim"]
    classes = list(store.classes)
    paths = [str(p) for p in store.paths]
    out = Path(path)
    args = (store, name, n, dim, paths, classes, meta, max(1, int(block)))
    files = [out]
    if kind == "parquet":
        _write_parquet(pa, out, *args)
    elif kind == "npz":
        _write_npz(out, *args)
    else:
        _write_csv(out, *args)
        files.append(atomic_write_json(csv_sidecar(out), meta))
    return {"path": os.fspath(out), "format": kind, "layer": name, "rows": n, "dim": dim,
            "files": [os.fspath(f) for f in files]}


def _npy_member(zf: zipfile.ZipFile, key: str, arr: np.ndarray) -> None:
    import numpy as np

    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def _write_npz(out: Path, store: FeatureStore, layer: str, n: int, dim: int, paths: list[str],
               classes: list[str], meta: dict[str, Any], block: int) -> None:
    """``np.savez`` layout (one ``.npy`` per key in a zip), the codes streamed block by block."""
    import numpy as np

    labels = np.empty(n, np.int64)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                  allowZip64=True) as zf:
        with zf.open("codes.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                      "fortran_order": False, "shape": (n, dim)}
            np.lib.format.write_array_header_2_0(f, header)
            for rows, X, y in _blocks(store, layer, n, block):
                f.write(np.ascontiguousarray(X, dtype=np.float32).tobytes())
                labels[rows] = y
        _npy_member(zf, "labels", labels)
        _npy_member(zf, "paths", np.array(paths, dtype=str) if paths else np.array([], "U1"))
        _npy_member(zf, "classes", np.array(classes, dtype=str) if classes
                    else np.array([], "U1"))
        _npy_member(zf, "provenance", np.array([json.dumps(meta, default=str)]))


def _class_of(classes: list[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else ""


def _write_csv(out: Path, store: FeatureStore, layer: str, n: int, dim: int, paths: list[str],
               classes: list[str], meta: dict[str, Any], block: int) -> None:
    """One line per row: the quoted text fields by the csv rules, then the codes ``%.9g``."""
    fmt = ",".join(["%.9g"] * dim)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                       errors="surrogateescape") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "class", *(f"code_{i}" for i in range(dim))])
        buf = io.StringIO()
        head = csv.writer(buf, lineterminator="")
        for rows, X, y in _blocks(store, layer, n, block):
            for i, label in enumerate(y.tolist()):  # row by row: no block of Python floats
                buf.seek(0)
                buf.truncate()
                head.writerow([paths[rows.start + i], label, _class_of(classes, label)])
                f.write(f"{buf.getvalue()},{fmt % tuple(X[i].tolist())}\n" if dim
                        else buf.getvalue() + "\n")


def _write_parquet(pa: Any, out: Path, store: FeatureStore, layer: str, n: int, dim: int,
                   paths: list[str], classes: list[str], meta: dict[str, Any],
                   block: int) -> None:
    """Row groups of ``block`` rows; the provenance in the schema metadata."""
    import numpy as np
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("label", pa.int64()), ("class", pa.string()),
                        ("codes", pa.list_(pa.float32(), dim))],
                       metadata={PARQUET_KEY: json.dumps(meta, default=str).encode()})
    safe = [p.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for p in paths]
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as w:
        if n == 0:
            w.write_table(schema.empty_table())
        for rows, X, y in _blocks(store, layer, n, block):
            flat = pa.array(np.ascontiguousarray(X, dtype=np.float32).reshape(-1))
            w.write_table(pa.table({
                "path": pa.array(safe[rows], pa.string()),
                "label": pa.array(y, pa.int64()),
                "class": pa.array([_class_of(classes, int(v)) for v in y], pa.string()),
                "codes": pa.FixedSizeListArray.from_arrays(flat, dim)}, schema=schema))
