"""Batched extraction of CNN codes into the HDF5 cache, with resume.

``extract(source, output, ...)`` decodes images in DataLoader workers, runs the cut backbone under
``torch.inference_mode()`` (fp32 + channels_last on CPU; fp16/bf16 autocast + channels_last + pinned
memory on CUDA), and hands each finished batch to a writer thread that commits it atomically to the
store's journal (see :mod:`cnncodes.codes.journal` and :mod:`cnncodes.codes.store`). Rerunning the
same call after an interruption extracts only what is missing; a rerun also refreshes the store
against the source's files (:mod:`cnncodes.codes.sync`): added files are appended, changed files
extracted again in place, deleted files' rows dropped."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce,
    all_reduce_sum,
    barrier,
    is_active,
    local_world_size,
    process_group,
    rank_device,
    shard_batches,
)
from .._runtime import (
    loader_workers,
    per_rank_threads,
    per_rank_workers,
    progress_bar,
    resolve_device,
)
from ..errors import (
    AccessDeniedError,
    DiskFullError,
    OptionError,
    StoreDamagedError,
    StoreMismatchError,
)
from ..options import DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions, split_options
from ..sources.base import has_jpeg
from ..sources.folders import ImageSource, open_source
from ..sources.images import truncated_policy
from ..sources.tarshards import TarShardSource
from ..stats import plural
from .batches import (  # noqa: F401 - ArrayCodes, extract_arrays: re-exported here
    ArrayCodes,
    decoder_name,
    extract_arrays,
    iter_codes,
    make_dataset,
)
from .identity import FileIdentity, check_verify, describe_source, store_sources
from .journal import Journal, Part, identity_arrays
from .light import CPU, decode_threads, is_light, light_extractor
from .numerics import compat_value, decoding
from .part_writer import PartWriter
from .quantise import calibration_dataset, previous_quantisation, quantise_extractor
from .reader import check_is_store
from .store import (
    CONFIG_FIELDS,
    FeatureStore,
    check_store_compatible,
    disk_full_message,
    fold,
    is_disk_full,
    remove_store,
)
from .sync import Sync, plan_sync, resolve_sources, stored_paths

if TYPE_CHECKING:  # torch is imported by the torch path only (cnncodes.codes.light needs none)
    import torch

    from ..sources.loader import Batch
    from .extractor import CodeExtractor

log = logging.getLogger(__name__)


#: Storage dtypes of a store's codes.
STORE_DTYPES = ("float32", "float16")
#: HDF5 compressions of a store's codes.
COMPRESSIONS = (None, "none", "gzip", "lzf")


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
    #: files new to the store, rows extracted again because their file changed, recorded failures
    #: tried again, rows dropped (file gone), rows kept and flagged (``keep_missing``), rows
    #: without a recorded identity (format-1 store: not checked)
    added: int = 0
    changed: int = 0
    retried: int = 0
    removed: int = 0
    missing: int = 0
    unverified: int = 0
    #: for tar shards: every member accounted for (:meth:`TarShardSource.summary`)
    source_summary: str = ""

    @property
    def nothing_extracted(self) -> bool:
        """Files were to be extracted and every one of them failed."""
        return not self.new and bool(self.failed) and not self.interrupted


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
    repair: bool = False,
    command: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    commit_every: float | None = 600.0,
    verify: str | None = None,
    add_source: bool = False,
    keep_missing: bool = False,
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
        repair: read every chunk of the store first and extract again the rows whose codes fail
            their checksum (bit rot), replacing them in place.
        command: command line recorded in the provenance.
        options: single fields of either options object (``layers="pool"``, ``batch_size=32``).
        commit_every: seconds between commit points during a long run, where the journal is
            folded into ``output`` so the store is readable (marked incomplete) while extraction
            goes on; None = only at the end. Single-process runs only.
        verify: how a rerun recognises a changed file: ``stat`` (size + mtime_ns) or ``hash``
            (size + SHA-256 of the bytes; reads every file on every run); default: the mode the
            store was made with, else ``stat``.
        add_source: allow a store made from another source to take this one's images too.
        keep_missing: keep (flagged) the rows of files that are gone from the source, instead of
            dropping them.

    Raises:
        StoreMismatchError: ``output`` exists with another backbone/weights/layers/pooling/
            preprocessing/dtype (use ``overwrite=True`` or another file), is not a cnncodes
            store, or was made from another source (``add_source=True`` adds this one).
        DiskFullError: the disk filled up; the previous store and the finished batches are kept.
        OptionError: a bad option value (the message lists the valid ones).
    """
    t0 = time.perf_counter()
    bopts, ropts, _ = split_options(backbone, runtime, options, where="extract")
    if dtype not in STORE_DTYPES:
        raise OptionError(f"dtype must be one of {', '.join(STORE_DTYPES)}. Got {dtype!r} "
                          "instead.")
    if compression not in COMPRESSIONS:
        raise OptionError(f"compression must be gzip, lzf or none. Got {compression!r} instead.")
    out = Path(output)
    if out.exists() and out.is_dir():
        raise OptionError(f"output must be a file path such as {out / 'codes.h5'}. Got the "
                          f"folder {out} instead.")
    check_verify(verify)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        try:
            check_is_store(out)
        except StoreMismatchError as e:
            if not overwrite:
                raise
            raise StoreMismatchError(f"{e} --overwrite does not replace it either: delete it "
                                     "yourself if it is yours.") from None
    src = open_source(source)
    if ropts.precision == "int8" and ropts.device == "auto":
        ropts = ropts.replace(device="cpu")  # an ONNX Runtime CPU graph
    light = light_extractor(bopts, ropts)  # the cached, checked graph without torch, or None
    dev = light.device if light is not None else resolve_device(ropts.device)
    with process_group(dev.type) as di:
        ropts = _rank_runtime(ropts, dev, di)
        ext = light or _torch_extractor(bopts, ropts)
        prov = ext.provenance()
        prov.update({
            "dtype": dtype, "command": command or "python: cnncodes.extract(...)",
            "truncated_images": truncated_policy(), "max_pixels": int(ropts.max_pixels or 0),
        })
        if extra_provenance:
            prov.update(extra_provenance)
        journal = Journal(out)
        if overwrite and di.is_main:
            journal.clear()
            remove_store(out)  # the file and its segments
        barrier()
        if (not overwrite and not di.enabled and out.is_file() and not journal.exists()
                and not os.access(out.parent, os.W_OK)):  # a read-only disk: write nothing
            job = _Job(src, out, journal, ext, prov, di, ropts, compression=compression,
                       retry_failed=retry_failed, commit_every=commit_every, t0=t0,
                       verify=verify, keep_missing=keep_missing)
            _attach_source(job, describe_source(source, src.root, src.kind), add_source)
            return _extract_readonly(job)
        journal.lock(di.rank)
        try:
            job = _Job(src, out, journal, ext, prov, di, ropts, compression=compression,
                       retry_failed=retry_failed, commit_every=commit_every, t0=t0,
                       verify=verify, keep_missing=keep_missing)
            _attach_source(job, describe_source(source, src.root, src.kind), add_source)
            if repair and di.is_main:
                job.redo = damaged_paths(out)
            return _extract_locked(job)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError(disk_full_message(out, journal, e)) from e
            raise
        finally:
            journal.unlock()
            if di.is_main and not di.enabled and journal.exists() and not journal.part_files():
                journal.clear()


