"""The pixel check of a code match: copies, re-encodes and resizes are the same picture;
another picture is not (the Fashion-MNIST measurement is in cnncodes/audit/pixels.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnncodes.audit.pixels import (
    PIXEL_BOUND,
    SAME_SIZE_BOUND,
    pair_differences,
    pair_differences_cached,
    pixel_check,
)

from ..conftest import make_image


def test_copies_reencodes_and_resizes_are_the_same_picture_others_are_not(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "a.png"
    make_image(rng, 1, (48, 40)).save(src)
    im = Image.open(src).convert("RGB")
    im.save(tmp_path / "copy.png")
    im.save(tmp_path / "q75.jpg", quality=75)
    im.resize((24, 20), Image.BILINEAR).save(tmp_path / "half.png")
    im.resize((96, 80), Image.BILINEAR).save(tmp_path / "double.png")
    make_image(rng, 2, (48, 40)).save(tmp_path / "other.png")  # another picture
    (tmp_path / "broken.png").write_bytes(b"not an image")
    names = ["copy.png", "q75.jpg", "half.png", "double.png", "other.png", "broken.png"]
    px = pair_differences([src] * len(names), [tmp_path / n for n in names])
    assert px.diff[0] == 0.0
    assert px.same.tolist() == [True, True, True, True, False, False], px
    # two images of one size can only be a copy or a re-encode: the tighter bound
    assert px.bound[:2].tolist() == [SAME_SIZE_BOUND] * 2
    assert px.bound[2:4].tolist() == [PIXEL_BOUND] * 2
    assert np.isnan(px.diff[5]) and np.isnan(px.bound[5])  # unreadable: not confirmed
    # the cached version (the groups' pairs) gives the same figures
    paths = [src, *(tmp_path / n for n in names)]
    cached = pair_differences_cached(paths, np.zeros(len(names), np.int64),
                                     np.arange(1, len(names) + 1))
    np.testing.assert_allclose(cached.diff, px.diff, equal_nan=True)
    np.testing.assert_array_equal(cached.bound, px.bound)


def test_a_same_size_picture_a_few_grey_levels_off_is_not_the_same_picture(tmp_path):
    """Different pictures of plain things at one size (Fashion-MNIST's trousers) differ by
    4-7 grey levels; a resize by as much is still the same picture."""
    rng = np.random.default_rng(1)
    a = np.asarray(make_image(rng, 1, (48, 40)).convert("L"), np.float32)
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "a.png")
    b = np.clip(a + 5.5, 0, 255).astype(np.uint8)  # the same size, 5.5 grey levels brighter
    Image.fromarray(b).save(tmp_path / "b.png")
    Image.fromarray(b).resize((24, 20), Image.BOX).save(tmp_path / "b_half.png")
    d, bound = pixel_check(tmp_path / "a.png", tmp_path / "b.png")
    assert SAME_SIZE_BOUND < d <= PIXEL_BOUND and bound == SAME_SIZE_BOUND
    d2, bound2 = pixel_check(tmp_path / "a.png", tmp_path / "b_half.png")
    assert d2 <= PIXEL_BOUND and bound2 == PIXEL_BOUND
