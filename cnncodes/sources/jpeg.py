"""Reading encoded images without decoding pixels: format sniffing, the JPEG frame header and
EXIF orientation, and the rule that sends a JPEG to the PIL path (:func:`fallback_reason`).

Workers call this on every file (:mod:`cnncodes.sources.tensor_decode`), so it reads only
markers: size, colour components, coding process, EXIF orientation, end marker.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from ..options import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


_FAST_SOF = {0xC0: "baseline", 0xC2: "progressive"}  # 8-bit Huffman, what nvJPEG handles


_STANDALONE = {0x01} | set(range(0xD0, 0xD8))


_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def sniff(data: bytes | memoryview) -> str:
    """The format of an encoded image from its first bytes: ``jpeg``, ``png``, ``gif``, ``webp``,
    ``bmp``, ``tiff`` or ``unknown`` (``empty`` for no bytes)."""
    head = bytes(data[:12])
    if not head:
        return "empty"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return "unknown"


@dataclass(frozen=True)
class JpegHeader:
    """What :func:`parse_jpeg_header` read from a JPEG's markers (before the first scan).

    Attributes:
        width, height: frame size in pixels as stored (before EXIF orientation).
        components: colour components (1 grey, 3 YCbCr or RGB, 4 CMYK/YCCK).
        precision: bits per sample.
        sof: the start-of-frame marker byte (0xC0 baseline, 0xC2 progressive, ...).
        orientation: EXIF orientation 1-8 (1 when absent or when PIL would ignore the value).
        exif_error: why the EXIF orientation could not be read ('' when it could).
        exif_segments: number of EXIF APP1 segments (PIL concatenates several).
        xmp_orientation: an XMP packet carries ``tiff:Orientation`` (PIL may use it).
        rgb_coded: 3 components stored as RGB rather than YCbCr (Adobe transform 0 or ids R,G,B).
        subsampled: colour components at lower resolution than the first (4:2:0, 4:2:2, ...).
        complete: an end-of-image marker follows the first scan (not a truncated file).
    """

    width: int
    height: int
    components: int
    precision: int
    sof: int
    orientation: int = 1
    exif_error: str = ""
    exif_segments: int = 0
    xmp_orientation: bool = False
    rgb_coded: bool = False
    subsampled: bool = False
    complete: bool = False

    @property
    def coding(self) -> str:
        return _FAST_SOF.get(self.sof, f"SOF{self.sof - 0xC0}")


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block, 1 if absent.

    Raises:
        ValueError: malformed block or an orientation entry PIL would read differently.
    """
    if tiff[:2] == b"II":
        e = "<"
    elif tiff[:2] == b"MM":
        e = ">"
    else:
        raise ValueError("bad TIFF byte order")
    if len(tiff) < 8 or struct.unpack(e + "H", tiff[2:4])[0] != 42:
        raise ValueError("bad TIFF header")
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        raise ValueError("IFD0 outside the EXIF block")
    (n,) = struct.unpack(e + "H", tiff[ifd:ifd + 2])
    if ifd + 2 + 12 * n > len(tiff):
        raise ValueError("IFD0 entries outside the EXIF block")
    for k in range(n):
        off = ifd + 2 + 12 * k
        tag, typ, count = struct.unpack(e + "HHI", tiff[off:off + 8])
        if tag != 0x0112:
            continue
        if count != 1 or typ not in (3, 4):  # SHORT or LONG, one value
            raise ValueError(f"orientation entry of type {typ} x {count}")
        value = struct.unpack(e + ("H" if typ == 3 else "I"), tiff[off + 8:off + (10 if typ == 3
                                                                                   else 12)])[0]
        return value if 1 <= value <= 8 else 1  # PIL's exif_transpose ignores other values
    return 1


