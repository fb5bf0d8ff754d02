"""From decoded images to batches: PIL preprocessing (resize, crop), batched normalisation,
the :class:`ImageDataset` of the PIL path, the :class:`Batch` it collates to and the ordered
DataLoader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from ..options import DEFAULT_MAX_PIXELS
from .items import SourceItems
from .preprocessing import Preprocessing, check_resize, interpolation_mode

log = logging.getLogger(__name__)


def preprocess_pil(img: Image.Image, pp: Preprocessing, *,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Resize (shorter side), centre-crop and return a uint8 CHW tensor (normalisation is batched).

    Raises:
        DecodeError: the resized image would exceed ``max_pixels`` (:func:`check_resize`).
    """
    check_resize(img.width, img.height, pp, max_pixels)
    img = TF.resize(img, pp.resize, interpolation=interpolation_mode(pp.interpolation))
    img = TF.center_crop(img, [pp.crop, pp.crop])
    return cast(torch.Tensor, TF.pil_to_tensor(img))  # torchvision is untyped


_MEAN_STD: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean * 255`` and ``std * 255`` as (1, 3, 1, 1) float32 tensors on ``device``, made once
    per device (on CUDA each ``torch.tensor(..., device=cuda)`` is a blocking host copy)."""
    key = (mean, std, str(device))
    hit = _MEAN_STD.get(key)
    if hit is None:
        with torch.inference_mode(False), torch.no_grad():  # usable inside and outside both
            hit = (torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255,
                   torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        _MEAN_STD[key] = hit
    return hit


def normalize_batch(images: torch.Tensor, pp: Preprocessing, *, dtype: torch.dtype = torch.float32,
                    channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW -> normalised float NCHW on the images' device (channels_last memory if asked)."""
    mean, std = _mean_std(tuple(pp.mean), tuple(pp.std), images.device)
    x = (images.to(torch.float32) - mean) / std
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


#: one item of an :class:`ImageDataset`: ``(index, uint8 CHW tensor | None, failure | None)``
Item = tuple[int, torch.Tensor | None, str | None]


class ImageDataset(SourceItems, Dataset[Item]):
    """Items ``(index, uint8 CHW tensor | None, failure reason | None)`` for an :class:`ImageSource`
    (:class:`~cnncodes.sources.items.SourceItems`, prepared by :func:`preprocess_pil`)."""

    def prepare(self, img: Image.Image) -> torch.Tensor:
        return preprocess_pil(img, self.preprocessing, max_pixels=self.max_pixels)


@dataclass
class Batch:
    """A collated batch: decoded images and the indices they belong to, plus the failures."""

    indices: list[int]
    images: torch.Tensor
    failures: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        return Batch(self.indices, self.images.pin_memory(), self.failures)


def collate(items: list[Item]) -> Batch:
    ok = [(i, t) for i, t, _ in items if t is not None]
    failures = [(i, r) for i, t, r in items if t is None]
    images = torch.stack([t for _, t in ok]) if ok else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    return Batch([i for i, _ in ok], images, [(i, str(r)) for i, r in failures])


def make_loader(dataset: ImageDataset, indices: Sequence[int], *, batch_size: int,
                num_workers: int, pin_memory: bool = False) -> DataLoader[Item]:
    """An ordered DataLoader over ``indices`` of ``dataset`` yielding :class:`Batch` objects."""
    sub = torch.utils.data.Subset(dataset, list(indices))
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["prefetch_factor"] = 4
    return DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=False, **kw)
