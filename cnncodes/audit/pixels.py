"""The pixel check of a pair the codes call near-duplicates: are the two images nearly the same
picture, or different images of near-identical things?

Both images become grey thumbnails by box downscaling to ``s = max(4, min(16, smaller side //
2))`` pixels square (so a half-size copy is compared at its own resolution), and the pair's
difference is the mean absolute difference in grey levels (0-255).

Calibration (2-core VM, 2026-12-04; 300 Animal-MNIST images at 28 px): an exact copy 0.00, a
JPEG re-encode at quality 75 at most 2.92, a 0.5x resize at most 6.73 (99th percentile 5.94), a 2x
resize at most 6.64; random different images of one class at least 11.4 (1st percentile 17.1).
:data:`PIXEL_BOUND` (7) keeps every planted copy, re-encode and resize. On full Fashion-MNIST the
codes (cosine >= 0.90) matched 958 test images with a training image; 129 of those pairs are
within 6 grey levels, 312 within 8: nearly all are different garments whose 28-px images give
near-identical codes, which the pixel check tells apart.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

#: mean absolute grey-level difference (0-255) of the thumbnails at or below which a pair is the
#: same picture (a copy, a re-encode, a resize); see the module docstring
PIXEL_BOUND = 7.0


def _grey(path: str | os.PathLike) -> object:
    from PIL import Image

    from ..sources.images import open_regular

    with open_regular(path) as f, Image.open(f) as im:
        im.draft("L", (64, 64))  # JPEG: decode at a reduced scale (DCT), enough for 16 px
        return im.convert("L")


def pixel_difference(a: str | os.PathLike, b: str | os.PathLike) -> float:
    """Mean absolute grey-level difference of the two images' thumbnails (NaN when either
    cannot be read)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ia, ib = _grey(a), _grey(b)
    except Exception:  # noqa: BLE001 - an unreadable image is "not confirmed", not an error
        return float("nan")
    s = max(4, min(16, min(*ia.size, *ib.size) // 2))  # type: ignore[attr-defined]
    ta = np.asarray(ia.resize((s, s), Image.BOX), np.float32)  # type: ignore[attr-defined]
    tb = np.asarray(ib.resize((s, s), Image.BOX), np.float32)  # type: ignore[attr-defined]
    return float(np.abs(ta - tb).mean())


def pair_differences(first: Sequence[str | os.PathLike],
                     second: Sequence[str | os.PathLike]) -> np.ndarray:
    """:func:`pixel_difference` of each pair ``(first[i], second[i])`` (float32, NaN: unread)."""
    return np.array([pixel_difference(a, b) for a, b in zip(first, second, strict=True)],
                    np.float32)
