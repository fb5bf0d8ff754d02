"""Batched JPEG decoding + preprocessing on the CPU or the GPU, matching the PIL path.

The PIL path (:func:`cnncodes.sources.images.load_rgb` + :func:`cnncodes.sources.loader.preprocess_pil`) decodes and
resizes one image at a time in DataLoader workers. This module is the fast path for JPEG files:

* **workers only read bytes** (:class:`BytesDataset`). Each file's header is parsed in the worker
  (:func:`cnncodes.sources.jpeg.parse_jpeg_header`: size, colour components, coding process, EXIF orientation, end
  marker), with no pixel decoding. A plain 8-bit baseline/progressive JPEG with 1 (grey) or 3
  (YCbCr) components, a readable orientation and an end marker stays as bytes. Everything else
  (PNG, GIF, ..., CMYK/YCCK or RGB-coded JPEGs, 12-bit or arithmetic-coded JPEGs, truncated files,
  images over the decompression-bomb limit before or after the resize, unreadable EXIF, XMP
  orientation) goes through the PIL path in the worker, so it gets the same treatment as before
  or the same recorded failure. JPEG carries neither transparency nor more than 8 bits in the
  files kept here, so the two paths see the same pixels (``tests/sources/test_pixels.py``).
* **decoding is batched** (:func:`decode_batch`): ``torchvision.io.decode_jpeg`` on a list of
  byte tensors, on the CPU (libjpeg-turbo) or on CUDA (nvJPEG). A file the decoder rejects is
  handed to the PIL path (so it is decoded there or fails with PIL's reason), never dropped.
* **preprocessing matches PIL** (:mod:`cnncodes.sources.tensor_resize`): EXIF orientation as
  ``ImageOps.exif_transpose`` does it, the weights' resize of the shorter side with antialiasing,
  centre crop; within 1-2 grey levels of PIL (see ``tests/sources/test_decode.py``).

On the CPU, :class:`DecodingCollate` runs :func:`decode_batch` inside the DataLoader workers (a
drop-in for :func:`cnncodes.sources.loader.collate`); on CUDA the workers return :class:`RawBatch` objects and
the extraction loop calls :func:`decode_batch` with ``device="cuda"``. Rows and failures keep the
order of the items, so codes can never be attached to the wrong file.

Known difference: torchvision creates its nvJPEG decoder with default flags, which upsample
subsampled chroma (4:2:0, 4:2:2) by pixel replication where libjpeg interpolates ("fancy"
upsampling). After a downscale the difference averages out; when an image is barely downscaled or
upscaled it shows in the codes. Emulated on the CPU with libjpeg's own replicating upsampler
(mobilenet_v2 codes vs the PIL path, 80 crops of real photos, 4:2:0, 224 and 112 px; not yet
measured with nvJPEG itself), the lowest cosine was 0.992 for images smaller than the resize,
0.9986 between 1x and 1.25x the resize, 0.9993 from 1.25x and 0.9996 from 1.5x on.
So when decoding on the GPU, subsampled JPEGs whose shorter side is under ``gpu_min_scale`` x the
resize (1.25 by default: 320 px for resize 256) are decoded by libjpeg in the worker instead; they
are small and cheap to decode."""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DecodeError
from ..options import DEFAULT_MAX_PIXELS
from .folders import ImageSource
from .images import decode_rgb, draft_scale, load_rgb, open_regular
from .jpeg import JpegHeader, fallback_reason, parse_jpeg_header, sniff
from .loader import Batch, preprocess_pil
from .preprocessing import TENSOR_INTERPOLATIONS, Preprocessing, resized_size
from .tensor_resize import apply_orientation, resize_crop

log = logging.getLogger(__name__)


try:  # deprecated in torchvision 0.29 in favour of TorchCodec; without it every file uses PIL
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg
except ImportError:  # pragma: no cover - depends on the installed torchvision
    _decode_jpeg = None
    ImageReadMode = None


