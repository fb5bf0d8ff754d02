"""Batched extraction of CNN codes into the HDF5 cache, with resume.

``extract(source, output, ...)`` decodes images in DataLoader workers, runs the cut backbone under
``torch.inference_mode()`` (fp32 + channels_last on CPU; fp16/bf16 autocast + channels_last + pinned
memory on CUDA), and hands each finished batch to a writer thread that commits it atomically to the
store's journal (see :mod:`cnncodes.store`). Rerunning the same call after an interruption extracts
only what is missing; images added to the source are appended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import queue
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__
from .backbones import BackboneSpec, FeatureExtractor, create_backbone, get_spec
from .distributed import DistInfo, barrier, process_group, shard_batches
from .data import (
    DEFAULT_MAX_PIXELS,
    Batch,
    ImageDataset,
    ImageSource,
    make_loader,
    normalize_batch,
    open_source,
    truncated_policy,
)
from .store import CONFIG_FIELDS, Journal, Part, StoreMismatchError, config_diff, fold
from .weights import Preprocessing, ResolvedWeights, weights_sha256

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
STORE_DTYPES = ("float32", "float16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else is validated."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use "
                         "--device cpu or --device auto.")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere (bf16 autocast is ~5x slower on CPUs)."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose auto, {', '.join(PRECISIONS)}.")
    return precision


def default_workers(device: torch.device) -> int:
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


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore the caller's value after."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fold_batchnorm(extractor: FeatureExtractor, *, input_size: int = 64, tol: float = 1e-4) -> int:
    """Fold eval-mode BatchNorm into the convolution before it (inference only; same codes).

    Pairs are a Conv2d registered right before a BatchNorm2d in the same parent (how torchvision
    builds every conv-bn pair). The result is checked on a random batch against the unfolded
    network and undone if any layer's codes move by more than ``tol`` (relative), so an unusual
    architecture can only lose the speed-up, never correctness. Returns the number of pairs folded.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = extractor.model
    if model.training:
        return 0
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = extractor(x)
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
                    and bn.running_mean is not None and not conv._forward_hooks
                    and not bn._forward_hooks and not conv._forward_pre_hooks):
                with torch.no_grad():
                    fused = fuse_conv_bn_eval(conv, bn)
                replaced += [(parent, a, conv), (parent, b, bn)]
                parent._modules[a] = fused
                parent._modules[b] = nn.Identity()
    if not replaced:
        return 0
    with torch.inference_mode():
        new = extractor(x)
    for k, v in ref.items():
        err = float((new[k] - v).abs().max()) / (float(v.abs().max()) + 1e-12)
        if not err <= tol:
            log.warning("BatchNorm folding changed %s codes by %.2e; keeping the unfolded net", k,
                        err)
            for parent, name, mod in replaced:
                parent._modules[name] = mod
            return 0
    return len(replaced) // 2


