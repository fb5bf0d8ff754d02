"""Extractors shared by the calls of one process (``CNNCodes`` clones in a grid search): the
torch-free :class:`~cnncodes.codes.light.LightExtractor` when the run can take that path (the
rules of :func:`~cnncodes.codes.light.light_extractor`, as ``extract`` applies them), else a
:class:`~cnncodes.codes.extractor.CodeExtractor`. This module imports no torch: torch is imported
only when the torch extractor is built or a device other than the CPU must be resolved.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from .._runtime import nvidia_present
from ..options import BackboneOptions, RuntimeOptions
from .light import TORCH_FREE_ENV, LightExtractor, is_light, light_extractor

#: Built extractors, least recently used first; at most :data:`SHARED_SIZE` are kept alive.
_SHARED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_SIZE = 2


def device_key(device: Any) -> str:
    """``str(resolve_device(device))`` without importing torch when it is the CPU (``cpu``, or
    ``auto`` with no NVIDIA driver visible: what :func:`~cnncodes._runtime.resolve_device`
    then gives too)."""
    if str(device) == "cpu" or (str(device) == "auto" and not nvidia_present()):
        return "cpu"
    from .._runtime import resolve_device

    return str(resolve_device(device))


def extractor_key(backbone: BackboneOptions, runtime: RuntimeOptions) -> tuple[Any, ...]:
    """Everything a built extractor depends on (a weights file by its path, size and mtime, so a
    rewritten checkpoint is a new key; whether ``CNNCODES_TORCH_FREE=0`` turns the torch-free path
    off); batch size and workers are not in it."""
    w = backbone.weights
    wkey: Any = None if w is None else os.fspath(w)
    if isinstance(wkey, str) and os.path.isfile(os.path.expanduser(wkey)):
        path = os.path.abspath(os.path.expanduser(wkey))
        st = os.stat(path)
        wkey = ("file", path, st.st_size, st.st_mtime_ns)
    layers = backbone.layers
    layers = (layers,) if isinstance(layers, str) else tuple(layers or ())
    return (backbone.backbone, wkey, layers, backbone.pooling, backbone.input_size,
            device_key(runtime.device), runtime.precision, runtime.engine,
            runtime.decoder, runtime.threads, os.environ.get(TORCH_FREE_ENV, "1") == "0")


def _hold(key: tuple[Any, ...], ext: Any) -> Any:
    """Keep ``ext`` under ``key`` (the most recently used), dropping the least recently used."""
    _SHARED[key] = ext
    while len(_SHARED) > SHARED_SIZE:
        _SHARED.popitem(last=False)
    return ext


def shared_light(backbone: BackboneOptions, runtime: RuntimeOptions) -> LightExtractor | None:
    """The shared torch-free extractor of this configuration, started (and kept) now when
    :func:`~cnncodes.codes.light.light_extractor` gives one; None when the configuration cannot
    take that path or its shared extractor is a torch one. Never imports torch."""
    key = extractor_key(backbone, runtime)
    with _SHARED_LOCK:
        ext = _SHARED.get(key)
        if ext is not None:
            _SHARED.move_to_end(key)
            return ext if is_light(ext) else None
        light = light_extractor(backbone, runtime)
        return None if light is None else _hold(key, light)


def shared_extractor(backbone: BackboneOptions, runtime: RuntimeOptions) -> Any:
    """One extractor per configuration (:func:`extractor_key`) and process, built on first use
    and reused after (with its ONNX session); a bounded LRU of :data:`SHARED_SIZE`. The
    torch-free one when :func:`~cnncodes.codes.light.light_extractor` gives one (its start-up
    check passed), else a :class:`~cnncodes.codes.extractor.CodeExtractor`."""
    light = shared_light(backbone, runtime)
    if light is not None:
        return light
    key = extractor_key(backbone, runtime)
    with _SHARED_LOCK:
        ext = _SHARED.get(key)
        if ext is None:
            from .extractor import CodeExtractor

            ext = _hold(key, CodeExtractor(backbone, runtime=runtime))
        return ext


def clear_shared_extractors() -> None:
    """Drop the extractors :func:`shared_extractor` keeps (their memory is freed when unused)."""
    with _SHARED_LOCK:
        _SHARED.clear()
