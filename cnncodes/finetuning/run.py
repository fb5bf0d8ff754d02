"""The fine-tuning entry point: :func:`finetune` (new run, exact resume, or state ``predict``) and
:class:`FinetuneResult`.

Run folder: ``checkpoint.pt`` (every epoch, atomic, ``weights_only``-loadable, exact resume),
``model.pt`` (best epoch; stock torchvision layout + metadata so it also serves as an extraction
backbone), ``split.json``, ``config.json``, ``curves.png``, ``report.json``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel: gloo on
CPU, nccl on ``cuda:LOCAL_RANK``. Each epoch's order is cut into rank slices (the last
``-n % world`` positions are padded with repeats, as DistributedSampler does, so every rank takes
the same number of steps); validation and test sets are sharded into whole batches without padding
and their loss sums, counts and predictions are all-reduced, so the metrics equal a
single-process evaluation. ``sync_bn`` converts training BatchNorm layers to SyncBatchNorm. Rank 0
alone writes the run folder and logs; barriers keep other ranks from reading ``model.pt`` before
it is written. The per-rank dropout RNG states are gathered into each checkpoint, so a resume with
the same number of ranks continues exactly. The run folder must be on a filesystem every rank sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._distributed import DistInfo, barrier, env_info, process_group
from .._runtime import command_line, num_threads, resolve_device, versions
from ..atomic import atomic_write_json, jsonable
from ..errors import FinetuneDivergedError, OptionError, StaleRunError
from ..options import RuntimeOptions
from ..outputs import check_output, claim_folder
from ..sources.folders import ImageSource
from ..stats import ci_record
from .config import (
    REPORT_KIND,
    REPORT_SCHEMA_VERSION,
    STORED_RUNTIME,
    FinetuneConfig,
    make_config,
)
from .data import local_world
from .ddp import quiet_unless_main, rank_device
from .evaluation import confusion, fmt, per_class, per_class_note
from .model_file import is_finetuned_model
from .predict import predict_images
from .run_report import run_report
from .split import Split, check_same_sources, make_split
from .trainer import Trainer

log = logging.getLogger(__name__)

#: Files a run folder may hold (``overwrite`` removes exactly these).
RUN_FILES = ("checkpoint.pt", "model.pt", "split.json", "curves.png", "report.json",
             "config.json", "report.html")


@dataclass
class FinetuneResult:
    """What :func:`finetune` did (also written to ``report.json``)."""

    output: Path
    state: str
    status: str
    model_path: Path | None
    report_path: Path
    curves_path: Path | None
    classes: list[str]
    epochs_run: int
    best_epoch: int | None
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)



def finetune(
    source: str | os.PathLike | ImageSource | None,
    output: str | os.PathLike,
    *,
    config: FinetuneConfig | None = None,
    runtime: RuntimeOptions | None = None,
    test: str | os.PathLike | ImageSource | None = None,
    split: Split | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune ``config.backbone`` on a labelled image source into the run folder ``output``.

    Args:
        source: class-folder tree or labelled list (split into train/val/test per
            ``val_fraction``/``test_fraction``, seeded and stratified). May be None with ``split``.
        output: the run folder (``checkpoint.pt``, ``model.pt``, ``split.json``, ``curves.png``,
            ``report.json``).
        config: a :class:`FinetuneConfig`; ``options`` override single fields
            (``finetune(src, "run", backbone="resnet50", epochs=15, freeze=2)``).
        runtime: a :class:`~cnncodes.options.RuntimeOptions` instead of ``config.runtime``;
            ``options`` also take its fields (``batch_size``, ``device``, ``progress``: bars on
            stderr, rank 0 only under torchrun...).
        test: a separate labelled test source (instead of ``test_fraction``).
        split: use this split (e.g. shared by the escalation's runs) instead of making one.
        resume: continue the run in ``output`` from its last checkpoint (exactly: same batches,
            augmentation, dropout and optimiser state) with its saved configuration; ``options``
            may only change :attr:`FinetuneConfig.RUNTIME_FIELDS`. ``source`` may be None (the
            saved split is used; another source is refused). No checkpoint: a new run.
        overwrite: delete a previous run's files in ``output`` first.
        command: command line recorded in the report.

    Under ``torchrun`` every rank calls this with the same arguments: the model trains with
    DistributedDataParallel (``batch_size`` per rank), rank 0 writes the run folder, and every
    rank returns the same result (metrics reduced over ranks).

    Returns:
        a :class:`FinetuneResult`; ``status`` is ``completed``, ``early-stopped`` or ``evaluated``.

    Raises:
        FinetuneDivergedError: the loss became NaN/inf (the report and the best model are kept).
        ValueError: bad options (a learning rate of 0 included), an existing run without
            ``resume``/``overwrite``, a resume whose options differ from the saved run, or
            whose ``source``/``test`` is not the one the run was made from (both are named).
    """
    asked = make_config(config, runtime=runtime, **options)
    given = _given(config, runtime, options)
    w = asked.weights if "weights" in given and isinstance(asked.weights, str) else None
    out = check_output(output, kind="folder", files=RUN_FILES, option="-o", owner="finetune",
                       overwrite=overwrite, inputs=(source, test, w))
    saved = _saved_checkpoint(out, resume=resume, overwrite=overwrite)
    # the device decides the backend (gloo / nccl); resolved as the configuration will be
    device_opt = (asked.runtime.device if saved is None or "device" in given
                  else saved["config"].get("device", "auto"))
    with quiet_unless_main(env_info()), process_group(resolve_device(device_opt).type) as di:
        if overwrite and di.is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        barrier()  # no rank looks at the folder before rank 0 has cleared it
        cfg = asked
        if saved is not None:
            cfg, split = _resumed(out, saved, asked, given, source=source, test=test,
                                  split=split)
        elif resume:
            log.info("%s has no checkpoint yet: starting a new run", out)
        if cfg.state == "predict":
            if di.enabled:
                raise OptionError("State 'predict' evaluates a model in one process; run it "
                                 "without torchrun (or use `cnncodes predict`).")
            return _evaluate_only(source, out, cfg, test=test, command=command)
        if split is None:
            if source is None:
                raise OptionError("Pass a source (or a split) to fine-tune on.")
            split = make_split(source, val_fraction=cfg.val_fraction,
                               test_fraction=cfg.test_fraction, seed=cfg.seed, test=test)
        return _train(split, out, cfg, di, saved, command=command or command_line())


