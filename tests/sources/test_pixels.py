"""The pixels the network sees are those a viewer shows (issue 24).

A property test writes one picture in every mode Pillow can write to each format that stores it
(1, L, P, LA, PA, RGB, RGBA, with and without transparency or a tRNS colour key; 16-bit, 32-bit
integer and float grey; CMYK, YCbCr; PNG, TIFF, WebP, GIF, BMP, JPEG) and checks that what each
decoder the tool may pick (the PIL path, the tensor path) hands the network equals what it hands it
for the same picture written as plain 8-bit RGB. Then the rules one by one: scaling by bit depth,
never by content; colour keys; the bound on the resized image; the limit named in messages.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnncodes.errors import DecodeError
from cnncodes.sources.images import load_rgb
from cnncodes.sources.loader import preprocess_pil
from cnncodes.sources.preprocessing import IMAGENET, Preprocessing, check_resize
from cnncodes.sources.tensor_decode import TENSOR, decode_batch, read_item

PP = Preprocessing(20, 16, IMAGENET.mean, IMAGENET.std, "bilinear")
I32_TOP = 2**31 - 1

# How far a lossy format may move a pixel the network sees. JPEG is written at quality 100 with
# 4:4:4 sampling: every DCT coefficient is quantised with step 1, so the only error is the rounding
# in the colour transform and the integer DCT/IDCT (measured on 500 noise pictures each, after the
# resize: at most 4 levels for RGB, 1 for grey and CMYK). YCbCr is stored as 8-bit Y, Cb, Cr:
# converting to it and back rounds twice (measured: at most 3). Partial alpha is composited on
# white with Pillow's integer arithmetic (measured: 0 over 900 pictures; 1 allowed for rounding).
TOL = {"JPEG": 5, "YCbCr": 4, "alpha": 1}
# The tensor path (libjpeg-turbo + torch's antialiased resize) against the PIL path for the same
# JPEG: the resize kernels agree to 1-2 levels (measured: 2 for RGB, 1 for grey; see also
# tests/sources/test_decode.py).
TENSOR_TOL = 2

SAVE = {"PNG": {}, "TIFF": {}, "GIF": {}, "BMP": {},
        "WEBP": {"lossless": True, "exact": True},
        "JPEG": {"quality": 100, "subsampling": 0}}

# (case, formats that store it natively)
CASES = [
    ("1", ("PNG", "TIFF", "BMP")), ("1+key", ("PNG",)),
    ("L", ("PNG", "TIFF", "BMP", "GIF", "JPEG")), ("L+key", ("PNG",)),
    ("LA", ("PNG", "TIFF", "WEBP")), ("P", ("PNG", "TIFF", "GIF", "BMP")),
    ("P+index", ("PNG", "GIF")), ("P+alpha", ("PNG",)), ("PA", ("TIFF",)),
    ("RGB", ("PNG", "TIFF", "BMP", "WEBP", "JPEG")), ("RGB+key", ("PNG",)),
    ("RGBA", ("PNG", "TIFF", "WEBP")), ("I;16", ("PNG", "TIFF")), ("I;16+key", ("PNG",)),
    ("I", ("TIFF",)), ("F", ("TIFF",)), ("CMYK", ("TIFF", "JPEG")), ("YCbCr", ("TIFF",)),
]
COMBOS = [(case, fmt) for case, fmts in CASES for fmt in fmts]


def _grey(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2).astype(np.uint8)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.floor(rgb * a + 255 * (1 - a) + 0.5).astype(np.uint8)


def picture(case: str, rng: np.random.Generator, h: int, w: int
            ) -> tuple[Image.Image, dict, np.ndarray, int]:
    """(image in ``case``'s mode, extra save options, the same picture as 8-bit RGB, tolerance)."""
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    g = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if case in ("1", "1+key"):
        bits = rng.random((h, w)) < 0.5
        img = Image.fromarray(bits)
        if case == "1":
            return img, {}, _grey(bits * 255), 0
        return img, {"transparency": 0}, _grey(np.full((h, w), 255)), 0  # black is transparent
    if case == "L":
        return Image.fromarray(g), {}, _grey(g), 0
    if case == "L+key":
        key = int(g[0, 0])
        return Image.fromarray(g), {"transparency": key}, _grey(np.where(g == key, 255, g)), 0
    if case == "LA":
        img = Image.fromarray(np.stack([g, alpha], axis=2))
        return img, {}, _on_white(_grey(g), alpha), TOL["alpha"]
    if case.startswith("P"):
        n = int(rng.integers(2, 17))
        palette = rng.integers(0, 256, (n, 3), dtype=np.uint8)
        idx = rng.integers(0, n, (h, w), dtype=np.uint8)
        img = Image.frombytes("P", (w, h), idx.tobytes())
        img.putpalette(palette.tobytes())
        ref = palette[idx]
        if case == "P":
            return img, {}, ref, 0
        if case == "P+index":
            t = int(idx[0, 0])
            return img, {"transparency": t}, np.where((idx == t)[..., None], 255, ref).astype(
                np.uint8), 0
        entry_alpha = rng.integers(0, 256, n, dtype=np.uint8)
        if case == "P+alpha":
            return img, {"transparency": entry_alpha.tobytes()}, \
                _on_white(ref, entry_alpha[idx]), TOL["alpha"]
        img = img.convert("PA")  # PA: palette + per-pixel alpha
        img.putalpha(Image.fromarray(alpha))
        return img, {}, _on_white(ref, alpha), TOL["alpha"]
    if case == "RGB":
        return Image.fromarray(rgb), {}, rgb, 0
    if case == "RGB+key":
        key = tuple(int(v) for v in rgb[0, 0])
        hit = (rgb == np.array(key, np.uint8)).all(axis=2)
        return Image.fromarray(rgb), {"transparency": key}, \
            np.where(hit[..., None], 255, rgb).astype(np.uint8), 0
    if case == "RGBA":
        img = Image.fromarray(np.dstack([rgb, alpha]))
        return img, {}, _on_white(rgb, alpha), TOL["alpha"]
    if case in ("I;16", "I;16+key"):
        top = int(rng.choice([256, 4096, 65536]))  # dark pictures too: scaled alike
        v = rng.integers(0, top, (h, w), dtype=np.uint16)
        ref = np.floor(v * (255 / 65535) + 0.5).astype(np.uint8)
        if case == "I;16":
            return Image.fromarray(v), {}, _grey(ref), 0
        key = int(v[0, 0])
        return Image.fromarray(v), {"transparency": key}, _grey(np.where(v == key, 255, ref)), 0
    if case == "I":
        v = rng.integers(0, I32_TOP, (h, w), dtype=np.int64, endpoint=True).astype(np.int32)
        return Image.fromarray(v), {}, _grey(np.floor(v * (255 / I32_TOP) + 0.5)), 0
    if case == "F":
        f = (g / 255).astype(np.float32)
        f[rng.random((h, w)) < 0.1] = 3.0  # over the range: white
        f[rng.random((h, w)) < 0.1] = -1.0  # under it: black
        ref = np.where(f > 1, 255, np.where(f < 0, 0, g))
        return Image.fromarray(f), {}, _grey(ref), 0
    if case == "CMYK":
        return Image.fromarray(rgb).convert("CMYK"), {}, rgb, 0
    if case == "YCbCr":
        return Image.fromarray(rgb).convert("YCbCr"), {}, rgb, TOL["YCbCr"]
    raise AssertionError(case)


def seen_pil(path: Path) -> np.ndarray:
    return preprocess_pil(load_rgb(path), PP).numpy().astype(int)


def seen_tensor(path: Path) -> tuple[np.ndarray, str]:
    item = read_item(0, path, PP)
    batch = decode_batch([item], PP, device="cpu")
    assert not batch.failures, batch.failures
    return batch.images[0].numpy().astype(int), item.route


@pytest.mark.parametrize("case,fmt", COMBOS)
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_every_mode_and_format_looks_like_its_8bit_rgb(tmp_path, case, fmt, h, w, seed):
    img, extra, ref_rgb, tol = picture(case, np.random.default_rng(seed), h, w)
    if fmt == "JPEG":
        tol = max(tol, TOL["JPEG"])
    path = tmp_path / f"{case.replace(';', '_').replace('+', '_')}.{fmt.lower()}"
    img.save(path, fmt, **SAVE[fmt], **extra)
    ref_path = tmp_path / "ref.png"
    Image.fromarray(ref_rgb, "RGB").save(ref_path)
    ref = seen_pil(ref_path)

    got = seen_pil(path)
    assert np.abs(got - ref).max() <= tol, (case, fmt, np.abs(got - ref).max())
    via_tensor, route = seen_tensor(path)
    if fmt == "JPEG" and case in ("L", "RGB"):
        assert route == TENSOR  # the tensor decoder itself took it
        assert np.abs(via_tensor - got).max() <= TENSOR_TOL
        assert np.abs(via_tensor - ref).max() <= tol + TENSOR_TOL
    else:  # every other file is deferred to the PIL path: the same pixels
        assert route.startswith("pil:")
        assert np.array_equal(via_tensor, got)


# ------------------------------------------------------------------ bit depth, never content


def _grey_of(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))[..., 0].astype(int)


