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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    local_world_size,
    process_group,
    rank_device,
    shard_batches,
)
from .._runtime import (
    loader_workers,
    per_rank_threads,
    per_rank_workers,
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
    make_dataset,
)
from .extract_run import Job, Progress, gather_stats, run_batches, run_record
from .identity import FileIdentity, describe_source, store_sources
from .journal import Journal
from .light import CPU, _Cpu, decode_threads, is_light, light_extractor
from .numerics import compat_value, decoding
from .options import STORE_FIELDS, StoreOptions, store_options
from .quantise import calibration_dataset, previous_quantisation, quantise_extractor
from .reader import check_is_store
from .store import (
    FeatureStore,
    check_store_compatible,
    disk_full_message,
    is_disk_full,
    remove_store,
)
from .sync import Sync, plan_sync, resolve_sources, stored_paths

if TYPE_CHECKING:  # torch is imported by the torch path only (cnncodes.codes.light needs none)
    import torch

    from .extractor import CodeExtractor

log = logging.getLogger(__name__)


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
    source: str | os.PathLike[str] | Sequence[str] | ImageSource,
    output: str | os.PathLike[str],
    *,
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    store: StoreOptions | None = None,
    command: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    **options: Any,
) -> ExtractResult:
    """Extract codes of every image in ``source`` into the HDF5 store ``output``.

    Args:
        source: class-folder tree, flat folder, list file or sequence of paths.
        output: the ``.h5`` store; created, resumed or appended to.
        backbone: a registry name or a :class:`~cnncodes.options.BackboneOptions` (which codes).
        runtime: a :class:`~cnncodes.options.RuntimeOptions` (batch size, workers, device,
            precision, threads, decoder, max_pixels, progress); the codes do not depend on it.
        store: a :class:`~cnncodes.codes.options.StoreOptions` (dtype, compression, overwrite,
            retry_failed, repair, verify, add_source, keep_missing, commit_every).
        command: command line recorded in the provenance.
        extra_provenance: more provenance fields recorded in the store.
        options: single fields of any of the three options objects (``layers="pool"``,
            ``batch_size=32``, ``overwrite=True``).

    Raises:
        StoreMismatchError: ``output`` exists with another backbone/weights/layers/pooling/
            preprocessing/dtype (use ``overwrite=True`` or another file), is not a cnncodes
            store, or was made from another source (``add_source=True`` adds this one).
        DiskFullError: the disk filled up; the previous store and the finished batches are kept.
        OptionError: a bad option value (the message lists the valid ones).
    """
    t0 = time.perf_counter()
    bopts, ropts, rest = split_options(backbone, runtime, options, where="extract",
                                       allow=STORE_FIELDS)
    sopts, _ = store_options(store, rest, where="extract")
    out = _check_output(Path(output), sopts.overwrite)
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
            "dtype": sopts.dtype, "command": command or "python: cnncodes.extract(...)",
            "truncated_images": truncated_policy(), "max_pixels": int(ropts.max_pixels or 0),
            **(extra_provenance or {})})
        journal = Journal(out)
        if sopts.overwrite and di.is_main:
            journal.clear()
            remove_store(out)  # the file and its segments
        barrier()
        job = Job(src, out, journal, ext, prov, di, ropts, sopts, t0=t0, verify=sopts.verify)
        desc = describe_source(source, src.root, src.kind)
        if (not sopts.overwrite and not di.enabled and out.is_file() and not journal.exists()
                and not os.access(out.parent, os.W_OK)):  # a read-only disk: write nothing
            _attach_source(job, desc, sopts.add_source)
            return _extract_readonly(job)
        journal.lock(di.rank)
        try:
            _attach_source(job, desc, sopts.add_source)
            if sopts.repair and di.is_main:
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


def _check_output(out: Path, overwrite: bool) -> Path:
    """``out`` as a store path (its folder made): refused when it is a folder, or a file that
    is not a cnncodes store (which ``overwrite`` does not replace either)."""
    if out.exists() and out.is_dir():
        raise OptionError(f"output must be a file path such as {out / 'codes.h5'}. Got the "
                          f"folder {out} instead.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        try:
            check_is_store(out)
        except StoreMismatchError as e:
            if not overwrite:
                raise
            raise StoreMismatchError(f"{e} --overwrite does not replace it either: delete it "
                                     "yourself if it is yours.") from None
    return out


def _torch_extractor(bopts: BackboneOptions, ropts: RuntimeOptions) -> CodeExtractor:
    from .extractor import CodeExtractor

    return CodeExtractor(bopts, runtime=ropts)


def _rank_runtime(ropts: RuntimeOptions, dev: torch.device | _Cpu,
                  di: DistInfo) -> RuntimeOptions:
    """The runtime of this rank: its own GPU, and a share of the machine's threads and workers."""
    if not di.enabled:
        return ropts.replace(device="cpu" if dev is CPU else dev)  # CPU: the torch-free path
    # the torch-free path (its device CPU) is never taken under torchrun (light._eligible)
    assert not isinstance(dev, _Cpu), "the torch-free path runs without torchrun only"
    local_world = local_world_size(di)
    dev = rank_device(ropts.device, dev, di)  # cuda:LOCAL_RANK; refuses cuda:N for every rank
    changes: dict[str, Any] = {"device": dev}
    if dev.type == "cpu" and ropts.threads is None:
        changes["threads"] = per_rank_threads(local_world)
    if ropts.num_workers is None:
        changes["num_workers"] = per_rank_workers(dev, local_world)
    return ropts.replace(**changes)


def _attach_source(job: Job, desc: dict[str, Any], add_source: bool) -> None:
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


def _extract_locked(job: Job) -> ExtractResult:
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
    run = run_batches(job, dataset, mine, workers) if mine else Progress()
    if run.interrupted and di.enabled:
        raise KeyboardInterrupt(ExtractResult(path=out, rows=sync.done, new=run.new,
                                              skipped=skipped, failed=run.failures,
                                              interrupted=True))
    stats = gather_stats(run.new, len(run.failures), run.seconds)
    failures = [f for part in all_gather_objects(run.failures) for f in part]
    barrier()  # every rank's parts are committed
    if di.is_main and (journal.part_files() or not out.is_file() or sync.drop or sync.flags
                       or job.new_source or _marked_incomplete(out)):
        decoder = decoder_name(dataset, ext.device)
        if decoder == "nvjpeg" and run.health is not None:  # what ran (this rank: rank 0)
            decoder = run.health.decoder()
        record = run_record(job, stats, workers, decoder, run.interrupted)
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


def _extract_readonly(job: Job) -> ExtractResult:
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


def _plan(job: Job) -> Sync:
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
        verify=job.verify or "stat", retry_failed=job.store.retry_failed, redo=job.redo,
        keep_missing=job.store.keep_missing)
    if sync.changed or sync.removed or sync.missing or sync.retried:
        log.info("%s: %d files changed, %d gone (%s), %d failures to try again", job.out,
                 sync.changed, sync.removed + sync.missing,
                 "kept, flagged missing" if job.store.keep_missing else "rows dropped",
                 sync.retried)
    return sync