def _torch_extractor(bopts: BackboneOptions, ropts: RuntimeOptions) -> CodeExtractor:
    from .extractor import CodeExtractor

    return CodeExtractor(bopts, runtime=ropts)


def _rank_runtime(ropts: RuntimeOptions, dev: torch.device, di: DistInfo) -> RuntimeOptions:
    """The runtime of this rank: its own GPU, and a share of the machine's threads and workers."""
    if not di.enabled:
        return ropts.replace(device="cpu" if dev is CPU else dev)  # CPU: the torch-free path
    local_world = local_world_size(di)
    dev = rank_device(ropts.device, dev, di)  # cuda:LOCAL_RANK; refuses cuda:N for every rank
    changes: dict[str, Any] = {"device": dev}
    if dev.type == "cpu" and ropts.threads is None:
        changes["threads"] = per_rank_threads(local_world)
    if ropts.num_workers is None:
        changes["num_workers"] = per_rank_workers(dev, local_world)
    return ropts.replace(**changes)


@dataclass
class _Job:
    """One extraction under the writer lock: what to extract, where, and how."""

    src: ImageSource
    out: Path
    journal: Journal
    ext: CodeExtractor
    prov: dict[str, Any]
    di: DistInfo
    runtime: RuntimeOptions
    compression: str | None
    retry_failed: bool
    commit_every: float | None
    t0: float
    verify: str | None = None
    keep_missing: bool = False
    #: each source file's path as the store records it (see :func:`stored_paths`)
    stored: list[str] = field(default_factory=list)
    #: this run's index in the store's sources; whether this run adds the source to the list
    source: int = 0
    new_source: bool = False
    sync: Sync = field(default_factory=Sync)
    #: stored paths to extract again whatever their file (``repair``: damaged rows)
    redo: set[str] = field(default_factory=set)

    @property
    def config(self) -> dict[str, Any]:
        return {k: self.prov[k] for k in CONFIG_FIELDS}

    def fold(self, *, complete: bool, remaining: int = 0, **kw: Any) -> dict[str, int]:
        """Fold the journal into the store with this run's drops, flags and the backbone's dims;
        ``remaining``: images of this run not extracted yet (recorded when not ``complete``)."""
        prov = {**self.prov, "complete": complete, "remaining": 0 if complete else int(remaining)}
        return fold(self.out, self.journal, prov,
                    compression=self.compression, drop=self.sync.drop, flags=self.sync.flags,
                    dims=self.ext.dims, **kw)


