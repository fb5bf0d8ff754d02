"""Tar-shard sources in the WebDataset layout, read with the standard library, never unpacked.

``shards/train-{000000..000099}.tar`` (brace ranges and ``{a,b}`` lists, expanded in order), a glob
such as ``shards/*.tar`` (sorted) or one ``.tar`` file. Inside a shard, members are grouped by
*key*: the member name up to the first dot of its file name (``n01440764/0001.jpg`` and
``n01440764/0001.cls`` are key ``n01440764/0001``). Each key with an image member becomes one row,
in shard order then member order (deterministic); its label is the text of its ``.cls`` member,
else of its ``.txt`` member, else none (a shard set labels every key or none). Keys without an
image are left out (listed in ``ignored``).

Nothing is ever read from outside a shard, by the rules of tar's ``data`` extraction filter (PEP
706): a member whose name is absolute or holds ``..``, a link that leaves the archive or whose
target is not a regular member of the same shard, a device, a FIFO and a GNU sparse member (whose
bytes cannot be read by offset) are rows that fail with the reason (:attr:`TarShardSource.refused`);
a hard or symbolic link to a regular member is read as that member's bytes. A refused name is
stored with ``..`` and a leading ``/`` percent-encoded, so no path ever leads out of the archive;
:meth:`TarShardSource.abspath` refuses (a member is not a file on disk).

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
from collections import Counter
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

#: (shard index, member name, data offset, size, label, refusal reason or None)
_Row = tuple[int, str, int, int, "str | None", "str | None"]


def is_tar_source(source: str | os.PathLike[str]) -> bool:
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
    #: row -> why its member is refused (an unsafe name, a link leaving the archive, a device...)
    refused: dict[int, str] = field(default_factory=dict)
    #: every member header of the shards, counted once: ``images`` (rows, refused ones included),
    #: ``labels`` (read as a row's label), ``folders``, ``left out`` (each named in ``ignored``
    #: with the reason), and ``members`` (their sum)
    member_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line accounting for every member: rows, refusals, labels, what was left out."""
        c = self.member_counts
        first = f" (first: {self.ignored[0]})" if self.ignored else ""
        return (f"{c.get('members', 0)} tar members in {len(self.shards)} shard(s): "
                f"{c.get('images', 0)} images ({len(self.refused)} refused, recorded as failures), "
                f"{c.get('labels', 0)} labels, {c.get('folders', 0)} folders, "
                f"{c.get('left out', 0)} left out{first}")

    def read_member(self, i: int) -> bytes:
        """The bytes of row ``i``'s image member (DecodeError when the shard is cut short)."""
        if i in self.refused:
            raise DecodeError(f"tar member refused: {self.refused[i]}")
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

    def abspath(self, i: int) -> Path:
        """Refused: a member has no path on disk, and joining its name to the shards' folder
        could name a real file outside the archive. Read it with :meth:`open_member`."""
        raise SourceError(f"{self.paths[i]} is a member of a tar shard, not a file on disk; "
                          "this step reads only image files on disk (extract the shard first, "
                          "or use `cnncodes extract`, which reads shards directly).")

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
            if hashed and i in self.refused:
                digest = "refused"
            elif hashed:
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


def open_tar_shards(source: str | os.PathLike[str], *,
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
    rows: list[_Row] = []
    ignored: list[str] = []
    counts: Counter[str] = Counter()
    for k, shard in enumerate(shards):
        rows.extend(_shard_rows(k, shard, ignored, counts))
    rows = _one_row_per_path(rows, shards, ignored, counts)
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
        sizes=np.array([r[3] for r in rows], np.int64),
        refused={i: r[5] for i, r in enumerate(rows) if r[5] is not None},
        member_counts={"members": sum(counts.values()), **counts})


