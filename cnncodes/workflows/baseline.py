"""``baseline``: the small-dataset quick baseline in one call, composed of library steps.

1. the layer (:mod:`.layer_advice`; ``layer="auto"``: the advisor on the training rows only),
2. codes of the split extracted into a cache (:mod:`.inputs`; existing codes reused),
3. a classifier chosen by stratified CV on the training rows (:func:`cnncodes.train`), tested on
   the held-out rows (:func:`cnncodes.evaluate`),
4. the same protocol on raw pixels (:func:`cnncodes.linear.pixels.pixel_baseline`),
5. optionally the fall-through: full fine-tuning on the same split (:mod:`.compare`),
6. the model, ``report.json`` and PNGs (:mod:`cnncodes.report.files`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.registry import default_layer
from ..codes.options import StoreOptions
from ..codes.store import FeatureStore
from ..errors import OptionError, StoreMismatchError
from ..linear.evaluation import Evaluation, evaluate
from ..linear.model_file import MODEL_FILE, TrainedModel, save_model
from ..linear.options import (
    CLASSIFIER_FIELDS,
    DEFAULT_RAW_SIZE,
    ClassifierOptions,
    classifier_options,
)
from ..linear.pixels import RAW_BASELINE_BUDGET, RawPixelOptions, pixel_baseline
from ..linear.training import train
from ..options import (
    AUTO_LAYER_BUDGET,
    DEFAULT_BACKBONE,
    BackboneOptions,
    RuntimeOptions,
    split_options,
)
from ..outputs import check_output
from ..report.files import REPORT_FILES, build_report, check_report_folder, write_report
from ..sources.folders import ImageSource, listed_once
from .baseline_audit import baseline_audit, check_audit_folder
from .inputs import check_split, extract_cached, find_split, pick_layer
from .layer_advice import LayerChoice, choose_training_layer, record_advice, size_check

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineOptions:
    """What a baseline does beyond extracting and training (each with its one default).

    Attributes:
        holdout: fraction of each class held out for testing (a single tree; seeded, stratified).
        seed: seed of the hold-out split, the CV folds and the advisor's sample.
        raw_baseline: the raw-pixel row: None = when cheap, True = always, False = never.
        raw_size, raw_grey: side and colour of the raw pixels.
        budget: time budget of ``layer="auto"`` (None = none).
        thresholds: a :class:`cnncodes.advise.Thresholds` (size rule and layer choice).
        advise_options: more options of :func:`~.advice.advise` (e.g. ``max_images``).
        fall_through: fine-tune on the same split when the training rows are large.
        force_finetune: with ``fall_through``: whatever the data size.
        finetune_options: :class:`cnncodes.finetune.FinetuneConfig` fields (e.g. ``epochs``).
        audit: audit the data through its codes into ``report/audit/``, linked from the
            report (:mod:`.baseline_audit`): None = duplicates, leaks, outliers and balance
            always, label errors and the map when cheap (the rule there); True = everything;
            False = no audit.
    """

    holdout: float = 0.2
    seed: int = 0
    raw_baseline: bool | None = None
    raw_size: int = DEFAULT_RAW_SIZE
    raw_grey: bool = False
    budget: str | float | None = AUTO_LAYER_BUDGET
    thresholds: Any = None
    advise_options: Mapping[str, Any] | None = None
    fall_through: bool = False
    force_finetune: bool = False
    finetune_options: Mapping[str, Any] | None = None
    audit: bool | None = None

    def replace(self, **changes: Any) -> BaselineOptions:
        return dataclasses.replace(self, **changes)


BASELINE_FIELDS = tuple(f.name for f in fields(BaselineOptions))


@dataclass
class BaselineResult:
    """What :func:`baseline` did; ``report`` is the JSON-able report (also written to disk).

    ``advice`` is the evidence of ``layer="auto"`` (else None); ``finetune`` the
    :class:`~cnncodes.finetune.FinetuneResult` of the ``fall_through`` run when it ran.
    """

    model: TrainedModel
    evaluation: Evaluation
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    files: dict[str, Path]
    stores: dict[str, Path]
    failures: list[tuple[str, str]]
    advice: dict[str, Any] | None = None
    finetune: Any = None


def baseline(source: str | os.PathLike, *, report: str | os.PathLike | None = "out/baseline",
             cache: str | os.PathLike | None = None,
             backbone: str | BackboneOptions = DEFAULT_BACKBONE,
             runtime: RuntimeOptions | None = None,
             classifier: ClassifierOptions | None = None,
             steps: BaselineOptions | None = None, layer: str | None = None,
             overwrite: bool = False, command: str | None = None,
             **options: Any) -> BaselineResult:
    """The small-dataset quick baseline in one call (see the module docstring).

    Args:
        source: a folder of class folders (a seeded stratified ``holdout`` share of each class
            is the test part) or one holding ``train/`` + ``test/`` (or ``val/``) class trees.
        report: folder for the model, ``report.json`` and PNGs (None: nothing written).
        cache: folder for the code stores (default ``report/cache``); codes there are reused.
        backbone, runtime: which codes and how (:class:`~cnncodes.options.BackboneOptions`,
            :class:`~cnncodes.options.RuntimeOptions`); ``runtime.device`` also decides where
            the grid search runs (see :func:`cnncodes.fit_codes`).
        classifier: the classifier and its grid search (:class:`ClassifierOptions`); with no
            ``model`` named: ``logreg``, or with ``layer="auto"`` the advised classifier.
        steps: :class:`BaselineOptions` (hold-out, raw pixels, advice, fall-through).
        layer: the one layer to classify on (default ``backbone.layers``, else the backbone's
            default layer); ``auto``: chosen by :func:`.advice.choose_layer` on the
            training rows only; its evidence goes into ``report["advice"]`` and the stores'
            provenance ``advice``, and is reused from the cache for the same rows and thresholds.
        overwrite: discard cached codes made with other settings (and recorded advice).
        command: the command line recorded in the stores and the report.
        options: single fields of any of the four options objects (scikit-learn style:
            ``input_size=``, ``num_workers=``, ``c_grid=``, ``holdout=``, ``fall_through=``...).

    ``fall_through``: after the linear probe, when the training rows are ``large`` by advise's
    size rule (or always with ``force_finetune``), the backbone is fine-tuned end to end on the
    same rows and tested on the same test rows, in ``report/finetune``; with advice its
    ``head_lr_mult``/``freeze`` policy is the default. ``report["fall_through"]`` compares
    accuracy and wall time; when the data is not large it says why and gives the command.

    Raises:
        OptionError, StoreMismatchError: bad options, a cache made with other settings (pass
            ``overwrite=True`` or another ``cache``), classes too small to split.
    """
    with listed_once():  # the split is checked, advised on and extracted: each folder walked once
        return _baseline(source, report=report, cache=cache, backbone=backbone, runtime=runtime,
                         classifier=classifier, steps=steps, layer=layer, overwrite=overwrite,
                         command=command, options=options)


def _baseline(source: str | os.PathLike, *, report: str | os.PathLike | None,
              cache: str | os.PathLike | None, backbone: str | BackboneOptions,
              runtime: RuntimeOptions | None, classifier: ClassifierOptions | None,
              steps: BaselineOptions | None, layer: str | None, overwrite: bool,
              command: str | None, options: dict[str, Any]) -> BaselineResult:
    """The body of :func:`baseline` (inside its :func:`listed_once` block)."""
    t0 = time.perf_counter()
    bopts, ropts, copts, sopts = resolve_options(backbone, runtime, classifier, steps, options,
                                                 report=report, cache=cache)
    split = find_split(source)
    single = "all" in split
    cache_dir = Path(cache) if cache is not None else Path(report or ".") / "cache"
    check_outputs(source, report, cache_dir, overwrite=overwrite)
    if sopts.audit is not False and report is not None:
        check_audit_folder(report, (source,), overwrite=overwrite)
    check_split(split)  # before the advice and the extraction, which take minutes
    name = pick_layer(layer if layer is not None else bopts.layers,
                      default=default_layer(bopts.backbone))
    choice = choose_training_layer(
        split, name, backbone=bopts, runtime=ropts, classifier=copts,
        cache=None if overwrite else cache_dir, holdout=sopts.holdout, seed=sopts.seed,
        budget=sopts.budget, thresholds=sopts.thresholds, advise_options=sopts.advise_options)
    t_codes = time.perf_counter()
    stores = extract_split(split, cache_dir, choice, backbone=bopts, runtime=ropts,
                           overwrite=overwrite, command=command)
    extract_now = time.perf_counter() - t_codes
    t_fit = time.perf_counter()
    trained, evaluation = train_and_test(stores, split, choice, copts.replace(model=choice.model),
                                         holdout=sopts.holdout if single else 0.0,
                                         seed=sopts.seed, device=ropts.device,
                                         progress=ropts.progress)
    trained.selection.update(_model_choice(choice, copts))
    rows = [codes_row(trained, evaluation, stores, extract_now=extract_now,
                      fit_s=time.perf_counter() - t_fit)]
    rows += pixel_rows(trained, evaluation, copts.replace(model=choice.model), sopts,
                       device=ropts.device, progress=ropts.progress)
    failures = [(os.path.normpath(os.fspath(st.root / f)), r) for st in stores.values()
                for f, r in st.failures]
    extra = _report_extra(source, stores, failures, choice, command)
    out = Path(report) if report is not None else None
    if sopts.audit is not False and out is not None:
        extra["audit"] = baseline_audit(out, stores, trained, evaluation,
                                        full=bool(sopts.audit), seed=sopts.seed,
                                        command=command, overwrite=overwrite)
    files: dict[str, Path] = {}

    def write(extra_now: Mapping[str, Any]) -> dict[str, Any]:
        rep = build_report(model=trained, task="baseline", evaluation=evaluation, rows=rows,
                           extra={**extra, **extra_now,
                                  "wall_time_s": round(time.perf_counter() - t0, 2)})
        if out is not None:
            files["model"] = out / MODEL_FILE
            rep["files"] = {"model": MODEL_FILE}
            files.update(write_report(rep, out, evaluation=evaluation, owner="baseline",
                                      overwrite=overwrite,
                                      own_files=(*REPORT_FILES, MODEL_FILE)))
        return rep

    if out is not None:
        save_model(trained, out / MODEL_FILE)
    ft_result = None
    if sopts.fall_through:
        assert out is not None
        extra["fall_through"], ft_result = fall_through_step(
            trained, evaluation, rows, choice, sopts, out=out, split=split, backbone=bopts,
            runtime=ropts, overwrite=overwrite, command=command, write_running=write)
    rep = write({})
    return BaselineResult(trained, evaluation, rows, rep, files,
                          {k: v.path for k, v in stores.items()}, failures, choice.advice,
                          ft_result)


def _model_choice(choice: LayerChoice, classifier: ClassifierOptions) -> dict[str, str]:
    """``model_source``/``model_reason`` of the baseline's classifier (as :func:`train` records
    them): named, advised by ``layer="auto"``, or the default."""
    model = choice.model
    if (choice.use or {}).get("model_source") == "advice":
        return {"model_source": "advice", "model_reason": (
            f"{model}: advised for {choice.layer} by --layer auto (pass --model to choose "
            "another)")}
    if classifier.model is not None:
        return {"model_source": "given", "model_reason": f"{model} as named (--model)"}
    return {"model_source": "default", "model_reason": (
        f"{model}, the default (--layer auto follows the advised classifier; pass --model to "
        "choose)")}


def check_outputs(source: str | os.PathLike, report: str | os.PathLike | None, cache_dir: Path,
                  *, overwrite: bool) -> None:
    """The report and cache folders (and the model file in the report folder) before any work:
    not an input, not inside the source folder, no special file where a file goes
    (:func:`cnncodes.outputs.check_output`)."""
    if report is not None:
        check_report_folder(report, inputs=(source,), files=(*REPORT_FILES, MODEL_FILE),
                            owner="baseline", overwrite=overwrite)
        check_output(Path(report) / MODEL_FILE, inputs=(source,), expect="model",
                     overwrite=overwrite, option="--report")
    check_output(cache_dir, kind="folder", files=("codes.h5", "train.h5", "test.h5"),
                 inputs=(source,), option="--cache")


def resolve_options(backbone: str | BackboneOptions, runtime: RuntimeOptions | None,
                    classifier: ClassifierOptions | None, steps: BaselineOptions | None,
                    options: Mapping[str, Any], *, report: str | os.PathLike | None,
                    cache: str | os.PathLike | None
                    ) -> tuple[BackboneOptions, RuntimeOptions, ClassifierOptions,
                               BaselineOptions]:
    """:func:`baseline`'s four options objects, single fields in ``options`` sorted into them.

    Raises:
        TypeError: an unknown option.  OptionError: no report nor cache folder, or
            ``fall_through`` without a report folder.
    """
    bopts, ropts, rest = split_options(backbone, runtime, options, where="baseline",
                                       allow=CLASSIFIER_FIELDS + BASELINE_FIELDS)
    copts, rest = classifier_options(classifier, rest, where="baseline", allow=BASELINE_FIELDS)
    sopts = (steps or BaselineOptions()).replace(**rest)
    if report is None and cache is None:
        raise OptionError("baseline needs a report folder or a cache folder for the codes. Got "
                          "neither; pass report= or cache=.")
    if sopts.fall_through and report is None:
        raise OptionError("fall_through needs a report folder (the fine-tuning run goes into "
                          "REPORT/finetune). Got report=None instead.")
    return bopts, ropts, copts, sopts


def _report_extra(source: str | os.PathLike, stores: Mapping[str, FeatureStore],
                  failures: list[tuple[str, str]], choice: LayerChoice,
                  command: str | None) -> dict[str, Any]:
    """The baseline's own entries of ``report.json`` (beside model, split, test and rows)."""
    extra: dict[str, Any] = {"command": command, "source": os.fspath(source),
                             "stores": {k: os.fspath(v.path) for k, v in stores.items()},
                             "failures": [{"path": a, "reason": b} for a, b in failures]}
    if choice.advice is not None:
        extra.update(advice=choice.advice, advice_use=choice.use)
    return extra