#: Route of files left to the batch decoder (:func:`decode_batch`).
TENSOR = "tensor"


#: Route of small chroma-subsampled JPEGs decoded with libjpeg in the worker (GPU decoding only).
CPU_SMALL = "cpu: small subsampled JPEG"
#: Route of a progressive JPEG when the batch decoder is on the GPU: nvJPEG decodes those one by
#: one with its Huffman stage on the CPU of the main process, so the worker decodes it instead.
CPU_PROGRESSIVE = "cpu: progressive JPEG"


#: Route of a JPEG at least twice the DCT target (``draft_to``): decoded DCT-scaled by libjpeg
#: through Pillow in the worker (see :mod:`cnncodes.sources.dct`), then the PIL resize.
CPU_DCT = "cpu: DCT-scaled JPEG"


#: Other routes are ``"pil: <why>"``. Default of ``gpu_min_scale`` (see the module docstring).
GPU_MIN_SCALE = 1.25


@dataclass
class RawItem:
    """One file as a worker hands it over: JPEG bytes for the batch decoder (``data``), or the
    image the worker already finished (``image``, uint8 ``(3, crop, crop)``, by PIL or by libjpeg),
    or a failure reason. ``route`` says which way it went (:data:`TENSOR`, :data:`CPU_SMALL`,
    ``"pil: <why>"``)."""

    index: int
    path: str
    route: str
    data: bytes | None = None
    orientation: int = 1
    image: torch.Tensor | None = None
    failure: str | None = None


@dataclass
class RawBatch:
    """A batch before tensor decoding: JPEG bytes in one buffer, PIL results, failures.

    Attributes:
        order: every item's index in input order (rows of the decoded batch keep this order).
        jpeg_indices, jpeg_paths, orientations: the items for the tensor decoder.
        blob: uint8 1-D tensor, their files concatenated; ``offsets[k]:offsets[k + 1]`` is item k.
        ready_indices, ready: items the workers already decoded and preprocessed.
        failures: ``(index, reason)`` of items that failed in the worker.
        routes: ``{index: route}`` (see :class:`RawItem`), for logs and tests.
    """

    order: list[int]
    jpeg_indices: list[int]
    jpeg_paths: list[str]
    orientations: list[int]
    blob: torch.Tensor
    offsets: list[int]
    ready_indices: list[int]
    ready: torch.Tensor
    failures: list[tuple[int, str]]
    routes: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.order)

    def pin_memory(self) -> RawBatch:
        """DataLoader(pin_memory=True) hook: page-locks the images finished in the workers."""
        if self.ready.numel():
            self.ready = self.ready.pin_memory()
        return self


def gpu_min_side(pp: Preprocessing, scale: float = GPU_MIN_SCALE) -> int:
    """Shorter side (pixels) under which a chroma-subsampled JPEG is decoded by libjpeg rather than
    by nvJPEG when decoding on the GPU (``scale`` x the resize; 0 sends every JPEG to the GPU)."""
    return int(math.ceil(scale * pp.resize)) if scale > 0 else 0