def test_16bit_scaled_by_depth_not_by_content(tmp_path):
    """A dark 16-bit scan stays dark, and one level means the same in every image of a set."""
    dark = np.full((8, 8), 200, np.uint16)  # 200/65535 of full scale: black
    dark[0, 0] = 255
    bright = np.full((8, 8), 200, np.uint16)
    bright[0, 0] = 65535
    Image.fromarray(dark).save(tmp_path / "dark.png")
    Image.fromarray(bright).save(tmp_path / "bright.png")
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    for p in ("dark.png", "dark.tif"):
        assert _grey_of(tmp_path / p)[1, 1] == 1 and _grey_of(tmp_path / p)[0, 0] == 1
    assert _grey_of(tmp_path / "bright.png")[1, 1] == 1
    assert _grey_of(tmp_path / "bright.png")[0, 0] == 255


def test_tiff_bits_per_sample_decides_the_scale(tmp_path):
    """A 32-bit signed integer TIFF is scaled by 2**31 - 1 whatever its values, a PGM by its
    maxval; a float TIFF is taken as [0, 1], clipped."""
    v = np.array([[0, 255, 2**30, I32_TOP]], np.int32)
    Image.fromarray(v).save(tmp_path / "i.tif")
    assert _grey_of(tmp_path / "i.tif").tolist() == [[0, 0, 128, 255]]
    # a PGM of maxval 4095: Pillow brings it to 16 bits, which is how it is scaled
    (tmp_path / "g.pgm").write_bytes(b"P5 3 1 4095\n" + np.array([0, 1000, 4095], ">u2").tobytes())
    assert _grey_of(tmp_path / "g.pgm").tolist() == [[0, 62, 255]]
    f = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]], np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    assert _grey_of(tmp_path / "f.tif").tolist() == [[0, 128, 255, 255, 0, 0]]


