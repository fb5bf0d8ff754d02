"""How an image becomes an input tensor: the :class:`Preprocessing` record (resize, crop, normalise)
and the one table of interpolation names (:data:`INTERPOLATIONS`, :func:`interpolation_mode`).

It lives with the image sources because decoding and batching apply it; the backbones' weights only
say which one they were trained with. Nothing here imports torch or torchvision at import time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import OptionError

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


IMAGENET = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
