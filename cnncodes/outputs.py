"""Output checks: every command, and every library function that writes a file, calls
:func:`check_output` before any expensive work, so that nothing a user owns is replaced by mistake.

Refused (:class:`~cnncodes.errors.OutputError`, naming the path, what it is and the fix):

* an output that is one of the command's inputs: the same file, also through a symlink or a hard
  link (same ``st_dev``/``st_ino``), or a folder output that is, or lies inside, an input folder
  (the next walk of that folder would read the outputs as images), or whose own files (``files=``)
  include an input;
* an output that exists and is not a regular file: a device, FIFO or socket is never replaced, nor
  a folder where a file goes, nor a file where a folder goes (``--overwrite`` does not change this);
* an existing file of another kind (:func:`sniff`: an HDF5 code store where a model goes, a model
  or an image where a predictions CSV goes...) unless ``overwrite=True`` (``--overwrite``). A file
  of the expected kind (a previous model, store or predictions CSV) and an empty file are replaced
  as before.

Only the standard library is imported here (this module sits at the bottom of the data flow).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .atomic import file_kind
from .errors import OutputError

#: expect= value -> the sniffed kinds a file of that output may be replaced from
EXPECTED = {
    "model": {"model", "pickle-model", "empty"},
    "store": {"store", "empty"},
    "csv": {"csv", "empty"},
    "json": {"json", "empty"},
    "report": {"json", "empty"},
    "any": None,
}

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
                (b"MM\x00*", "a TIFF image"))
#: First member of a cnncodes model file (a zip): its name at byte 30 identifies the format.
MODEL_MAGIC_MEMBER = "cnncodes-model"


def is_model_archive(head: bytes) -> bool:
    """Whether a file's first bytes are those of a cnncodes model file: a zip archive whose
    first member is :data:`MODEL_MAGIC_MEMBER` (see :mod:`cnncodes.linear.model_format`)."""
    name = MODEL_MAGIC_MEMBER.encode()
    # a file cut inside the name still counts: loading it then says it is truncated
    return (head.startswith(b"PK\x03\x04") and len(head) > 30
            and int.from_bytes(head[26:28], "little") == len(name)
            and name.startswith(head[30:30 + len(name)]))


_WHAT_EXPECTED = {"model": "a cnncodes model file", "store": "a cnncodes code store (.h5)",
                  "csv": "a cnncodes predictions CSV", "json": "a JSON file",
                  "report": "a JSON report"}


def sniff(path: str | os.PathLike) -> tuple[str, str]:
    """``(kind, description)`` of an existing regular file, from its first bytes only.

    Kinds: ``empty``, ``store`` (HDF5), ``model`` (a cnncodes model file), ``pickle-model`` (a
    cnncodes model in the old joblib format), ``pickle`` (another pickle/joblib file), ``torch``
    (a zip archive such as a torch ``model.pt``), ``zip``, ``image``, ``csv`` (a cnncodes predictions CSV), ``json``, ``text``, ``binary``.
    """
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty", "an empty file"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "store", "an HDF5 file (a code store)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        if b"cnncodes-model" in head:
            return "pickle-model", "a cnncodes model file in the old joblib (pickle) format"
        return "pickle", "a pickle/joblib file (not a cnncodes model)"
    if is_model_archive(head):
        return "model", "a cnncodes model file"
    if head.startswith(b"PK\x03\x04"):
        if b"data.pkl" in head:
            return "torch", "a torch archive (a fine-tuned model.pt or checkpoint.pt)"
        return "zip", "a zip archive"
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            return "image", what
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return "image", "a WebP image"
    if b"\x00" in head:
        return "binary", "a binary file"
    text = head.decode("utf-8", "replace").lstrip("\ufeff")
    if text.startswith("path,label"):
        return "csv", "a cnncodes predictions CSV"
    if text.lstrip()[:1] in ("{", "["):
        return "json", "a JSON file"
    return "text", "a text file"



def describe_special(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is not a regular file (None otherwise; links are
    followed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(st.st_mode) else file_kind(st.st_mode)


def _input_paths(inputs: Iterable[Any]) -> Iterator[Path]:
    """Paths of ``inputs``: paths and strings, objects with a ``path`` (a code store) or ``root``
    (an image source); sequences are flattened one level; anything else is skipped."""
    for x in inputs:
        if x is None:
            continue
        if isinstance(x, (str, os.PathLike)):
            yield Path(x).expanduser()
        elif isinstance(x, (list, tuple)):
            for y in x:
                if isinstance(y, (str, os.PathLike)):
                    yield Path(y).expanduser()
        else:  # a code store's file; an image source's folder (not the "/" of a path list)
            p = getattr(x, "path", None)
            if p is None and getattr(x, "kind", None) in ("tree", "flat"):
                p = getattr(x, "root", None)
            if isinstance(p, (str, os.PathLike)):
                yield Path(p).expanduser()


def _same(st: os.stat_result, other: os.stat_result) -> bool:
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return p.absolute()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _fix(option: str) -> str:
    return f"pass another path{' (' + option + ')' if option else ''}"


def check_output(path: str | os.PathLike, *, inputs: Iterable[Any] = (), kind: str = "file",
                 expect: str = "any", overwrite: bool = False,
                 files: Iterable[str] = (), option: str = "") -> Path:
    """Refuse an output that would replace an input, a non-regular file or another kind of file.

    Args:
        path: the output file or folder.
        inputs: what the command reads (paths, code stores, image sources, sequences of paths).
        kind: ``file`` or ``folder`` (created if missing).
        expect: what a file output holds (``model``, ``store``, ``csv``, ``json``, ``report``,
            ``any``): an existing file of another kind needs ``overwrite``.
        overwrite: replace an existing file of another kind (never an input or a special file).
        files: for a folder, the names of the files the command writes or deletes in it; each one
            that exists must be a regular file and none of the inputs.
        option: the option that names this output, for the messages (``-o``, ``--report``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the message names the path, what it is and the fix.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder'. Got {kind!r} instead.")
    if expect not in EXPECTED:
        raise ValueError(f"expect must be one of {', '.join(EXPECTED)}. Got {expect!r} instead.")
    out = Path(path).expanduser()
    label = f"Output {option} {os.fspath(out)}" if option else f"Output {os.fspath(out)}"
    ins = list(_input_paths(inputs))
    in_stats = []
    for p in ins:
        try:
            in_stats.append((p, os.stat(p)))
        except OSError:
            continue
    _check_parent(out, label)
    try:
        st: os.stat_result | None = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a symlink loop, a permission problem
        raise OutputError(f"{label} cannot be checked ({e.strerror}); {_fix(option)}.") from e
    if st is None and out.is_symlink():
        raise OutputError(f"{label} is a dangling symlink (to {os.readlink(out)}); remove it "
                          f"or {_fix(option)}.")
    if st is not None:
        for p, ist in in_stats:
            if _same(st, ist):
                how = "" if _resolved(out) == _resolved(p) and not out.is_symlink() else \
                    " (through a link)"
                raise OutputError(f"{label} is one of the command's inputs{how}: {p}. Writing "
                                  f"it would destroy the input; {_fix(option)}.")
    if kind == "folder":
        _check_folder(out, st, label, option, in_stats, files)
    elif st is not None:
        _check_file(out, st, label, option, expect, overwrite)
    return out


def _check_parent(out: Path, label: str) -> None:
    """The first existing ancestor of ``out`` must be a folder (else mkdir fails later)."""
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{label} cannot be created: {parent} is "
                                  f"{describe_special(parent) or 'a file'}, not a folder; pass "
                                  "a path under a folder.")
            return