# ------------------------------------------------------------------------- colour keys


@pytest.mark.parametrize("mode,key,other", [("RGB", (10, 20, 30), (200, 0, 0)),
                                            ("L", 7, 90), ("I;16", 7, 30000)])
def test_png_colour_key_is_composited_on_white(tmp_path, mode, key, other):
    if mode == "I;16":
        img = Image.fromarray(np.full((4, 4), key, np.uint16))
    else:
        img = Image.new(mode, (4, 4), key)
    img.putpixel((0, 0), other)
    img.save(tmp_path / "k.png", transparency=key)
    got = np.asarray(load_rgb(tmp_path / "k.png"))
    assert (got[1:, 1:] == 255).all()  # keyed pixels: the background
    expected = {"RGB": (200, 0, 0), "L": (90,) * 3, "I;16": (117,) * 3}[mode]
    assert tuple(got[0, 0]) == expected  # the rest untouched


# ---------------------------------------------------------------- bounded work per image


def test_resize_bound_names_the_aspect_ratio_limit_and_option():
    check_resize(1365, 1, IMAGENET, 89_478_485)  # 349,440 x 256: inside the limit
    with pytest.raises(DecodeError, match="aspect ratio 1,366:1"):
        check_resize(1, 1366, IMAGENET, 89_478_485)  # 256 x 349,696: just over
    with pytest.raises(DecodeError, match=r"aspect ratio 1,000,000:1 .* over the limit of "
                       r"89,478,485 \(--max-pixels 89478485, which admits aspect ratios up to "
                       r"1,365:1"):
        check_resize(1_000_000, 1, IMAGENET, 89_478_485)
    check_resize(1_000_000, 1, IMAGENET, 0)  # 0: no limit, as asked


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_wide_images_fail_before_any_large_allocation(tmp_path):
    """A 1,000,000 x 1 PNG passes the pixel limit; resizing it would need 65 gigapixels. It is a
    failure naming the limit on both paths (a MemoryError before, or gigabytes of memory for a
    20,000 x 1 image), and the failure comes from the size check, not from an allocation."""
    Image.new("L", (1_000_000, 1), 128).save(tmp_path / "wide.png")
    (tmp_path / "wide.jpg").write_bytes(_jpeg(Image.new("L", (60_000, 1), 128)))
    for name in ("wide.png", "wide.jpg"):
        with pytest.raises(DecodeError, match="aspect ratio .*--max-pixels"):
            preprocess_pil(load_rgb(tmp_path / name), IMAGENET)
        item = read_item(0, tmp_path / name, IMAGENET)
        assert item.failure is not None and "aspect ratio" in item.failure
        assert "MemoryError" not in item.failure
    assert read_item(0, tmp_path / "wide.jpg", IMAGENET).route == \
        "pil: over the pixel limit after resize"