def _attach_source(job: _Job, desc: dict[str, Any], add_source: bool) -> None:
    """Match this run's source with the store's (refusing another one unless ``add_source``),
    and set the store root, the sources and the verify mode in the provenance."""
    old: dict[str, Any] = {}
    if job.out.is_file():
        old = FeatureStore(job.out).provenance
    elif job.journal.part_files():
        old = job.journal.manifest() or {}
    sources, job.source, job.new_source = resolve_sources(
        store_sources(old), desc, job.out, add_source=add_source)
    root = Path(sources[0]["root"])
    job.stored = stored_paths(job.src.root, job.src.paths, root)
    verify = job.verify or old.get("verify") or "stat"
    job.verify = verify
    if (old and job.runtime.jpeg_scaling == "auto" and job.ext.jpeg_scaling == "dct"
            and compat_value(old, "decoding") == "cpu"):  # continue a store as it was made
        job.ext.jpeg_scaling = "off"
        job.prov["decoding"] = job.ext.provenance()["decoding"]
        if has_jpeg(job.src.paths):  # else nothing decodes differently: nothing to say
            log.info("%s was made with full JPEG decoding: continuing it so (--jpeg-scaling dct "
                     "needs a new store)", job.out)
    job.prov.update({"root": root.as_posix(), "source_kind": sources[0]["kind"],
                     "sources": sources, "verify": verify})


@dataclass
class _Progress:
    """What the batch loop did (this rank)."""

    new: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer_dims: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    #: images of the plan gone through (extracted or failed)
    done: int = 0
    health: Any = None  # GpuDecodeHealth of the nvJPEG batches