def parse_jpeg_header(data: bytes | memoryview) -> JpegHeader:
    """Read a JPEG's frame header and orientation without decoding pixels.

    Raises:
        ValueError: not a JPEG, or its markers are malformed before the first scan.
    """
    buf = memoryview(data)
    n = len(buf)
    if bytes(buf[:3]) != b"\xff\xd8\xff":
        raise ValueError("no JPEG start-of-image marker")
    pos = 2
    sof: tuple[int, bytes] | None = None
    exif: list[bytes] = []
    xmp_orientation = False
    adobe_transform: int | None = None
    sos = -1
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            raise ValueError(f"garbage between markers at byte {pos}")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise ValueError("end-of-image marker before any scan")
        (length,) = struct.unpack(">H", buf[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > n:
            raise ValueError(f"marker 0x{marker:02X} at byte {pos} runs past the end of the file")
        seg: bytes | memoryview = buf[pos + 4:pos + 2 + length]
        if marker == 0xDA:
            sos = pos
            break
        if marker in _SOF_MARKERS:
            if sof is None:
                sof = (marker, bytes(seg))
        elif marker == 0xE1:
            if bytes(seg[:6]) == b"Exif\x00\x00":
                exif.append(bytes(seg[6:]))
            elif bytes(seg[:len(_XMP)]) == _XMP and b"tiff:Orientation" in bytes(seg):
                xmp_orientation = True
        elif marker == 0xEE and bytes(seg[:5]) == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        pos += 2 + length
    if sof is None:
        raise ValueError("no frame header (SOF) before the first scan")
    if sos < 0:
        raise ValueError("no scan: the file ends inside its header")
    marker, seg = sof
    if len(seg) < 6:
        raise ValueError("short frame header")
    precision, height, width, components = seg[0], *struct.unpack(">HH", seg[1:5]), seg[5]
    if len(seg) < 6 + 3 * components:
        raise ValueError("short frame header")
    ids = tuple(seg[6 + 3 * k] for k in range(components))
    sampling = {seg[7 + 3 * k] for k in range(components)}  # (H << 4) | V per component
    rgb_coded = components == 3 and (adobe_transform == 0 or ids == (82, 71, 66))
    orientation, exif_error = 1, ""
    if exif:
        try:
            orientation = _exif_orientation(exif[0])
        except (ValueError, struct.error) as e:
            exif_error = str(e) or type(e).__name__
    # an end-of-image marker cannot occur inside entropy-coded data (0xFF is always stuffed there)
    raw = data if isinstance(data, bytes) else bytes(data)
    complete = raw.rfind(b"\xff\xd9", sos) > sos
    return JpegHeader(width=width, height=height, components=components, precision=precision,
                      sof=marker, orientation=orientation, exif_error=exif_error,
                      exif_segments=len(exif), xmp_orientation=xmp_orientation,
                      rgb_coded=rgb_coded, subsampled=len(sampling) > 1, complete=complete)


def _pixel_limit(max_pixels: int | None) -> int | None:
    """The pixel count above which the PIL path refuses an image (0 or None: no limit; the PIL
    path then lifts PIL's own limit too, see :func:`cnncodes.sources.images.pil_pixel_limit`)."""
    return int(max_pixels) if max_pixels else None


def fallback_reason(header: JpegHeader, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                    ) -> str | None:
    """Why this JPEG must go through the PIL path, or None if the tensor decoder takes it."""
    if header.sof not in _FAST_SOF or header.precision != 8:
        return f"{header.coding} {header.precision}-bit JPEG"
    if header.components not in (1, 3):
        return f"{header.components}-component JPEG (CMYK/YCCK)"
    if header.rgb_coded:
        return "RGB-coded JPEG"
    if header.width < 1 or header.height < 1:
        return "no size in the frame header"
    limit = _pixel_limit(max_pixels)
    if limit and header.width * header.height > limit:
        return "over the pixel limit"
    if not header.complete:
        return "no end-of-image marker (truncated?)"
    if header.exif_error:
        return f"unreadable EXIF ({header.exif_error})"
    if header.exif_segments > 1:
        return "several EXIF segments"
    if header.xmp_orientation and header.exif_segments == 0:
        return "XMP orientation"
    return None