@pytest.mark.parametrize("size,by", [((12, 12), "ours"), ((30, 30), "PIL's")])
def test_pixel_limit_message_states_the_limit_in_force(tmp_path, size, by):
    """144 px is over 100 (our check); 900 px is over PIL's own check at twice its limit, whose
    message said 'exceeds limit of 200 pixels' for --max-pixels 100."""
    Image.new("L", size).save(tmp_path / "x.png")
    with pytest.raises(DecodeError) as e:
        load_rgb(tmp_path / "x.png", max_pixels=100)
    msg = str(e.value)
    assert f"{size[0] * size[1]:,} pixels exceeds the limit of 100 (--max-pixels 100;" in msg, by
    assert "200" not in msg


@pytest.mark.slow
def test_run_records_limits_in_force_and_keeps_the_other_rows(tmp_path):
    """One run: an image over --max-pixels (under and over PIL's own doubled limit) and one whose
    resize is over it; the messages state the limit in force, the other rows are written."""
    import torch

    from cnncodes import FeatureStore
    from cnncodes.cli import main

    from ..conftest import write_tree

    root = write_tree(tmp_path / "src", classes=("a", "b"), per_class=2, size=(40, 48))
    Image.new("RGB", (60, 60), (9, 9, 9)).save(root / "a" / "over.png")  # 3,600 px: ours
    Image.new("RGB", (100, 100), (9, 9, 9)).save(root / "a" / "bomb.png")  # 10,000: PIL's
    Image.new("RGB", (2000, 1), (9, 9, 9)).save(root / "b" / "wide.png")  # 2,000 px: resize
    out = tmp_path / "c.h5"
    torch.manual_seed(0)
    rc = main(["extract", str(root), "-o", str(out), "--weights", "random", "--input-size", "32",
               "--workers", "0", "--no-progress", "--engine", "torch", "--max-pixels", "2000"])
    assert rc == 0
    store = FeatureStore(out)
    assert sorted(store.paths) == ["a/img000.png", "a/img001.png", "b/img000.png",
                                   "b/img001.png"]
    failures = dict(store.failures)
    assert set(failures) == {"a/over.png", "a/bomb.png", "b/wide.png"}
    for reason in failures.values():
        assert "limit of 2,000" in reason and "--max-pixels 2000" in reason, reason
        assert "4000" not in reason.replace(",", ""), reason
    assert "aspect ratio 2,000:1" in failures["b/wide.png"]


def test_the_raw_pixel_baseline_bounds_its_resize_too(tmp_path):
    from cnncodes.linear.pixels import raw_pixels

    Image.new("L", (1_000_000, 1)).save(tmp_path / "wide.png")
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "ok.png")
    X, ok, failures = raw_pixels([tmp_path / "wide.png", tmp_path / "ok.png"], size=32)
    assert ok.tolist() == [False, True]
    assert failures[0][0].endswith("wide.png") and "aspect ratio 1,000,000:1" in failures[0][1]