def _extract_locked(job: _Job) -> ExtractResult:
    """Check, plan, run the batches, fold; the body of :func:`extract` under the writer lock."""
    src, out, journal, ext, di = job.src, job.out, job.journal, job.ext, job.di
    dataset = make_dataset(src, ext, max_pixels=job.runtime.max_pixels,
                           decoder=job.runtime.decoder)
    job.prov["decoding"] = decoding(decoder_name(dataset, ext.device))  # the decoder that runs
    check_store_compatible(out, job.config)
    if ext.precision == "int8":  # calibrated on the source's first images, checked, cached
        calib = calibration_dataset(src, ext, job.runtime.max_pixels)
        ext.quantisation = quantise_extractor(ext, calib, previous_quantisation(out, journal))
        job.prov["quantisation"] = ext.quantisation
    if di.is_main and journal.part_files():
        journal.verify(ext.layers)  # damaged parts of a killed run: set aside, redo their images
    barrier()
    job.sync = all_gather_objects(_plan(job) if di.is_main else None)[0]
    sync = job.sync
    pending = sync.pending
    skipped = len(src) - len(pending)
    bs = job.runtime.batch_size
    mine = pending if not di.enabled else (
        src.rank_share(pending, di.rank, di.world) if isinstance(src, TarShardSource)
        else shard_batches(pending, bs, di.rank, di.world))  # tar shards: whole shards per rank
    if di.is_main:
        log.info("%s: %d images, %d already done, %d to extract (%s %s, layers %s, %d px, %s on "
                 "%s%s)", src.root, len(src), skipped, len(pending), ext.spec.name,
                 ext.resolved.id, ",".join(ext.layers), ext.preprocessing.crop, ext.precision,
                 ext.device, f", {di.world} ranks" if di.enabled else "")
    barrier()  # every rank has read the state before anyone writes
    if di.is_main:
        journal.write_manifest({**job.config, "sources": job.prov["sources"],
                                **{k: job.prov[k] for k in ("quantisation",) if k in job.prov},
                                "verify": job.verify})
    workers = (decode_threads(job.runtime.num_workers) if is_light(ext) else
               loader_workers(ext.device, job.runtime.num_workers, len(mine), bs))
    run = _run_batches(job, dataset, mine, workers) if mine else _Progress()
    if run.interrupted and di.enabled:
        raise KeyboardInterrupt(ExtractResult(path=out, rows=sync.done, new=run.new,
                                              skipped=skipped, failed=run.failures,
                                              interrupted=True))
    stats = _gather_stats(run.new, len(run.failures), run.seconds)
    failures = [f for part in all_gather_objects(run.failures) for f in part]
    barrier()  # every rank's parts are committed
    if di.is_main and (journal.part_files() or not out.is_file() or sync.drop or sync.flags
                       or job.new_source or _marked_incomplete(out)):
        decoder = decoder_name(dataset, ext.device)
        if decoder == "nvjpeg" and run.health is not None:  # what ran (this rank: rank 0)
            decoder = run.health.decoder()
        record = _run_record(job, stats, workers, decoder, run.interrupted)
        if run.health is not None and run.health.sent:
            record["nvjpeg"] = run.health.record()
        job.fold(complete=not run.interrupted, run_record=record,
                 remaining=len(mine) - run.done)
    barrier()  # the store is assembled
    rows, layer_dims = sync.done, run.layer_dims
    if out.is_file():
        st = FeatureStore(out)
        rows = len(st)
        layer_dims = layer_dims or st.dims
    if failures and di.is_main:
        log.warning("%d of %d images could not be read; they are listed in %s (cnncodes info)",
                    len(failures), len(pending), out)
    if failures and not (int(stats["new"]) if di.enabled else run.new) and not run.interrupted:
        log.error("nothing was extracted: every one of the %d files to do failed", len(failures))
    n_new = int(stats["new"]) if di.enabled else run.new  # the whole job's figures on every rank
    seconds = stats["seconds"] if di.enabled else run.seconds
    result = ExtractResult(path=out, rows=rows, new=n_new, skipped=skipped, failed=failures,
                           seconds=time.perf_counter() - job.t0,
                           images_per_s=n_new / seconds if seconds > 0 and n_new else 0.0,
                           layers=layer_dims, interrupted=run.interrupted, added=sync.added,
                           changed=sync.changed, retried=sync.retried, removed=sync.removed,
                           missing=sync.missing, unverified=sync.unverified,
                           source_summary=src.summary() if isinstance(src, TarShardSource)
                           else "")
    if run.interrupted:
        raise KeyboardInterrupt(result)
    return result


