"""The pixel check of a code match: copies, re-encodes and resizes are the same picture;
another picture is not (the Fashion-MNIST measurement is in cnncodes/audit/pixels.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnncodes.audit.pixels import PIXEL_BOUND, pair_differences, pixel_difference

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
    same = [pixel_difference(src, tmp_path / n) for n in ("copy.png", "q75.jpg", "half.png",
                                                           "double.png")]
    assert same[0] == 0.0 and max(same) <= PIXEL_BOUND, same
    assert pixel_difference(src, tmp_path / "other.png") > PIXEL_BOUND
    (tmp_path / "broken.png").write_bytes(b"not an image")
    d = pair_differences([src, src], [tmp_path / "copy.png", tmp_path / "broken.png"])
    assert d[0] == 0.0 and np.isnan(d[1])  # unreadable: not confirmed, not an error
