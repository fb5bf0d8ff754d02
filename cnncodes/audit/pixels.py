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
within 6 grey levels, 312 within 8. Looked at by eye, the pairs within about 3 are the same
picture, but most between 4 and 7 are different trousers, flip-flops and dresses: plain shapes on
black stay within 7. So two images of the SAME pixel size, which can only be a copy or a
re-encode of each other, get the tighter :data:`SAME_SIZE_BOUND` (4; JPEG q75 at most 2.92); a
resize (different sizes) keeps 7.

:func:`pair_differences_cached` gives the same differences for many pairs among few images
(the pairs inside the training set's duplicate groups): each image is decoded once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

_T = TypeVar("_T")

#: mean absolute grey-level difference (0-255) of the thumbnails at or below which a pair of
#: images of DIFFERENT sizes is the same picture (a resize, perhaps re-encoded); see the docstring
PIXEL_BOUND = 7.0
#: the bound for two images of the SAME size: then only a copy or a re-encode can be the same
#: picture (JPEG quality 75: at most 2.92), and different pictures of plain things (Fashion-MNIST's
#: trousers and flip-flops on black) come within 7 (by eye, on the 958 code look-alikes)
SAME_SIZE_BOUND = 4.0


def pair_bound(size_a: tuple[int, int] | None, size_b: tuple[int, int] | None) -> float:
    """The bound for a pair of images of these pixel sizes (NaN when either is unknown)."""
    if size_a is None or size_b is None:
        return float("nan")
    return SAME_SIZE_BOUND if tuple(size_a) == tuple(size_b) else PIXEL_BOUND


@dataclass
class PixelPairs:
    """Each pair's thumbnail difference ``diff`` and the ``bound`` that applies to it
    (:func:`pair_bound`; NaN both when an image cannot be read)."""

    diff: np.ndarray
    bound: np.ndarray

    @property
    def same(self) -> np.ndarray:
        """Which pairs are the same picture (False where unread: NaN compares False)."""
        return np.asarray(self.diff <= self.bound)

    @staticmethod
    def empty() -> PixelPairs:
        return PixelPairs(np.zeros(0, np.float32), np.zeros(0, np.float32))


def thumb_side(size: tuple[int, int]) -> int:
    """The thumbnail side for an image of ``size``: ``max(4, min(16, smaller side // 2))`` (a
    pair is compared at the smaller of its two images' sides)."""
    return max(4, min(16, min(size) // 2))


def _size(path: str | os.PathLike) -> tuple[int, int]:
    """The image's pixel size, from its header (the stored size: a JPEG's draft would shrink
    it)."""
    from PIL import Image

    from ..sources.images import open_regular

    with open_regular(path) as f, Image.open(f) as im:
        return im.size


def _sized_grey(path: str | os.PathLike) -> tuple[tuple[int, int], PILImage]:
    """The image's stored size and the image as a grey PIL image, from one open."""
    from PIL import Image

    from ..sources.images import open_regular

    with open_regular(path) as f, Image.open(f) as im:
        size = im.size  # before the draft, which shrinks a JPEG
        im.draft("L", (64, 64))  # JPEG: decode at a reduced scale (DCT), enough for 16 px
        return size, im.convert("L")


def _grey(path: str | os.PathLike) -> PILImage:
    """The image as a grey PIL image."""
    return _sized_grey(path)[1]


def pixel_check(a: str | os.PathLike, b: str | os.PathLike) -> tuple[float, float]:
    """Mean absolute grey-level difference of the two images' thumbnails and the bound that
    applies to the pair (:func:`pair_bound`); NaN both when either cannot be read."""
    from PIL import Image

    ra, rb = _quiet(_sized_grey, a), _quiet(_sized_grey, b)
    if ra is None or rb is None:  # an unreadable image is "not confirmed", not an error
        return float("nan"), float("nan")
    (sa, ia), (sb, ib) = ra, rb
    s = min(thumb_side(sa), thumb_side(sb))
    ta = np.asarray(ia.resize((s, s), Image.Resampling.BOX), np.float32)
    tb = np.asarray(ib.resize((s, s), Image.Resampling.BOX), np.float32)
    return float(np.abs(ta - tb).mean()), pair_bound(sa, sb)


def pixel_difference(a: str | os.PathLike, b: str | os.PathLike) -> float:
    """The thumbnail difference of :func:`pixel_check` alone."""
    return pixel_check(a, b)[0]


def pair_differences(first: Sequence[str | os.PathLike],
                     second: Sequence[str | os.PathLike]) -> PixelPairs:
    """:func:`pixel_check` of each pair ``(first[i], second[i])``."""
    got = [pixel_check(a, b) for a, b in zip(first, second, strict=True)]
    return PixelPairs(np.array([d for d, _ in got], np.float32),
                      np.array([m for _, m in got], np.float32))


def _quiet(fn: Callable[..., _T], *args: object, **kw: object) -> _T | None:
    """``fn(*args, **kw)``, or None when the image cannot be read (warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kw)
    except Exception:  # noqa: BLE001 - an unreadable image is "not confirmed", not an error
        return None


def pair_differences_cached(paths: Sequence[str | os.PathLike], a: np.ndarray,
                            b: np.ndarray) -> PixelPairs:
    """:func:`pixel_difference` of each pair ``(paths[a[i]], paths[b[i]])`` (float32, NaN:
    unread), decoding each image of the pairs once: its header first (its thumbnail side), then
    its pixels, kept only as the thumbnails its pairs need (at most 13 of at most 16 x 16)."""
    from PIL import Image

    rows = np.unique(np.concatenate([a, b])).tolist()
    size = {r: _quiet(_size, paths[r]) for r in rows}
    side = {r: None if sz is None else thumb_side(sz) for r, sz in size.items()}
    pair_side = [None if si is None or sj is None else min(si, sj)
                 for si, sj in ((side[i], side[j])
                                for i, j in zip(a.tolist(), b.tolist(), strict=True))]
    need: dict[int, set[int]] = {}
    for i, j, s in zip(a.tolist(), b.tolist(), pair_side, strict=True):
        if s is not None:
            need.setdefault(i, set()).add(s)
            need.setdefault(j, set()).add(s)
    thumbs: dict[tuple[int, int], np.ndarray] = {}
    for r, sizes in need.items():
        im = _quiet(_grey, paths[r])
        if im is None:
            continue
        for s in sizes:
            thumbs[r, s] = np.asarray(im.resize((s, s), Image.Resampling.BOX), np.float32)
    out = np.full(len(a), np.nan, np.float32)
    bound = np.full(len(a), np.nan, np.float32)
    for n, (i, j, s) in enumerate(zip(a.tolist(), b.tolist(), pair_side, strict=True)):
        if s is not None and (i, s) in thumbs and (j, s) in thumbs:
            out[n] = np.abs(thumbs[i, s] - thumbs[j, s]).mean()
            bound[n] = pair_bound(size[i], size[j])
    return PixelPairs(out, bound)