def _extract_readonly(job: _Job) -> ExtractResult:
    """A rerun into a folder this process may not write (a read-only disk): the store is
    checked and compared with the source without the lock or journal (nothing is written); when
    it is up to date that is the result, else :class:`AccessDeniedError` before any work."""
    out, src = job.out, job.src
    check_store_compatible(out, job.config)
    job.sync = sync = _plan(job)
    todo = len(sync.pending)
    if todo or sync.drop or sync.flags or job.new_source or _marked_incomplete(out):
        what = (f"{plural(todo, 'image')} to extract" if todo else
                "the store to update (files gone from the source, or an unfinished run)")
        raise AccessDeniedError(
            f"{out.parent} is not writable (a read-only disk, or no write permission), and "
            f"{out} is not up to date with {src.root}: {what}. Nothing was written; extract "
            "into a writable folder (-o elsewhere, or a copy of the store), or remount it "
            "read-write.")
    st = FeatureStore(out)
    log.info("%s is up to date with %s (read-only folder: nothing written)", out, src.root)
    return ExtractResult(path=out, rows=len(st), new=0, skipped=len(src), failed=[],
                         seconds=time.perf_counter() - job.t0, images_per_s=0.0,
                         layers=st.dims, interrupted=False, unverified=sync.unverified)


def damaged_paths(out: Path) -> set[str]:
    """The stored paths of the rows of ``out`` whose codes do not read back (``repair``)."""
    if not out.is_file():
        return set()
    errors = FeatureStore(out).verify()
    paths = {p for e in errors for p in getattr(e, "paths", [])}
    if errors and any(d != "codes" for e in errors for d in getattr(e, "datasets", ["?"])):
        raise StoreDamagedError(" ".join(str(e) for e in errors) + " (--repair re-extracts "
                                "damaged codes only; these need --overwrite)")
    if paths:
        log.warning("%s: %d rows fail their checksum; extracting them again (--repair)", out,
                    len(paths))
    return paths


def _marked_incomplete(out: Path) -> bool:
    """Whether the store records an unfinished extraction (a rerun with nothing left to do
    then folds once more, to mark it complete)."""
    return out.is_file() and FeatureStore(out).provenance.get("complete") is False


def _plan(job: _Job) -> Sync:
    """The store and journal compared with the source's files now (:func:`plan_sync`)."""
    src = job.src
    ids = None
    if isinstance(src, TarShardSource):  # a member's identity: its size and its shard's
        ids = [FileIdentity(*t) if t else None for t in src.member_ids(hashed=job.verify == "hash")]
    sync = plan_sync(
        job.out, job.journal, stored=job.stored, ids=ids,
        abspaths=[] if ids is not None else [src.abspath(i) for i in range(len(src))],
        labels=[src.classes[y] if y >= 0 else "" for y in src.labels.tolist()],
        source=job.source, append_only=job.prov["sources"][job.source]["kind"] == "paths",
        verify=job.verify or "stat", retry_failed=job.retry_failed, redo=job.redo,
        keep_missing=job.keep_missing)
    if sync.changed or sync.removed or sync.missing or sync.retried:
        log.info("%s: %d files changed, %d gone (%s), %d failures to try again", job.out,
                 sync.changed, sync.removed + sync.missing,
                 "kept, flagged missing" if job.keep_missing else "rows dropped", sync.retried)
    return sync


def _part(job: _Job, key: int, batch: Batch, codes: dict[str, np.ndarray],
          fails: list[tuple[str, str]]) -> Part:
    src, ids = job.src, job.sync.ids
    rows = [ids[i] for i in batch.indices]
    bad = [ids[i] for i, _ in batch.failures]
    return Part(
        seq=key, rank=job.di.rank, source=job.source,
        paths=np.array([job.stored[i] for i in batch.indices], dtype=np.str_),
        labels=np.array([src.classes[src.labels[i]] if src.labels[i] >= 0 else ""
                         for i in batch.indices], dtype=np.str_),
        codes={k: v.astype(np.float32, copy=False) for k, v in codes.items()},
        fail_paths=np.array([p for p, _ in fails], dtype=np.str_),
        fail_reasons=np.array([r for _, r in fails], dtype=np.str_),
        **identity_arrays(rows, bad))


