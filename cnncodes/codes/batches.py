"""The one extraction loop and in-memory codes: the dataset for a decoder, batches of codes over
a source's rows (:func:`iter_codes`, shared by :func:`~cnncodes.codes.extraction.extract`, advise
and predict), and :func:`extract_arrays` (codes in memory instead of a store)."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .._runtime import loader_workers, num_threads, progress_bar
from ..errors import OptionError
from ..options import DECODERS, DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions, split_options
from ..sources.folders import ImageSource, open_source
from ..sources.tarshards import TarShardSource
from .light import (
    LightBatch,
    LightDataset,
    LightExtractor,
    _Cpu,
    decode_threads,
    is_light,
    iter_light,
    light_extractor,
)
from .numerics import DCT_SUFFIX

if TYPE_CHECKING:  # torch, torchvision and the torch extractor are imported where they run
    import torch

    from ..sources.loader import Batch, ImageDataset
    from .extractor import CodeExtractor

log = logging.getLogger(__name__)


def make_dataset(src: ImageSource, ext: CodeExtractor | LightExtractor, *, max_pixels: int | None,
                 decoder: str = "auto") -> ImageDataset | Any:
    """The dataset for ``decoder``: ``pil`` (PIL in the workers), ``tensor`` (JPEG bytes decoded by
    libjpeg-turbo on CPU or nvJPEG on CUDA, resized as tensors; other files go through PIL), or
    ``auto`` (tensor when the weights' interpolation is bilinear/bicubic, else PIL). Large JPEGs
    are decoded DCT-scaled on the CPU when the extractor's ``jpeg_scaling`` is ``dct``
    (:mod:`cnncodes.sources.dct`). A torch-free extractor (:mod:`cnncodes.codes.light`) gets a
    :class:`~cnncodes.codes.light.LightDataset` (PIL, threads)."""
    from ..sources.dct import draft_target

    draft = (draft_target(ext.preprocessing.resize)
             if getattr(ext, "jpeg_scaling", "off") == "dct" else None)
    if is_light(ext):
        return LightDataset(src, ext.preprocessing, max_pixels=max_pixels, draft_to=draft)
    from ..sources.loader import ImageDataset
    from ..sources.preprocessing import TENSOR_INTERPOLATIONS
    from ..sources.tensor_decode import BytesDataset

    if decoder not in DECODERS:
        raise OptionError(f"decoder must be one of {', '.join(DECODERS)}. Got {decoder!r} "
                          "instead.")
    if isinstance(src, TarShardSource):  # members are read by offset, decoded with PIL
        if decoder == "tensor":
            log.warning("decoder=tensor does not read tar shards; using PIL")
        return ImageDataset(src, ext.preprocessing, max_pixels=max_pixels, draft_to=draft)
    if decoder == "pil" or ext.preprocessing.interpolation not in TENSOR_INTERPOLATIONS:
        if decoder == "tensor":
            log.warning("decoder=tensor does not support %s interpolation; using PIL",
                        ext.preprocessing.interpolation)
        return ImageDataset(src, ext.preprocessing, max_pixels=max_pixels, draft_to=draft)
    return BytesDataset(src, ext.preprocessing, max_pixels=max_pixels, decode_device=ext.device,
                        draft_to=draft if ext.device.type == "cpu" else None)


def decoder_name(dataset: Any, device: torch.device | _Cpu) -> str:
    """``pil``, ``libjpeg-turbo`` or ``nvjpeg``; a CPU decoder with ``+dct`` when large JPEGs
    are decoded DCT-scaled (see :data:`cnncodes.codes.numerics.DECODER_FAMILY`)."""
    dct = DCT_SUFFIX if getattr(dataset, "draft_to", None) else ""
    if isinstance(dataset, LightDataset):
        return "pil" + dct
    from ..sources.tensor_decode import BytesDataset
    if isinstance(dataset, BytesDataset):
        return "nvjpeg" if device.type == "cuda" else "libjpeg-turbo" + dct
    return "pil" + dct


#: ``{layer: codes}`` of one batch
_LayerCodes = dict[str, np.ndarray]


@overload
def iter_codes(dataset: Any, ext: CodeExtractor, indices: Sequence[int], *,
               batch_size: int, num_workers: int, threads: int | None = None,
               health: Any = None) -> Iterator[tuple[Batch, _LayerCodes]]: ...
@overload
def iter_codes(dataset: Any, ext: CodeExtractor | LightExtractor, indices: Sequence[int], *,
               batch_size: int, num_workers: int, threads: int | None = None,
               health: Any = None) -> Iterator[tuple[Batch | LightBatch, _LayerCodes]]: ...


def iter_codes(dataset: Any, ext: CodeExtractor | LightExtractor, indices: Sequence[int], *,
               batch_size: int, num_workers: int, threads: int | None = None,
               health: Any = None) -> Iterator[tuple[Batch | LightBatch, _LayerCodes]]:
    """Yield ``(batch, {layer: codes})`` over ``indices`` in order (the one extraction loop).

    ``health``: a :class:`~cnncodes.sources.tensor_decode.GpuDecodeHealth` watching nvJPEG (one is
    made when None); once it says so, the rest is decoded by the CPU workers. A torch-free
    extractor runs :func:`~cnncodes.codes.light.iter_light` (``num_workers`` decoding threads).
    """
    if is_light(ext):
        yield from iter_light(dataset, ext, indices, batch_size=batch_size,
                              threads=decode_threads(num_workers))
        return
    import torch

    from ..sources.loader import Batch, make_loader
    from ..sources.tensor_decode import BytesDataset, GpuDecodeHealth, decode_batch

    health = health if health is not None else GpuDecodeHealth()
    with num_threads(threads):
        pin = ext.device.type == "cuda"
        done = 0
        while done < len(indices):
            rest = indices[done:]
            if isinstance(dataset, BytesDataset) and health.switched:
                dataset = copy.copy(dataset)  # the same files, decoded in the CPU workers
                dataset.decode_device, dataset.cpu_below = torch.device("cpu"), 0
            loader = (_bytes_loader(dataset, rest, batch_size, num_workers, pin)
                      if isinstance(dataset, BytesDataset) else
                      make_loader(dataset, rest, batch_size=batch_size, num_workers=num_workers,
                                  pin_memory=pin))
            for batch in loader:
                if not isinstance(batch, Batch):  # raw JPEG bytes: decode on the GPU
                    raw = batch
                    batch = decode_batch(raw, ext.preprocessing, device=ext.device,
                                         max_pixels=dataset.max_pixels)
                    health.update(raw)
                elif health.switched:
                    health.after_switch += len(batch.indices)
                done += len(batch.indices) + len(batch.failures)
                yield batch, ext(batch.images)
                if health.switched and dataset.decode_device.type != "cpu":
                    break  # rebuild the loader with CPU decoding for the rest
            else:
                return


def _bytes_loader(dataset: Any, indices: Sequence[int], batch_size: int, num_workers: int,
                  pin: bool) -> Any:
    from ..sources.tensor_decode import make_bytes_loader

    return make_bytes_loader(dataset, indices, batch_size=batch_size, num_workers=num_workers,
                             pin_memory=pin)


def _torch_extractor(bopts: BackboneOptions, ropts: RuntimeOptions) -> CodeExtractor:
    from .extractor import CodeExtractor

    return CodeExtractor(bopts, runtime=ropts)


@dataclass
class ArrayCodes:
    """In-memory codes of a source (for predict and the sklearn transformer).

    ``codes[layer]`` rows align with ``paths``/``labels``/``index`` (positions in the source);
    files that could not be decoded are in ``failures`` and have no row.
    """

    paths: list[str]
    index: np.ndarray
    labels: np.ndarray
    classes: list[str]
    codes: dict[str, np.ndarray]
    failures: list[tuple[str, str]]
    provenance: dict[str, Any]


def extract_arrays(
    source: str | os.PathLike[str] | Sequence[str] | ImageSource,
    *,
    extractor: CodeExtractor | None = None,
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> ArrayCodes:
    """Like :func:`extract` but returns the codes in memory instead of writing a store.

    Pass ``extractor`` to reuse an already built :class:`CodeExtractor` (its backbone options and
    device win); ``backbone``/``runtime``/``options`` as for :func:`extract`.
    """
    bopts, ropts, _ = split_options(backbone, runtime, options, where="extract_arrays")
    batch_size, num_workers, threads = ropts.batch_size, ropts.num_workers, ropts.threads
    max_pixels, progress, decoder = ropts.max_pixels, ropts.progress, ropts.decoder
    src = open_source(source, classes=classes)
    ext = extractor or light_extractor(bopts, ropts) or _torch_extractor(bopts, ropts)
    workers = (decode_threads(num_workers) if is_light(ext) else
               loader_workers(ext.device, num_workers, len(src), batch_size))
    dataset = make_dataset(src, ext, max_pixels=max_pixels, decoder=decoder)
    idx: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ext.layers}
    failures: list[tuple[str, str]] = []
    bar = progress_bar(len(src), f"codes {ext.spec.name}", enabled=progress)
    try:
        for batch, codes in iter_codes(dataset, ext, range(len(src)), batch_size=batch_size,
                                       num_workers=workers, threads=threads):
            idx.extend(batch.indices)
            for k, v in codes.items():
                if v.shape[0]:
                    chunks[k].append(v)
            failures.extend((src.paths[i], r) for i, r in batch.failures)
            if bar is not None:
                bar.update(len(batch.indices) + len(batch.failures))
    finally:
        if bar is not None:
            bar.close()
    index = np.asarray(idx, np.int64)
    out = {k: (np.concatenate(v) if v else np.zeros((0, 0), np.float32))
           for k, v in chunks.items()}
    for p, r in failures:
        log.warning("skipping %s: %s", p, r)
    prov = ext.provenance()
    prov.update({"root": os.fspath(src.root), "source_kind": src.kind})
    return ArrayCodes([src.paths[i] for i in idx], index, src.labels[index], list(src.classes),
                      out, failures, prov)