def extract_split(split: Mapping[str, Path], cache_dir: Path, choice: LayerChoice, *,
                  backbone: BackboneOptions, runtime: RuntimeOptions, overwrite: bool = False,
                  command: str | None = None) -> dict[str, FeatureStore]:
    """Codes of each part of ``split`` (``all``, or ``train`` + ``test``) in ``cache_dir``
    (``codes.h5`` or ``train.h5``/``test.h5``), with the advice recorded in every store."""
    advice = choice.advice
    kw: dict[str, Any] = {"store": StoreOptions(overwrite=overwrite), "command": command}
    if advice is not None:
        kw["extra_provenance"] = {"advice": advice}
    try:
        stores = {k: extract_cached(src, cache_dir / f"{'codes' if k == 'all' else k}.h5",
                                    layer=choice.layer, backbone=backbone, runtime=runtime, **kw)
                  for k, src in split.items()}
    except StoreMismatchError as e:
        if advice is None:
            raise
        raise StoreMismatchError(f"--layer auto chose {choice.layer}, but the cached codes "
                                 f"cannot take it: {e}") from e
    if advice is not None:  # a store complete from an earlier run is not rewritten by extract
        for st in stores.values():
            record_advice(st.path, advice)
    return stores


def train_and_test(stores: Mapping[str, FeatureStore], split: Mapping[str, Path],
                   choice: LayerChoice, classifier: ClassifierOptions, *, holdout: float,
                   seed: int, device: str, progress: bool = False
                   ) -> tuple[TrainedModel, Evaluation]:
    """Train on the training store (minus a hold-out share, or ``choice.holdout_paths``) and
    evaluate on the test store (or the held-out rows)."""
    train_store = stores.get("train", stores.get("all"))
    test_store = stores.get("test", train_store)
    assert train_store is not None and test_store is not None
    trained = train(train_store, layer=choice.layer, classifier=classifier, holdout=holdout,
                    holdout_paths=choice.holdout_paths, seed=seed, device=device,
                    progress=progress)
    if "all" not in split:
        trained.split.update({"kind": "predefined", "train": os.fspath(split["train"]),
                              "test": os.fspath(split["test"])})
    evaluation = evaluate(trained, test_store)
    trained.split["n_test"] = int(len(evaluation.y_true))
    return trained, evaluation


