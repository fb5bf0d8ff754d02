"""Inference engines behind :class:`~cnncodes.codes.extractor.CodeExtractor`: the torch module
itself, or ONNX Runtime on the CPU running the same cut network exported to ONNX.

``engine="auto"`` picks ONNX Runtime on the CPU (fp32) when the export loads and its codes match the
torch codes on a probe batch (min cosine >= :data:`CHECK_COSINE` per layer), torch otherwise (and on
CUDA); a failure is logged with its reason and never changes the codes. Both engines take a
normalised float NCHW batch and return ``{layer: float32 (N, D) numpy}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import OptionError
from ..options import ENGINES, _one_of
from .export_cache import cached_export
from .numerics import cudnn_autotune, strict_fp32
from .ort_engine import (  # noqa: F401 - re-exported (their home before the torch-free path)
    ALLOW_SPINNING,
    OrtEngine,
    default_ort_threads,
    min_cosine,
)

log = logging.getLogger(__name__)

#: the exported graph must give these codes or better (cosine per row, every layer) on the probe
CHECK_COSINE = 0.99999  # the same as cnncodes.codes.ort_engine.CHECK_COSINE (patched in tests)


class TorchEngine:
    """The cut torch module (BN folded, channels_last, autocast as asked) on its device."""

    name = "torch"

    def __init__(self, module: nn.Module, device: torch.device,
                 autocast_dtype: torch.dtype | None, channels_last: bool):
        self.module = module
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.version = torch.__version__
        self.threads: int | None = None
        #: why ``engine="auto"`` did not get onnxruntime ("" when it was not tried)
        self.fallback = ""

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), strict_fp32(self.device), cudnn_autotune(self.device):
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    out = self.module(x)
            else:
                out = self.module(x)
            return {k: v.float().cpu().numpy() for k, v in out.items()}


def probe_batch(input_size: int, n: int = 3) -> torch.Tensor:
    """A seeded normalised-looking batch (``n`` differs from the export's 2: checks the dynamic
    batch axis too)."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, input_size, input_size, generator=g)


def _ort_available() -> str | None:
    """None when onnxruntime imports, else the reason (``onnx`` is imported only to export)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name or e} is not installed"
    return None


#: above this many bytes of parameters the ONNX export is not tried: a protobuf file holds at most
#: 2 GiB, and an attempt at such a model takes minutes before failing (regnet_y_128gf: 308 s)
ONNX_MAX_PARAM_BYTES = int(1.9 * 2**30)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (numel x itemsize; works on the meta device)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def try_onnxruntime(module: nn.Module, layers: Sequence[str], input_size: int, *,
                    backbone: str, fields: Callable[[], Mapping[str, Any]],
                    threads: int | None) -> tuple[OrtEngine | None, str]:
    """An :class:`OrtEngine` whose codes match ``module``'s on the probe batch, or ``(None,
    reason)``. ``fields()`` gives the export key's fields. A cached graph that fails to load or to
    match is exported again once."""
    missing = _ort_available()
    if missing:
        return None, missing
    size = parameter_bytes(module)
    if size > ONNX_MAX_PARAM_BYTES:
        return None, (f"its parameters take {size / 2**30:.2f} GiB, over the "
                      f"{ONNX_MAX_PARAM_BYTES / 2**30:.1f} GiB that fit in one ONNX file; the "
                      "export was not tried")
    key_fields = fields()
    x = probe_batch(input_size)
    with torch.inference_mode():
        ref = {k: v.float().numpy() for k, v in module(x).items()}
    reason = ""
    for rebuild in (False, True):
        fresh = True  # a failure inside the export itself is not retried
        try:
            data, path, fresh = cached_export(module, layers, input_size, backbone=backbone,
                                              fields=key_fields, rebuild=rebuild)
            eng = OrtEngine(data, layers, threads=threads, path=path)
            cos = min_cosine(ref, eng(x))
        except Exception as e:  # noqa: BLE001 - any export/load failure means "use torch"
            first = (str(e).strip().splitlines() or [""])[0][:300]
            reason = f"the ONNX export or load failed ({type(e).__name__}: {first})"
        else:
            if cos >= CHECK_COSINE:
                log.info("engine onnxruntime %s: %s (%s, probe min cosine %.7f)", eng.version,
                         path, "exported now" if fresh else "cached", cos)
                return eng, ""
            reason = (f"the ONNX graph's codes differ from torch's (min cosine {cos:.6f} < "
                      f"{CHECK_COSINE})")
        if fresh:
            break
        log.warning("%s: %s; exporting it again", backbone, reason)
    return None, reason


def select_engine(choice: str, *, module: nn.Module, layers: Sequence[str], input_size: int,
                  device: torch.device, precision: str, channels_last: bool, backbone: str,
                  fields: Callable[[], Mapping[str, Any]], threads: int | None
                  ) -> TorchEngine | OrtEngine:
    """The engine for ``choice`` (``auto``, ``torch``, ``onnxruntime``); see the module doc.

    Raises:
        OptionError: ``onnxruntime`` asked for a CUDA device or a reduced precision.
    """
    _one_of("engine", choice, ENGINES)  # the same check as RuntimeOptions
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    torch_engine = TorchEngine(module, device, autocast, channels_last)
    if choice == "torch":
        if precision == "int8":
            raise OptionError("precision int8 quantises the ONNX Runtime graph: it needs --engine "
                              "auto or onnxruntime. Got --engine torch instead.")
        return torch_engine
    if device.type != "cpu" or autocast is not None:
        if choice == "onnxruntime":
            raise OptionError(f"engine onnxruntime runs on the CPU in fp32. Got device {device} "
                              f"and precision {precision} instead; use --device cpu --precision "
                              "fp32, or --engine auto/torch.")
        return torch_engine
    if getattr(module, "training", False):
        return torch_engine
    eng, reason = try_onnxruntime(module, layers, input_size, backbone=backbone, fields=fields,
                                  threads=threads)
    if eng is not None:
        return eng
    log.warning("%s: using the torch engine instead of onnxruntime: %s", backbone, reason)
    torch_engine.fallback = reason  # recorded in the provenance's engine entry
    return torch_engine