def _one_row_per_path(rows: list[_Row], shards: list[Path], ignored: list[str],
                      counts: Counter[str]) -> list[_Row]:
    """Rows whose path repeats an earlier row's are left out (a literal member ``%2E%2E/x.png``
    beside a refused ``../x.png``, whose row name is the same): one path, one row."""
    seen: set[str] = set()
    out = []
    for r in rows:
        path = f"{shards[r[0]].name}/{r[1]}"
        if path in seen:
            counts["images"] -= 1
            counts["left out"] += 1
            ignored.append(f"{path}: a second member with this row name (a refused name, "
                           "percent-encoded, meets a literal one); the first is its row")
            continue
        seen.add(path)
        out.append(r)
    return out


@dataclass(frozen=True)
class _Member:
    """One image or label member: its name in the archive, the regular member whose bytes it has
    (itself, or a link's target inside the same shard), or why it is refused."""

    name: str
    data: tarfile.TarInfo | None
    refusal: str | None = None


def member_kind(m: tarfile.TarInfo) -> str:
    """What a member is, in words (for reasons and warnings)."""
    if m.issparse():
        return "a GNU sparse file"
    if m.isreg():
        return "a regular file"
    if m.islnk():
        return f"a hard link to {m.linkname!r}"
    if m.issym():
        return f"a symbolic link to {m.linkname!r}"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a FIFO"
    return f"a member of tar type {m.type!r}"


def unsafe_name(name: str) -> str | None:
    """Why a member name is not acceptable as a path inside the archive (None: it is): the rules
    of tar's ``data`` extraction filter (PEP 706) for names, stricter on ``..`` (refused anywhere,
    not only where it leaves the archive: ``a/../b.png`` would be a second spelling of ``b.png``)."""
    if name.startswith("/") or posixpath.isabs(name) or re.match(r"[A-Za-z]:", name):
        return "an absolute member name (tar's 'data' rule: names stay inside the archive)"
    parts = name.split("/")
    if ".." in parts:
        return "a member name with '..' (tar's 'data' rule: names stay inside the archive)"
    if "\0" in name:
        return "a member name with a NUL byte"
    return None


def resolve_member(m: tarfile.TarInfo, regular: dict[str, tarfile.TarInfo]
                   ) -> tuple[tarfile.TarInfo | None, str | None]:
    """``(member whose bytes to read, None)`` or ``(None, reason)`` for one member named like an
    image or label. Nothing outside the archive is ever read: a link is followed only to a
    regular member of the same shard, as tar's ``data`` filter allows; devices, FIFOs, links that
    leave the archive and GNU sparse members (whose bytes cannot be read by offset) are refused."""
    why = unsafe_name(m.name)
    if why is not None:
        return None, why
    if m.issparse():
        return None, ("a GNU sparse member: its bytes cannot be read by offset; repack the shard "
                      "without sparse files (GNU tar without -S/--sparse)")
    if m.isreg():
        return m, None
    if m.islnk() or m.issym():
        try:
            tarfile.data_filter(m, "/nonexistent-cnncodes-archive-root")
        except tarfile.FilterError as e:
            return None, f"{member_kind(m)} refused by tar's 'data' rule ({e})"
        target = (m.linkname if m.islnk()
                  else posixpath.join(posixpath.dirname(m.name), m.linkname))
        target = posixpath.normpath(target)
        data = regular.get(target)
        if data is None:
            return None, f"{member_kind(m)}: the target is not a regular file in this shard"
        return data, None
    return None, f"{member_kind(m)}, not a regular file"


def _row_name(name: str, refusal: str | None) -> str:
    """The row's member name: the name itself, or for a refused unsafe name one that cannot be
    read as a path leading out of the archive (``..`` and a leading ``/`` percent-encoded)."""
    if refusal is None or unsafe_name(name) is None:
        return name
    safe = name.replace("%", "%25").replace("\0", "%00")
    safe = "/".join("%2E%2E" if part == ".." else part for part in safe.split("/"))
    return ("%2F" + safe[1:]) if safe.startswith("/") else safe


