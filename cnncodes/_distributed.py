"""torch.distributed glue: the process group that ``torchrun`` sets up, and deterministic sharding.

cnncodes uses PyTorch's own launcher (``torchrun``) and process groups; there is no scheduler of its
own. Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op, so the
same command works in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import OptionError

if TYPE_CHECKING:  # torch is imported only where a process group or a device is used
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def local_world_size(info: DistInfo | None = None) -> int:
    """Ranks on this machine (torchrun's ``LOCAL_WORLD_SIZE``; the world size without it)."""
    info = info or env_info()
    return int(os.environ.get("LOCAL_WORLD_SIZE", info.world))


def check_local_gpus(info: DistInfo, device_count: int | None = None) -> None:
    """Every rank on this machine needs a GPU of its own: ``LOCAL_WORLD_SIZE`` <= visible GPUs
    (otherwise CUDA says "invalid device ordinal" on the first rank without one)."""
    import torch

    local = local_world_size(info)
    n = torch.cuda.device_count() if device_count is None else device_count
    if local > n:
        raise OptionError(f"torchrun starts {local} ranks on this machine (LOCAL_WORLD_SIZE) but "
                          f"{n} CUDA device(s) are visible: each rank needs a GPU of its own "
                          f"(cuda:LOCAL_RANK). Use --nproc-per-node {max(1, n)} or fewer, make "
                          "more GPUs visible (CUDA_VISIBLE_DEVICES), or use --device cpu.")


def rank_device(device_opt: str | torch.device, dev: torch.device, info: DistInfo) -> torch.device:
    """This rank's device: under torchrun ``auto``/``cuda`` become ``cuda:LOCAL_RANK``; an explicit
    ``cuda:N`` is refused when several ranks share this machine (all of them would use that GPU)
    or N is not the rank's LOCAL_RANK."""
    if not info.enabled or dev.type != "cuda":
        return dev
    import torch

    check_local_gpus(info)
    if str(device_opt) in ("auto", "cuda"):
        return torch.device("cuda", info.local_rank)
    if dev.index != info.local_rank or local_world_size(info) > 1:  # every rank refuses alike
        raise OptionError(f"Under torchrun rank {info.rank} uses cuda:{info.local_rank} (its "
                          f"LOCAL_RANK); --device {device_opt} would put several ranks on one "
                          "GPU. Pass --device cuda (or auto), or run without torchrun.")
    return dev


@contextlib.contextmanager
def process_group(device_type: str = "cpu", timeout_s: float = 3600) -> Iterator[DistInfo]:
    """Join torchrun's process group for the block (gloo on CPU, nccl on CUDA).

    A group that the caller already initialised is used and left alone; one created here is
    destroyed on exit.
    """
    info = env_info()
    if not info.enabled:
        yield info
        return
    import torch
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        if device_type == "cuda":
            check_local_gpus(info)
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend,
                                timeout=datetime.timedelta(seconds=timeout_s))
        created = True
        log.info("rank %d/%d joined the %s process group", info.rank, info.world, backend)
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _dist():  # noqa: ANN202 - torch.distributed, imported on first use
    import torch.distributed as dist

    return dist


def _group_exists() -> bool:
    """A process group can only exist once torch.distributed has been imported."""
    if "torch.distributed" not in sys.modules:
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_exists():
        _dist().barrier()


def shard_batches(items: Sequence[int], batch_size: int, rank: int, world: int) -> list[int]:
    """A contiguous block of whole batches of ``items`` for ``rank``: no padding, no duplicates.

    Batches are cut on the same grid as a single-process run, so every batch (and so every code)
    is the same whatever the number of ranks. Ranks get at most one batch more than others.
    """
    n_batches = (len(items) + batch_size - 1) // batch_size
    start = rank * n_batches // world
    stop = (rank + 1) * n_batches // world
    return list(items[start * batch_size: min(len(items), stop * batch_size)])


# ------------------------------------------------------------------------------ collectives
# No-ops (the local values) outside a process group of more than one rank, so callers need no
# ``if distributed`` branches. Under nccl the values travel through the rank's current CUDA device.


def is_active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return _group_exists() and _dist().get_world_size() > 1


def _comm_device() -> torch.device:
    import torch

    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over ranks (``sum``, ``max`` or ``min``), as a new tensor on ``t``'s device."""
    if not is_active():
        return t.clone()
    dist = _dist()
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    work = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(work, op=ops[op])
    return work.to(t.device)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks of a few numbers (float64: counts stay exact below 2**53)."""
    if not is_active():
        return [float(v) for v in values]
    import torch

    t = all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64))
    return [float(v) for v in t]


def all_gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in one process."""
    if not is_active():
        return [obj]
    out: list = [None] * _dist().get_world_size()
    _dist().all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) into every rank's ``module``."""
    if not is_active():
        return
    for b in module.buffers():
        _dist().broadcast(b, src)


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``), None outside one."""
    return str(_dist().get_backend()) if _group_exists() else None