def _codes_seconds(stores: Mapping[str, FeatureStore]) -> float:
    """Extraction time recorded in the stores' run records (also for codes cached earlier)."""
    total = 0.0
    for st in stores.values():
        for r in st.provenance.get("runs", []) or []:
            total += float(r.get("seconds") or 0.0)
    return total


def codes_row(trained: TrainedModel, evaluation: Evaluation,
              stores: Mapping[str, FeatureStore], *, extract_now: float,
              fit_s: float) -> dict[str, Any]:
    """The report row of the classifier on codes: test scores and wall time (codes + CV + test;
    the extraction time recorded in the stores counts also when the codes were cached)."""
    p = trained.provenance
    codes_s = max(_codes_seconds(stores), 0.0)
    return {"name": f"{p['backbone']} {trained.layer} codes ({p.get('input_size')} px)",
            "model": trained.selection.get("model"), "features": trained.n_features,
            "selection": trained.selection, "n_test": len(evaluation.y_true),
            **{k: evaluation.metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
            "wall_time_s": round(codes_s + fit_s, 2), "extract_s": round(codes_s, 2),
            "extract_this_run_s": round(extract_now, 2), "fit_and_test_s": round(fit_s, 2)}


def pixel_rows(trained: TrainedModel, evaluation: Evaluation, classifier: ClassifierOptions,
               steps: BaselineOptions, *, device: str, progress: bool = False
               ) -> list[dict[str, Any]]:
    """The raw-pixel row, or none when switched off. Over :data:`RAW_BASELINE_BUDGET` training
    values (and not forced with ``raw_baseline=True``) it is trained on a stratified
    subsample that fits the budget, and the row says so (``row["subsample"]``)."""
    if steps.raw_baseline is False:
        return []
    raw = RawPixelOptions(size=steps.raw_size, grey=steps.raw_grey, subsample=True,
                          budget=None if steps.raw_baseline else RAW_BASELINE_BUDGET)
    return [pixel_baseline(trained.train_paths, trained.train_labels, evaluation.paths,
                           evaluation.y_true, classes=trained.classes, raw=raw,
                           classifier=classifier, seed=steps.seed, device=device,
                           progress=progress)]


def _list_source(paths: list[str], labels: np.ndarray, classes: list[str]) -> ImageSource:
    return ImageSource(Path(os.sep), [Path(x).as_posix() for x in paths],
                       np.asarray(labels, np.int64), list(classes), "list")


def advised_finetune(advice: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fine-tuning options advise's policy gives for the advice's similarity
    (``head_lr_mult``, ``freeze``); empty without advice or a similarity it knows."""
    if advice is None or not advice.get("similarity"):
        return {}
    from ..advisor.rule import FINETUNE_POLICY

    by_name = {str(sim): pol for sim, pol in FINETUNE_POLICY.items()}
    pol = by_name.get(str(advice["similarity"]))
    if pol is None:
        return {}
    return {"head_lr_mult": float(pol.head_lr_mult), "freeze": int(pol.freeze)}


def fall_through_step(trained: TrainedModel, evaluation: Evaluation, rows: list[dict[str, Any]],
                      choice: LayerChoice, steps: BaselineOptions, *, out: Path,
                      split: Mapping[str, Path], backbone: BackboneOptions,
                      runtime: RuntimeOptions, overwrite: bool, command: str | None,
                      write_running: Any) -> tuple[dict[str, Any], Any]:
    """Fine-tune on the linear probe's exact split when the training rows are large (or
    forced); else say why not and give the command. Appends its row to ``rows``; returns
    ``(report["fall_through"], FinetuneResult or None)``. ``write_running(extra)`` writes the
    report before the (long) run starts. ``split`` is :func:`.inputs.find_split`'s (its ``all``
    is the source); ``backbone`` and ``runtime`` are the baseline's, passed on whole."""
    # fine-tuning needs torch; imported here so a baseline on cached codes never loads it
    from .compare import fall_through_verdict, finetune_command, run_fall_through

    ft_train = _list_source(trained.train_paths, trained.train_labels, trained.classes)
    ft_test = _list_source(evaluation.paths, evaluation.y_true, trained.classes)
    size = size_check(ft_train, steps.thresholds)
    opts = advised_finetune(choice.advice)
    opts.update(dict(steps.finetune_options or {}))
    ft_out = out / "finetune"
    probe = {k: rows[0].get(k) for k in ("name", "accuracy", "balanced_accuracy", "n_test",
                                         "wall_time_s")}
    probe["name"] = f"linear probe: {trained.kind} on {trained.layer} codes"
    rec: dict[str, Any] = {"size": size, "forced": bool(steps.force_finetune),
                           "linear_probe": probe, "options": opts, "output": os.fspath(ft_out)}
    b, r = backbone, runtime
    if size["large"] or steps.force_finetune:
        rec["status"] = "running"
        write_running({"fall_through": rec})
        row, result = run_fall_through(
            ft_train, ft_test, ft_out, backbone=b, runtime=r, seed=steps.seed,
            overwrite=overwrite, command=command, options=opts)
        rec.update(status="ran", finetune=row, verdict=fall_through_verdict(probe, row))
        rows.append(row)
        return rec, result
    parts = ([os.fspath(split["train"]), "--test", os.fspath(split["test"])]
             if "all" not in split else [os.fspath(split["all"]), "--test-fraction",
                                         f"{steps.holdout:g}", "--seed", str(steps.seed)])
    cmd = finetune_command(parts, backbone=b.backbone, weights=b.weights,
                           input_size=b.input_size, out=ft_out, options=opts)
    rec.update(status="skipped", command=cmd, message=(
        f"not large enough: {size['n_images']} images, median {size['median_per_class']:g} per "
        f"class ({' and '.join(size['short_by'])}; advise's size rule -> {size['size_class']}); "
        f"fine-tuning skipped, run `{cmd}` to try anyway (or add --force-finetune to fine-tune "
        "on this exact split)"))
    rows.append({"name": "fine-tuning (fall-through)",
                 "skipped": f"not large enough ({size['size_class']})"})
    log.info("fall-through: %s", rec["message"])
    return rec, None
