"""DistributedDataParallel helpers of fine-tuning: each rank's device and dropout seed,
SyncBatchNorm conversion that keeps frozen stages frozen, gathering the per-rank RNG states a
checkpoint holds, and logging by rank 0 only. The process group is :mod:`cnncodes._distributed`'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .._distributed import DistInfo, all_gather_objects
from .._distributed import rank_device as shared_rank_device
from .._runtime import resolve_device
from .config import FinetuneConfig
from .net import FinetuneNet


def rank_device(cfg: FinetuneConfig, di: DistInfo) -> torch.device:
    """``cfg.runtime.device``; under torchrun ``auto``/``cuda`` become ``cuda:LOCAL_RANK``."""
    return shared_rank_device(cfg.runtime.device, resolve_device(cfg.runtime.device), di)


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The global torch RNG seed (dropout) of ``rank`` from ``epoch`` on, under DDP."""
    return int(np.random.SeedSequence([int(seed), 5, int(rank), int(epoch)]).generate_state(1)[0])


def convert_sync_bn(net: FinetuneNet) -> FinetuneNet:
    """``net`` with every BatchNorm as :class:`torch.nn.SyncBatchNorm` (same parameters, buffers
    and state-dict keys). Frozen stages stay frozen: their parameters keep ``requires_grad=False``
    and their modules stay in eval mode, where SyncBatchNorm neither syncs nor updates statistics.
    """
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(net, FinetuneNet)
    net.train(net.training)  # re-applies eval mode to the (new) modules of frozen stages
    return net


@contextlib.contextmanager
def quiet_unless_main(di: DistInfo) -> Iterator[None]:
    """Ranks other than 0 log errors only (rank 0 reports for the job)."""
    if di.is_main:
        yield
        return
    root = logging.getLogger("cnncodes")
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's global torch RNG state (and its CUDA device's), as a checkpoint stores it."""
    return {"torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def gather_rng_states(device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(this rank's RNG state, every rank's)``; a collective: every rank must call it."""
    mine = rng_state(device)
    return mine, all_gather_objects(mine)


def restore_rng(saved_rng: dict[str, Any], di: DistInfo, device: torch.device, *, seed: int,
                epoch: int) -> bool:
    """Set this rank's dropout stream from a checkpoint's ``rng`` entry; True when exact.

    With another number of ranks than the checkpoint's, each rank gets a fresh stream seeded by
    ``(seed, rank, epoch)`` instead (returns False).
    """
    per = saved_rng.get("per_rank")
    mine = (per[di.rank] if per is not None and len(per) == di.world
            else {"torch": saved_rng["torch"], "cuda": saved_rng.get("cuda")} if di.world == 1
            else None)
    if mine is None:
        torch.manual_seed(rank_seed(seed, di.rank, epoch))
        return False
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and mine.get("cuda"):
        torch.cuda.set_rng_state(mine["cuda"][0], device)
    return True