def read_item(index: int, path: str | os.PathLike[str], pp: Preprocessing, *,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, tensor_path: bool = True,
              cpu_below: int = 0, progressive_on_cpu: bool = False,
              draft_to: int | None = None) -> RawItem:
    """What a worker does with one file: read the bytes, route them, run PIL where needed.

    Args:
        index, path: the item's index (kept with its result) and file.
        pp: the weights' preprocessing.
        max_pixels: decompression-bomb limit, 0 or None = none (larger files go to PIL, which
            records the failure).
        tensor_path: False sends every file to PIL.
        cpu_below: chroma-subsampled JPEGs whose shorter side is under this are decoded here with
            libjpeg (route :data:`CPU_SMALL`) instead of by the batch decoder; see
            :func:`gpu_min_side`.
        progressive_on_cpu: decode progressive JPEGs here too (route :data:`CPU_PROGRESSIVE`;
            set when the batch decoder is on the GPU).
        draft_to: JPEGs whose shorter side is at least twice this are decoded here DCT-scaled
            (route :data:`CPU_DCT`, :func:`cnncodes.sources.images.draft_scale`); None: never.

    Never raises: failures become ``RawItem.failure`` (the PIL path's reasons).
    """
    p = os.fspath(path)
    why = None
    if not tensor_path or _decode_jpeg is None:
        why = "tensor path off"
    elif pp.interpolation not in TENSOR_INTERPOLATIONS:
        why = f"{pp.interpolation} interpolation"
    else:
        try:
            with open_regular(p) as f:  # never a FIFO or a device: nothing blocks
                data = f.read()
            kind = sniff(data)
        except DecodeError as e:  # load_rgb names the reason (not found, not a regular file...)
            kind = "empty" if str(e).startswith("empty") else "unreadable"
        except OSError:
            kind = "unreadable"
        if kind != "jpeg":
            why = kind
        else:
            try:
                header = parse_jpeg_header(data)
                why = fallback_reason(header, max_pixels=max_pixels)
                if why is None and max_pixels and _resized_pixels(header, pp) > max_pixels:
                    why = "over the pixel limit after resize"  # PIL records the failure
            except ValueError as e:
                why = f"malformed JPEG header ({e})"
            if why is None:
                if draft_scale(header.width, header.height, draft_to) > 1:
                    return _dct_item(index, p, data, pp, max_pixels, int(draft_to or 0))
                if header.subsampled and min(header.width, header.height) < cpu_below:
                    return _cpu_item(index, p, data, header.orientation, pp, max_pixels)
                if progressive_on_cpu and header.sof == 0xC2:
                    return _cpu_item(index, p, data, header.orientation, pp, max_pixels,
                                     CPU_PROGRESSIVE)
                return RawItem(index, p, TENSOR, data=data, orientation=header.orientation)
    return _pil_item(index, p, pp, max_pixels, f"pil: {why}")


def _resized_pixels(header: JpegHeader, pp: Preprocessing) -> int:
    h, w = resized_size(header.height, header.width, pp.resize) if header.width and \
        header.height else (0, 0)
    return h * w


def _cpu_item(index: int, path: str, data: bytes, orientation: int, pp: Preprocessing,
              max_pixels: int | None, route: str = CPU_SMALL) -> RawItem:
    """The tensor path on the CPU for one file, now (in the worker)."""
    (res,) = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], "cpu")
    if isinstance(res, Exception):
        return _pil_item(index, path, pp, max_pixels, "pil: decoder error")
    image = resize_crop([apply_orientation(res, orientation)], pp, method="uint8")[0]
    return RawItem(index, path, route, image=image)


def _dct_item(index: int, path: str, data: bytes, pp: Preprocessing, max_pixels: int | None,
              draft_to: int) -> RawItem:
    """A large JPEG decoded DCT-scaled by Pillow from the bytes already read, then the PIL
    path's resize and crop (failures as the PIL path's)."""
    try:
        img = decode_rgb(io.BytesIO(data), name=path, max_pixels=max_pixels, draft_to=draft_to)
        return RawItem(index, path, CPU_DCT,
                       image=preprocess_pil(img, pp, max_pixels=max_pixels))
    except DecodeError as e:
        return RawItem(index, path, CPU_DCT, failure=str(e))
    except Exception as e:  # noqa: BLE001 - never let one file stop the run
        return RawItem(index, path, CPU_DCT,
                       failure=f"preprocessing error: {type(e).__name__}: {e}")


