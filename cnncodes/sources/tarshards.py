"""Tar-shard sources in the WebDataset layout, read with the standard library, never unpacked.

``shards/train-{000000..000099}.tar`` (brace ranges and ``{a,b}`` lists, expanded in order), a glob
such as ``shards/*.tar`` (sorted) or one ``.tar`` file. Inside a shard, members are grouped by
*key*: the member name up to the first dot of its file name (``n01440764/0001.jpg`` and
``n01440764/0001.cls`` are key ``n01440764/0001``). Each key with an image member becomes one row,
in shard order then member order (deterministic); its label is the text of its ``.cls`` member,
else of its ``.txt`` member, else none (a shard set labels every key or none). Keys without an
image are left out (listed in ``ignored``).

A row's path is ``<shard file name>/<member name>``, relative to the shards' folder, so rows keep
their identity across runs; its file identity is the member's size and the shard's
``st_mtime_ns`` (a rewritten shard is extracted again as a whole), or in the hash mode a SHA-256 of
the member's bytes. Members are read by offset (one ``seek`` and ``read``), so DataLoader workers
read them in any order. A member whose bytes are cut short (a truncated shard) or do not decode is
a per-row failure like a broken file; a shard whose headers break off keeps the members before the
break (a warning names it). Only uncompressed tar files can be read by offset (``.tar.gz``
shards are refused with the fix). Across torchrun ranks a tar source is split by whole shards
(:meth:`TarShardSource.rank_share`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DecodeError, SourceError
from .base import IMAGE_EXTENSIONS, ImageSource, label_index

log = logging.getLogger(__name__)

#: Label members, in order of preference.
LABEL_EXTENSIONS = (".cls", ".txt")

_BRACE = re.compile(r"\{([^{}]*)\}")


def is_tar_source(source: str | os.PathLike) -> bool:
    """Whether ``source`` names tar shards (a ``.tar`` file, or a pattern or glob of them)."""
    s = os.fspath(source)
    return s.lower().endswith(".tar") and (Path(s).is_file() or "{" in s or "*" in s
                                            or "?" in s)


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar`` (zero padding kept); ``{x,y}``
    lists; several groups expand left to right, like the shell and WebDataset."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise SourceError(f"Tar shard pattern {pattern!r}: {{{body}}} must be a range such as "
                          "{000000..000099} or a list such as {a,b}.")
    return [x for item in items for x in expand_braces(head + item + tail)]


@dataclass
class TarShardSource(ImageSource):
    """An :class:`ImageSource` whose rows are members of tar shards (``kind`` ``tar``)."""

    shards: list[Path] = field(default_factory=list)
    shard_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def read_member(self, i: int) -> bytes:
        """The bytes of row ``i``'s image member (DecodeError when the shard is cut short)."""
        shard = self.shards[int(self.shard_of[i])]
        size = int(self.sizes[i])
        try:
            with open(shard, "rb") as f:
                f.seek(int(self.offsets[i]))
                data = f.read(size)
        except OSError as e:
            raise DecodeError(f"unreadable shard {shard}: {type(e).__name__}: {e}") from None
        if len(data) != size:
            raise DecodeError(f"truncated tar member: {len(data)} of {size} bytes in {shard}")
        if not data:
            raise DecodeError("empty file (0 bytes)")
        return data

    def open_member(self, i: int) -> BinaryIO:
        return io.BytesIO(self.read_member(i))

    def member_ids(self, *, hashed: bool) -> list[tuple[int, int, str] | None]:
        """Per row ``(size, shard st_mtime_ns, sha256 or '')``; None when the shard is gone."""
        mtimes: list[int | None] = []
        for s in self.shards:
            try:
                mtimes.append(int(os.stat(s).st_mtime_ns))
            except OSError:
                mtimes.append(None)
        out: list[tuple[int, int, str] | None] = []
        for i in range(len(self.paths)):
            mt = mtimes[int(self.shard_of[i])]
            if mt is None:
                out.append(None)
                continue
            digest = ""
            if hashed:
                try:
                    digest = "sha256:" + hashlib.sha256(self.read_member(i)).hexdigest()
                except DecodeError:
                    out.append(None)
                    continue
            out.append((int(self.sizes[i]), mt, digest))
        return out

    def rank_share(self, indices: Sequence[int], rank: int, world: int) -> list[int]:
        """The rows of ``indices`` that rank ``rank`` of ``world`` extracts: those of every
        ``world``-th shard (whole shards, each read by one rank), in source order."""
        return [i for i in indices if int(self.shard_of[i]) % world == rank]