def _check_file(out: Path, st: os.stat_result, label: str, option: str, expect: str,
                overwrite: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{label} is {file_kind(st.st_mode)}, not a regular file: it is never "
                          f"replaced; {_fix(option)}"
                          + (", e.g. a file name inside that folder." if stat.S_ISDIR(st.st_mode)
                             else "."))
    allowed = EXPECTED[expect]
    if allowed is None or overwrite:
        return
    try:
        found, what = sniff(out)
    except OSError as e:
        raise OutputError(f"{label} exists but cannot be read ({e.strerror}); "
                          f"{_fix(option)}.") from e
    if found not in allowed:
        raise OutputError(f"{label} already exists and is {what}, not "
                          f"{_WHAT_EXPECTED.get(expect, expect)}; {_fix(option)}, or pass "
                          "--overwrite (overwrite=True) to replace it.")


def _check_folder(out: Path, st: os.stat_result | None, label: str, option: str,
                  in_stats: list[tuple[Path, os.stat_result]], files: Iterable[str]) -> None:
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{label} must be a folder. Got {file_kind(st.st_mode)} instead; "
                          f"{_fix(option)} (a folder; it is created if needed).")
    r_out = _resolved(out)
    for p, ist in in_stats:
        if stat.S_ISDIR(ist.st_mode) and _inside(r_out, _resolved(p)):
            where = "is" if r_out == _resolved(p) else "lies inside"
            raise OutputError(f"{label} {where} the input folder {p}: its files would be read "
                              f"as images of that folder next time; {_fix(option)} outside "
                              f"{p}.")
    if st is None:
        return
    for name in files:
        child = out / name
        try:
            cst = os.stat(child)
        except OSError:
            continue
        if not stat.S_ISREG(cst.st_mode):
            raise OutputError(f"{child} (written by this command in {label.split(' ', 1)[1]}) is "
                              f"{file_kind(cst.st_mode)}, not a regular file: it is never "
                              f"replaced; remove it or {_fix(option)}.")
        for p, ist in in_stats:
            if _same(cst, ist):
                raise OutputError(f"{child} is one of the command's inputs ({p}) and would be "
                                  f"replaced or deleted in the output folder; {_fix(option)}.")
