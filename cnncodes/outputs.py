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

Output folders are *owned* (:func:`claim_folder`): a report or run folder records the command
that wrote it in :data:`OWNER_FILE` (written atomically). Another command writing into it
(``finetune -o`` over a ``train`` report, ``baseline --report`` over a fine-tune run) is refused,
and so is a folder of images (source images, not an output folder), unless ``overwrite=True``
(``--overwrite``); with it only that command's own files are replaced, and it owns the folder
from then on. Folders written before the marker existed are recognised by their files.

Only the standard library is imported here (this module sits at the bottom of the data flow).
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, file_kind
from .errors import AccessDeniedError, OutputError

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
    (a zip archive such as a torch ``model.pt``), ``zip``, ``image``, ``csv`` (a cnncodes
    predictions CSV), ``json``, ``text``, ``binary``.
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
                 files: Iterable[str] = (), option: str = "", owner: str | None = None,
                 writes: bool = True) -> Path:
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
        owner: for a folder, the command writing it (``train``, ``finetune``...): a folder
            another command wrote, or a folder of images, needs ``overwrite``.
        writes: the command will write there (its folder must be writable: checked now, before
            any work); False for ``extract``, whose rerun with nothing to do writes nothing.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the message names the path, what it is and the fix.
        AccessDeniedError: the folder it goes in is not writable (read-only disk, permissions).
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
        files = tuple(files)
        _check_folder(out, st, label, option, in_stats, files)
        if owner is not None and st is not None:
            check_owner(out, owner, overwrite=overwrite, option=option, files=files)
    elif st is not None:
        _check_file(out, st, label, option, expect, overwrite)
    if writes:
        _check_writable(out, kind, label, option)
    return out


def _check_writable(out: Path, kind: str, label: str, option: str) -> None:
    """The folder the output is written in (or its first existing ancestor) must be writable."""
    where = out.absolute() if kind == "folder" else out.absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise AccessDeniedError(f"{label} cannot be written: {where} is not writable (a "
                                "read-only disk, or no write permission); nothing was done. "
                                f"{_fix(option)[0].upper()}{_fix(option)[1:]}, or remount it "
                                "read-write.")


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


# ----------------------------------------------------------------------------- owned folders

#: the marker of an output folder: the command that wrote it (JSON)
OWNER_FILE = ".cnncodes-owner.json"
#: commands that write the same report files into a folder: either may rewrite the other's
_SAME_OWNER = {"evaluate": "train"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def _family(owner: str) -> str:
    return _SAME_OWNER.get(owner, owner)


def folder_owner(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``{"command": ..., "command_line": ...}`` of the command that wrote ``folder``: its
    :data:`OWNER_FILE`, else guessed from the files of a folder written before markers existed;
    None for a folder no cnncodes command wrote."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        if isinstance(rec, dict) and isinstance(rec.get("command"), str):
            return rec
    except (OSError, ValueError):
        pass
    guess = None
    if (folder / "escalation.json").is_file():
        guess = "finetune --escalation"
    elif (folder / "checkpoint.pt").is_file() or (folder / "config.json").is_file():
        guess = "finetune"
    elif (folder / "advice.json").is_file():
        guess = "advise"
    elif (folder / "report.json").is_file():
        guess = ("baseline" if any((folder / m).is_file() for m in ("model.npz", "model.joblib"))
                 else "train")
    return {"command": guess, "guessed": True} if guess else None


def _images(folder: Path, files: Iterable[str]) -> list[Path]:
    """Image files in ``folder`` or its sub-folders (a class tree) that are not this command's
    own files nor in a folder some command wrote."""
    own = set(files)
    found = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_file() and Path(e.name).suffix.lower() in _IMAGE_SUFFIXES and e.name not in own:
            found.append(Path(e.path))
        elif e.is_dir() and not e.name.startswith(".") and folder_owner(e.path) is None:
            with os.scandir(e.path) as sub:
                found += [Path(x.path) for x in sub if x.is_file()
                          and Path(x.name).suffix.lower() in _IMAGE_SUFFIXES]
        if len(found) >= 3:
            break
    return found


def check_owner(folder: Path, owner: str, *, overwrite: bool, option: str = "",
                files: Iterable[str] = ()) -> None:
    """Refuse to write ``owner``'s files into a folder another command wrote, or into a folder
    of images, unless ``overwrite``.

    Raises:
        OutputError: naming the folder, who wrote it and the fix.
    """
    if overwrite or not folder.is_dir():
        return
    files = tuple(files)
    where = f"{option} " if option else ""
    rec = folder_owner(folder)
    theirs = (rec or {}).get("command")
    if theirs is None:
        images = _images(folder, files)
        if images:
            raise OutputError(
                f"Output {where}{folder} holds images ({', '.join(map(str, images[:2]))}...): "
                "it looks like a folder of source images, not an output folder. Pass another "
                f"folder{' (' + option + ')' if option else ''}, or --overwrite (overwrite=True) "
                f"to write `cnncodes {owner}`'s files ({', '.join(files)}) there anyway.")
        return
    if _family(theirs) == _family(owner):
        return
    line = rec.get("command_line") if rec else None
    raise OutputError(
        f"Output {where}{folder} holds the output of `cnncodes {theirs}`"
        f"{' (' + line + ')' if line else ''}; `cnncodes {owner}` would mix its files with "
        f"that run's. Pass another folder{' (' + option + ')' if option else ''}, or "
        f"--overwrite (overwrite=True) to write {owner}'s own files there "
        f"({', '.join(files)}); the other files are left as they are.")


def claim_folder(folder: str | os.PathLike, owner: str, *, files: Iterable[str] = (),
                 command: str | None = None) -> Path:
    """Record in ``folder`` (created if needed) that ``owner`` writes it: :data:`OWNER_FILE`,
    written atomically. Call it after :func:`check_output` (``owner=``) allowed the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"command": owner, "command_line": command, "files": sorted(set(files)),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    old = folder_owner(folder)
    if old and not old.get("guessed") and {k: old.get(k) for k in ("command", "command_line",
                                                                    "files")} == \
            {k: rec[k] for k in ("command", "command_line", "files")}:
        return folder / OWNER_FILE  # unchanged: no write (a rerun of the same command)
    return atomic_write_json(folder / OWNER_FILE, rec)