def _run_batches(job: _Job, dataset: Any, mine: list[int], workers: int) -> _Progress:
    """Extract ``mine`` batch by batch into the journal (with commit points); Ctrl-C stops it
    cleanly with the finished batches kept."""
    ext, di = job.ext, job.di
    if is_light(ext):
        run = _Progress()
    else:
        from ..sources.tensor_decode import GpuDecodeHealth

        run = _Progress(health=GpuDecodeHealth())
    t_run = time.perf_counter()
    bar = progress_bar(len(mine), f"extract {ext.spec.name}"
                       + (f" rank 0/{di.world}" if di.enabled else ""),
                       enabled=job.runtime.progress and di.is_main)
    writer = PartWriter(job.journal)
    pos = 0
    last_commit = time.monotonic()
    try:
        for batch, codes in iter_codes(dataset, ext, mine, batch_size=job.runtime.batch_size,
                                       num_workers=workers, threads=job.runtime.threads,
                                       health=run.health):
            n_items = len(batch.indices) + len(batch.failures)
            key = mine[pos]  # source index of the batch's first item: parts fold in order
            pos += n_items
            run.layer_dims.update({k: int(v.shape[1]) for k, v in codes.items() if v.shape[0]})
            fails = [(job.stored[i], r) for i, r in batch.failures]
            for p, r in fails:
                log.warning("skipping %s: %s", p, r)
            run.failures.extend(fails)
            writer.put(_part(job, key, batch, codes, fails))
            run.new += len(batch.indices)
            run.done = pos
            if bar is not None:
                bar.update(n_items)
            if (job.commit_every is not None and not di.enabled and pos < len(mine)
                    and time.monotonic() - last_commit >= job.commit_every):
                writer.flush()  # commit point: fold what is on disk, keep extracting
                job.fold(complete=False, keep_journal=True, remaining=len(mine) - pos)
                last_commit = time.monotonic()
                log.info("commit point: %d images folded into %s", run.new, job.out)
    except KeyboardInterrupt:
        run.interrupted = True
        log.warning("interrupted: keeping the %d images done so far; rerun the same "
                    "command to continue", run.new)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    run.seconds = time.perf_counter() - t_run
    return run


def _run_record(job: _Job, stats: dict[str, float], workers: int, decoder: str,
                interrupted: bool) -> dict[str, Any]:
    """The entry this run adds to the store's ``runs`` history."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": job.prov["command"],
              "device": str(job.ext.device), "precision": job.ext.precision,
              "new": stats["new"], "failed": stats["failed"], "added": job.sync.added,
              "changed": job.sync.changed, "retried": job.sync.retried,
              "removed": job.sync.removed, "missing": job.sync.missing,
              "verify": job.verify,
              "seconds": round(stats["seconds"], 3),
              "images_per_s": round(stats["new"] / stats["seconds"], 2)
              if stats["seconds"] > 0 else 0.0,
              "batch_size": job.runtime.batch_size, "workers": workers, "ranks": job.di.world,
              "decoder": decoder, "bn_folded": job.ext.bn_folded,
              "engine": job.ext.engine.name, "engine_version": job.ext.engine.version,
              "engine_threads": job.ext.engine.threads,
              "jpeg_scaling": job.ext.jpeg_scaling,
              **({"int8_graph": q["graph"]} if (q := job.ext.quantisation) else {}),
              "interrupted": interrupted, "host": platform.node()}
    if job.journal.bad_parts:
        record["bad_parts"] = list(job.journal.bad_parts)
    return record


def _gather_stats(new: int, failed: int, seconds: float) -> dict[str, float]:
    """Totals across ranks (images, failures; the slowest rank's time); local values alone."""
    if not is_active():
        return {"new": int(new), "failed": int(failed), "seconds": float(seconds)}
    import torch

    total_new, total_failed = all_reduce_sum([new, failed])
    slowest = all_reduce(torch.tensor([seconds], dtype=torch.float64), "max")
    return {"new": int(total_new), "failed": int(total_failed), "seconds": float(slowest[0])}
