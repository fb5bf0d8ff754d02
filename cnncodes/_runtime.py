"""Runtime plumbing shared by every command, and its only home: device and precision, worker and
thread counts (also per rank under torchrun), the thread guard, progress bars, library versions and
the command line recorded in provenance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ._version import __version__
from .errors import OptionError
from .options import PRECISIONS

if TYPE_CHECKING:  # torch is imported where it is used: the torch-free path never needs it
    import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else is validated."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device must be cpu or auto on this machine (CUDA is not available). "
                          f"Got {str(device)!r} instead; use --device cpu or --device auto.")
    return dev


def nvidia_present() -> bool:
    """Whether a CUDA device could be visible (an NVIDIA driver is loaded and not hidden by
    ``CUDA_VISIBLE_DEVICES``): the torch-free check that ``auto`` means the CPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` resolves to CUDA; imports torch only when it might (a driver present,
    or a device other than ``cpu``/``auto``) or is imported already (then torch decides)."""
    if str(device) == "cpu":
        return False
    if str(device) == "auto" and "torch" not in sys.modules and not nvidia_present():
        return False
    return resolve_device(device).type == "cuda"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere (bf16 autocast is ~5x slower on CPUs)."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise OptionError(f"precision int8 runs on the CPU (ONNX Runtime). Got device {device} "
                          "instead; use --device cpu, or --precision auto/fp16.")
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}. Got {precision!r} "
                          "instead.")
    return precision


def default_workers(device: torch.device) -> int:
    """Decoding workers when none are asked: up to 8 feeding a GPU, half the cores (1-4) on CPU."""
    n = os.cpu_count() or 1
    return min(8, n) if device.type == "cuda" else max(1, min(4, n // 2))


def loader_workers(device: torch.device, num_workers: int | None, n_items: int,
                   batch_size: int) -> int:
    """Decoding workers for ``n_items`` images: the asked or default number, but none for a
    single batch and at most one for two (starting workers would cost more than they save)."""
    workers = default_workers(device) if num_workers is None else int(num_workers)
    if n_items < 2 * batch_size:
        workers = min(workers, 1 if n_items > batch_size else 0)
    return workers


def per_rank_threads(local_world: int) -> int:
    """CPU threads of one of ``local_world`` ranks sharing this machine (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def per_rank_workers(device: torch.device, local_world: int) -> int:
    """Default decoding workers of one of ``local_world`` ranks sharing this machine: on CUDA up
    to 8 per rank from the machine's cores (each rank feeds its own GPU; dividing the one-process
    default of 8 would leave one PIL worker per rank on an 8-GPU node), on CPU the one-process
    default divided among the ranks."""
    local_world = max(1, local_world)
    if device.type == "cuda":
        return max(1, min(8, (os.cpu_count() or 1) // local_world))
    return max(1, default_workers(device) // local_world)


def progress_bar(total: int, desc: str, *, enabled: bool = True, leave: bool = True) -> Any:
    """A tqdm bar on stderr counting images, or None when ``enabled`` is false (or nothing to
    do)."""
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1,
                leave=leave)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore the caller's value after."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the codes (recorded in provenance). torch and
    torchvision are not imported for it: their ``__version__`` when loaded already (which may
    carry a build tag, ``2.14.1+cu130``), else the installed package's metadata."""
    return {"cnncodes": __version__, "torch": _lib_version("torch"),
            "torchvision": _lib_version("torchvision"), "h5py": h5py.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _lib_version(name: str) -> str:
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line, shell-quoted (for provenance): ``cnncodes <argv>``."""
    return shlex.join(["cnncodes"] + list(sys.argv[1:] if argv is None else argv))