def _pil_item(index: int, path: str, pp: Preprocessing, max_pixels: int | None,
              route: str) -> RawItem:
    """The robust PIL path, exactly as :class:`cnncodes.sources.loader.ImageDataset` runs it."""
    try:
        img = load_rgb(path, max_pixels=max_pixels)
        return RawItem(index, path, route, image=preprocess_pil(img, pp, max_pixels=max_pixels))
    except DecodeError as e:
        return RawItem(index, path, route, failure=str(e))
    except Exception as e:  # noqa: BLE001 - never let one file stop the run
        return RawItem(index, path, route,
                       failure=f"preprocessing error: {type(e).__name__}: {e}")


class BytesDataset(Dataset[RawItem]):
    """Items :class:`RawItem` for an :class:`~cnncodes.sources.folders.ImageSource`: JPEG bytes for the batch
    decoder, or finished images for files it should not take (PIL path; on the GPU also small
    chroma-subsampled JPEGs, decoded with libjpeg here). Load with :func:`make_bytes_loader`.

    Args:
        decode_device: where :func:`decode_batch` will run (``cpu``: in the workers).
        gpu_min_scale: see :func:`gpu_min_side` (used when ``decode_device`` is not the CPU).
        draft_to: large JPEGs decoded DCT-scaled in the worker (see :func:`read_item`); None:
            never. Ignored when decoding on the GPU.
    """

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, tensor_path: bool = True,
                 decode_device: str | torch.device = "cpu",
                 gpu_min_scale: float = GPU_MIN_SCALE, draft_to: int | None = None):
        self.source = source
        self.draft_to = draft_to
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.tensor_path = tensor_path
        self.decode_device = torch.device(decode_device)
        self.cpu_below = 0 if self.decode_device.type == "cpu" else \
            gpu_min_side(preprocessing, gpu_min_scale)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> RawItem:
        return read_item(i, self.source.abspath(i), self.preprocessing,
                         max_pixels=self.max_pixels, tensor_path=self.tensor_path,
                         cpu_below=self.cpu_below,
                         progressive_on_cpu=self.decode_device.type != "cpu",
                         draft_to=self.draft_to if self.decode_device.type == "cpu" else None)


def collate_raw(items: Sequence[RawItem]) -> RawBatch:
    """Gather worker items into one :class:`RawBatch` (one shared buffer for all the bytes).

    Raises:
        ValueError: two items with the same index (rows are matched to items by index).
    """
    if len({it.index for it in items}) != len(items):
        raise ValueError("Items of a batch must have distinct indices; got "
                         f"{[it.index for it in items]}.")
    jpegs = [it for it in items if it.data is not None]
    ready = [it for it in items if it.image is not None]
    offsets = [0]
    for it in jpegs:
        offsets.append(offsets[-1] + len(it.data))  # type: ignore[arg-type]
    joined = bytearray(b"".join(it.data for it in jpegs))  # type: ignore[misc]
    blob = torch.frombuffer(joined, dtype=torch.uint8) if joined else \
        torch.empty(0, dtype=torch.uint8)
    crop = ready[0].image.shape[-1] if ready else 1  # type: ignore[union-attr]
    return RawBatch(
        order=[it.index for it in items],
        jpeg_indices=[it.index for it in jpegs], jpeg_paths=[it.path for it in jpegs],
        orientations=[it.orientation for it in jpegs], blob=blob, offsets=offsets,
        ready_indices=[it.index for it in ready],
        ready=torch.stack([it.image for it in ready]) if ready  # type: ignore[misc]
        else torch.empty(0, 3, crop, crop, dtype=torch.uint8),
        failures=[(it.index, str(it.failure)) for it in items
                  if it.data is None and it.image is None],
        routes={it.index: it.route for it in items})


def _decode(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders (for TorchCodec) with a warning on every call
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of "
                                "TorchVision are deprecated.*")
        out = _decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return list(out)


