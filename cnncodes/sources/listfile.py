"""Reading list files (``.txt``, ``.lst``, ``.csv``, ``.tsv``) as people write them.

The rules (also in the README, ``extract`` > Sources):

* **Encoding**: UTF-8, with or without a byte-order mark (``utf-8-sig``). A path may hold bytes that
  are not UTF-8 when a file with exactly those bytes in its name exists (names on Linux are bytes;
  they are kept as such, ``os.fsdecode``'s ``surrogateescape``, up to the store and the
  predictions CSV). Otherwise a byte that is not UTF-8 (a Latin-1 list naming UTF-8 files, UTF-16
  from a Windows editor...) is refused with its line; a label must be UTF-8.
* **Lines**: ``\\n``, ``\\r\\n`` or ``\\r`` endings; blank lines and lines whose first non-blank
  character is ``#`` are ignored (write a path that starts with ``#`` as ``./#name.jpg`` or
  quoted). Spaces around each field are stripped (also inside quotes).
* **Separator**, decided once per file: ``.csv`` comma, ``.tsv`` tab. A ``.txt``/``.lst`` uses
  the first row (the header if there is one): a tab there makes it tab-separated; else a comma
  makes it comma-separated, unless what follows the last comma ends like an image file name
  (``Smith, John.jpg`` is one path); else each line is one path, taken whole.
* **Quoting**: with a separator, the file is read by the ``csv`` module's rules (the dialect
  Excel and ``csv.writer`` write): a field in double quotes may hold the separator, line breaks
  (one row then spans several lines; errors name its first line) and quotes written twice
  (``"say ""hi"".jpg"``). A quote left open, or text after a closing quote, is an error naming the
  line.
* **Columns**: ``path`` or ``path<sep>label``. An optional header row names them (case-insensitive:
  ``path``/``file``/``filename``/``filepath``/``image``... and ``label``/``class``/``target``...;
  in a two-column header the column that is not the path is the label, whatever its name); with a
  header the columns may be in any order and other columns are ignored. Without a
  header, a row with more than two fields is an error naming the file and line.
* **Paths**: ``~`` is expanded; a relative path is relative to the folder of the list file (after
  following links to the list file), not to the current folder. ``..`` parts are resolved. Failures
  name the path that was looked for.
* **Identity**: a file is one row whatever its spelling (see
  :func:`cnncodes.sources.folders.one_row_per_file`).
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

#: a physical line with its ending (\n, \r\n or \r); str.splitlines would also break at form
#: feeds, U+2028... that a file name may hold
_PHYSICAL = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


@dataclass(frozen=True)
class ListRow:
    """One data row of a list file: its 1-based line number, the path as written, the label."""

    line: int
    path: str
    label: str | None


def _decode(path: Path) -> str:
    """The list's text; bytes that are not UTF-8 become lone surrogates (``surrogateescape``),
    checked row by row (:func:`_check_bytes`)."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"List file {path} must be UTF-8. Got UTF-16 (it starts with a UTF-16 "
                          "byte-order mark) instead; save it as UTF-8.")
    return data.decode("utf-8-sig", "surrogateescape")


def _not_utf8(path: Path, lineno: int, text: str, what: str) -> SourceError:
    byte = next(ord(c) - 0xDC00 for c in text if "\udc80" <= c <= "\udcff")
    return SourceError(f"List file {path} must be UTF-8. Got byte 0x{byte:02x} on line {lineno}, "
                       f"which is not UTF-8, instead{what}; save the list as UTF-8.")


def _has_raw_bytes(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _check_bytes(path: Path, row: ListRow) -> None:
    """A row with bytes that are not UTF-8: its path must name an existing file by those very
    bytes (a Linux file name is bytes), and its label must be UTF-8.

    Raises:
        SourceError: the line and the first byte that is not UTF-8.
    """
    if row.label is not None and _has_raw_bytes(row.label):
        raise _not_utf8(path, row.line, row.label, " in the label")
    if _has_raw_bytes(row.path) and not os.path.lexists(
            resolve_path(row.path, path.resolve().parent)):
        raise _not_utf8(path, row.line, row.path, " (and no file has a name with those bytes)")


class _Lines:
    """The physical lines of a text (endings kept) for ``csv.reader``, skipping blank and ``#``
    lines where a row starts (never inside a quoted field); ``start`` is the current row's first
    line number."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: list[str] = _PHYSICAL.findall(text)
        self.pos = 0
        self.at_row_start = True
        self.start = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            self.pos += 1
            if self.at_row_start:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                self.at_row_start, self.start = False, self.pos
            if "\x00" in line:
                raise SourceError(f"{self.path}, line {self.pos}: a row must be text. Got a NUL "
                                  "byte instead (a binary file?); fix or remove the line.")
            return line
        raise StopIteration


def _records(path: Path, text: str, sep: str | None) -> list[tuple[int, list[str]]]:
    """``(first line number, fields)`` of each row: by the ``csv`` module's rules with a
    separator, else each line whole."""
    lines = _Lines(path, text)
    if sep is None:
        whole = []
        for line in lines:
            whole.append((lines.start, [line.strip()]))
            lines.at_row_start = True
        return whole
    reader = csv.reader(lines, delimiter=sep, skipinitialspace=True, strict=True)
    out: list[tuple[int, list[str]]] = []
    while True:
        lines.at_row_start = True
        try:
            fields = next(reader)
        except StopIteration:
            return out
        except csv.Error as e:
            kind = "tab" if sep == "\t" else "comma"
            first = lines.lines[lines.start - 1] if lines.start else ""
            raise SourceError(
                f"{path}, line {lines.start}: a row must be {kind}-separated fields, quoted as in "
                f"CSV. Got {first.strip()[:80]!r} ({e}) instead; close the quote (write a quote "
                "inside a quoted field twice), or fix or remove the line.") from None
        out.append((lines.start, [f.strip() for f in fields]))


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
    first = next((ln for ln in _PHYSICAL.findall(text)
                  if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise SourceError(f"List file {path} must name at least one image. Got no rows (only blank "
                          "or # comment lines) instead.")
    sep = _separator(path, first.rstrip("\r\n"), image_extensions)
    rows: list[ListRow] = []
    cols: tuple[int, int | None] | None = None
    width = 2
    for k, (lineno, fields) in enumerate(_records(path, text, sep)):
        line = (sep or "").join(fields)
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
        _check_bytes(path, rows[-1])
    if not rows:
        raise SourceError(f"List file {path} must name at least one image. Got only a header row "
                          "instead.")
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