def _scan(shard: Path, ignored: list[str]) -> list[tarfile.TarInfo]:
    """Every member header of one shard (those before a break in a damaged shard)."""
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(shard, "r:") as tf:
            try:
                members.extend(tf)
            except (tarfile.TarError, OSError, EOFError) as e:
                log.warning("tar shard %s breaks off after %d members (%s); the members before "
                            "the break are used", shard, len(members), e)
                ignored.append(f"{shard.name}: unreadable after {len(members)} members ({e})")
    except tarfile.ReadError as e:
        raise SourceError(f"{shard} is not a tar file ({e}); pass uncompressed .tar shards.") from e
    return members


def _groups(shard: Path, members: list[tarfile.TarInfo], ignored: list[str],
            counts: Counter[str]) -> dict[str, dict[str, _Member]]:
    """Image and label members by key, each resolved to the bytes it has or refused; every other
    member is counted (a folder) or left out with the reason in ``ignored``."""
    regular = {posixpath.normpath(m.name): m for m in members if m.isreg() and not m.issparse()}
    groups: dict[str, dict[str, _Member]] = {}

    def leave_out(m: tarfile.TarInfo, why: str) -> None:
        counts["left out"] += 1
        ignored.append(f"{shard.name}/{m.name}: {why}")

    for m in members:
        if m.isdir():
            counts["folders"] += 1
            continue
        d, base = posixpath.split(m.name)
        ext = "." + base.split(".", 1)[1].lower() if "." in base[1:] else ""
        if base.startswith(".") or ext not in IMAGE_EXTENSIONS + LABEL_EXTENSIONS:
            leave_out(m, f"{member_kind(m)}, not named like an image or a label")
            continue
        data, refusal = resolve_member(m, regular)
        if refusal is not None and ext in LABEL_EXTENSIONS:
            leave_out(m, refusal)
            log.warning("tar shard %s: label member %r ignored: %s", shard, m.name, refusal)
            continue
        key = posixpath.join(d, base.split(".", 1)[0])
        found = groups.setdefault(key, {})
        if ext in found:
            leave_out(m, f"a second {ext} member of key {key!r} (the first, "
                         f"{found[ext].name!r}, is used)")
            continue
        found[ext] = _Member(m.name, data, refusal)
    return groups


def _shard_rows(k: int, shard: Path, ignored: list[str], counts: Counter[str]) -> list[_Row]:
    """One shard's rows: (shard index, member name, data offset, size, label, refusal)."""
    if not shard.is_file():
        raise SourceError(f"Tar shard {shard} must be a regular file.")
    with open(shard, "rb") as f:
        magic = f.read(3)
    if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:3] == b"\xfd7z":
        raise SourceError(f"Tar shard {shard} is compressed; members of a compressed tar cannot be "
                          "read by offset. Decompress the shards (gunzip) first: JPEG and PNG "
                          "images gain almost nothing from compression.")
    groups = _groups(shard, _scan(shard, ignored), ignored, counts)
    out: list[_Row] = []
    with open(shard, "rb") as f:
        for key, found in groups.items():
            image = next((v for ext, v in found.items() if ext in IMAGE_EXTENSIONS), None)
            lab_ext = next((e for e in LABEL_EXTENSIONS if e in found), None)
            used = {id(image), id(found[lab_ext]) if image is not None and lab_ext else 0}
            for v in found.values():
                if id(v) not in used:
                    counts["left out"] += 1
                    ignored.append(f"{shard.name}/{v.name}: " + (
                        f"key {key!r} has no image member" if image is None else
                        f"another member of key {key!r} (its row is {image.name!r}"
                        + (f", its label {found[lab_ext].name!r})" if lab_ext else ")")))
            if image is None:
                continue
            counts["images"] += 1
            label = None
            lab = found[lab_ext].data if lab_ext else None
            if lab_ext:
                counts["labels"] += 1
            if lab is not None:
                f.seek(lab.offset_data)
                label = f.read(lab.size).decode("utf-8", "replace").strip() or None
            name = _row_name(image.name, image.refusal)
            if image.data is None:
                out.append((k, name, -1, 0, label, image.refusal))
            else:
                out.append((k, name, int(image.data.offset_data), int(image.data.size), label,
                            None))
    return out