def decode_jpegs(datas: list[torch.Tensor], device: str | torch.device = "cpu"
                 ) -> list[torch.Tensor | Exception]:
    """Decode JPEG byte tensors to uint8 RGB ``(3, H, W)`` on ``device``, in one batched call.

    If the batched call fails (it returns nothing when one image is bad), each image is decoded
    alone so that only the bad ones come back as the exception they raised.
    """
    if _decode_jpeg is None:
        raise RuntimeError("torchvision.io.decode_jpeg is not available in this torchvision.")
    dev = torch.device(device)
    if not datas:
        return []
    try:
        return _decode(datas, dev)  # type: ignore[return-value]
    except Exception as batch_error:  # noqa: BLE001 - isolate the culprit(s) below
        if len(datas) == 1:
            return [batch_error]
    out: list[torch.Tensor | Exception] = []
    for d in datas:
        try:
            out.append(_decode([d], dev)[0])
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out


def decode_batch(raw: RawBatch | Sequence[RawItem], pp: Preprocessing, *,
                 device: str | torch.device = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 resize_method: str = "auto") -> Batch:
    """Decode a batch's JPEGs on ``device``, preprocess them as the PIL path does, and merge them
    with the items the workers already finished.

    Args:
        raw: a :class:`RawBatch` (from :func:`collate_raw`) or its list of :class:`RawItem`.
        pp: the weights' preprocessing (resize, crop, interpolation).
        device: where decoding and resizing run and where the images end up.
        max_pixels: decompression-bomb limit for files that fall back to PIL here.
        resize_method: see :func:`resize_crop`.

    Returns:
        :class:`cnncodes.sources.loader.Batch`: ``images`` uint8 ``(N_ok, 3, crop, crop)`` on ``device``,
        ``indices`` the items' indices in input order minus the failures, ``failures``
        ``(index, reason)`` in input order. A JPEG the tensor decoder rejects is retried with PIL
        (decoded there, or failed with PIL's reason).
    """
    if not isinstance(raw, RawBatch):
        raw = collate_raw(list(raw))
    dev = torch.device(device)
    crop = pp.crop
    rows: dict[int, torch.Tensor] = {}
    failed: dict[int, str] = dict(raw.failures)
    ready = None
    if raw.ready_indices:
        ready = raw.ready.to(dev, non_blocking=True)
        for k, i in enumerate(raw.ready_indices):
            rows[i] = ready[k]
    good: list[int] = []  # indices of the JPEGs decoded here, in order
    decoded_rows: torch.Tensor | None = None
    if raw.jpeg_indices:
        datas = [raw.blob[raw.offsets[k]:raw.offsets[k + 1]] for k in range(len(raw.jpeg_indices))]
        decoded = decode_jpegs(datas, dev)
        images: list[torch.Tensor] = []
        for k, (i, res) in enumerate(zip(raw.jpeg_indices, decoded, strict=True)):
            if isinstance(res, Exception):
                log.debug("%s: tensor decoder failed (%s); using PIL", raw.jpeg_paths[k], res)
                item = _pil_item(i, raw.jpeg_paths[k], pp, max_pixels, DECODER_ERROR)
                raw.routes[i] = item.route
                if item.image is not None:
                    rows[i] = item.image
                else:
                    failed[i] = str(item.failure)
                continue
            good.append(i)
            images.append(apply_orientation(res, raw.orientations[k]))
        if images:
            decoded_rows = resize_crop(images, pp, method=resize_method)
            for k, i in enumerate(good):
                rows[i] = decoded_rows[k]
    ok = [i for i in raw.order if i in rows]
    failures = [(i, failed[i]) for i in raw.order if i in failed]
    if decoded_rows is not None and good == ok:  # the usual case: nothing to merge
        return Batch(ok, decoded_rows, failures)
    if decoded_rows is None and ready is not None and list(raw.ready_indices) == ok:
        return Batch(ok, ready, failures)  # nothing went to the batch decoder (PNGs...)
    out = torch.empty(len(ok), 3, crop, crop, dtype=torch.uint8, device=dev)
    for r, i in enumerate(ok):
        out[r].copy_(rows[i], non_blocking=True)
    return Batch(ok, out, failures)


