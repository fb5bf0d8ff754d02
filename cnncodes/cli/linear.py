"""``cnncodes train``, ``evaluate``, ``predict`` and ``baseline``: linear classifiers on codes.

Each command parses, makes one library call (:mod:`cnncodes.workflows`) and prints what
:mod:`cnncodes.report` formats.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..linear.options import DEFAULT_RAW_SIZE, MODEL_FILE
from ..options import AUTO_LAYER_BUDGET
from ..outputs import check_output
from .checks import require_backbones, require_model, require_sources, require_store
from .common import (
    TRUST_NOTE,
    CLIError,
    add_backbone_options,
    add_classifier_options,
    add_runtime_options,
    add_threshold_options,
    add_trust_pickle,
    backbone_options,
    check_report,
    classifier_kwargs,
    emit_report,
    runtime_options,
    thresholds,
)

log = logging.getLogger("cnncodes")


REPORT_HELP = ("folder for report.json, report.html, PNGs and predictions.csv (every test image: "
               "true and predicted class, per-class probabilities or scores)")


def positive_int(s: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1. Got {s!r}.")
    return v


def add_allow_incomplete(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-incomplete", action="store_true",
                   help="use a store whose extraction was stopped before it finished (refused "
                        "by default; the report then says how many images were missing)")


def add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="fit a linear classifier on cached codes (C chosen by CV)",
                       epilog=TRUST_NOTE)
    p.add_argument("store", help="an .h5 code store of labelled images (`cnncodes extract`)")
    p.add_argument("-o", "--output", default=MODEL_FILE,
                   help=f"model file to write (default {MODEL_FILE}; arrays + JSON, no code, "
                        "whatever the extension)")
    p.add_argument("--layer", default=None, help="layer to train on (default the store's default)")
    p.add_argument("--test", default=None, help="a separate test store to evaluate on")
    p.add_argument("--report", default=None, help=REPORT_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file that is not a cnncodes model, and write the "
                        "report into a --report folder another command wrote (only train's own "
                        "files are replaced; an input, a folder or a special file never is)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", default="auto",
                   help="where the CV grid search runs: auto (a CUDA GPU through scikit-learn's "
                        "array API when present, else NumPy), cpu (NumPy), cuda, cuda:N, or "
                        "cpu-torch (the array-API path on CPU, for checks); --model linearsvc "
                        "always runs on the CPU")
    add_allow_incomplete(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar over the model-selection fits (they are logged)")
    add_classifier_options(p)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    require_store(args.store)  # before the heavy imports: a wrong path fails at once
    require_store(args.test)
    inputs = (args.store, args.test)
    check_output(args.output, inputs=inputs, expect="model", overwrite=args.overwrite,
                 option="-o")
    check_report(args, inputs)
    from ..workflows.train_evaluate import train_report

    run = train_report(args.store, args.output, test=args.test, layer=args.layer,
                       holdout=args.holdout, device=args.device, overwrite=args.overwrite,
                       allow_incomplete=args.allow_incomplete, progress=not args.no_progress,
                       **classifier_kwargs(args))
    if emit_report(run.report, args, run.evaluation, inputs):
        print(f"\nmodel written to {run.model_file}"
              + (f"; report in {args.report}" if args.report else ""))
    return 0


def add_evaluate(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="score a model on a labelled code store it was not "
                       "trained on", epilog=TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train`")
    p.add_argument("store", help="an .h5 code store extracted with the model's settings")
    p.add_argument("--report", default=None, help=REPORT_HELP)
    p.add_argument("--raw-baseline", action="store_true",
                   help="also train/evaluate the same protocol on raw pixels of the same images")
    p.add_argument("--raw-size", type=int, default=DEFAULT_RAW_SIZE,
                   help=f"raw-pixel side (default {DEFAULT_RAW_SIZE})")
    p.add_argument("--raw-grey", action="store_true", help="grey instead of RGB raw pixels")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="write the report into a --report folder another command wrote (only "
                        "the report's own files are replaced)")
    add_allow_incomplete(p)
    add_trust_pickle(p)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    require_model(args.model)
    require_store(args.store)
    inputs = (args.model, args.store)
    check_report(args, inputs)
    from ..workflows.train_evaluate import evaluate_report

    run = evaluate_report(args.model, args.store, raw_baseline=args.raw_baseline,
                          raw_size=args.raw_size, raw_grey=args.raw_grey,
                          allow_incomplete=args.allow_incomplete,
                          trust_pickle=args.trust_pickle)
    if emit_report(run.report, args, run.evaluation, inputs) and args.report:
        print(f"\nreport in {args.report}")
    return 0


def add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="label images with a trained model (extracts with the "
                       "model's own backbone/weights/layer/preprocessing) or a fine-tuned "
                       "RUN/model.pt", epilog=TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train`, or a fine-tuned "
                                 "RUN/model.pt from `cnncodes finetune`")
    p.add_argument("source", help="folder, class-folder tree, .txt/.csv list, or an .h5 store")
    p.add_argument("-o", "--output", default="predictions.csv",
                   help="CSV with path,label,probability|score,error and one prob_<class> "
                        "(logistic regression, fine-tuned networks) or score_<class> (LinearSVC "
                        "decision values, not probabilities) column per class; unreadable "
                        "images come first, with the reason (default predictions.csv; an "
                        "earlier predictions CSV there is replaced)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="also write the K best classes of each image, best first, with their "
                        "probability or score (top1_label, top1_prob|top1_score, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file that is not a predictions CSV (an input, a "
                        "folder or a special file is never replaced)")
    add_trust_pickle(p)
    add_runtime_options(p)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    require_model(args.model)
    require_sources(args.source)
    inputs = (args.model, args.source)
    check_output(args.output, inputs=inputs, expect="csv", overwrite=args.overwrite, option="-o")
    from ..report.linear_text import format_predictions
    from ..workflows.predict import predict

    pred = predict(args.model, args.source, runtime=runtime_options(
        args, max_pixels=args.max_pixels), trust_pickle=args.trust_pickle)
    print(format_predictions(pred, pred.to_csv(args.output, overwrite=args.overwrite,
                                               inputs=inputs, top_k=args.top_k)))
    return 0


def add_baseline(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("baseline", help="small-dataset quick baseline: extract (cached) + train "
                       "with CV + held-out test + raw-pixel comparison, in one command",
                       epilog="SOURCE may hold train/ and test/ (or val/) class trees: that split "
                              "is used as is. " + TRUST_NOTE)
    p.add_argument("source", help="a folder of class folders, or one with train/ + test/ trees")
    p.add_argument("--report", default="out/baseline",
                   help="folder for the model, report.json and PNGs (default out/baseline)")
    p.add_argument("--cache", default=None,
                   help="folder for the code stores (default REPORT/cache; existing codes reused)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard cached codes made with other options")
    p.add_argument("--raw-size", type=int, default=DEFAULT_RAW_SIZE,
                   help=f"raw-pixel baseline side (default {DEFAULT_RAW_SIZE})")
    p.add_argument("--raw-grey", action="store_true", help="grey instead of RGB raw pixels")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-raw-baseline", dest="raw_baseline", action="store_false", default=None,
                   help="skip the raw-pixel baseline row")
    g.add_argument("--raw-baseline", dest="raw_baseline", action="store_true",
                   help="run the raw-pixel baseline even when it is not cheap")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_backbone_options(p, layers_help="the layer to classify on (default the backbone's "
                                         "default layer); auto: chosen by `advise` on the "
                                         "training images only")
    add_runtime_options(p)
    # --model not given: logistic regression, or the classifier advised by --layer auto
    add_classifier_options(p, holdout=0.2)
    g = p.add_argument_group("--layer auto")
    g.add_argument("--budget", default=AUTO_LAYER_BUDGET,
                   help=f"time budget of the layer choice (default {AUTO_LAYER_BUDGET}; e.g. 90s, 5min, none)")
    g = p.add_argument_group("--fall-through (fine-tune when the data is large)")
    g.add_argument("--fall-through", action="store_true",
                   help="after the linear probe, fine-tune the backbone end to end on the same "
                        "split when the training images are large by advise's size rule, and "
                        "compare accuracy and wall time (run in REPORT/finetune)")
    g.add_argument("--force-finetune", action="store_true",
                   help="with --fall-through: fine-tune whatever the data size")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="epochs of the fall-through fine-tuning (default 15)")
    add_threshold_options(p, "size and layer thresholds (shared with `cnncodes advise`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--audit", dest="audit", action="store_true", default=None,
                   help="audit everything: also likely label errors and the full 2,000-image "
                        "map when they are not cheap (by default the audit of the data through "
                        "its codes, into REPORT/audit/ and linked from report.html, finds "
                        "duplicates, train/test leaks, outliers and class balance always, label "
                        "errors and a 500-image map when cheap: `cnncodes audit`)")
    g.add_argument("--no-audit", dest="audit", action="store_false",
                   help="no audit of the data")
    return p


def cmd_baseline(args: argparse.Namespace) -> int:
    if args.force_finetune and not args.fall_through:
        raise CLIError("--force-finetune goes with --fall-through.")
    require_sources(args.source)  # before the heavy imports: a wrong path fails at once
    require_backbones(args.backbone)
    from .._runtime import command_line
    from ..report.audit_summary import audit_lines
    from ..report.linear_text import format_baseline
    from ..workflows.baseline import BaselineOptions, baseline

    steps = BaselineOptions(
        holdout=args.holdout, raw_baseline=args.raw_baseline, raw_size=args.raw_size,
        raw_grey=args.raw_grey, budget=args.budget, thresholds=thresholds(args),
        fall_through=args.fall_through, force_finetune=args.force_finetune,
        finetune_options={} if args.finetune_epochs is None else {"epochs": args.finetune_epochs},
        audit=args.audit)
    res = baseline(args.source, report=args.report, cache=args.cache,
                   backbone=backbone_options(args),
                   runtime=runtime_options(args, max_pixels=args.max_pixels),
                   steps=steps, overwrite=args.overwrite, command=command_line(),
                   **classifier_kwargs(args))
    if args.json:
        print(json.dumps(res.report, indent=2))
        return 0
    ft_text = ""
    if res.report.get("fall_through"):  # fine-tuning's module imports torch: only when it ran
        from ..workflows.compare import format_fall_through

        ft_text = format_fall_through(res.report)
    print(format_baseline(res.report, fall_through=ft_text, failures=res.failures,
                          folder=args.report))
    for line in audit_lines(res.report.get("audit"), folder=args.report):
        print(line)
    return 0