class CodeExtractor:
    """A cut backbone ready to turn uint8 image batches into codes on one device.

    Shared by ``extract``, ``predict`` and the sklearn transformer so every path computes codes the
    same way.
    """

    def __init__(self, backbone: str = "mobilenet_v2", *, weights: str | None = "auto",
                 layers: str | Sequence[str] | None = None, pooling: str = "avg",
                 input_size: int | None = None, device: str | torch.device = "auto",
                 precision: str = "auto", channels_last: bool = True, fuse_bn: bool = True):
        self.spec: BackboneSpec = get_spec(backbone)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        module, resolved = create_backbone(backbone, weights=weights, layers=layers,
                                           pooling=pooling)
        self.module: FeatureExtractor = module
        self.resolved: ResolvedWeights = resolved
        self.preprocessing: Preprocessing = resolved.preprocessing.with_input_size(input_size)
        self.layers = list(module.layers)
        self.pooling = pooling
        self.bn_folded = fold_batchnorm(self.module, input_size=min(self.preprocessing.crop, 64)) \
            if fuse_bn else 0
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.module.to(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 NCHW batch (any device) -> ``{layer: float32 (N, D) numpy}``."""
        if images.shape[0] == 0:
            return {k: np.zeros((0, 0), np.float32) for k in self.layers}
        x = images.to(self.device, non_blocking=True)
        x = normalize_batch(x, self.preprocessing, channels_last=self.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    out = self.module(x)
            else:
                out = self.module(x)
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def provenance(self) -> dict[str, Any]:
        """Everything a store or a model file must record to be checked later."""
        layer_info = {}
        for name in self.layers:
            cut = self.spec.cut(name)
            layer_info[name] = {"node": cut.node, "kind": cut.kind, "depth": cut.depth,
                                "pooling": cut.effective_pooling(self.pooling)}
        return {
            "backbone": self.spec.name,
            "family": self.spec.family,
            "weights": self.resolved.id,
            "weights_sha256": weights_sha256(self.resolved) or "",
            "layers": self.layers,
            "default_layer": self.spec.default_layer if self.spec.default_layer in self.layers
            else self.layers[-1],
            "pooling": self.pooling,
            "layer_info": layer_info,
            "preprocessing": self.preprocessing.to_dict(),
            "input_size": self.preprocessing.crop,
            "versions": versions(),
        }


def versions() -> dict[str, str]:
    import torchvision
    return {"cnncodes": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "h5py": h5py.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass
class ExtractResult:
    """What ``extract`` did."""

    path: Path
    rows: int
    new: int
    skipped: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    layers: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False


class _PartWriter:
    """Background thread committing parts so disk I/O overlaps decoding and compute."""

    def __init__(self, journal: Journal, maxsize: int = 4):
        self.journal = journal
        self.q: queue.Queue[Part | None] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cnncodes-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            part = self.q.get()
            try:
                if part is None:
                    return
                if self.error is None:
                    self.journal.write_part(part)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.error = e
            finally:
                self.q.task_done()

    def flush(self) -> None:
        """Wait until every queued part is on disk."""
        self.q.join()
        if self.error is not None:
            raise self.error

    def put(self, part: Part) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(part)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def extract(
    source: str | os.PathLike | Sequence[str] | ImageSource,
    output: str | os.PathLike,
    *,
    backbone: str = "mobilenet_v2",
    weights: str | None = "auto",
    layers: str | Sequence[str] | None = None,
    pooling: str = "avg",
    input_size: int | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    dtype: str = "float32",
    compression: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    command: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    decoder: str = "auto",
    commit_every: float | None = 600.0,
) -> ExtractResult:
    """Extract codes of every image in ``source`` into the HDF5 store ``output``.

    Args:
        source: class-folder tree, flat folder, list file or sequence of paths.
        output: the ``.h5`` store; created, resumed or appended to.
        backbone, weights, layers, pooling: see :func:`cnncodes.create_backbone`.
        input_size: crop size override (resize keeps the weights' resize/crop ratio).
        batch_size: images per forward pass (codes do not depend on it).
        num_workers: decoding processes (default from the core count; 0 = in-process).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        dtype: storage dtype, ``float32`` or ``float16``.
        compression: HDF5 compression (``gzip``, ``lzf`` or None).
        threads: torch intra-op threads during the call (restored afterwards).
        overwrite: delete an existing store and journal first.
        retry_failed: try again the files recorded as failures.
        max_pixels: decompression-bomb limit per image.
        progress: show a tqdm bar on stderr.
        command: command line recorded in the provenance.
        decoder: ``auto``, ``tensor`` (libjpeg-turbo / nvJPEG + tensor resize) or ``pil``.
        commit_every: seconds between commit points during a long run, where the journal is
            folded into ``output`` so the store is readable (marked incomplete) while extraction
            goes on; None = only at the end. Single-process runs only.

    Raises:
        StoreMismatchError: ``output`` exists with another backbone/weights/layers/pooling/
            preprocessing/dtype (use ``overwrite=True`` or another file).
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if dtype not in STORE_DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose {', '.join(STORE_DTYPES)}.")
    if compression not in (None, "none", "gzip", "lzf"):
        raise ValueError(f"Unknown compression {compression!r}; choose gzip, lzf or none.")
    out = Path(output)
    if out.exists() and out.is_dir():
        raise ValueError(f"Output {out} is a folder; pass a file path such as {out / 'codes.h5'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = open_source(source)
    dev = resolve_device(device)
    with process_group(dev.type) as di:
        if di.enabled:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", di.world))
            if dev.type == "cuda" and str(device) in ("auto", "cuda"):
                dev = torch.device("cuda", di.local_rank)
            if dev.type == "cpu" and threads is None:
                threads = max(1, (os.cpu_count() or 1) // local_world)
            if num_workers is None:
                num_workers = max(1, default_workers(dev) // local_world)
        ext = CodeExtractor(backbone, weights=weights, layers=layers, pooling=pooling,
                            input_size=input_size, device=dev, precision=precision)
        prov = ext.provenance()
        prov.update({
            "dtype": dtype, "root": os.fspath(src.root), "source_kind": src.kind,
            "command": command or "python: cnncodes.extract(...)",
            "truncated_images": truncated_policy(), "max_pixels": int(max_pixels or 0),
        })
        if extra_provenance:
            prov.update(extra_provenance)
        config = {k: prov[k] for k in CONFIG_FIELDS}

        journal = Journal(out)
        if overwrite and di.is_main:
            journal.clear()
            if out.exists():
                out.unlink()
        barrier()
        journal.lock(di.rank)
        try:
            return _extract_locked(src, out, journal, ext, prov, config, di, t0=t0,
                                   batch_size=batch_size, num_workers=num_workers,
                                   compression=compression, threads=threads,
                                   retry_failed=retry_failed, max_pixels=max_pixels,
                                   progress=progress, decoder=decoder,
                                   commit_every=commit_every)
        finally:
            journal.unlock()
            if di.is_main and not di.enabled and journal.exists() and not journal.part_files():
                journal.clear()


def _check_compatible(out: Path, journal: Journal, config: dict[str, Any]) -> None:
    fix = (f"Use another output file, or --overwrite (overwrite=True) to discard {out} and "
           "extract again.")
    if out.is_file():
        from .store import FeatureStore
        diff = config_diff(FeatureStore(out).provenance, config)
        if diff:
            raise StoreMismatchError(f"{out} was extracted with a different configuration ("
                                     + "; ".join(diff) + "). " + fix)
    manifest = journal.manifest()
    if manifest is not None and journal.part_files():
        diff = config_diff(manifest, config)
        if diff:
            raise StoreMismatchError(f"An unfinished extraction into {out} used a different "
                                     "configuration (" + "; ".join(diff) + "). Rerun it with "
                                     "its own options to finish it, or: " + fix)


def _extract_locked(src: ImageSource, out: Path, journal: Journal, ext: CodeExtractor,
                    prov: dict[str, Any], config: dict[str, Any], di: DistInfo, *, t0: float,
                    batch_size: int, num_workers: int | None, compression: str | None,
                    threads: int | None, retry_failed: bool, max_pixels: int | None,
                    progress: bool, decoder: str = "auto",
                    commit_every: float | None = None) -> ExtractResult:
    _check_compatible(out, journal, config)
    from .store import FeatureStore

    done: set[str] = set()
    failed_before: set[str] = set()
    if out.is_file():
        st = FeatureStore(out)
        done.update(st.paths.tolist())
        failed_before.update(p for p, _ in st.failures)
    j_ok, j_failed = journal.done_paths()
    done |= j_ok
    failed_before |= j_failed
    skip = done if retry_failed else done | failed_before
    pending = [i for i, p in enumerate(src.paths) if p not in skip]
    skipped = len(src) - len(pending)
    mine = shard_batches(pending, batch_size, di.rank, di.world) if di.enabled else pending
    if di.is_main:
        log.info("%s: %d images, %d already done, %d to extract (%s %s, layers %s, %d px, %s on "
                 "%s%s)", src.root, len(src), skipped, len(pending), ext.spec.name,
                 ext.resolved.id, ",".join(ext.layers), ext.preprocessing.crop, ext.precision,
                 ext.device, f", {di.world} ranks" if di.enabled else "")
    barrier()  # every rank has read the state before anyone writes
    if di.is_main:
        journal.write_manifest(config)

    workers = loader_workers(ext.device, num_workers, len(mine), batch_size)
    dataset = make_dataset(src, ext, max_pixels=max_pixels, decoder=decoder)
    new_failures: list[tuple[str, str]] = []
    n_new = 0
    interrupted = False
    t_run = time.perf_counter()
    bar = None
    if progress and mine and di.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), unit="img", dynamic_ncols=True, smoothing=0.1,
                   desc=f"extract {ext.spec.name}" + (f" rank 0/{di.world}" if di.enabled
                                                      else ""))
    layer_dims: dict[str, int] = {}
    if mine:
        writer = _PartWriter(journal)
        pos = 0
        last_commit = time.monotonic()
        try:
            for batch, codes in iter_codes(dataset, ext, mine, batch_size=batch_size,
                                           num_workers=workers, threads=threads):
                n_items = len(batch.indices) + len(batch.failures)
                key = mine[pos]  # source index of the batch's first item: parts fold in order
                pos += n_items
                for k, v in codes.items():
                    if v.shape[0]:
                        layer_dims[k] = int(v.shape[1])
                fails = [(src.paths[i], r) for i, r in batch.failures]
                for p, r in fails:
                    log.warning("skipping %s: %s", p, r)
                new_failures.extend(fails)
                writer.put(Part(
                    seq=key, rank=di.rank,
                    paths=np.array([src.paths[i] for i in batch.indices], dtype=np.str_),
                    labels=np.array([src.classes[src.labels[i]] if src.labels[i] >= 0
                                     else "" for i in batch.indices], dtype=np.str_),
                    codes={k: v.astype(np.float32, copy=False) for k, v in codes.items()},
                    fail_paths=np.array([p for p, _ in fails], dtype=np.str_),
                    fail_reasons=np.array([r for _, r in fails], dtype=np.str_),
                ))
                n_new += len(batch.indices)
                if bar is not None:
                    bar.update(n_items)
                if (commit_every is not None and not di.enabled and pos < len(mine)
                        and time.monotonic() - last_commit >= commit_every):
                    writer.flush()  # commit point: fold what is on disk, keep extracting
                    fold(out, journal, {**prov, "complete": False}, compression=compression,
                         keep_journal=True)
                    last_commit = time.monotonic()
                    log.info("commit point: %d images folded into %s", n_new, out)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: keeping the %d images done so far; rerun the same "
                        "command to continue", n_new)
        finally:
            if bar is not None:
                bar.close()
            writer.close()
    seconds_run = time.perf_counter() - t_run
    rate = n_new / seconds_run if seconds_run > 0 and n_new else 0.0
    if interrupted and di.enabled:
        raise KeyboardInterrupt(ExtractResult(path=out, rows=len(done), new=n_new,
                                              skipped=skipped, failed=new_failures,
                                              interrupted=True))
    rows = len(done)
    stats = _gather_stats(di, n_new, len(new_failures), seconds_run)
    if di.enabled:
        import torch.distributed as dist

        gathered: list[Any] = [None] * di.world
        dist.all_gather_object(gathered, new_failures)
        new_failures = [f for part in gathered for f in part]
    barrier()  # every rank's parts are committed
    if di.is_main and (journal.part_files() or not out.is_file()):
        run = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": prov["command"],
               "device": str(ext.device), "precision": ext.precision, "new": stats["new"],
               "failed": stats["failed"], "seconds": round(stats["seconds"], 3),
               "images_per_s": round(stats["new"] / stats["seconds"], 2)
               if stats["seconds"] > 0 else 0.0,
               "batch_size": batch_size, "workers": workers, "ranks": di.world,
               "decoder": decoder_name(dataset, ext.device), "bn_folded": ext.bn_folded,
               "interrupted": interrupted, "host": platform.node()}
        prov = dict(prov)
        prov["complete"] = not interrupted
        fold(out, journal, prov, compression=compression, run_record=run)
    barrier()  # the store is assembled
    if out.is_file():
        st = FeatureStore(out)
        rows = len(st)
        if not layer_dims:
            layer_dims = st.dims
    if new_failures and di.is_main:
        log.warning("%d of %d images could not be read; they are listed in %s (cnncodes info)",
                    len(new_failures), len(pending), out)
    if di.enabled:  # report the whole job's figures on every rank
        n_new = int(stats["new"])
        rate = stats["new"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    result = ExtractResult(path=out, rows=rows, new=n_new, skipped=skipped, failed=new_failures,
                           seconds=time.perf_counter() - t0, images_per_s=rate,
                           layers=layer_dims, interrupted=interrupted)
    if interrupted:
        raise KeyboardInterrupt(result)
    return result


def _gather_stats(di: DistInfo, new: int, failed: int, seconds: float) -> dict[str, float]:
    """Totals across ranks (images, failures; the slowest rank's time)."""
    if not di.enabled:
        return {"new": new, "failed": failed, "seconds": seconds}
    import torch.distributed as dist

    t = torch.tensor([float(new), float(failed)], dtype=torch.float64)
    m = torch.tensor([seconds], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t, m = t.cuda(), m.cuda()
    dist.all_reduce(t)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return {"new": int(t[0]), "failed": int(t[1]), "seconds": float(m[0])}


DECODERS = ("auto", "pil", "tensor")


def make_dataset(src: ImageSource, ext: CodeExtractor, *, max_pixels: int | None,
                 decoder: str = "auto") -> ImageDataset | Any:
    """The dataset for ``decoder``: ``pil`` (PIL in the workers), ``tensor`` (JPEG bytes decoded by
    libjpeg-turbo on CPU or nvJPEG on CUDA, resized as tensors; other files go through PIL), or
    ``auto`` (tensor when the weights' interpolation is bilinear/bicubic, else PIL)."""
    from .decode import TENSOR_INTERPOLATIONS, BytesDataset

    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}.")
    if decoder == "pil" or ext.preprocessing.interpolation not in TENSOR_INTERPOLATIONS:
        if decoder == "tensor":
            log.warning("decoder=tensor does not support %s interpolation; using PIL",
                        ext.preprocessing.interpolation)
        return ImageDataset(src, ext.preprocessing, max_pixels=max_pixels)
    return BytesDataset(src, ext.preprocessing, max_pixels=max_pixels, decode_device=ext.device)


def decoder_name(dataset: Any, device: torch.device) -> str:
    from .decode import BytesDataset

    if isinstance(dataset, BytesDataset):
        return "nvjpeg" if device.type == "cuda" else "libjpeg-turbo"
    return "pil"


def iter_codes(dataset: Any, ext: CodeExtractor, indices: Sequence[int], *,
               batch_size: int, num_workers: int, threads: int | None = None
               ) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
    """Yield ``(batch, {layer: codes})`` over ``indices`` in order (the one extraction loop)."""
    from .decode import BytesDataset, decode_batch, make_bytes_loader

    with _num_threads(threads):
        pin = ext.device.type == "cuda"
        if isinstance(dataset, BytesDataset):
            loader = make_bytes_loader(dataset, indices, batch_size=batch_size,
                                       num_workers=num_workers, pin_memory=pin)
        else:
            loader = make_loader(dataset, indices, batch_size=batch_size,
                                 num_workers=num_workers, pin_memory=pin)
        for batch in loader:
            if not isinstance(batch, Batch):  # raw JPEG bytes: decode on the GPU
                batch = decode_batch(batch, ext.preprocessing, device=ext.device,
                                     max_pixels=dataset.max_pixels)
            yield batch, ext(batch.images)


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
    source: str | os.PathLike | Sequence[str] | ImageSource,
    *,
    extractor: CodeExtractor | None = None,
    backbone: str = "mobilenet_v2",
    weights: str | None = "auto",
    layers: str | Sequence[str] | None = None,
    pooling: str = "avg",
    input_size: int | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    classes: Sequence[str] | None = None,
    decoder: str = "auto",
) -> ArrayCodes:
    """Like :func:`extract` but returns the codes in memory instead of writing a store.

    Pass ``extractor`` to reuse an already built :class:`CodeExtractor` (its options win).
    """
    src = open_source(source, classes=classes)
    ext = extractor or CodeExtractor(backbone, weights=weights, layers=layers, pooling=pooling,
                                     input_size=input_size, device=device, precision=precision)
    workers = loader_workers(ext.device, num_workers, len(src), batch_size)
    dataset = make_dataset(src, ext, max_pixels=max_pixels, decoder=decoder)
    idx: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ext.layers}
    failures: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(src), unit="img", desc=f"codes {ext.spec.name}", dynamic_ncols=True)
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


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line, shell-quoted (for provenance): ``cnncodes <argv>``."""
    return shlex.join(["cnncodes"] + list(sys.argv[1:] if argv is None else argv))
