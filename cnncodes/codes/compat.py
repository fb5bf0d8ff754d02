"""Whether a store (and its unfinished journal) fits the settings a caller wants, and what a full
disk did: read-only helpers of :mod:`cnncodes.codes.store` (re-exported there)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, StoreMismatchError
from .journal import Journal
from .numerics import compat_value
from .reader import FeatureStore, store_bytes

#: Provenance fields that must agree for codes to be appended to or resumed in the same file.
#: ``numerics`` and ``decoding`` (see :mod:`cnncodes.codes.numerics`) read as fp32/cpu in files
#: made before they were recorded.
CONFIG_FIELDS = ("backbone", "weights", "weights_sha256", "layers", "pooling", "preprocessing",
                 "dtype", "numerics", "decoding")


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                fields: Sequence[str] = CONFIG_FIELDS) -> list[str]:
    """Human-readable list of fields where ``old`` and ``new`` disagree."""
    out = []
    for f in fields:
        a, b = compat_value(old, f), compat_value(new, f)
        if canonical(a) != canonical(b):
            out.append(f"{f}: file has {_short(a)}, requested {_short(b)}{_HINTS.get(f, '')}")
    return out


#: How to get codes that mix with the file's (appended to a mismatch of the field).
_HINTS = {"numerics": " (codes of another precision do not mix: run with the file's "
                      "--precision, and for fp16/bf16 its device; fp32 mixes across CPU and CUDA; "
                      "int8 only with int8)",
          "decoding": " (nvJPEG and CPU-decoded pixels do not mix: --decoder pil decodes on the "
                      "CPU; --decoder tensor on CUDA uses nvJPEG; cpu-dct is CPU decoding with "
                      "large JPEGs DCT-scaled, --jpeg-scaling dct; cpu is --jpeg-scaling off)"}


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


def check_store_compatible(path: str | os.PathLike[str], config: Mapping[str, Any], *,
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
    have = store.layer_attrs(layer).get("pooling")
    if want is not None and have is not None and have != want:
        return [f"pooling of {layer}: file has {have}, requested {want}"]
    return []


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
    size = store_bytes(store_path)
    segmented = False
    if store_path.is_file():
        try:
            segmented = FeatureStore(store_path).segmented
        except Exception:  # noqa: BLE001 - the message must not fail
            segmented = False
    need = (" (finishing needs room for the new rows and a small index)" if segmented else
            f" (finishing needs room for a new copy of the store: about {size / 2**20:.0f} MiB "
            "plus the new rows)" if size else "")
    return (f"The disk holding {store_path.parent} is full (no space left while writing "
            f"{where}). Nothing is lost: {store_path} is as it was before this run and {kept}. "
            f"Free some space{need}, then run the same command again to continue.")




#: Bytes per row besides its codes (path, label, file identity, HDF5 bookkeeping): generous.
ROW_OVERHEAD = 256
#: Bytes a written store file takes besides its rows (metadata, provenance, failures, index).
FILE_OVERHEAD = 256 * 1024


def space_needed(rows: int, dims: Mapping[str, int], itemsize: int) -> int:
    """Upper bound of the bytes a fold writes for ``rows`` rows (uncompressed; the last chunk
    of each layer, at most 1 MiB, is allocated in full)."""
    codes = sum(rows * int(d) * itemsize for d in dims.values())
    last_chunks = sum(2**20 for d in dims.values() if rows * int(d) * itemsize > 2**20)
    return codes + last_chunks + rows * ROW_OVERHEAD + FILE_OVERHEAD


def check_free_space(store_path: Path, journal: Journal, need: int, what: str) -> None:
    """Refuse a fold that would not fit on the disk, before HDF5 writes a byte (HDF5 running out
    of space in the middle of a file can crash the process): :class:`DiskFullError` naming the
    folder, the space needed and free, and what is kept."""
    folder = store_path.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the write itself will say
    if free >= need:
        return
    kept = (f"the {journal.n_parts()} batches already extracted are kept in {journal.dir}"
            if journal.n_parts() else "no finished batch was lost")
    as_was = (f"{store_path} is as it was" if store_path.exists()
              else f"no store was created at {store_path}")
    raise DiskFullError(
        f"The disk holding {folder} has {_mib(free)} free; {what} needs up to {_mib(need)}. "
        f"Nothing was written: {as_was} and {kept}. Free at least "
        f"{_mib(need - free)} there, then run the same command again to continue.")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
