"""tRNS colour keys of PNGs whose samples Pillow rescales (2- and 4-bit grey, 16-bit RGB): the key
must make exactly the key's pixels transparent (composited on the background), as a viewer shows
them. The files are written byte by byte: Pillow cannot write these depths."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from cnncodes.sources.images import BACKGROUND, load_rgb


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(path, width: int, depth: int, colour_type: int, row: bytes, trns: bytes) -> None:
    """A one-row PNG (filter 0) with a tRNS chunk."""
    ihdr = struct.pack(">IIBBBBB", width, 1, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"tRNS", trns)
                     + _chunk(b"IDAT", zlib.compress(b"\x00" + row)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("key", [0, 1, 2])
def test_low_depth_grey_key(tmp_path, depth, key):
    levels = list(range(2 ** depth))
    bits = "".join(format(v, f"0{depth}b") for v in levels)
    bits += "0" * (-len(bits) % 8)
    row = int(bits, 2).to_bytes(len(bits) // 8, "big")
    p = tmp_path / "g.png"
    _png(p, len(levels), depth, 0, row, struct.pack(">H", key))
    grey = np.asarray(load_rgb(p))[0, :, 0]
    top = 2 ** depth - 1
    want = [BACKGROUND[0] if v == key else round(v * 255 / top) for v in levels]
    assert grey.tolist() == want


def test_sixteen_bit_rgb_key(tmp_path):
    pixels = [(0, 0, 65535), (0, 0, 255), (65535, 0, 0), (0, 0, 0)]
    row = np.array(pixels, ">u2").tobytes()
    p = tmp_path / "rgb16.png"
    _png(p, len(pixels), 16, 2, row, struct.pack(">HHH", 0, 0, 255))   # key: a near-black blue
    rgb = np.asarray(load_rgb(p))[0].tolist()
    # the key is compared at the 8-bit precision Pillow leaves: pixels within 1/256 of it (here
    # (0, 0, 0), whose 16-bit levels differ from the key's by 255/65535) count as the key
    assert rgb == [[0, 0, 255], list(BACKGROUND), [255, 0, 0], list(BACKGROUND)]
