"""The advise run: measure the data and every candidate layer, then apply the decision rule.

:func:`run_advisor` (the measuring half of ``cnncodes advise``,
:func:`cnncodes.workflows.advice.advise`, which also writes the report) opens the source,
measures its size (:mod:`~cnncodes.advisor.evidence`), extracts exactly the codes ``extract``
would write (same :class:`~cnncodes.codes.extractor.CodeExtractor`, same dataset and decoder) for
a stratified sample whose size the time budget sets (:mod:`~cnncodes.advisor.sample`), shows a
part of it to the complete network (ImageNet head, BatchNorm statistics), probes every layer
(:mod:`~cnncodes.advisor.probe`) and decides (:mod:`~cnncodes.advisor.rule`).

:func:`recorded_advice` is the choice an earlier ``--layers auto`` run
(:func:`cnncodes.workflows.advice.choose_layer`) recorded in the store.

Everything is deterministic for a given seed and sample size. With a time budget the sample size
is derived from the measured extraction speed (rounded down to a round number so that small
speed differences do not change it); pass ``max_images`` (``--sample``) with ``budget=None`` to
pin it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runtime import loader_workers, progress_bar, versions
from ..backbones.registry import get_spec, resolve_layers
from ..codes.batches import decoder_name, iter_codes, make_dataset
from ..codes.extractor import CodeExtractor
from ..codes.journal import Journal
from ..codes.store import FeatureStore
from ..errors import OptionError
from ..options import (
    ADVISE_BUDGET,
    DEFAULT_BACKBONE,
    BackboneOptions,
    RuntimeOptions,
    split_options,
)
from ..sources.folders import ImageSource, open_source
from ..sources.splits import stratified_order
from .advice import Advice
from .defaults import FOLDS, HEAD_SAMPLE, PROBE, SAMPLE
from .evidence import SizeInfo, measure_size
from .meter import PretrainedMeter
from .probe import ProbeResult, check_probe, probe_layers
from .rule import RunSetup, Thresholds, check_probe_size, decide
from .sample import budgeted_size, parse_budget, select_sample
from .similarity import SimilarityEvidence

log = logging.getLogger(__name__)

#: Side of the raw-pixel thumbnails used as the probe's reference row.
RAW_SIDE = 16
#: :func:`run_advisor`'s own keyword arguments besides the options objects and the budget (the
#: sample and the probe); :func:`cnncodes.workflows.advice.advise` accepts them as ``**options``.
PROBE_OPTIONS = ("max_images", "folds", "probe", "seed", "head_sample", "thresholds")
#: advise's own keyword arguments (the others are fields of the two options objects; ``report``
#: is :func:`cnncodes.workflows.advice.advise`'s).
ADVISE_OPTIONS = (*PROBE_OPTIONS, "report")


def _raw_thumbnails(images: torch.Tensor) -> np.ndarray:
    """16x16 average-pooled pixels in [0, 1], on the host (the batch may be on the GPU)."""
    x = torch.nn.functional.adaptive_avg_pool2d(images.float(), RAW_SIDE)
    return (x.flatten(1) / 255.0).cpu().numpy()


class _SampleCodes:
    """Codes, raw thumbnails and failures of the rows extracted so far (each row once), feeding
    the first ``head_sample`` images to the :class:`PretrainedMeter` on the way."""

    def __init__(self, src: ImageSource, ext: CodeExtractor, ropts: RuntimeOptions, *,
                 meter: PretrainedMeter | None, head_sample: int, total: int):
        self.src, self.ext, self.ropts = src, ext, ropts
        self.meter, self.head_sample = meter, head_sample
        # the dataset extract would use for these runtime options (decoder included)
        self.dataset = make_dataset(src, ext, max_pixels=ropts.max_pixels,
                                    decoder=ropts.decoder)
        self.codes: dict[int, dict[str, np.ndarray]] = {}
        self.raw: dict[int, np.ndarray] = {}
        self.failures: list[tuple[str, str]] = []
        self.bar = progress_bar(total, f"advise {ext.spec.name}", enabled=ropts.progress)

    def run(self, indices: Sequence[int] | np.ndarray) -> float:
        """Extract ``indices``; returns the seconds spent outside the head/BN meter."""
        r, meter, labels = self.ropts, self.meter, self.src.labels
        workers = loader_workers(self.ext.device, r.num_workers, len(indices), r.batch_size)
        t = time.perf_counter()
        t_meter = 0.0
        for batch, codes in iter_codes(self.dataset, self.ext, [int(i) for i in indices],
                                       batch_size=r.batch_size, num_workers=workers,
                                       threads=r.threads):
            if batch.indices:
                raw = _raw_thumbnails(batch.images)
                for j, i in enumerate(batch.indices):
                    self.codes[i] = {k: v[j] for k, v in codes.items()}
                    self.raw[i] = raw[j]
            self.failures.extend((self.src.paths[i], why) for i, why in batch.failures)
            if meter is not None and meter.n_seen < self.head_sample and batch.indices:
                tm = time.perf_counter()
                take = min(len(batch.indices), self.head_sample - meter.n_seen)
                meter.update(batch.images[:take], labels[batch.indices[:take]],
                             self.ext.preprocessing)
                t_meter += time.perf_counter() - tm
            if self.bar is not None:
                self.bar.update(len(batch.indices) + len(batch.failures))
        return time.perf_counter() - t - t_meter

    def missing(self, rows: np.ndarray) -> list[int]:
        """``rows`` neither extracted nor failed yet."""
        failed = {p for p, _ in self.failures}
        return [int(i) for i in rows if int(i) not in self.codes
                and self.src.paths[int(i)] not in failed]

    def set_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = n
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.meter is not None:
            self.meter.close()


def _check_advise_args(probe: str, max_images: int, folds: int) -> None:
    check_probe(probe)
    if max_images < 4:
        raise OptionError(f"max_images (--sample) must be >= 4. Got {max_images} instead.")
    if folds < 2:
        raise OptionError(f"folds must be >= 2. Got {folds} instead.")


def _candidates(bopts: BackboneOptions) -> tuple[list[str], dict[str, str]]:
    """Candidate layers (all of the backbone's by default) and their depths."""
    spec = get_spec(bopts.backbone)
    layers = bopts.layers
    cand = list(spec.layers) if layers in (None, "", ()) else resolve_layers(spec, layers)
    depths = {n: spec.cut(n).depth for n in cand}
    if "last" not in depths.values() or "earlier" not in depths.values():
        raise OptionError(f"The candidate layers of {bopts.backbone} must include a last layer "
                          f"({', '.join(spec.last_layers)}) and an earlier one "
                          f"({', '.join(spec.earlier_layers)}). Got {', '.join(cand)} instead.")
    return cand, depths


def _network_view(ext: CodeExtractor,
                  meter: PretrainedMeter | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ImageNet-head and BatchNorm evidence, or why there is none."""
    if ext.resolved.is_random:
        reason = ("random weights: the head and the BatchNorm statistics are initial values, not "
                  "ImageNet's; not meaningful")
        return ({"available": False, "meaningful": False, "reason": reason},
                {"available": False, "meaningful": False, "reason": reason})
    if meter is None:
        none = {"available": False, "reason": "head_sample=0"}
        return none, dict(none)
    return meter.head_evidence(), meter.bn_evidence()


def head_similarity(head: dict[str, Any]) -> SimilarityEvidence:
    """The ImageNet head's similarity measures (LEEP share, domain EMD) from its evidence."""
    why = str(head.get("reason") or "not measured")
    notes = {k: why for k in ("leep_share", "domain_emd") if head.get(k) is None}
    return SimilarityEvidence(leep_share=head.get("leep_share"),
                              domain_emd=head.get("domain_emd"), notes=notes)


def run_advisor(
    source: str | os.PathLike | ImageSource,
    *,
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    budget: str | float | None = ADVISE_BUDGET,
    max_images: int = SAMPLE,
    folds: int = FOLDS,
    probe: str = PROBE,
    seed: int = 0,
    head_sample: int = HEAD_SAMPLE,
    thresholds: Thresholds | None = None,
    **options: Any,
) -> Advice:
    """Measure the data and the backbone's layers, then decide the quadrant, layer and action.

    Args:
        source: labelled images (class-folder tree or labelled list).
        backbone: a registry name or :class:`~cnncodes.options.BackboneOptions`; its ``layers``
            are the candidate layers (default: every layer of the backbone). The probe uses
            exactly the codes that ``extract`` would write with the same options.
        runtime: :class:`~cnncodes.options.RuntimeOptions` (batch size, workers, device,
            precision, threads, decoder, max_pixels, progress), as for ``extract``.
        budget: time budget (``"5min"``, seconds, or None for no limit); it sets the sample size.
        max_images: largest sample probed (``--sample``).
        folds: stratified CV folds.
        probe: ``logreg`` (default: StandardScaler + LogisticRegression over a small C grid)
            or ``ridge`` (closed-form ridge classifier, every alpha from one eigendecomposition;
            faster on big samples).
        seed: seeds the sample, the folds and the solvers.
        head_sample: images shown to the complete network for the head/BatchNorm evidence.
        thresholds: decision thresholds (see :class:`~cnncodes.advisor.rule.Thresholds`).
        options: single fields of either options object (``weights="random"``, ``layers=``,
            ``batch_size=16``, ``decoder="pil"``...).

    Returns:
        An :class:`~cnncodes.advisor.advice.Advice`; ``advice.layer`` is the recommended layer,
        ``advice.verdict`` the rest of the verdict (data; rendered by
        :mod:`cnncodes.report.verdict_text`).

    Raises:
        OptionError: unlabelled source, one class, fewer than 2 images per class (median),
            unknown layer/probe, bad budget. A sample too small to compare layers (see step 0
            of :mod:`cnncodes.advisor.rule`) is not an error: the advice says so and claims no
            lead.
    """
    t0 = time.perf_counter()
    bopts, ropts, _ = split_options(backbone, runtime, options, where="advise")
    th = thresholds or Thresholds()
    budget_s = parse_budget(budget)
    _check_advise_args(probe, max_images, folds)
    src = open_source(source)
    where = os.fspath(src.root if isinstance(source, ImageSource) else source)
    size = _measure(src, where, bopts.backbone, th, seed=seed)  # before extracting
    cand, depths = _candidates(bopts)
    ext = CodeExtractor(bopts.replace(layers=tuple(cand)), runtime=ropts)
    meter = _meter(ext, head_sample)
    order = stratified_order(src.labels, seed=seed)
    got = _SampleCodes(src, ext, ropts, meter=meter, head_sample=head_sample,
                       total=min(max_images, order.size))
    try:
        drawn = _draw_sample(got, order, max_images=max_images, budget_s=budget_s, probe=probe,
                             folds=folds)
    finally:
        got.close()
    t_extract = time.perf_counter() - t0
    result, n_used = _probe_sample(got, drawn.sample, depths, method=probe, folds=folds,
                                   seed=seed)
    t_probe = time.perf_counter() - t0 - t_extract
    head, bn = _network_view(ext, meter)
    verdict = decide(size, result, thresholds=th,
                     random_weights=ext.resolved.is_random, similarity=head_similarity(head))
    elapsed = time.perf_counter() - t0
    _warn_over_budget(elapsed, budget_s)
    meta = {"seed": seed, "budget_s": budget_s, "elapsed_s": round(elapsed, 2),
            "extract_s": round(t_extract, 2), "probe_s": round(t_probe, 2),
            **drawn.meta(n_used), **_extraction_meta(got, pooling=bopts.pooling),
            "versions": versions()}
    log.debug("advise: %s, layer %s", verdict.quadrant.value, verdict.layer)
    return Advice(_run_setup(where, bopts), size, head, bn, result, verdict, th, meta)


def _measure(src: ImageSource, where: str, backbone: str, th: Thresholds, *,
             seed: int) -> SizeInfo:
    """The data's size (:func:`~cnncodes.advisor.evidence.measure_size`), refused when too
    small to probe (:func:`~cnncodes.advisor.rule.check_probe_size`)."""
    size = measure_size(src, seed=seed)
    check_probe_size(size, source=where, thresholds=th,
                     last_layer=get_spec(backbone).default_layer)
    return size


def _meter(ext: CodeExtractor, head_sample: int) -> PretrainedMeter | None:
    """The ImageNet head / BatchNorm meter (None for random weights or ``head_sample=0``)."""
    if ext.resolved.is_random or head_sample <= 0:
        return None
    return PretrainedMeter(ext.spec, ext.resolved, device=ext.device)


def _run_setup(where: str, bopts: BackboneOptions) -> RunSetup:
    return RunSetup(source=where, backbone=bopts.backbone, input_size=bopts.input_size,
                    pooling=bopts.pooling,
                    weights=str(bopts.weights) if bopts.weights is not None else "random")


def _warn_over_budget(elapsed: float, budget_s: float | None) -> None:
    if budget_s is not None and elapsed > 1.25 * budget_s:
        log.warning("advise took %.0f s, over its %.0f s budget (probe fits are slower than "
                    "estimated); pass a smaller --sample to stay within it", elapsed, budget_s)


@dataclass(frozen=True)
class _Drawn:
    """The sample drawn: its rows, the extraction speed measured on the first ``speed_rows``
    (images/s) and the size the budget allowed (``requested``)."""

    sample: np.ndarray
    rate: float
    speed_rows: int
    requested: int

    def meta(self, used: int) -> dict[str, Any]:
        """The advice's record of the sample (``used``: rows extracted and probed)."""
        return {"images_per_s": round(self.rate, 1), "speed_rows": self.speed_rows,
                "sample_requested": self.requested, "sample_used": int(used)}


def _draw_sample(got: _SampleCodes, order: np.ndarray, *, max_images: int,
                 budget_s: float | None, probe: str, folds: int) -> _Drawn:
    """Extract the first rows of ``order`` to measure the speed, let the budget set the sample
    size (at most ``max_images``), select the sample (``folds`` rows per class at least) and
    extract the rest of it."""
    n_cap = min(max_images, order.size)
    labels = got.src.labels
    first = order[:min(n_cap, max(got.head_sample, 2 * got.ropts.batch_size))]
    secs = got.run(first)
    rate = len(first) / secs if secs > 0 else float("inf")
    n = budgeted_size(rate, budget_s, probe=probe, cap=n_cap, floor=first.size)
    if n < n_cap:
        log.info("budget %.0f s at %.0f img/s: probing %d of %d images", budget_s, rate, n,
                 order.size)
    sample = select_sample(order, labels, n, min_per_class=folds)
    got.set_total(len(sample))
    rest = got.missing(sample)
    if rest:
        got.run(rest)
    return _Drawn(sample, rate, int(first.size), int(n))


def _probe_sample(got: _SampleCodes, sample: np.ndarray, depths: dict[str, str], *,
                  method: str, folds: int, seed: int) -> tuple[ProbeResult, int]:
    """Probe every candidate layer (``depths``' keys) on the rows of ``sample`` that were
    extracted (unreadable ones are logged and skipped). Returns ``(probe result, rows
    probed)``."""
    in_sample = np.sort(np.array([i for i in sample if int(i) in got.codes], np.int64))
    for p, r in got.failures:
        log.warning("skipping %s: %s", p, r)
    src = got.src
    result = probe_layers({k: np.stack([got.codes[int(i)][k] for i in in_sample])
                           for k in depths},
                          src.labels[in_sample], depths=depths, method=method, folds=folds,
                          seed=seed, raw=np.stack([got.raw[int(i)] for i in in_sample]),
                          class_names=src.classes)
    return result, int(in_sample.size)


def _extraction_meta(got: _SampleCodes, *, pooling: str) -> dict[str, Any]:
    """The advice's record of how the codes were extracted (as ``extract`` would)."""
    ext = got.ext
    return {"failures": len(got.failures), "weights_id": ext.resolved.id,
            "input_size": ext.preprocessing.crop, "pooling": pooling, "device": str(ext.device),
            "decoder": decoder_name(got.dataset, ext.device)}


def recorded_advice(store: str | os.PathLike, *, backbone: str,
                    pooling: str = BackboneOptions.pooling) -> dict[str, Any] | None:
    """The advice an earlier ``--layers auto`` run recorded for ``store``, if it still applies.

    Looks at the store's provenance, then at the journal of an interrupted first extraction. Returns
    None when nothing was recorded or the backbone/pooling differ.
    """
    path = Path(store)
    if path.is_file():
        try:
            prov = FeatureStore(path).provenance
        except (ValueError, OSError):
            return None
        adv = prov.get("advice")
        if (isinstance(adv, dict) and adv.get("layer") in prov.get("layers", [])
                and prov.get("backbone") == backbone and prov.get("pooling") == pooling):
            return adv
        return None
    journal = Journal(path)
    manifest = journal.manifest() if journal.exists() else None
    if manifest and journal.part_files() and manifest.get("backbone") == backbone \
            and manifest.get("pooling") == pooling and len(manifest.get("layers", [])) == 1:
        layer = manifest["layers"][0]
        return {"version": 1, "layer": layer, "reused": True,
                "explanation": f"{layer}: chosen by an earlier --layers auto run that was "
                               "interrupted before its first commit (its evidence was not "
                               "kept; `cnncodes advise` shows it again)"}
    return None

