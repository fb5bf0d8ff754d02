"""PIL-matching geometry on uint8 image tensors: EXIF orientation, resize of the shorter side
with antialiasing, centre crop (the preprocessing of :mod:`cnncodes.sources.tensor_decode`).

On the CPU torch's uint8 antialiased kernel (a port of Pillow-SIMD) is used; on other devices a
float two-pass resize that rounds and clips between the horizontal and the vertical pass, as Pillow
does. Both agree with PIL to 1-2 grey levels (see ``tests/sources/test_decode.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from .preprocessing import TENSOR_INTERPOLATIONS, Preprocessing, interpolation_mode, resized_size

# max bytes of float32 working memory per resize call on the float path (bounds GPU memory)
_FLOAT_CHUNK_BYTES = 512 * 2**20


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` (1-8) to a ``(..., H, W)`` tensor as PIL's exif_transpose does."""
    if orientation == 2:    # FLIP_LEFT_RIGHT
        return image.flip(-1)
    if orientation == 3:    # ROTATE_180
        return image.flip(-2, -1)
    if orientation == 4:    # FLIP_TOP_BOTTOM
        return image.flip(-2)
    if orientation == 5:    # TRANSPOSE
        return image.transpose(-2, -1)
    if orientation == 6:    # ROTATE_270 (90 degrees clockwise)
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:    # TRANSVERSE
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:    # ROTATE_90 (90 degrees counter-clockwise)
        return image.transpose(-2, -1).flip(-2)
    return image


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F2

    return cast(torch.Tensor, F2.center_crop(x, [crop, crop]))  # torchvision is untyped


def _resize_uint8(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """torch's native uint8 antialiased kernel (CPU; ported from Pillow-SIMD)."""
    from torchvision.transforms.v2 import functional as F2

    out = F2.resize(x, list(size), interpolation=interpolation_mode(interpolation),
                    antialias=True)
    return cast(torch.Tensor, out)  # torchvision is untyped


def _resize_float_two_pass(x: torch.Tensor, size: tuple[int, int], interpolation: str
                           ) -> torch.Tensor:
    """Pillow's order on any device: horizontal pass, round + clip to uint8, vertical pass."""
    import torch.nn.functional as NF

    h, w = size
    y = x.float()
    if y.shape[-1] != w:
        y = NF.interpolate(y, size=(y.shape[-2], w), mode=interpolation, antialias=True,
                           align_corners=False).add_(0.5).floor_().clamp_(0, 255)
    if y.shape[-2] != h:
        y = NF.interpolate(y, size=(h, w), mode=interpolation, antialias=True,
                           align_corners=False).add_(0.5).floor_().clamp_(0, 255)
    return y.to(torch.uint8)


def resize_crop(images: Sequence[torch.Tensor], pp: Preprocessing, *,
                method: str = "auto") -> torch.Tensor:
    """uint8 ``(3, H_i, W_i)`` images of any sizes -> uint8 ``(N, 3, crop, crop)``, PIL-matching.

    Images of the same size are resized together. ``method``: ``uint8`` (torch's native kernel, CPU
    only), ``float`` (two-pass float, any device) or ``auto`` (uint8 on the CPU, float elsewhere).
    """
    if pp.interpolation not in TENSOR_INTERPOLATIONS:
        raise ValueError(f"The tensor path cannot reproduce {pp.interpolation!r} resizing; choose "
                         f"one of {', '.join(TENSOR_INTERPOLATIONS)} or use the PIL path.")
    if method not in ("auto", "uint8", "float"):
        raise ValueError(f"Unknown resize method {method!r}; choose auto, uint8 or float.")
    if not images:
        return torch.empty(0, 3, pp.crop, pp.crop, dtype=torch.uint8)
    device = images[0].device
    if method == "auto":
        method = "uint8" if device.type == "cpu" else "float"
    out = torch.empty(len(images), 3, pp.crop, pp.crop, dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            raise ValueError(f"image {k}: expected uint8 (3, H, W), got {img.dtype} "
                             f"{tuple(img.shape)}")
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if method == "uint8":
            # one at a time: the kernel is as fast per image, and stacking decoded images (HWC
            # memory viewed as CHW) would cost a full-size copy
            y = _resize_uint8(img, resized_size(h, w, pp.resize), pp.interpolation)
            out[k] = _center_crop(y, pp.crop)
        else:
            groups.setdefault((h, w), []).append(k)
    for (h, w), members in groups.items():  # float path: same-size images in one call
        size = resized_size(h, w, pp.resize)
        step = max(1, _FLOAT_CHUNK_BYTES // (3 * 4 * max(h * w, size[0] * size[1])))
        for s in range(0, len(members), step):
            chunk = members[s:s + step]
            x = torch.stack([images[k] for k in chunk])
            y = _center_crop(_resize_float_two_pass(x, size, pp.interpolation), pp.crop)
            # row copies on the device: an index tensor would be a blocking host-to-device copy
            # per size group (about one per image for photo sets)
            for j, k in enumerate(chunk):
                out[k].copy_(y[j])
    return out
