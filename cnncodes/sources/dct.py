"""DCT-domain downscaling of large JPEGs ("draft" decoding) and its start-up check.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size by running a smaller inverse DCT on
each block (Pillow's ``Image.draft``): a 12-Mpx phone photo then costs a fraction of a full
decode. The antialiased resize to the weights' size follows as usual. The decoded image's shorter
side is kept at least :data:`DCT_MARGIN` times the resize target (:func:`draft_target`), so the
final resize still does most of the shrinking: measured on 20 photo-like 4000x3000 JPEGs
(``benchmarks/bench_photos.py``, embedded MobileNetV2 at 224 px) the codes' cosine to a full
decode was >= 0.99977 with margin 2 (and 1.5), but 0.9975 with margin 1 (decoding at 1/8 to 375
px, then resizing to 256). The bound we hold it to is :data:`DCT_MIN_COSINE`.

The start-up check (:func:`dct_check`) is the documented cheaper form of comparing codes both
ways: one synthetic photo-like JPEG (1024x768: gradients, edges, texture and seeded noise,
4:2:0) is decoded in full and at 1/2 through this Pillow/libjpeg build, both resized (shorter
side 128) and centre-cropped (112 px) as a preprocessing does, and the two crops must agree
within :data:`DCT_CHECK_MEAN_ABS` grey levels on average and :data:`DCT_CHECK_MAX_ABS` at most
(measured here: mean 0.23, max 2 levels). A build whose scaled IDCT is broken or
different fails it, and the run then decodes every JPEG in full (logged once, and recorded:
``decoding`` is then ``cpu``, not ``cpu-dct``). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import io
import logging

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: the decoded image's shorter side stays >= this many times the resize target
DCT_MARGIN = 2
#: codes of DCT-scaled decoding must keep this cosine to a full decode (measured: 0.99977)
DCT_MIN_COSINE = 0.999
#: start-up check bounds on the 224-px crops of full and DCT-scaled decoding (grey levels)
DCT_CHECK_MEAN_ABS = 1.0
DCT_CHECK_MAX_ABS = 24


def draft_target(resize: int) -> int:
    """Shorter side (pixels) a JPEG's DCT-scaled decode must keep: :data:`DCT_MARGIN` x the
    resize of the weights' preprocessing."""
    return DCT_MARGIN * int(resize)


_RESIZE, _CROP = 128, 112  # the check's preprocessing: 1024x768 decodes at 1/2 (512x384)


def _check_jpeg() -> bytes:
    """A deterministic photo-like JPEG (1024x768, 4:2:0, quality 90)."""
    h, w = 768, 1024
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    r = 128 + 90 * np.cos(y / 61.0) * np.sin(x / 97.0)
    g = 255 * 0.6 * (x / w) + 60 * ((x // 211 + y // 173) % 2)
    b = 128 + 70 * (y / h) * np.sin((x + y) / 13.0)
    img = np.stack(np.broadcast_arrays(r, g, b), -1)
    img += np.random.default_rng(7).standard_normal((h, w, 3), dtype=np.float32) * 6
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90,
                                                                subsampling=2)
    return buf.getvalue()


def _crop(img: Image.Image) -> np.ndarray:
    """Shorter side to :data:`_RESIZE` (bilinear, antialiased as PIL does), centre
    :data:`_CROP` crop."""
    w, h = img.size
    s = _RESIZE / min(w, h)
    img = img.resize((int(w * s), _RESIZE) if w >= h else (_RESIZE, int(h * s)), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - _CROP) // 2, (h - _CROP) // 2
    return np.asarray(img.crop((left, top, left + _CROP, top + _CROP)), np.int16)


@functools.lru_cache(maxsize=1)
def dct_check() -> tuple[bool, str]:
    """``(ok, detail)``: whether DCT-scaled decoding agrees with a full decode in this process's
    Pillow/libjpeg build (see the module docstring). Run once per process (cached)."""
    try:
        data = _check_jpeg()
        with Image.open(io.BytesIO(data)) as im:
            full = _crop(im.convert("RGB"))
        with Image.open(io.BytesIO(data)) as im:
            im.draft(None, (draft_target(_RESIZE),) * 2)
            scaled_size = im.size
            small = _crop(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - a failing check only turns the fast path off
        return False, f"the check itself failed ({type(e).__name__}: {e})"
    if scaled_size != (512, 384):
        return False, f"Image.draft gave {scaled_size[0]}x{scaled_size[1]}, expected 512x384"
    d = np.abs(full - small)
    mean, top = float(d.mean()), int(d.max())
    detail = f"mean {mean:.2f}, max {top} grey levels on the check image"
    if mean > DCT_CHECK_MEAN_ABS or top > DCT_CHECK_MAX_ABS:
        return False, detail
    return True, detail


def dct_enabled(choice: str) -> bool:
    """Whether a run with ``jpeg_scaling=choice`` (``dct``, ``off``; ``auto`` means ``dct``
    here) decodes large JPEGs DCT-scaled: not when ``off``, nor when :func:`dct_check` fails."""
    if choice == "off":
        return False
    ok, detail = dct_check()
    if not ok:
        log.warning("DCT-scaled JPEG decoding disagrees with a full decode in this Pillow build "
                    "(%s); decoding every JPEG in full", detail)
    return ok