#: Route of a JPEG the tensor decoder rejected (decoded by PIL in the main process instead).
DECODER_ERROR = "pil: decoder error"


class GpuDecodeHealth:
    """Watches nvJPEG on the batches :func:`decode_batch` decodes on the GPU: warns at the first
    JPEG it rejects (each is then decoded by PIL in the main process, which is slow), and after
    ``switch_after`` batches in a row where it rejected every JPEG says to decode the rest on the
    CPU workers (``switched``). ``record()`` is what the run record keeps."""

    def __init__(self, switch_after: int = 3):
        self.switch_after = switch_after
        self.sent = 0  # JPEGs given to nvJPEG
        self.rejected = 0  # of those, decoded by PIL instead
        self.in_row = 0  # consecutive batches where every JPEG was rejected
        self.switched = False
        self.after_switch = 0  # images decoded by the CPU workers after the switch

    def update(self, raw: RawBatch) -> None:
        """Count a batch just decoded by :func:`decode_batch` on the GPU."""
        sent = len(raw.jpeg_indices)
        bad = sum(raw.routes.get(i) == DECODER_ERROR for i in raw.jpeg_indices)
        if bad and not self.rejected:
            log.warning("nvJPEG rejected %d of %d JPEGs of a batch; they are decoded by PIL in "
                        "the main process (slow). Reported in the run record.", bad, sent)
        self.sent += sent
        self.rejected += bad
        if sent:
            self.in_row = self.in_row + 1 if bad == sent else 0
        if self.in_row >= self.switch_after and not self.switched:
            self.switched = True
            log.warning("nvJPEG rejected every JPEG of %d batches in a row (%d of %d so far): "
                        "decoding the rest on the CPU workers (--decoder pil avoids nvJPEG)",
                        self.in_row, self.rejected, self.sent)

    def record(self) -> dict[str, Any]:
        return {"nvjpeg": self.sent - self.rejected, "pil_after_nvjpeg_error": self.rejected,
                "cpu_workers_after_switch": self.after_switch, "switched_to_cpu": self.switched}

    def decoder(self) -> str:
        """The decoder that ran, for the run record: ``nvjpeg``, or what replaced it."""
        if self.switched:
            return "nvjpeg, then libjpeg-turbo (nvJPEG failed)"
        if self.rejected:
            return "nvjpeg (with PIL for the JPEGs it rejected)"
        return "nvjpeg"


class DecodingCollate:
    """``collate_fn`` that decodes in the DataLoader worker (CPU): :class:`RawItem` list ->
    :class:`cnncodes.sources.loader.Batch`, a drop-in for :func:`cnncodes.sources.loader.collate`."""

    def __init__(self, preprocessing: Preprocessing, *, device: str = "cpu",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.preprocessing = preprocessing
        self.device = device
        self.max_pixels = max_pixels

    def __call__(self, items: list[RawItem]) -> Batch:
        return decode_batch(collate_raw(items), self.preprocessing, device=self.device,
                            max_pixels=self.max_pixels)


def make_bytes_loader(dataset: BytesDataset, indices: Sequence[int], *, batch_size: int,
                      num_workers: int, pin_memory: bool = False) -> DataLoader[RawItem]:
    """An ordered DataLoader over ``indices`` of ``dataset``.

    If ``dataset.decode_device`` is the CPU it yields :class:`cnncodes.sources.loader.Batch` (decoded in the
    workers); otherwise :class:`RawBatch`, to pass to :func:`decode_batch` with that device.
    """
    sub = torch.utils.data.Subset(dataset, list(indices))
    collate_fn: Callable[[list[RawItem]], Any]
    if dataset.decode_device.type == "cpu":
        collate_fn = DecodingCollate(dataset.preprocessing, max_pixels=dataset.max_pixels)
    else:
        collate_fn = collate_raw
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["prefetch_factor"] = 4
    return DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=False, **kw)
