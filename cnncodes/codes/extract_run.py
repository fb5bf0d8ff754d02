"""One extraction run: the job (what to extract, where, and how) and its batch loop.

:func:`run_batches` extracts this rank's share batch by batch into the store's journal (a writer
thread commits each part, :class:`~.part_writer.PartWriter`), folds it into the store at commit
points (``StoreOptions.commit_every``), and stops cleanly on Ctrl-C with the finished batches
kept; :func:`run_record` is the entry the run adds to the store's ``runs`` history. Deciding what
to extract and assembling the result is :func:`cnncodes.codes.extraction.extract`."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._distributed import DistInfo, all_reduce, all_reduce_sum, is_active
from .._runtime import progress_bar
from ..options import RuntimeOptions
from ..sources.folders import ImageSource
from .batches import iter_codes
from .journal import Journal, Part, identity_arrays
from .light import LightBatch, LightExtractor, is_light
from .options import StoreOptions
from .part_writer import PartWriter
from .store import CONFIG_FIELDS, fold
from .sync import Sync

if TYPE_CHECKING:  # torch is imported by the torch path only (cnncodes.codes.light needs none)
    from ..sources.loader import Batch
    from .extractor import CodeExtractor

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One extraction: what to extract, where, and how."""

    src: ImageSource
    out: Path
    journal: Journal
    ext: CodeExtractor | LightExtractor
    prov: dict[str, Any]
    di: DistInfo
    runtime: RuntimeOptions
    store: StoreOptions
    t0: float
    #: ``store.verify``; once the store is read, that or the store's own mode, else ``stat``
    verify: str | None = None
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
                    compression=self.store.compression, drop=self.sync.drop, flags=self.sync.flags,
                    dims=self.ext.dims, **kw)


@dataclass
class Progress:
    """What the batch loop did (this rank)."""

    new: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer_dims: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    #: images of the plan gone through (extracted or failed)
    done: int = 0
    health: Any = None  # GpuDecodeHealth of the nvJPEG batches


def make_part(job: Job, key: int, batch: Batch | LightBatch, codes: dict[str, np.ndarray],
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
        file=None, **identity_arrays(rows, bad))


def run_batches(job: Job, dataset: Any, mine: list[int], workers: int) -> Progress:
    """Extract ``mine`` batch by batch into the journal (with commit points); Ctrl-C stops it
    cleanly with the finished batches kept."""
    ext, di = job.ext, job.di
    if is_light(ext):
        run = Progress()
    else:
        from ..sources.tensor_decode import GpuDecodeHealth

        run = Progress(health=GpuDecodeHealth())
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
            writer.put(make_part(job, key, batch, codes, fails))
            run.new += len(batch.indices)
            run.done = pos
            if bar is not None:
                bar.update(n_items)
            if (job.store.commit_every is not None and not di.enabled and pos < len(mine)
                    and time.monotonic() - last_commit >= job.store.commit_every):
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


def run_record(job: Job, stats: dict[str, float], workers: int, decoder: str,
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


def gather_stats(new: int, failed: int, seconds: float) -> dict[str, float]:
    """Totals across ranks (images, failures; the slowest rank's time); local values alone."""
    if not is_active():
        return {"new": int(new), "failed": int(failed), "seconds": float(seconds)}
    import torch

    total_new, total_failed = all_reduce_sum([new, failed])
    slowest = all_reduce(torch.tensor([seconds], dtype=torch.float64), "max")
    return {"new": int(total_new), "failed": int(total_failed), "seconds": float(slowest[0])}