def open_tar_shards(source: str | os.PathLike, *,
                    classes: Sequence[str] | None = None) -> TarShardSource:
    """The rows of the tar shards named by ``source`` (see the module docstring).

    Raises:
        SourceError: no shard matches, a named shard is missing, a shard is compressed or not a
            tar file, labels on some keys only, or no image in any shard.
    """
    spec = os.fspath(Path(source).expanduser())
    if "{" in spec:
        names = expand_braces(spec)
        missing = [n for n in names if not Path(n).is_file()]
        if missing:
            raise SourceError(f"Tar shard pattern {spec!r} names {len(names)} shards; "
                              f"{len(missing)} do not exist (first: {missing[0]}). Fix the range "
                              "to the shards that exist.")
    elif "*" in spec or "?" in spec:
        names = sorted(glob.glob(spec))
        if not names:
            raise SourceError(f"No tar shard matches {spec!r}.")
    else:
        names = [spec]
    shards = [Path(n).resolve() for n in names]
    roots = {s.parent for s in shards}
    if len(roots) != 1:
        raise SourceError(f"The tar shards of {spec!r} must be in one folder; got "
                          f"{len(roots)} folders.")
    if len({s.name for s in shards}) != len(shards):
        raise SourceError(f"Tar shard pattern {spec!r} names a shard twice.")
    rows: list[tuple[int, str, int, int, str | None]] = []  # shard, member, offset, size, label
    ignored: list[str] = []
    for k, shard in enumerate(shards):
        rows.extend(_shard_rows(k, shard, ignored))
    if not rows:
        raise SourceError(f"No images in the tar shards {spec!r} (looked for members named "
                          f"<key>{'|'.join(IMAGE_EXTENSIONS)}).")
    names_ = [r[4] for r in rows]
    if any(n is None for n in names_) and any(n is not None for n in names_):
        first = next(r for r in rows if r[4] is None)
        raise SourceError(f"{shards[first[0]]}: member {first[1]} has no .cls/.txt label while "
                          "other keys do; label every key or none.")
    known = sorted({n for n in names_ if n is not None},
                   key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c))
    labels, cls_list = label_index(names_, list(classes) if classes is not None else known, spec)
    return TarShardSource(
        root=shards[0].parent, paths=[f"{shards[r[0]].name}/{r[1]}" for r in rows],
        labels=labels, classes=cls_list, kind="tar", ignored=ignored, shards=shards,
        shard_of=np.array([r[0] for r in rows], np.int64),
        offsets=np.array([r[2] for r in rows], np.int64),
        sizes=np.array([r[3] for r in rows], np.int64))


def _shard_rows(k: int, shard: Path, ignored: list[str]
                ) -> list[tuple[int, str, int, int, str | None]]:
    """One shard's rows: (shard index, image member, data offset, size, label)."""
    if not shard.is_file():
        raise SourceError(f"Tar shard {shard} must be a regular file.")
    with open(shard, "rb") as f:
        magic = f.read(3)
    if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:3] == b"\xfd7z":
        raise SourceError(f"Tar shard {shard} is compressed; members of a compressed tar cannot be "
                          "read by offset. Decompress the shards (gunzip) first: JPEG and PNG "
                          "images gain almost nothing from compression.")
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            try:
                for m in tf:
                    if not m.isfile():
                        continue
                    d, base = posixpath.split(m.name)
                    if base.startswith(".") or "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    groups.setdefault(posixpath.join(d, stem), {}).setdefault(
                        "." + ext.lower(), m)
            except (tarfile.TarError, OSError, EOFError) as e:
                log.warning("tar shard %s breaks off after %d keys (%s); the members before the "
                            "break are used", shard, len(groups), e)
                ignored.append(f"{shard.name}: unreadable after {len(groups)} keys ({e})")
    except tarfile.ReadError as e:
        raise SourceError(f"{shard} is not a tar file ({e}); pass uncompressed .tar shards.") from e
    out = []
    with open(shard, "rb") as f:
        for key, members in groups.items():
            image = next((m for ext, m in members.items() if ext in IMAGE_EXTENSIONS), None)
            if image is None:
                ignored.append(f"{shard.name}/{key}: no image member")
                continue
            label = None
            lab = next((members[e] for e in LABEL_EXTENSIONS if e in members), None)
            if lab is not None:
                f.seek(lab.offset_data)
                label = f.read(lab.size).decode("utf-8", "replace").strip() or None
            out.append((k, image.name, int(image.offset_data), int(image.size), label))
    return out
