"""``cnncodes advise`` as a library call: the advisor's measurement and verdict
(:func:`cnncodes.advisor.run.run_advisor`) composed with its report, whose words
(:mod:`cnncodes.report.verdict_text`) the advisor does not make.

* :func:`advise`: one backbone; writes ``advice.json`` and ``advice.png`` into ``report``;
* :func:`choose_layer`: ``--layers auto`` (``extract`` and ``baseline``): the same run under a
  smaller budget, or the choice an earlier run recorded in the store;
* :func:`rank_backbones`: ``advise --backbones``, every backbone's layers ranked.

``flags`` (subcommand -> option dest -> option string) spell the next commands in the JSON; the CLI
passes its parsers' own, the library uses :data:`~cnncodes.report.verdict_text.DEFAULT_FLAGS`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from ..advisor.advice import Advice
from ..advisor.plots import check_report_folder, save_report
from ..advisor.ranking import Ranking, parse_backbones, rank_rows, recommend
from ..advisor.run import ADVISE_OPTIONS, PROBE_OPTIONS, recorded_advice, run_advisor
from ..advisor.sample import parse_budget
from ..atomic import atomic_write_json
from ..errors import OptionError, WeightsUnavailableError
from ..options import (
    ADVISE_BUDGET,
    AUTO_LAYER_BUDGET,
    DEFAULT_BACKBONE,
    BackboneOptions,
    RuntimeOptions,
    split_options,
)
from ..report.advice import advice_json, advice_summary, ranking_json
from ..report.verdict_text import DEFAULT_FLAGS, Flags
from ..sources.folders import ImageSource

log = logging.getLogger(__name__)


def advise(
    source: str | os.PathLike | ImageSource,
    *,
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    budget: str | float | None = ADVISE_BUDGET,
    report: str | os.PathLike | None = None,
    overwrite: bool = False,
    flags: Flags = DEFAULT_FLAGS,
    **options: Any,
) -> Advice:
    """Measure the data and the backbone's layers, decide the quadrant, layer and action
    (:func:`cnncodes.advisor.run.run_advisor`, whose arguments these are), and write the report.

    Args:
        source, backbone, runtime, budget: as :func:`~cnncodes.advisor.run.run_advisor`.
        report: folder to write ``advice.json`` and ``advice.png`` into (checked before any
            work); ``overwrite``: also into a folder another command wrote (only advise's files
            are replaced).
        flags: the option names the JSON's next commands are spelled with.
        options: the probe's own keywords, as :func:`~cnncodes.advisor.run.run_advisor`:
            ``max_images`` (default :data:`~cnncodes.advisor.defaults.SAMPLE`), ``folds``
            (:data:`~cnncodes.advisor.defaults.FOLDS`), ``probe``
            (:data:`~cnncodes.advisor.defaults.PROBE`), ``seed`` (0), ``head_sample``
            (:data:`~cnncodes.advisor.defaults.HEAD_SAMPLE`), ``thresholds``; and single fields
            of either options object (``weights="random"``, ``layers=``, ``batch_size=16``...).

    Returns:
        An :class:`~cnncodes.advisor.advice.Advice`; ``advice.layer`` is the recommended layer.

    Raises:
        OptionError: as :func:`~cnncodes.advisor.run.run_advisor`.
        OutputError: ``report`` is not a folder advise may write.
        TypeError: an unknown keyword (the message lists the valid ones).
    """
    bopts, ropts, own = split_options(backbone, runtime, options, where="advise",
                                      allow=PROBE_OPTIONS)
    if report is not None:
        check_report_folder(report, inputs=(source,), overwrite=overwrite)  # before the work
    adv = run_advisor(source, backbone=bopts, runtime=ropts, budget=budget, **own)
    if report is not None:
        save_report(adv, report, advice_json(adv, flags), overwrite=overwrite)
    return adv


def choose_layer(
    source: str | os.PathLike | ImageSource,
    *,
    backbone: str | BackboneOptions = DEFAULT_BACKBONE,
    runtime: RuntimeOptions | None = None,
    budget: str | float | None = AUTO_LAYER_BUDGET,
    reuse_from: str | os.PathLike | None = None,
    **options: Any,
) -> tuple[str, dict[str, Any]]:
    """The layer ``--layers auto`` uses, with the evidence to record.

    Runs :func:`advise` (same rule as ``cnncodes advise``) and returns ``(layer, summary)`` where
    ``summary`` is :func:`cnncodes.report.advice.advice_summary` (compact, JSON-able; store it as
    provenance ``advice``). With ``reuse_from`` (the output store) an earlier choice recorded there
    is returned instead, so resuming an extraction keeps its layer.

    Args:
        options: single fields of the options objects (``weights=``, ``pooling=``,
            ``batch_size=``...) and :func:`advise`'s own keywords (``max_images``, ``seed``,
            ``thresholds``, ``flags``...).
    """
    bopts, ropts, own = split_options(backbone, runtime, options, where="choose_layer",
                                      allow=(*ADVISE_OPTIONS, "flags"))
    if reuse_from is not None:
        prior = recorded_advice(reuse_from, backbone=bopts.backbone, pooling=bopts.pooling)
        if prior is not None:
            log.info("--layers auto: reusing %s, recorded in %s", prior["layer"], reuse_from)
            return str(prior["layer"]), prior
    flags = own.pop("flags", DEFAULT_FLAGS)
    adv = advise(source, backbone=bopts, runtime=ropts, budget=budget, flags=flags, **own)
    return adv.layer, advice_summary(adv, flags)


def rank_backbones(source: str | os.PathLike, *, backbones: str | Sequence[str],
                   backbone: BackboneOptions | None = None,
                   runtime: RuntimeOptions | None = None,
                   budget: str | float | None = ADVISE_BUDGET,
                   report: str | os.PathLike | None = None, flags: Flags = DEFAULT_FLAGS,
                   **options: Any) -> Ranking:
    """Run :func:`advise` per backbone within ``budget`` and rank them
    (:mod:`cnncodes.advisor.ranking`).

    Args:
        source: labelled images.
        backbones: registry names (``"mobilenet_v2,efficientnet_b0,resnet50"``).
        backbone: options shared by all backbones (weights, input size, pooling); its
            ``backbone`` field is replaced by each name in turn.
        runtime: runtime options, as for ``advise``.
        budget: the whole run's time budget, split evenly between the backbones.
        report: folder for ``ranking.json`` and one ``<backbone>/`` advice report each.
        flags: the option names the JSON's next commands are spelled with.
        options: ``advise``'s keywords (``max_images``, ``seed``, ``folds``...) and backbone
            options shared by all (``weights="random"``, ``input_size``, ``pooling``).

    Raises:
        OptionError: bad names, ``layers`` given (each backbone probes all its layers), or no
            backbone could be measured.
    """
    names = parse_backbones(backbones)
    bopts, ropts, own = split_options(backbone, runtime, options, where="rank_backbones",
                                      allow=ADVISE_OPTIONS)
    if bopts.layers not in (None, "", ()):
        raise OptionError(f"--layers cannot be combined with --backbones (each backbone probes "
                          f"all of its layers). Got layers={bopts.layers!r} instead.")
    own.pop("report", None)
    total = parse_budget(budget)
    share = None if total is None else total / len(names)
    t0 = time.perf_counter()
    advices: dict[str, Advice] = {}
    skipped: dict[str, str] = {}
    for name in names:
        sub = None if report is None else os.path.join(os.fspath(report), name)
        try:
            advices[name] = advise(source, backbone=bopts.replace(backbone=name), runtime=ropts,
                                   budget=share, report=sub, flags=flags, **own)
        except WeightsUnavailableError as e:
            log.warning("skipping %s: %s", name, e)
            skipped[name] = str(e)
    if not advices:
        raise OptionError(f"No backbone of {', '.join(names)} could be measured: "
                          + "; ".join(f"{k}: {v}" for k, v in skipped.items())
                          + ". Pass --weights random to compare the architectures, or weights "
                            "files.")
    rows = rank_rows(advices)
    ranking = Ranking(rows, advices, skipped, recommend(rows),
                      {"budget_s": total, "budget_per_backbone_s": share,
                       "elapsed_s": round(time.perf_counter() - t0, 2), "backbones": names})
    if report is not None:
        atomic_write_json(os.path.join(os.fspath(report), "ranking.json"),
                          ranking_json(ranking, flags))
    return ranking
