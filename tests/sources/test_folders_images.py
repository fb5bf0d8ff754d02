"""Image sources and robust decoding: every common format to correct RGB, bad files recorded."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.errors import DecodeError
from cnncodes.sources.folders import open_source
from cnncodes.sources.images import load_rgb
from cnncodes.sources.loader import ImageDataset, collate
from cnncodes.sources.preprocessing import IMAGENET


def test_class_tree_is_sorted_and_labelled(image_tree):
    (image_tree / "notes.txt").write_text("not an image, ignored by extension")
    src = open_source(image_tree)
    assert src.kind == "tree" and src.classes == ["ant", "bee", "cow"]
    assert src.paths == sorted(src.paths) and len(src) == 24
    assert [src.classes[i] for i in src.labels] == [p.split("/")[0] for p in src.paths]


def test_flat_folder_is_unlabelled(tmp_path):
    for i in (3, 1, 2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"x{i}.png")
    src = open_source(tmp_path)
    assert src.kind == "flat" and src.paths == ["x1.png", "x2.png", "x3.png"]
    assert (src.labels == -1).all()


def test_list_files_txt_and_csv(image_tree, tmp_path):
    files = sorted(p.relative_to(image_tree).as_posix() for p in image_tree.rglob("*.png"))
    (image_tree / "list.txt").write_text("# comment\n" + "\n".join(files[:4]) + "\n")
    src = open_source(image_tree / "list.txt")
    assert src.paths == files[:4] and (src.labels == -1).all()
    rows = ["path,label"] + [f"{f},{'odd' if i % 2 else 'even'}" for i, f in enumerate(files[:6])]
    (image_tree / "list.csv").write_text("\n".join(rows))
    src = open_source(image_tree / "list.csv")
    assert src.classes == ["even", "odd"] and list(src.labels) == [0, 1, 0, 1, 0, 1]
    (image_tree / "half.csv").write_text(f"{files[0]},a\n{files[1]}\n")
    with pytest.raises(ValueError, match="row 2 .* has no label"):
        open_source(image_tree / "half.csv")


def test_missing_and_empty_sources_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        open_source(tmp_path / "empty")


# ------------------------------------------------------------------------------ formats to RGB


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255            # red ...
    a[:2, :, 3] = 0            # ... fully transparent in the top half
    a[2:, :, 3] = 255          # ... opaque in the bottom half
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(load_rgb(tmp_path / "a.png"))
    assert (rgb[:2] == 255).all()                      # white, not garbage red/black
    assert (rgb[2:] == [255, 0, 0]).all()


def test_palette_gif_with_transparency(tmp_path):
    img = Image.new("P", (6, 6), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.save(tmp_path / "p.gif", transparency=0)
    img2 = Image.new("P", (6, 6), 0)
    img2.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img2.save(tmp_path / "t.gif", transparency=0)
    assert (np.asarray(load_rgb(tmp_path / "p.gif")) == [0, 255, 0]).all()
    assert (np.asarray(load_rgb(tmp_path / "t.gif")) == 255).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.full((5, 5), 32768, np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert rgb.shape == (5, 5, 3) and abs(int(rgb[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("fmt, mode", [("JPEG", "CMYK"), ("JPEG", "L"), ("BMP", "RGB"),
                                       ("TIFF", "RGB"), ("WEBP", "RGB"), ("PNG", "LA"),
                                       ("TIFF", "1"), ("PNG", "P")])
def test_common_formats_become_rgb(tmp_path, fmt, mode):
    img = Image.new(mode, (10, 7))
    p = tmp_path / f"x.{fmt.lower()}"
    img.save(p, format=fmt)
    out = load_rgb(p)
    assert out.mode == "RGB" and out.size == (10, 7)


def test_cmyk_colours_survive(tmp_path):
    Image.new("RGB", (8, 8), (200, 30, 30)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    r, g, b = np.asarray(load_rgb(tmp_path / "c.jpg")).reshape(-1, 3).mean(0)
    assert r > 150 and g < 80 and b < 80


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "o.jpg").size == (10, 30)


# ------------------------------------------------------------------------------ bad files


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


BAD = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "text.png": (lambda p: p.write_text("hello, I am not a PNG"), "not a recognised image"),
    "half.jpg": (_truncated_jpeg, "truncated"),
    "huge.png": (lambda p: Image.new("L", (400, 300)).save(p), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_a_named_reason(tmp_path, name):
    make, reason = BAD[name]
    p = tmp_path / name
    make(p)
    with pytest.raises(DecodeError, match=reason):
        load_rgb(p, max_pixels=100_000)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(p)
    p.chmod(0)
    with pytest.raises(DecodeError, match="unreadable"):
        load_rgb(p)


def test_dataset_returns_failures_in_place(image_tree):
    for name, (make, _) in BAD.items():
        make(image_tree / "bee" / name)
    src = open_source(image_tree)
    ds = ImageDataset(src, IMAGENET.with_input_size(32), max_pixels=100_000)
    batch = collate([ds[i] for i in range(len(ds))])
    assert len(batch.indices) == 24 and len(batch.failures) == 4
    assert batch.images.shape == (24, 3, 32, 32) and batch.images.dtype.is_floating_point is False
    failed = {src.paths[i] for i, _ in batch.failures}
    assert failed == {f"bee/{n}" for n in BAD}
    assert set(batch.indices).isdisjoint(i for i, _ in batch.failures)
