"""Robust decoding of one file to an 8-bit RGB PIL image (the PIL path).

Decoding never lets a bad file through silently: :func:`load_rgb` raises
:class:`~cnncodes.errors.DecodeError` with a short reason (empty, not an image, truncated, too many
pixels...), which the datasets record as a per-file failure, so a broken image can neither stop a
run nor shift a row.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

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


def load_rgb(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Raises:
        DecodeError: with a short reason (empty, not an image, truncated, too many pixels...).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as e:
        raise DecodeError(f"unreadable: {type(e).__name__}: {e}") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if max_pixels and w * h > max_pixels:
                    raise DecodeError(
                        f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{max_pixels} (raise --max-pixels if the image is genuine)")
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
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}") from None
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
