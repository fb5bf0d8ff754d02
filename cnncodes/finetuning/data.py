"""Fine-tuning data: :class:`SplitDataset` (one split part; seeded per-image augmentation by
``(seed, epoch, image)``: a random resized crop from :func:`crop_params` + flip, or the
deterministic evaluation transform), :class:`EpochSampler` (the epoch's seeded order, cut into rank
slices under DDP) and the loaders.

Augmentation and order never depend on worker processes or on where a run was interrupted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import functional as TF

from .._distributed import DistInfo, env_info, shard_batches
from .._runtime import default_workers
from ..errors import DecodeError, OptionError
from ..options import DEFAULT_MAX_PIXELS
from ..sources.folders import ImageSource
from ..sources.images import load_rgb
from ..sources.loader import collate, preprocess_pil
from ..sources.preprocessing import Preprocessing, interpolation_mode
from .config import FinetuneConfig


def crop_params(w: int, h: int, scale: tuple[float, float], rng: np.random.Generator,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters, drawn from ``rng`` (top, left, height, width)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class SplitDataset(Dataset):
    """Items ``(k, uint8 CHW | None, failure | None)`` of one split part.

    Training items are keyed ``(epoch, k)``: the random resized crop and flip come from a generator
    seeded by ``(seed, epoch, k)``, so augmentation is the same with any number of workers and after
    a resume. Evaluation items (key ``k``) use the deterministic resize + centre crop.
    """

    def __init__(self, source: ImageSource, pp: Preprocessing, *, train: bool, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.35, 1.0), hflip: bool = True,
                 seed: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.source, self.pp, self.train = source, pp, train
        self.augment, self.hflip = augment, hflip
        self.crop_scale = (crop_scale[0], crop_scale[1])  # a tuple, if a list was passed
        self.seed, self.max_pixels = seed, max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def transform(self, img: Image.Image, epoch: int, k: int) -> torch.Tensor:
        if not (self.train and self.augment):
            return preprocess_pil(img, self.pp, max_pixels=self.max_pixels)
        rng = np.random.default_rng([self.seed, 2, epoch, k])
        top, left, h, w = crop_params(img.width, img.height, self.crop_scale, rng)
        img = TF.resized_crop(img, top, left, h, w, [self.pp.crop, self.pp.crop],
                              interpolation=interpolation_mode(self.pp.interpolation),
                              antialias=True)
        if self.hflip and rng.random() < 0.5:
            img = TF.hflip(img)
        return TF.pil_to_tensor(img)

    def __getitem__(self, key: int | tuple[int, int]
                    ) -> tuple[int, torch.Tensor | None, str | None]:
        epoch, k = key if isinstance(key, tuple) else (0, key)
        try:
            img = load_rgb(self.source.abspath(k), max_pixels=self.max_pixels)
            return k, self.transform(img, epoch, k), None
        except DecodeError as e:
            return k, None, str(e)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop training
            return k, None, f"preprocessing error: {type(e).__name__}: {e}"


class EpochSampler(Sampler):
    """Yields ``(epoch, k)`` in an order seeded by ``(seed, epoch)``; call :meth:`set_epoch` first.

    With ``world > 1`` (DistributedDataParallel) rank ``r`` takes positions ``r, r + world, ...``
    of the epoch's order, which is first padded by repeating its first ``-n % world`` entries (as
    :class:`torch.utils.data.DistributedSampler` does), so every rank gets ``ceil(n / world)``
    items and takes the same number of steps. ``world=1`` is the plain seeded order.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise OptionError(f"rank must be in [0, {world}); got {rank}.")
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def padding(self) -> int:
        """Repeated items per epoch over all ranks (0 without DDP)."""
        return -self.n % self.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, 1, self.epoch]).permutation(self.n)
        if self.world > 1:
            order = np.resize(order, self.n + self.padding)[self.rank::self.world]
        return iter([(self.epoch, int(k)) for k in order])

    def __len__(self) -> int:
        return -(-self.n // self.world)


def make_loader(dataset: SplitDataset, *, batch_size: int, workers: int, seed: int,
                sampler: Sampler | Sequence[int] | None = None, drop_last: bool = False,
                pin: bool = False) -> DataLoader:
    """A DataLoader of ``dataset`` (items collated by :func:`cnncodes.sources.loader.collate`)."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    # a private generator: DataLoader draws worker base seeds from it, not from the global RNG
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, collate_fn=collate, drop_last=drop_last,
                      pin_memory=pin, generator=torch.Generator().manual_seed(seed), **kw)


def local_world() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", env_info().world)))


def loader_workers(cfg: FinetuneConfig, device: torch.device, n: int) -> int:
    """Decoding processes for a loader of ``n`` images (the default is shared between the ranks
    of one machine)."""
    if cfg.runtime.num_workers is not None:
        return int(cfg.runtime.num_workers)
    return 0 if n < 2 * cfg.runtime.batch_size else max(1, default_workers(device) // local_world())


def eval_loader(src: ImageSource, pp: Preprocessing, cfg: FinetuneConfig, device: torch.device,
                di: DistInfo) -> DataLoader:
    """Deterministic evaluation loader; under DDP over this rank's whole batches (no padding, cut on
    the single-process batch grid, so every batch is the same as in one process)."""
    rows = list(range(len(src)))
    rt = cfg.runtime
    mine = shard_batches(rows, rt.batch_size, di.rank, di.world) if di.enabled else rows
    return make_loader(SplitDataset(src, pp, train=False, max_pixels=rt.max_pixels),
                       batch_size=rt.batch_size, workers=loader_workers(cfg, device, len(mine)),
                       seed=cfg.seed, sampler=mine, pin=device.type == "cuda")
