"""Robust decoding of one file to an 8-bit RGB PIL image (the PIL path).

Decoding never lets a bad file through silently: :func:`load_rgb` raises
:class:`~cnncodes.errors.DecodeError` with a short reason (empty, not an image, truncated, too many
pixels...), which the datasets record as a per-file failure, so a broken image can neither stop a
run nor shift a row. Only regular files are opened (:func:`open_regular`): a FIFO, socket, device,
dangling link or link loop named like an image is a failure with that reason, never a hang.

``max_pixels``: the per-image decompression-bomb limit; ``0`` or None = no limit. While a file is
decoded, PIL's own global limit (``Image.MAX_IMAGE_PIXELS``) is set to match it (None for no
limit) and restored afterwards, so the limit asked for is the one that applies.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..atomic import file_kind
from ..errors import DecodeError
from ..options import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        hi = 1.0 if np.nanmax(arr) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) * (255.0 / hi), 0, 255).astype(np.uint8)
    hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(arr.astype(np.float64) * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _missing_reason(p: Path) -> str:
    if os.path.islink(p):
        return f"dangling symbolic link: {os.path.abspath(p)} -> {os.readlink(p)} does not exist"
    return f"file not found (looked for {os.path.abspath(p)})"


def _not_regular_reason(mode: int) -> str:
    return f"not a regular file: {file_kind(mode)}, not an image file; remove it from the source"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading if (after following links) it is a regular, non-empty file.

    Nothing else is opened in a way that can block: the type is checked before the open, and
    again on the open descriptor (opened non-blocking), so a FIFO swapped in between cannot hang.

    Raises:
        DecodeError: not found, a dangling link, a link loop, not a regular file, empty, unreadable.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DecodeError(_missing_reason(p)) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DecodeError(f"symbolic link loop at {os.path.abspath(p)}") from None
        raise DecodeError(f"unreadable: {type(e).__name__}: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(_not_regular_reason(st.st_mode))
    if st.st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise DecodeError(f"unreadable: {type(e).__name__}: {e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DecodeError(_not_regular_reason(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_limit_lock = threading.Lock()
_active_limits: Counter[int | None] = Counter()
_saved_limit: list[int | None] = []


def _apply_limit() -> None:
    if not _active_limits:
        Image.MAX_IMAGE_PIXELS = _saved_limit.pop()
    elif None in _active_limits:
        Image.MAX_IMAGE_PIXELS = None
    else:  # concurrent calls with different limits: the largest (each call checks its own)
        Image.MAX_IMAGE_PIXELS = max(k for k in _active_limits if k is not None)


@contextlib.contextmanager
def pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's global ``Image.MAX_IMAGE_PIXELS`` = ``max_pixels`` (None for 0/None: no limit) during
    the block, restored after it (thread-safe: overlapping blocks keep the most permissive)."""
    limit = int(max_pixels) if max_pixels else None
    with _limit_lock:
        if not _active_limits:
            _saved_limit.append(Image.MAX_IMAGE_PIXELS)
        _active_limits[limit] += 1
        _apply_limit()
    try:
        yield
    finally:
        with _limit_lock:
            _active_limits[limit] -= 1
            if not _active_limits[limit]:
                del _active_limits[limit]
            _apply_limit()


def load_rgb(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Args:
        max_pixels: decompression-bomb limit (width x height); 0 or None = no limit.

    Raises:
        DecodeError: with a short reason (empty, not a regular file, not an image, truncated, too
            many pixels...).
    """
    p = Path(path)
    return decode_rgb(open_regular(p), name=p, max_pixels=max_pixels)


def decode_rgb(f: BinaryIO, *, name: str | os.PathLike,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_rgb` of an open binary file (closed here), e.g. a member of a tar shard;
    ``name`` names it in log messages."""
    p = name
    try:
        with f, warnings.catch_warnings(), pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                w, h = img.size
                if max_pixels and w * h > max_pixels:
                    raise DecodeError(
                        f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{max_pixels} (raise --max-pixels if the image is genuine, or 0 for no "
                        "limit)")
                img.seek(0)
                img.load()
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception as e:  # noqa: BLE001 - a broken EXIF block is not fatal
                    log.debug("%s: EXIF orientation ignored (%s)", p, e)
                return to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as e:  # PIL's own check (its limit = ours while here)
        raise DecodeError(f"decompression bomb: {e} (--max-pixels {max_pixels}; raise it if the "
                          "image is genuine, or 0 for no limit)") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "EOF" in msg:
            raise DecodeError(f"truncated image: {msg}") from None
        raise DecodeError(f"unreadable: {type(e).__name__}: {msg}") from None
    except Exception as e:  # noqa: BLE001 - any decoder bug becomes a recorded failure
        raise DecodeError(f"decode error: {type(e).__name__}: {e}") from None


def truncated_policy() -> str:
    """How truncated files are treated in this process (recorded in provenance)."""
    return "accepted-grey-filled" if ImageFile.LOAD_TRUNCATED_IMAGES else "rejected"
