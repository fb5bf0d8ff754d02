"""How an image becomes an input tensor: the :class:`Preprocessing` record (resize, crop, normalise)
and the one table of interpolation names (:data:`INTERPOLATIONS`, :func:`interpolation_mode`).

It lives with the image sources because decoding and batching apply it; the backbones' weights only
say which one they were trained with. Nothing here imports torch or torchvision at import time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, OptionError

if TYPE_CHECKING:
    import numpy as np

#: Interpolation names a :class:`Preprocessing` may carry (torchvision ``InterpolationMode`` values).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact", "lanczos", "box", "hamming")
#: Interpolations the tensor decoding path reproduces; any other sends every file to PIL.
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic")


def interpolation_mode(name: str) -> Any:
    """The ``torchvision.transforms.InterpolationMode`` of an interpolation name.

    Raises:
        OptionError: ``name`` is not one of :data:`INTERPOLATIONS`.
    """
    if name not in INTERPOLATIONS:
        raise OptionError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}. "
                          f"Got {name!r} instead.")
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes an input tensor: resize shorter side, centre crop, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def with_input_size(self, input_size: int | None) -> Preprocessing:
        """Same preprocessing at another crop size, keeping the resize/crop ratio."""
        if input_size is None or input_size == self.crop:
            return self
        if input_size < 16:
            raise ValueError(f"input_size must be >= 16 pixels; got {input_size}.")
        resize = int(round(input_size * self.resize / self.crop))
        return Preprocessing(resize, int(input_size), self.mean, self.std, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]),
                   str(d.get("interpolation", "bilinear")))


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``size`` (torchvision's ``Resize(int)`` rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def check_resize(width: int, height: int, pp: Preprocessing, max_pixels: int | None) -> None:
    """Refuse an image whose resize (shorter side to ``pp.resize``, before the crop) would exceed
    ``max_pixels`` (0 or None: no limit): the bound on the work one image can cause applies after
    the resize as well as before it. At resize ``r`` this admits aspect ratios up to
    ``max_pixels / r**2`` : 1 (1365:1 for the default limit and resize 256).

    Raises:
        DecodeError: naming the aspect ratio, the size it would resize to, the limit and the option.
    """
    if not max_pixels or width < 1 or height < 1:
        return
    h, w = resized_size(height, width, pp.resize)
    if h * w <= max_pixels:
        return
    short, long = min(width, height), max(width, height)
    raise DecodeError(
        f"aspect ratio {long / short:,.0f}:1 too extreme: {width}x{height} resized to a shorter "
        f"side of {pp.resize} px would be {w}x{h} = {w * h:,} pixels, over the limit of "
        f"{int(max_pixels):,} (--max-pixels {int(max_pixels)}, which admits aspect ratios up to "
        f"{int(max_pixels) // pp.resize ** 2:,}:1 at this resize; raise it if the image is "
        "genuine, or 0 for no limit)")


#: Pillow's filter numbers of the interpolation names (torchvision's own mapping for PIL images:
#: ``nearest-exact`` is Pillow's NEAREST there too)
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3,
               "box": 4, "hamming": 5}


def preprocess_array(img: Any, pp: Preprocessing, *, max_pixels: int | None) -> np.ndarray:
    """The torch-free twin of :func:`cnncodes.sources.loader.preprocess_pil`: resize (shorter
    side, Pillow), centre crop, uint8 CHW NumPy array; the same pixels as torchvision's
    ``resize``/``center_crop``/``pil_to_tensor`` on PIL images (tested bit-exact).

    Raises:
        DecodeError: the resized image would exceed ``max_pixels`` (:func:`check_resize`).
    """
    import numpy as np
    from PIL import Image

    check_resize(img.width, img.height, pp, max_pixels)
    h, w = resized_size(img.height, img.width, pp.resize)
    img = img.resize((w, h), PIL_FILTERS[pp.interpolation])
    c = pp.crop
    if w < c or h < c:  # torchvision pads (black) before cropping: left/top get the smaller half
        canvas = Image.new(img.mode, (max(w, c), max(h, c)))
        canvas.paste(img, ((c - w) // 2 if c > w else 0, (c - h) // 2 if c > h else 0))
        img, (w, h) = canvas, canvas.size
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    arr = np.asarray(img.crop((left, top, left + c, top + c)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


IMAGENET = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