def _train(split: Split, out: Path, cfg: FinetuneConfig, di: DistInfo,
           saved: dict[str, Any] | None, *, command: str) -> FinetuneResult:
    """Train (or continue) the run in ``out`` on this rank's device; test and report."""
    device = rank_device(cfg, di)
    if cfg.sync_bn and di.enabled and device.type != "cuda":
        raise OptionError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on "
                          "CPU / gloo); drop --sync-bn for CPU runs.")
    out.mkdir(parents=True, exist_ok=True)
    if di.is_main:  # the folder is this run's: another command needs --overwrite
        claim_folder(out, "finetune", files=RUN_FILES, command=command)
    threads = cfg.runtime.threads
    if di.enabled and device.type == "cpu" and threads is None:
        threads = max(1, (os.cpu_count() or 1) // local_world())
    with _run_context(cfg, device, threads=threads):
        trainer = Trainer(split, out, cfg, device, di=di, saved=saved, command=command)
        return _finish(trainer, trainer.fit())


def _given(config: FinetuneConfig | None, runtime: RuntimeOptions | None,
           options: dict[str, Any]) -> set[str]:
    """The option names a call asked for: every field of a ``config`` or ``runtime`` given,
    and the keyword ``options``."""
    names = set(options)
    if config is not None:
        names |= set(config.to_dict()) | {"progress"}
    if runtime is not None:
        names |= set(STORED_RUNTIME) | {"progress"}
    return names


def _saved_checkpoint(out: Path, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The run's ``checkpoint.pt`` when it is to be continued (None for a new run).

    Reading before joining the process group is safe: without overwrite no rank writes the
    folder before every rank has taken part in the first collective, after its read."""
    ckpt_path = out / "checkpoint.pt"
    if overwrite or not ckpt_path.is_file():
        return None
    if not resume:
        raise OptionError(f"{out} already holds a fine-tuning run ({ckpt_path.name}); pass "
                          "--resume (resume=True) to continue it, --overwrite to start over, "
                          "or another -o folder.")
    saved: dict[str, Any] = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return saved


def _resumed(out: Path, saved: dict[str, Any], asked: FinetuneConfig, given: set[str], *,
             source: Any, test: Any, split: Split | None) -> tuple[FinetuneConfig, Split]:
    """The configuration and split of the run being resumed (checked against what was asked)."""
    cfg = _resume_config(FinetuneConfig.from_dict(saved["config"]), asked, given)
    saved_split = Split.from_dict(saved["split"])
    check_same_sources(out, saved_split, source, test)
    if split is not None and split.to_dict() != saved_split.to_dict():
        raise StaleRunError(f"The split given differs from the one {out} was trained "
                            "on; resume without a split, or use another -o folder.")
    return cfg, saved_split


def _finish(trainer: Trainer, diverged: str | None) -> FinetuneResult:
    """Test the best model, write the report and curves, return the result (every rank)."""
    out, di, st = trainer.out, trainer.di, trainer.state
    test_ev = trainer.test()
    report = run_report(trainer, diverged, test_ev)
    if di.is_main:
        atomic_write_json(out / "report.json", report)
        if st.history:
            trainer.plot()
    barrier()  # the run folder is complete when any rank returns
    model_path = out / "model.pt"
    result = FinetuneResult(
        output=out, state=trainer.cfg.state, status=report["status"],
        model_path=model_path if model_path.is_file() else None, report_path=out / "report.json",
        curves_path=out / "curves.png" if st.history else None, classes=trainer.split.classes,
        epochs_run=len(st.history), best_epoch=st.best_epoch,
        val_accuracy=report["val_accuracy"], test_accuracy=report["test_accuracy"],
        seconds=report["seconds"], history=st.history, resumed_from=trainer.resumed_from,
        failures=sorted(st.failures.items()), report=report)
    if diverged:
        kept = (f"The best checkpoint (epoch {st.best_epoch}, validation accuracy "
                f"{fmt(report['val_accuracy'], '.3f')}) is kept in {model_path}"
                if model_path.is_file() else "No epoch finished, so no model was saved")
        raise FinetuneDivergedError(
            f"Training stopped: {diverged}. {kept}; the report is {out / 'report.json'}. "
            "Start a new run with a lower --lr, --grad-clip 1.0, or --precision fp32.")
    if test_ev is not None:
        log.info("%s: best epoch %s (val acc %s), test accuracy %.4f on %d images", out,
                 st.best_epoch, fmt(report["val_accuracy"], ".3f"), test_ev.accuracy,
                 len(trainer.split.test))
    return result


def _resume_config(saved: FinetuneConfig, asked: FinetuneConfig,
                   given: set[str]) -> FinetuneConfig:
    """The saved configuration with the allowed runtime changes among the ``given`` options of
    ``asked``; other differences are errors."""
    cur, new = saved.to_dict(), asked.to_dict()
    diff = [f"{k}: run has {cur[k]!r}, asked {new[k]!r}" for k in new
            if k in given and k not in FinetuneConfig.RUNTIME_FIELDS and new[k] != cur[k]]
    if diff:
        raise StaleRunError("Cannot resume with different training options ("
                            + "; ".join(diff) + "). Resume with the run's own options (or "
                            "none), or start a new run in another -o folder.")
    changes = {k: new[k] for k in new if k in given and k in FinetuneConfig.RUNTIME_FIELDS}
    if changes.get("epochs", saved.epochs) != saved.epochs:
        log.warning("resuming with epochs=%d instead of %d: the learning-rate schedule is "
                    "stretched from here on (not an exact continuation)", changes["epochs"],
                    saved.epochs)
    return make_config(saved, progress=asked.runtime.progress, **changes)


@contextlib.contextmanager
def _run_context(config: FinetuneConfig, device: torch.device, *,
                 threads: int | None = None) -> Iterator[None]:
    """The caller's global state is left as found: RNG forked and seeded, threads and the
    determinism flag restored."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices), num_threads(threads or config.runtime.threads):
        torch.manual_seed(config.seed)
        try:
            if config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            yield
        finally:
            if config.deterministic:
                torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _evaluate_only(source: str | os.PathLike | ImageSource | None, out: Path,
                   cfg: FinetuneConfig, *, test: Any, command: str | None) -> FinetuneResult:
    """State ``predict``: evaluate the fine-tuned model ``cfg.weights`` on all of ``test or
    source`` (nothing is trained, so no split is needed)."""
    t0 = time.perf_counter()
    w = cfg.weights
    if w is None or not is_finetuned_model(w):
        raise OptionError(f"state 'predict' evaluates a fine-tuned model without training: pass "
                         f"--weights RUN/model.pt (written by cnncodes finetune); got weights="
                         f"{w!r}, which has no head for your classes.")
    images = test if test is not None else source
    if images is None:
        raise OptionError("state 'predict' evaluates the model on images: pass a source (or "
                          "test=...); got neither.")
    pred = predict_images(w, images, runtime=cfg.runtime, input_size=cfg.input_size)
    claim_folder(out, "finetune", files=RUN_FILES, command=command or command_line())
    acc = pred.accuracy
    report = {
        "kind": REPORT_KIND, "schema_version": REPORT_SCHEMA_VERSION, "task": "finetune",
        "status": "evaluated", "state": "predict",
        "message": None, "backbone": pred.meta["backbone"], "weights": f"file:{Path(w).resolve()}",
        "classes": pred.classes, "input_size": pred.meta["input_size_used"],
        "split": {"train": 0, "val": 0, "test": len(pred.paths)}, "epochs_run": 0,
        "best_epoch": None, "val_accuracy": None,
        "val_accuracy_note": "state predict trains nothing, so there is no validation part",
        "test_accuracy": acc,
        **{f"test_{k}": v for k, v in ci_record(acc, len(pred.paths)).items()},
        "per_class_test_accuracy": per_class(pred.true, pred.predicted, pred.classes),
        "confusion_matrix": confusion(pred.true, pred.predicted, len(pred.classes)),
        "seconds": time.perf_counter() - t0, "failures": pred.failures,
        "config": cfg.to_dict(), "command": command or command_line(), "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    note = per_class_note(pred.true, pred.predicted, pred.classes)
    if note:
        report["per_class_test_accuracy_note"] = note
    if acc is None:
        report["test_accuracy_note"] = "the images have no known class (an unlabelled source)"
    report = jsonable(report)
    atomic_write_json(out / "report.json", report)
    return FinetuneResult(out, "predict", "evaluated", Path(w), out / "report.json", None,
                          pred.classes, 0, None, None, acc, report["seconds"],
                          failures=list(pred.failures), report=report)
