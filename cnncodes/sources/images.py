"""Robust decoding of one file to an 8-bit RGB PIL image (the PIL path).

Decoding never lets a bad file through silently: :func:`load_rgb` raises
:class:`~cnncodes.errors.DecodeError` with a short reason (empty, not an image, truncated, too many
pixels...), which the datasets record as a per-file failure, so a broken image can neither stop a
run nor shift a row. Only regular files are opened (:func:`open_regular`): a FIFO, socket, device,
dangling link or link loop named like an image is a failure with that reason, never a hang.

``max_pixels``: the per-image decompression-bomb limit; ``0`` or None = no limit. While a file is
decoded, PIL's own global limit (``Image.MAX_IMAGE_PIXELS``) is set to match it (None for no
limit) and restored afterwards, so the limit asked for is the one that applies; PIL's own error
(raised at twice its limit) is restated with the limit in force. The resized image is bounded by
the same limit (:func:`cnncodes.sources.preprocessing.check_resize`).

The pixels are those a viewer shows (:func:`to_rgb`): integer images are scaled by the bit depth
their format declares (:func:`int_levels`), never by their content; float images are taken as
[0, 1] (:data:`FLOAT_RANGE`); every kind of transparency is composited on :data:`BACKGROUND`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
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


#: The background every kind of transparency is composited on (alpha channels of RGBA, LA, PA,
#: RGBa, La; palette transparency; the tRNS colour key of RGB and grey PNGs): opaque white.
BACKGROUND = (255, 255, 255)

#: Float images (mode ``F``) are taken as linear levels in [0, 1] (0 black, 1 white); values
#: outside are clipped, NaN is black.
FLOAT_RANGE = (0.0, 1.0)

_INT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_KEYED_MODES = ("1", "L", "P", "RGB")  # 8-bit modes whose tRNS key Pillow turns into alpha


def int_levels(img: Image.Image) -> tuple[int, bool]:
    """(bits per sample, signed) of an integer image (modes ``I;16*`` and ``I``), from the format's
    header where it says it, else from the Pillow mode; never from the pixel values.

    TIFF: BitsPerSample and SampleFormat tags. PNG and PPM/PGM store at most 16 bits (Pillow
    gives ``I``/``I;16`` for them). Any other ``I`` image: Pillow's 32-bit signed integers.
    """
    if img.format == "TIFF" and hasattr(img, "tag_v2"):
        bits = img.tag_v2.get(258)
        fmt = img.tag_v2.get(339)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        fmt = fmt[0] if isinstance(fmt, tuple) and fmt else fmt
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits, fmt == 2
    if img.mode in _INT16_MODES or img.format in ("PNG", "PPM"):
        return 16, False
    return 32, True


def _scaled(arr: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer levels -> uint8: 0 -> 0, the format's largest level -> 255, rounded to nearest
    (negative levels of signed formats clip to 0)."""
    top = float(2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)
    x = np.floor(arr.astype(np.float64) * (255.0 / top) + 0.5)
    return np.clip(x, 0, 255).astype(np.uint8)


def _float_scaled(arr: np.ndarray) -> np.ndarray:
    lo, hi = FLOAT_RANGE
    x = np.nan_to_num(arr.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    x = np.floor((np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo)) + 0.5)
    return x.astype(np.uint8)


def _png_key_in_pixel_units(img: Image.Image, rawmode: str | None) -> None:
    """Restate a PNG's tRNS colour key in the units of the pixels Pillow decoded (in place).

    Pillow keeps the key as stored, in the file's sample depth, while it scales 2- and 4-bit grey
    samples up to 0-255 and keeps only the high byte of 16-bit RGB samples; compared as stored the
    key of such files matches no pixel (or the wrong ones). 16-bit grey (``I;16``) is compared on
    its 16-bit levels and needs nothing; the key of 16-bit RGB is compared at the 8-bit precision
    Pillow leaves (pixels within 1/256 of the key colour count as the key).
    """
    key = img.info.get("transparency")
    if key is None or not rawmode:
        return
    if rawmode in ("L;2", "L;4") and isinstance(key, int):
        bits = int(rawmode[-1])
        img.info["transparency"] = key * 255 // (2 ** bits - 1)
    elif rawmode.startswith("RGB;16") and isinstance(key, tuple):
        img.info["transparency"] = tuple(int(k) >> 8 for k in key)


