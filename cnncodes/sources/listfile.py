"""Reading list files (``.txt``, ``.lst``, ``.csv``, ``.tsv``) as people write them.

The rules (also in the README, ``extract`` > Sources):

* **Encoding**: UTF-8, with or without a byte-order mark (``utf-8-sig``). Another encoding (UTF-16
  from a Windows editor, Latin-1 bytes...) is refused with the line that is not UTF-8, except
  bytes that are exactly the name of an existing file (a Latin-1 file name, as ``ls`` or a
  predictions CSV writes it): those name that file.
* **Lines**: ``\\n``, ``\\r\\n`` or ``\\r`` endings; blank lines and lines whose first non-blank
  character is ``#`` are ignored (write a path that starts with ``#`` as ``./#name.jpg``). Spaces
  around each field are stripped. One row per line, except that with a separator a quoted
  field may hold line breaks (``"new<line break>line.png",cat``), kept exactly.
* **Separator**, decided once per file: ``.csv`` comma, ``.tsv`` tab. A ``.txt``/``.lst`` uses
  the first row (the header if there is one): a tab there makes it tab-separated; else a comma
  makes it comma-separated, unless what follows the last comma ends like an image file name
  (``Smith, John.jpg`` is one path); else each line is one path, taken whole. With a separator,
  fields may be quoted as in CSV (``"a, b.jpg",cat``).
* **Columns**: ``path`` or ``path<sep>label``. An optional header row names them (case-insensitive:
  ``path``/``file``/``filename``/``filepath``/``image``... and ``label``/``class``/``target``...;
  in a two-column header the column that is not the path is the label, whatever its name); with a
  header the columns may be in any order and other columns are ignored. Without a
  header, a row with more than two fields is an error naming the file and line.
* **Paths**: ``~`` is expanded; a relative path is relative to the folder of the list file (after
  following links to the list file), not to the current folder. ``..`` parts are resolved. Failures
  name the path that was looked for.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

log = logging.getLogger(__name__)


#: Header names of the path column and of the label column (compared lower-case, stripped).
PATH_HEADERS = ("path", "paths", "file", "files", "filename", "file_name", "filepath",
                "file_path", "image", "images", "img", "image_path", "imagepath", "image_file")
LABEL_HEADERS = ("label", "labels", "class", "classes", "class_name", "classname", "target",
                 "category", "y")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ListRow:
    """One data row of a list file: its 1-based line number, the path as written, the label."""

    line: int
    path: str
    label: str | None


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"List file {path} must be UTF-8. Got UTF-16 (it starts with a UTF-16 "
                          "byte-order mark) instead; save it as UTF-8.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:  # checked per row: only the bytes of an existing file's name pass
        return data.decode("utf-8-sig", errors="surrogateescape")


def _not_utf8(path: Path, row: ListRow, data_error: bool) -> SourceError:
    bad = next(c for c in row.path + (row.label or "") if "\udc80" <= c <= "\udcff")
    what = "a label" if data_error else "a path that names no file"
    return SourceError(f"List file {path} must be UTF-8. Got byte 0x{ord(bad) - 0xDC00:02x} on "
                       f"line {row.line}, which is not UTF-8, in {what}, instead; save the list "
                       "as UTF-8 (bytes that are not UTF-8 pass only as the exact name of a file "
                       "that exists).")


def _check_bytes(path: Path, rows: list[ListRow]) -> None:
    """Bytes that are not UTF-8 (read as surrogates) pass only in a path naming an existing file
    with exactly those bytes (a Latin-1 file name written by a tool): a list saved in another
    encoding is refused, naming the line."""
    folder = path.resolve().parent
    for r in rows:
        if _has_surrogates(r.label or ""):
            raise _not_utf8(path, r, True)
        if _has_surrogates(r.path) and not os.path.lexists(resolve_path(r.path, folder)):
            raise _not_utf8(path, r, False)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _logical_lines(text: str, sep: str | None) -> list[tuple[int, str]]:
    """``(first line number, text)`` per row: with a separator, a quoted field may hold line
    breaks (kept exactly as written), so a line with an open quote continues on the next."""
    parts = _LINE_BREAK.split(text)
    breaks = _LINE_BREAK.findall(text)
    out: list[tuple[int, str]] = []
    k = 0
    while k < len(parts):
        start, line = k + 1, parts[k]
        while sep is not None and line.count('"') % 2 == 1 and k + 1 < len(parts):
            line += breaks[k] + parts[k + 1]
            k += 1
        out.append((start, line))
        k += 1
    return out


def _separator(path: Path, first: str, image_extensions: tuple[str, ...]) -> str | None:
    ext = path.suffix.lower()
    if ext == ".csv":
        return ","
    if ext == ".tsv":
        return "\t"
    if "\t" in first:
        return "\t"
    if "," in first:
        tail = first.rpartition(",")[2].strip().strip('"').lower()
        return None if tail.endswith(image_extensions) else ","
    return None


def _fields(path: Path, lineno: int, line: str, sep: str | None) -> list[str]:
    if sep is None:
        return [line.strip()]
    try:
        return [f.strip() for f in next(csv.reader([line], delimiter=sep, skipinitialspace=True))]
    except csv.Error as e:
        kind = "tab" if sep == "\t" else "comma"
        raise SourceError(f"{path}, line {lineno}: a row must be {kind}-separated fields. Got "
                          f"{line.strip()[:80]!r} ({e}) instead; fix or remove the line.") from None


def _header(fields: list[str]) -> tuple[int, int | None] | None:
    """(path column, label column) if ``fields`` is a header row, else None."""
    names = [f.strip().lower() for f in fields]
    path_col = next((i for i, n in enumerate(names) if n in PATH_HEADERS), None)
    if path_col is None:
        return None
    label_col = next((i for i, n in enumerate(names) if n in LABEL_HEADERS and i != path_col),
                     None)
    if label_col is None and len(names) == 2:  # "path,species": the other column is the label
        label_col = 1 - path_col
    return path_col, label_col


def read_list(path: Path, image_extensions: tuple[str, ...]) -> list[ListRow]:
    """The data rows of list file ``path`` (see the module docstring for the rules);
    ``image_extensions`` tell a path with a comma from a ``path,label`` row in a ``.txt``.

    Raises:
        SourceError: not UTF-8, a row with too many fields or an empty path, no rows at all (the
            file and the line are named).
    """
    text = _decode(path)
    first = next((ln for ln in _LINE_BREAK.split(text)
                  if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise SourceError(f"List file {path} must name at least one image. Got no rows (only blank "
                          "or # comment lines) instead.")
    sep = _separator(path, first, image_extensions)
    lines = [(n, ln) for n, ln in _logical_lines(text, sep)
             if ln.strip() and not ln.lstrip().startswith("#")]
    rows: list[ListRow] = []
    cols: tuple[int, int | None] | None = None
    width = 2
    for k, (lineno, line) in enumerate(lines):
        if "\x00" in line:
            raise SourceError(f"{path}, line {lineno}: a row must be text. Got a NUL byte "
                              "instead (a binary file?); fix or remove the line.")
        fields = _fields(path, lineno, line, sep)
        if k == 0 and (cols := _header(fields)) is not None:
            width = len(fields)
            continue
        if len(fields) > width:
            what = f"{width} (the header's)" if cols else "2 (path and label)"
            raise SourceError(
                f"{path}, line {lineno}: a row must have at most {what} fields. Got "
                f"{len(fields)} instead ({line.strip()[:80]!r}); quote a path that contains the "
                "separator, or fix the line.")
        p_col, l_col = cols if cols else (0, 1)
        p = fields[p_col] if p_col < len(fields) else ""
        lab = fields[l_col] if l_col is not None and l_col < len(fields) else ""
        if not p:
            raise SourceError(f"{path}, line {lineno}: a row must start with an image path. Got "
                              f"an empty path ({line.strip()[:80]!r}) instead; fix or remove the "
                              "line.")
        rows.append(ListRow(lineno, p, lab or None))
    if not rows:
        raise SourceError(f"List file {path} must name at least one image. Got only a header row "
                          "instead.")
    _check_bytes(path, rows)
    return rows


def resolve_path(written: str, folder: Path) -> Path:
    """The file a list row names: ``~`` expanded, relative to ``folder``, ``..`` resolved (the
    folders before the last part; a link at the file itself is kept as written)."""
    p = Path(written).expanduser()
    full = p if p.is_absolute() else folder / p
    if ".." in full.parts:
        full = full.parent.resolve() / full.name
    return full


def warn_if_relative_to_cwd(rows: list[ListRow], folder: Path, list_file: Path) -> None:
    """A warning when the first relative row is missing next to the list but present in the current
    folder: paths are relative to the list file's folder (one stat or two, whatever the size)."""
    first = next((r for r in rows if not Path(r.path).expanduser().is_absolute()), None)
    if first is None or Path.cwd().resolve() == folder:
        return
    if not os.path.lexists(resolve_path(first.path, folder)) and os.path.lexists(first.path):
        log.warning("%s: relative paths are relative to the list file's folder %s; %r (line %d) "
                    "is not there but is in the current folder. Write paths relative to %s, or "
                    "absolute.", list_file, folder, first.path, first.line, folder)
