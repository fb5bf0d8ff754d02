"""The export cache: ONNX graphs of cut backbones, exported once per export key and kept in
``$CNNCODES_CACHE`` (default ``$XDG_CACHE_HOME/cnncodes``, i.e. ``~/.cache/cnncodes``).

One file per key, ``onnx/<backbone>-<key>.onnx``, with a small metadata file beside it recording
its model and last use (:mod:`cnncodes.codes.cache_files`; ``cnncodes cache`` lists and prunes). Each file is sealed: it ends with an extra
protobuf field (number 1000, which ONNX readers ignore, so it is still a valid ONNX file) holding the
hex sha256 of every byte before it; a file whose seal does not match is corrupt and is rebuilt.
Files are written under a unique temporary name and renamed over the destination
(:func:`cnncodes.atomic.atomic_path`), so two processes exporting the same key at once both
succeed and leave one complete file.

The graph comes from the legacy TorchScript exporter (``dynamo=False``: it needs only the ``onnx``
package): the :class:`~cnncodes.backbones.cutting.FeatureExtractor` runs under the tracer as
usual, so only the ops up to the deepest requested layer are recorded (the hooks stop the forward
there) and every requested layer, pooled, is a graph output; the batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path
from .cache_files import CACHE_ENV, cache_dir, touch_entry

if TYPE_CHECKING:  # reading the cache needs no torch (the torch-free path reads it)
    from torch import nn

log = logging.getLogger(__name__)

#: ONNX opset of the exported graphs (part of the export key)
OPSET = 17
#: bumped when the export itself changes (wrapper, names, seal): old files are then never read
FORMAT = 1
#: protobuf tag of field 1000, wire type 2 (length-delimited), then the length 64
_SEAL_PREFIX = b"\xc2\x3e\x40"
_SEAL_LEN = len(_SEAL_PREFIX) + 64
INPUT_NAME = "images"


def export_key(fields: Mapping[str, Any]) -> str:
    """A short hash of ``fields`` (backbone, weights, layers, pooling, size, opset, versions...)."""
    blob = json.dumps({**fields, "format": FORMAT, "opset": OPSET}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(backbone: str, key: str) -> Path:
    """``onnx/<backbone>-<key>.onnx``; characters unsafe in a file name (the ``/`` of
    ``timm/<model>``) become ``+`` (the key hashes the real name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "+", backbone).lstrip(".") or "backbone"
    return cache_dir() / "onnx" / f"{safe}-{key}.onnx"


def seal(payload: bytes) -> bytes:
    """``payload`` followed by its sha256 as an ignored protobuf field."""
    return payload + _SEAL_PREFIX + hashlib.sha256(payload).hexdigest().encode()


def unseal(data: bytes) -> bytes | None:
    """The payload of a sealed file, or None when the seal is missing or does not match."""
    if len(data) <= _SEAL_LEN or data[-_SEAL_LEN:-64] != _SEAL_PREFIX:
        return None
    payload, digest = data[:-_SEAL_LEN], data[-64:]
    return payload if hashlib.sha256(payload).hexdigest().encode() == digest else None


def read_cached(path: Path) -> bytes | None:
    """The ONNX bytes cached at ``path``; None when absent or corrupt (a corrupt file is logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read the cached ONNX graph %s (%s); exporting it again", path, e)
        return None
    payload = unseal(data)
    if payload is None:
        log.warning("the cached ONNX graph %s is corrupt (its sha256 seal does not match); "
                    "exporting it again", path)
    return payload


def write_cached(path: Path, payload: bytes) -> None:
    """Write ``payload`` sealed to ``path`` atomically (unique temp name, fsync, replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with atomic_path(path, tmp=tmp) as t:
        t.write_bytes(seal(payload))


def _outputs(extractor: nn.Module, layers: Sequence[str]) -> nn.Module:
    """The cut network as the exporter needs it: a tuple of pooled layer codes, fp32."""
    from torch import nn

    class _Outputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extractor = extractor
            self.layers = list(layers)

        def forward(self, x: Any) -> tuple[Any, ...]:
            out = self.extractor(x)
            return tuple(out[k].float() for k in self.layers)

    return _Outputs()


@contextlib.contextmanager
def _mha_decomposed() -> Iterator[None]:
    """``nn.MultiheadAttention`` through its plain ops while exporting: its inference fast path
    (``aten::_native_multi_head_attention``, taken under no_grad) has no ONNX export, so every
    torchvision ViT fell back to torch. The flag is restored after."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    prev = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(prev)


@contextlib.contextmanager
def _captured_output() -> Iterator[None]:
    """Route file descriptors 1 and 2 into a temporary file while exporting: on a failure the
    TorchScript exporter prints its whole IR graph (thousands of lines) to stdout, which would
    corrupt a command's output (e.g. ``--json``). What it printed is logged at debug level."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read(4096).decode(errors="replace").strip()
            if text:
                log.debug("the ONNX exporter printed: %s", text)


def export_onnx(extractor: nn.Module, layers: Sequence[str], input_size: int) -> bytes:
    """ONNX bytes of ``extractor`` (an eval-mode FeatureExtractor on the CPU, fp32) with one
    output per layer (named as the layer) and a dynamic batch axis."""
    import torch

    wrapper = _outputs(extractor, layers).eval()
    x = torch.zeros(2, 3, input_size, input_size)
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, **{k: {0: "batch"} for k in layers}}
    with warnings.catch_warnings(), torch.no_grad(), _captured_output(), _mha_decomposed():
        warnings.simplefilter("ignore")
        # torch's hint says a path, but the TorchScript exporter (dynamo=False) writes to a file
        # object too: a stub gap, not a bug
        torch.onnx.export(wrapper, (x,), buf,  # type: ignore[arg-type]
                          dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(layers),
                          dynamic_axes=axes, do_constant_folding=True)
    return buf.getvalue()


def cached_export(extractor: nn.Module, layers: Sequence[str], input_size: int, *,
                  backbone: str, fields: Mapping[str, Any], rebuild: bool = False
                  ) -> tuple[bytes, Path, bool]:
    """The ONNX bytes for ``fields``, from the cache or exported now (and cached).

    Returns ``(bytes, path, fresh)`` where ``fresh`` says the graph was exported by this call.
    ``rebuild=True`` ignores a cached file (after it failed to load or to match the torch codes).
    """
    path = cache_path(backbone, export_key(fields))
    if not rebuild:
        data = read_cached(path)
        if data is not None:
            touch_entry(path, backbone)
            return data, path, False
    data = export_onnx(extractor, layers, input_size)
    try:
        write_cached(path, data)
        touch_entry(path, backbone)
    except OSError as e:  # a read-only cache only costs the export next time
        log.warning("cannot write the ONNX cache %s (%s); set %s to a writable folder", path, e,
                    CACHE_ENV)
    return data, path, True