def _on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image, *, levels: tuple[int, bool] | None = None) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB as a viewer shows it.

    * transparency of every kind (alpha, palette transparency, tRNS colour key) is composited
      on :data:`BACKGROUND`;
    * integer images (``I;16*``, ``I``) are scaled by their bit depth (``levels``: bits and
      signedness, default :func:`int_levels` of ``img``), never by their content;
    * float images by :data:`FLOAT_RANGE`;
    * CMYK, YCbCr and the rest by Pillow's conversion.
    """
    key = img.info.get("transparency")
    if img.mode in _INT16_MODES or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            grey = _float_scaled(arr)
        else:
            grey = _scaled(arr, *(levels or int_levels(img)))
        rgb = np.repeat(grey[..., None], 3, axis=2)
        if isinstance(key, int) and img.mode != "F":  # tRNS colour key of a 16-bit grey PNG
            rgb[arr == key] = BACKGROUND
        return Image.fromarray(rgb)
    if img.mode in _KEYED_MODES and key is not None:
        img = img.convert("RGBA")  # Pillow turns the key / transparent palette entries into alpha
    if img.mode in _ALPHA_MODES:
        return _on_background(img.convert("RGBA"))
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _missing_reason(p: Path) -> str:
    if os.path.islink(p):
        return f"dangling symbolic link: {os.path.abspath(p)} -> {os.readlink(p)} does not exist"
    return f"file not found (looked for {os.path.abspath(p)})"


def _not_regular_reason(mode: int) -> str:
    return f"not a regular file: {file_kind(mode)}, not an image file; remove it from the source"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
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


def load_rgb(path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             draft_to: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Args:
        max_pixels: decompression-bomb limit (width x height); 0 or None = no limit.
        draft_to: a JPEG whose shorter side is at least twice this is decoded at the largest
            scale 1/2, 1/4 or 1/8 that keeps its shorter side >= ``draft_to`` (libjpeg's
            DCT-domain scaling, :func:`draft_scale`); None decodes every image in full.

    Raises:
        DecodeError: with a short reason (empty, not a regular file, not an image, truncated, too
            many pixels...).
    """
    p = Path(path)
    return decode_rgb(open_regular(p), name=p, max_pixels=max_pixels, draft_to=draft_to)


def draft_scale(width: int, height: int, draft_to: int | None) -> int:
    """The DCT-domain scale denominator (1, 2, 4 or 8) a JPEG of ``width`` x ``height`` is decoded
    at for ``draft_to`` (Pillow's ``Image.draft`` rule: the largest that keeps the shorter side
    >= ``draft_to``; 1 = full decode)."""
    if not draft_to or draft_to < 1:
        return 1
    ratio = min(width, height) // int(draft_to)
    for s in (8, 4, 2):
        if ratio >= s:
            return s
    return 1


def _too_many_pixels(w: int, h: int, max_pixels: int) -> DecodeError:
    return DecodeError(f"decompression bomb: {w}x{h} = {w * h:,} pixels exceeds the limit of "
                       f"{max_pixels:,} (--max-pixels {max_pixels}; raise it if the image is "
                       "genuine, or 0 for no limit)")


def _pil_bomb(e: Exception, max_pixels: int | None) -> DecodeError:
    """PIL's own DecompressionBombError (raised at twice its limit, and its message names that
    doubled figure) restated with the limit in force."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    what = f"{int(m.group(1)):,} pixels" if m else "the image's size"
    return DecodeError(f"decompression bomb: {what} exceeds the limit of {max_pixels or 0:,} "
                       f"(--max-pixels {max_pixels or 0}; raise it if the image is genuine, or 0 "
                       "for no limit)")


def decode_rgb(f: BinaryIO, *, name: str | os.PathLike[str],
               max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_to: int | None = None) -> Image.Image:
    """:func:`load_rgb` of an open binary file (closed here), e.g. a member of a tar shard;
    ``name`` names it in log messages."""
    p = name
    try:
        with f, warnings.catch_warnings(), pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                w, h = img.size
                if max_pixels and w * h > max_pixels:
                    raise _too_many_pixels(w, h, max_pixels)
                img.seek(0)
                if img.format == "JPEG" and draft_scale(w, h, draft_to) > 1:
                    img.draft(None, (int(draft_to), int(draft_to)))  # type: ignore[arg-type]
                rawmode = img.tile[0][3] if img.format == "PNG" and img.tile else None
                img.load()
                _png_key_in_pixel_units(img, rawmode if isinstance(rawmode, str) else None)
                w, h = img.size  # some formats (ICO, ICNS) choose their size when loading
                if max_pixels and w * h > max_pixels:
                    raise _too_many_pixels(w, h, max_pixels)
                levels = int_levels(img) if img.mode in _INT16_MODES or img.mode == "I" else None
                try:
                    img = ImageOps.exif_transpose(img)  # type: ignore[assignment]
                except Exception as e:  # noqa: BLE001 - a broken EXIF block is not fatal
                    log.debug("%s: EXIF orientation ignored (%s)", p, e)
                return to_rgb(img, levels=levels)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as e:  # PIL's own check (its limit = ours while here)
        raise _pil_bomb(e, max_pixels) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding (lower --max-pixels to refuse images "
                          "this large before decoding them)") from None
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
