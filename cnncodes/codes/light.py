"""The torch-free extraction path: ONNX Runtime on the sealed, verified graph of the export cache,
with Pillow/NumPy preprocessing and a thread pool decoding while the forward pass runs.

The first run of a key exports and checks the graph with torch as before
(:func:`cnncodes.codes.engines.try_onnxruntime`); a :class:`~cnncodes.codes.extractor.
CodeExtractor` whose graph passed then writes a **manifest** next to it
(``onnx/<backbone>-req-<key>.json``, :func:`write_manifest`). Its key hashes only what a run knows
before importing torch (:func:`request_fields`: the backbone options as asked and the installed
versions of torch, torchvision, timm, onnxruntime and cnncodes, read from package metadata). It
records everything the run needs besides the network: the extractor's provenance, the layers'
dimensions, the graph's path and sha256, the weights file's size and mtime, and the torch codes of
a seeded probe batch.

:func:`light_extractor` then gives a :class:`LightExtractor` without importing torch or
torchvision when the run can use it (CPU, fp32, engine auto/onnxruntime, decoder auto/pil, one
process, ``CNNCODES_TORCH_FREE`` not ``0``), the manifest and the graph's seal match, the weights
file is unchanged, and, the start-up check, ONNX Runtime gives the manifest's torch codes on the
probe batch (min cosine >= :data:`~cnncodes.codes.ort_engine.CHECK_COSINE`, the check the torch
path runs, against codes torch computed when the graph was checked). Otherwise it returns None and
the torch path runs. The images are decoded by PIL (the PIL path's pixels, bit-exact:
:func:`~cnncodes.sources.preprocessing.preprocess_array`) in :func:`iter_light`'s threads; Pillow
releases the GIL while decoding and resizing, ONNX Runtime while running, so both cores work.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from .._runtime import nvidia_present
from .._version import __version__
from ..atomic import atomic_path
from ..options import BackboneOptions, RuntimeOptions
from ..sources.dct import dct_enabled
from ..sources.items import SourceItems
from ..sources.preprocessing import Preprocessing, preprocess_array
from .export_cache import cache_path, read_cached, unseal
from .numerics import decoding, planned_decoder
from .ort_engine import CHECK_COSINE, OrtEngine, default_ort_threads, min_cosine

if TYPE_CHECKING:
    from typing_extensions import TypeIs

log = logging.getLogger(__name__)

#: ``0`` turns the torch-free path off (every run then builds the torch extractor)
TORCH_FREE_ENV = "CNNCODES_TORCH_FREE"
#: bumped when the manifest changes: older manifests are then never read
MANIFEST_FORMAT = 1
#: the probe batch: seed and size (3: not the export's 2, so the dynamic batch axis is checked)
PROBE_SEED, PROBE_N = 1234, 3


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def request_fields(bopts: BackboneOptions) -> dict[str, Any]:
    """What a run knows before importing torch: the backbone options as asked and the installed
    versions of the libraries that shape the graph (package metadata, no import)."""
    weights = None if bopts.weights is None else os.fspath(bopts.weights)
    if weights is not None and os.path.exists(weights):
        weights = os.path.abspath(weights)
    layers = bopts.layers
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    return {"backbone": bopts.backbone, "weights": weights,
            "layers": list(layers) if layers is not None else None,
            "pooling": bopts.pooling, "input_size": bopts.input_size,
            "versions": {p: _version(p) for p in ("torch", "torchvision", "timm", "onnxruntime")},
            "cnncodes": __version__, "format": MANIFEST_FORMAT}


def manifest_path(bopts: BackboneOptions) -> Path:
    """``onnx/<backbone>-req-<hash of request_fields>.json`` in the export cache."""
    blob = json.dumps(request_fields(bopts), sort_keys=True, default=str)
    key = "req-" + hashlib.sha256(blob.encode()).hexdigest()[:24]
    return cache_path(bopts.backbone, key).with_suffix(".json")


def probe_array(input_size: int, n: int = PROBE_N) -> np.ndarray:
    """A seeded normalised-looking float32 batch (NumPy, so both paths make the same one)."""
    rng = np.random.default_rng(PROBE_SEED)
    return rng.standard_normal((n, 3, input_size, input_size), dtype=np.float32)


def _pack(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, np.float32)
    return {"shape": list(a.shape), "float32": base64.b64encode(a.tobytes()).decode()}


def _unpack(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32"]), np.float32).reshape(d["shape"])


def _weights_stat(path: Any) -> list[Any] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [os.fspath(path), st.st_size, st.st_mtime_ns]


def write_manifest(ext: Any, engine: OrtEngine) -> Path | None:
    """Record what the torch-free path needs for ``ext`` (a CodeExtractor whose ONNX graph just
    passed its check, ``engine``); nothing when an equal manifest exists. Returns its path, or
    None when it could not be written (logged; the torch path simply runs next time too)."""
    import torch

    path = manifest_path(ext.options)
    graph = Path(engine.path) if engine.path else None
    payload = read_cached(graph) if graph is not None else None
    if graph is None or payload is None:  # (payload is None when graph is)
        return None
    digest = hashlib.sha256(payload).hexdigest()
    try:
        old = json.loads(path.read_text())
        if old.get("graph_sha256") == digest and old.get("graph") == os.fspath(graph):
            return path
    except (OSError, ValueError):
        pass
    x = probe_array(ext.preprocessing.crop)
    with torch.inference_mode():
        ref = {k: v.float().cpu().numpy() for k, v in ext.module(torch.from_numpy(x)).items()}
    prov = {**ext.provenance(), "precision": "fp32", "numerics": "fp32"}  # the graph's own
    prov.pop("quantisation", None)
    doc = {"request": request_fields(ext.options), "graph": os.fspath(graph),
           "graph_sha256": digest, "layers": list(ext.layers), "dims": ext.dims,
           "provenance": prov, "spec": {"name": ext.spec.name, "family": ext.spec.family},
           "resolved_id": ext.resolved.id, "bn_folded": int(ext.bn_folded),
           "weights_stat": _weights_stat(ext.resolved.path),
           "probe": {k: _pack(v) for k, v in ref.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with atomic_path(path, tmp=tmp) as t:
            t.write_text(json.dumps(doc, default=str))
    except OSError as e:
        log.warning("cannot write %s (%s): the next run imports torch again", path, e)
        return None
    return path


def _eligible(ropts: RuntimeOptions) -> str | None:
    """Why a run cannot take the torch-free path (None when it can)."""
    if os.environ.get(TORCH_FREE_ENV, "1") == "0":
        return f"{TORCH_FREE_ENV}=0"
    if (ropts.engine not in ("auto", "onnxruntime")
            or ropts.precision not in ("auto", "fp32", "int8")):
        return "engine/precision"
    if ropts.decoder not in ("auto", "pil"):
        return "decoder"
    if str(ropts.device) != "cpu" and not (str(ropts.device) == "auto" and not nvidia_present()):
        return "device"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    return None


def light_extractor(bopts: BackboneOptions, ropts: RuntimeOptions) -> LightExtractor | None:
    """A :class:`LightExtractor` for these options, or None (the torch path runs); see the
    module docstring for the conditions. Never imports torch."""
    why = _eligible(ropts)
    if why:
        log.debug("torch-free path not used: %s", why)
        return None
    path = manifest_path(bopts)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("request") != json.loads(json.dumps(request_fields(bopts), default=str)):
        return None
    ws = doc.get("weights_stat")
    if ws is not None and _weights_stat(ws[0]) != ws:
        log.info("%s: the weights file changed since the graph was exported; using torch",
                 bopts.backbone)
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        data = Path(doc["graph"]).read_bytes()
    except OSError:
        return None
    payload = unseal(data)  # hashes the graph once: its seal is the payload's sha256
    if payload is None or data[-64:].decode(errors="replace") != doc.get("graph_sha256"):
        return None
    try:
        ext = LightExtractor(doc, OrtEngine(payload, doc["layers"], threads=ropts.threads,
                                            path=Path(doc["graph"])), ropts)
        ref = {k: _unpack(v) for k, v in doc["probe"].items()}
        cos = min_cosine(ref, ext.engine(probe_array(ext.preprocessing.crop)))
    except Exception as e:  # noqa: BLE001 - a broken manifest or graph means "use torch"
        log.warning("%s: the torch-free path failed to start (%s: %s); using torch",
                    bopts.backbone, type(e).__name__, e)
        return None
    if not cos >= CHECK_COSINE:
        log.warning("%s: the cached ONNX graph's codes differ from the recorded torch codes (min "
                    "cosine %.6f < %s); using torch", bopts.backbone, cos, CHECK_COSINE)
        return None
    log.info("torch-free path: onnxruntime %s on %s (probe min cosine %.7f)", ext.engine.version,
             doc["graph"], cos)
    return ext


class _Cpu:
    """The CPU as the extraction code looks at a device (``.type``, ``str()``)."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    __repr__ = __str__


