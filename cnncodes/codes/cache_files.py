"""The export cache's files, without torch: where the cache is, its entries (size, model, last
use), and pruning them (``cnncodes cache``).

The cache is per user: ``$CNNCODES_CACHE``, else ``$XDG_CACHE_HOME/cnncodes``, else
``~/.cache/cnncodes``. An entry is one sealed graph ``onnx/<backbone>-<key>.onnx`` (see
:mod:`cnncodes.codes.export_cache`) and its small metadata file ``<same>.onnx.json``
(``backbone``, ``created``, ``last_used`` as Unix times), rewritten atomically each time the graph
is used, so "last use" is real (atime is often off). Only regular files whose names have that
shape, directly in ``onnx/``, are ever listed or deleted: a symlink (to anywhere) is skipped, its
target never touched, and an ``onnx`` folder that is itself a symlink is not entered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import OptionError

log = logging.getLogger(__name__)

CACHE_ENV = "CNNCODES_CACHE"
#: the name of a cached graph: ``<backbone with unsafe characters as +>-<24 hex>.onnx``
ENTRY_RE = re.compile(r"^(?P<model>[A-Za-z0-9._+-]+)-(?P<key>[0-9a-f]{24})\.onnx$")
#: a torch-free manifest (:mod:`cnncodes.codes.light`): it names one graph and goes with it
MANIFEST_RE = re.compile(r"^[A-Za-z0-9._+-]+-req-[0-9a-f]{24}\.json$")
META_SUFFIX = ".json"

_AGE_UNITS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
               "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
               "tib": 2**40}


def cache_dir() -> Path:
    """``$CNNCODES_CACHE``, else ``$XDG_CACHE_HOME/cnncodes``, else ``~/.cache/cnncodes``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "cnncodes"


def meta_path(graph: Path) -> Path:
    """The metadata file of the cached graph ``graph``."""
    return graph.with_name(graph.name + META_SUFFIX)


def _read_meta(graph: Path) -> dict[str, Any]:
    m = meta_path(graph)
    try:
        if not stat.S_ISREG(os.lstat(m).st_mode):
            return {}
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def touch_entry(graph: Path, backbone: str, now: float | None = None) -> None:
    """Record a use of the cached ``graph`` (its metadata file, written atomically). A cache
    that cannot be written only loses the record (logged at debug level)."""
    now = time.time() if now is None else now
    meta = _read_meta(graph)
    meta.update({"backbone": backbone, "last_used": now})
    meta.setdefault("created", now)
    try:
        atomic_write_json(meta_path(graph), meta)
    except (OSError, OptionError) as e:
        log.debug("cannot record the use of %s (%s)", graph, e)


def list_entries(root: Path | None = None) -> list[dict[str, Any]]:
    """The cache's entries, most recently used first: ``path``, ``model``, ``bytes`` (graph and
    metadata), ``last_used`` and ``created`` (Unix times; the graph's mtime where no metadata was
    recorded). Symlinks and files of other names are skipped."""
    onnx = (cache_dir() if root is None else Path(root)) / "onnx"
    try:
        if not stat.S_ISDIR(os.lstat(onnx).st_mode):  # a symlink is never entered
            log.warning("%s is not a folder (a symlink?): not listed, never pruned", onnx)
            return []
        it = list(os.scandir(onnx))
    except FileNotFoundError:
        return []
    out = []
    for d in it:
        m = ENTRY_RE.match(d.name)
        if not m or not d.is_file(follow_symlinks=False):
            continue
        st = d.stat(follow_symlinks=False)
        graph = Path(d.path)
        meta = _read_meta(graph)
        size = st.st_size
        with contextlib.suppress(OSError):
            mst = os.lstat(meta_path(graph))
            size += mst.st_size if stat.S_ISREG(mst.st_mode) else 0
        last = meta.get("last_used")
        out.append({"path": os.fspath(graph),
                    "model": str(meta.get("backbone") or m["model"].replace("+", "/")),
                    "bytes": int(size),
                    "last_used": float(last) if isinstance(last, (int, float)) else st.st_mtime,
                    "created": float(meta.get("created") or st.st_mtime),
                    "recorded": isinstance(last, (int, float))})
    return sorted(out, key=lambda e: -e["last_used"])


def select(entries: Sequence[Mapping[str, Any]], *, older_than: float | None = None,
           larger_than: int | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """The entries last used more than ``older_than`` seconds ago AND larger than
    ``larger_than`` bytes (a criterion left None is not applied)."""
    now = time.time() if now is None else now
    return [dict(e) for e in entries
            if (older_than is None or now - e["last_used"] > older_than)
            and (larger_than is None or e["bytes"] > larger_than)]


def remove_entries(root: Path, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Delete ``entries`` (graph and metadata); returns those deleted. Each path is checked
    again: it must be a regular file (not a symlink) named like an entry, directly in
    ``root/onnx``; anything else is left alone."""
    onnx = Path(root) / "onnx"
    done = []
    for e in entries:
        graph = Path(e["path"])
        if graph.parent != onnx or not ENTRY_RE.match(graph.name):
            log.warning("not a cache entry of %s, left alone: %s", onnx, graph)
            continue
        try:
            if not stat.S_ISREG(os.lstat(graph).st_mode):
                log.warning("not a regular file, left alone: %s", graph)
                continue
            graph.unlink()
        except FileNotFoundError:  # gone meanwhile (another prune): its metadata goes too
            pass
        with contextlib.suppress(FileNotFoundError):
            m = meta_path(graph)
            if stat.S_ISREG(os.lstat(m).st_mode):
                m.unlink()
        done.append(dict(e))
    if done:
        drop_orphan_manifests(onnx)
    return done


def drop_orphan_manifests(onnx: Path) -> list[Path]:
    """Delete the torch-free manifests in ``onnx`` whose graph is gone (regular files named like a
    manifest only, never a symlink; an unreadable manifest is left alone). Returns those
    deleted."""
    gone: list[Path] = []
    try:
        it = list(os.scandir(onnx))
    except OSError:
        return gone
    for d in it:
        if not MANIFEST_RE.match(d.name) or not d.is_file(follow_symlinks=False):
            continue
        try:
            if d.stat(follow_symlinks=False).st_size > 1 << 20:
                continue
            graph = json.loads(Path(d.path).read_text()).get("graph")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(graph, str) and Path(graph).parent == onnx and not os.path.lexists(graph):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d.path)
                gone.append(Path(d.path))
    return gone


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90min``, ``2w``, ``45s`` (a bare number: days) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m[2] not in ("", *_AGE_UNITS):
        raise OptionError(f"--older-than must be an age such as 30d, 12h, 90min or 2w. Got "
                          f"{text!r} instead.")
    return float(m[1]) * (_AGE_UNITS[m[2]] if m[2] else 86400)


def parse_size(text: str) -> int:
    """``100MB``, ``1.5GB``, ``500KiB``, ``4096`` (bytes) -> bytes (MB = 10^6, MiB = 2^20)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m[2] not in _SIZE_UNITS:
        raise OptionError(f"--larger-than must be a size such as 100MB, 1.5GB or 500KiB. Got "
                          f"{text!r} instead.")
    return int(float(m[1]) * _SIZE_UNITS[m[2]])


def human_size(n: float) -> str:
    """``419.2 MB`` (powers of 1000, as :func:`parse_size` reads MB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_age(seconds: float) -> str:
    """``3 min ago``, ``5 h ago``, ``12 d ago``."""
    s = max(0.0, seconds)
    if s < 90:
        return "just now" if s < 5 else f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"
