"""Batched extraction of CNN codes into the HDF5 cache, with resume.

``extract(source, output, ...)`` decodes images in DataLoader workers, runs the cut backbone under
``torch.inference_mode()`` (fp32 + channels_last on CPU; fp16/bf16 autocast + channels_last + pinned
memory on CUDA), and hands each finished batch to a writer thread that commits it atomically to the
store's journal (see :mod:`cnncodes.store`). Rerunning the same call after an interruption extracts
only what is missing; images added to the source are appended."""

from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._distributed import DistInfo, barrier, process_group, shard_batches
from .._runtime import default_workers, loader_workers, num_threads, resolve_device
from ..errors import StoreMismatchError
from ..options import DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions, split_options
from ..sources.folders import ImageSource, open_source
from ..sources.images import truncated_policy
from ..sources.loader import Batch, ImageDataset, make_loader
from .extractor import CodeExtractor
from .store import CONFIG_FIELDS, Journal, Part, config_diff, fold

log = logging.getLogger(__name__)


STORE_DTYPES = ("float32", "float16")


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
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    dtype: str = "float32",
    compression: str | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    command: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    commit_every: float | None = 600.0,
    **options: Any,
) -> ExtractResult:
    """Extract codes of every image in ``source`` into the HDF5 store ``output``.

    Args:
        source: class-folder tree, flat folder, list file or sequence of paths.
        output: the ``.h5`` store; created, resumed or appended to.
        backbone: a registry name or a :class:`~cnncodes.options.BackboneOptions` (which codes).
        runtime: a :class:`~cnncodes.options.RuntimeOptions` (batch size, workers, device,
            precision, threads, decoder, max_pixels, progress); the codes do not depend on it.
        dtype: storage dtype, ``float32`` or ``float16``.
        compression: HDF5 compression (``gzip``, ``lzf`` or None).
        overwrite: delete an existing store and journal first.
        retry_failed: try again the files recorded as failures.
        command: command line recorded in the provenance.
        options: single fields of either options object (``layers="pool"``, ``batch_size=32``).
        commit_every: seconds between commit points during a long run, where the journal is
            folded into ``output`` so the store is readable (marked incomplete) while extraction
            goes on; None = only at the end. Single-process runs only.

    Raises:
        StoreMismatchError: ``output`` exists with another backbone/weights/layers/pooling/
            preprocessing/dtype (use ``overwrite=True`` or another file).
    """
    t0 = time.perf_counter()
    bopts, ropts, _ = split_options(backbone, runtime, options, where="extract")
    batch_size, num_workers, device = ropts.batch_size, ropts.num_workers, ropts.device
    threads, max_pixels = ropts.threads, ropts.max_pixels
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
        ext = CodeExtractor(bopts, runtime=ropts.replace(device=dev))
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
                                   progress=ropts.progress, decoder=ropts.decoder,
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
    from ..sources.preprocessing import TENSOR_INTERPOLATIONS
    from ..sources.tensor_decode import BytesDataset

    if decoder not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}.")
    if decoder == "pil" or ext.preprocessing.interpolation not in TENSOR_INTERPOLATIONS:
        if decoder == "tensor":
            log.warning("decoder=tensor does not support %s interpolation; using PIL",
                        ext.preprocessing.interpolation)
        return ImageDataset(src, ext.preprocessing, max_pixels=max_pixels)
    return BytesDataset(src, ext.preprocessing, max_pixels=max_pixels, decode_device=ext.device)


def decoder_name(dataset: Any, device: torch.device) -> str:
    from ..sources.tensor_decode import BytesDataset

    if isinstance(dataset, BytesDataset):
        return "nvjpeg" if device.type == "cuda" else "libjpeg-turbo"
    return "pil"


def iter_codes(dataset: Any, ext: CodeExtractor, indices: Sequence[int], *,
               batch_size: int, num_workers: int, threads: int | None = None
               ) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
    """Yield ``(batch, {layer: codes})`` over ``indices`` in order (the one extraction loop)."""
    from ..sources.tensor_decode import BytesDataset, decode_batch, make_bytes_loader

    with num_threads(threads):
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
    ext = extractor or CodeExtractor(bopts, runtime=ropts)
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