CPU = _Cpu()


class LightExtractor:
    """A :class:`~cnncodes.codes.extractor.CodeExtractor` stand-in built from a manifest: the
    attributes the extraction code reads, ONNX Runtime for the forward, NumPy normalisation."""

    light = True

    def __init__(self, doc: dict[str, Any], engine: OrtEngine, ropts: RuntimeOptions):
        prov = doc["provenance"]
        self._prov: dict[str, Any] = prov
        self._dims = {k: int(v) for k, v in doc["dims"].items()}
        self.spec = SimpleNamespace(**doc["spec"])
        self.resolved = SimpleNamespace(id=doc["resolved_id"])
        self.layers = list(doc["layers"])
        self.pooling = prov["pooling"]
        self.preprocessing = Preprocessing.from_dict(prov["preprocessing"])
        self.device = CPU
        #: ``int8``: the engine is swapped for the quantised graph by
        #: :func:`cnncodes.codes.quantise.quantise_extractor` (``quantisation`` says how)
        self.precision = "int8" if ropts.precision == "int8" else "fp32"
        self.quantisation: dict[str, Any] | None = None
        self.bn_folded = int(doc["bn_folded"])
        self.engine = engine
        self.decoder_option = "pil"
        self.channels_last = False
        self.jpeg_scaling = "dct" if dct_enabled(ropts.jpeg_scaling) else "off"
        self._mean = np.asarray(self.preprocessing.mean, np.float32).reshape(1, 3, 1, 1) * 255
        self._std = np.asarray(self.preprocessing.std, np.float32).reshape(1, 3, 1, 1) * 255

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def dims(self) -> dict[str, int]:
        return dict(self._dims)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 NCHW batch -> ``{layer: float32 (N, D)}`` (the torch path's normalisation)."""
        if self.precision == "int8" and self.quantisation is None:
            from .numerics import int8_refusal

            raise int8_refusal(f"this {self.spec.name} extractor")
        if images.shape[0] == 0:
            return {k: np.zeros((0, 0), np.float32) for k in self.layers}
        x = images.astype(np.float32)  # in place after this copy: the same values, 2x faster
        x -= self._mean  # (16 -> 8 ms for 64 images at 224 px here)
        x /= self._std
        return self.engine(x)

    def provenance(self) -> dict[str, Any]:
        p = copy.deepcopy(self._prov)
        p["engine"] = {"name": self.engine.name, "version": self.engine.version,
                       "threads": self.engine.threads}
        p["decoding"] = decoding(planned_decoder("pil", "cpu", self.preprocessing.interpolation,
                                                 dct=self.jpeg_scaling == "dct"))
        p["precision"] = p["numerics"] = self.precision
        if self.quantisation:
            p["quantisation"] = self.quantisation
        return p


def is_light(ext: Any) -> TypeIs[LightExtractor]:
    return getattr(ext, "light", False) is True


# ------------------------------------------------------------------------------ the loop


@dataclass
class LightBatch:
    """A batch of the torch-free loop: the fields of :class:`cnncodes.sources.loader.Batch`,
    ``images`` a uint8 NCHW NumPy array."""

    indices: list[int]
    images: np.ndarray
    failures: list[tuple[int, str]]


class LightDataset(SourceItems):
    """Items ``(index, uint8 CHW array | None, failure reason | None)`` of a source, as
    :class:`cnncodes.sources.loader.ImageDataset` makes them (the same pixels, no torch)."""

    def prepare(self, img: Any) -> np.ndarray:
        return preprocess_array(img, self.preprocessing, max_pixels=self.max_pixels)


def decode_threads(num_workers: int | None) -> int:
    """Decoding threads of the torch-free loop: ``num_workers`` when given (0 counts as 1),
    else one per core this process may use."""
    return max(1, int(num_workers)) if num_workers is not None else default_ort_threads()


def iter_light(dataset: LightDataset, ext: LightExtractor, indices: Sequence[int], *,
               batch_size: int, threads: int) -> Iterator[tuple[LightBatch, dict[str, np.ndarray]]]:
    """Yield ``(batch, {layer: codes})`` over ``indices`` in order: ``threads`` threads decode
    up to two batches ahead while ONNX Runtime runs the current one."""
    crop = dataset.preprocessing.crop
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cnncodes-decode")
    pending: deque[Future[tuple[int, Any, str | None]]] = deque()
    todo = iter(indices)
    ahead = 2 * batch_size + threads

    def fill() -> None:
        while len(pending) < ahead:
            i = next(todo, None)
            if i is None:
                return
            pending.append(pool.submit(dataset.__getitem__, i))

    try:
        fill()
        while pending:
            items: list[tuple[int, Any, str | None]] = []
            while pending and len(items) < batch_size:
                items.append(pending.popleft().result())
                fill()
            ok = [(i, a) for i, a, _ in items if a is not None]
            images = (np.stack([a for _, a in ok]) if ok
                      else np.zeros((0, 3, crop, crop), np.uint8))
            batch = LightBatch([i for i, _ in ok], images,
                               [(i, str(r)) for i, a, r in items if a is None])
            yield batch, ext(batch.images)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
