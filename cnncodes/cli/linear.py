"""``cnncodes train``, ``evaluate``, ``predict`` and ``baseline``: linear classifiers on codes.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..options import AUTO_LAYER_BUDGET
from .common import (
    TRUST_NOTE,
    CLIError,
    add_backbone_options,
    add_classifier_options,
    add_runtime_options,
    add_threshold_options,
    classifier_kwargs,
    emit_report,
    print_failures,
    thresholds,
)

log = logging.getLogger("cnncodes")


def add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="fit a linear classifier on cached codes (C chosen by CV)",
                       epilog=TRUST_NOTE)
    p.add_argument("store", help="an .h5 code store of labelled images (`cnncodes extract`)")
    p.add_argument("-o", "--output", default="model.joblib",
                   help="model file to write (default model.joblib)")
    p.add_argument("--layer", default=None, help="layer to train on (default the store's default)")
    p.add_argument("--test", default=None, help="a separate test store to evaluate on")
    p.add_argument("--report", default=None, help="folder for report.json and PNGs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", default="auto",
                   help="where the CV grid search runs: auto (a CUDA GPU through scikit-learn's "
                        "array API when present, else NumPy), cpu (NumPy), cuda, cuda:N, or "
                        "cpu-torch (the array-API path on CPU, for checks); --model linearsvc "
                        "always runs on the CPU")
    add_classifier_options(p)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from ..linear.evaluation import evaluate
    from ..linear.model_file import save_model
    from ..linear.training import train
    from ..report.core import build_report

    if args.test and args.holdout:
        raise CLIError("pass either --test STORE or --holdout FRACTION, not both.")
    model = train(args.store, layer=args.layer, holdout=args.holdout, device=args.device,
                  **classifier_kwargs(args))
    path = save_model(model, args.output)
    evaluation = None
    if args.test or args.holdout:
        evaluation = evaluate(model, args.test or args.store)
    rep = build_report(model=model, evaluation=evaluation, extra={"model_file": str(path)})
    if emit_report(rep, args, evaluation):
        print(f"\nmodel written to {path}" + (f"; report in {args.report}" if args.report else ""))
    return 0


def add_evaluate(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="score a model on a labelled code store it was not "
                       "trained on", epilog=TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train` (trusted source only)")
    p.add_argument("store", help="an .h5 code store extracted with the model's settings")
    p.add_argument("--report", default=None, help="folder for report.json and PNGs")
    p.add_argument("--raw-baseline", action="store_true",
                   help="also train/evaluate the same protocol on raw pixels of the same images")
    p.add_argument("--raw-size", type=int, default=32, help="raw-pixel side (default 32)")
    p.add_argument("--raw-grey", action="store_true", help="grey instead of RGB raw pixels")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..linear.evaluation import evaluate
    from ..linear.model_file import load_model
    from ..linear.pixels import pixel_baseline
    from ..report.core import build_report

    model = load_model(args.model)
    evaluation = evaluate(model, args.store)
    rows = None
    if args.raw_baseline:
        sel = model.selection
        p = model.provenance
        rows = [{"name": f"{p.get('backbone')} {model.layer} codes ({p.get('input_size')} px)",
                 "features": model.n_features, "selection": sel,
                 **{k: evaluation.metrics[k] for k in ("accuracy", "balanced_accuracy",
                                                       "macro_f1")}},
                pixel_baseline(model.train_paths, model.train_labels, evaluation.paths,
                               evaluation.y_true, classes=model.classes, size=args.raw_size,
                               grey=args.raw_grey, model=sel["model"], c_grid=sel["c_grid"],
                               cv=sel["cv"], class_weight=sel.get("class_weight"),
                               scoring=sel.get("scoring", "accuracy"),
                               max_iter=sel.get("max_iter", 1000), seed=sel.get("seed", 0))]
    rep = build_report(model=model, evaluation=evaluation, rows=rows,
                       extra={"model_file": args.model})
    if emit_report(rep, args, evaluation) and args.report:
        print(f"\nreport in {args.report}")
    return 0


def add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="label images with a trained model (extracts with the "
                       "model's own backbone/weights/layer/preprocessing) or a fine-tuned "
                       "RUN/model.pt", epilog=TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train` (trusted source only), or "
                                 "a fine-tuned RUN/model.pt from `cnncodes finetune`")
    p.add_argument("source", help="folder, class-folder tree, .txt/.csv list, or an .h5 store")
    p.add_argument("-o", "--output", default="predictions.csv",
                   help="CSV with path,label,probability|score,error (default predictions.csv)")
    add_runtime_options(p)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    from ..linear.prediction import predict
    from ..options import DEFAULT_MAX_PIXELS

    pred = predict(args.model, args.source, batch_size=args.batch_size,
                   num_workers=args.num_workers,
                   device=args.device, precision=args.precision, threads=args.threads,
                   max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                   progress=not args.no_progress)
    out = pred.to_csv(args.output)
    counts = ", ".join(f"{c} {n}" for c, n in pred.to_dict()["counts"].items() if n)
    print(f"{out}: {len(pred.paths)} images labelled by {pred.model}")
    if counts:
        print(f"  {counts}")
    if pred.true_labels is not None:
        pairs = [(t, p) for t, p in zip(pred.true_labels, pred.labels, strict=True) if t]
        if pairs:
            acc = sum(t == p for t, p in pairs) / len(pairs)
            print(f"  accuracy against the folder labels: {acc:.4f} ({len(pairs)} images)")
    if pred.failures:
        print_failures(pred.failures, "listed in the CSV with an error")
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
    p.add_argument("--raw-size", type=int, default=32, help="raw-pixel baseline side (default 32)")
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
    add_classifier_options(p, holdout=0.2)
    # --model not given: logistic regression, or the classifier advised by --layer auto
    p.set_defaults(model=None)
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
    return p


def cmd_baseline(args: argparse.Namespace) -> int:
    from .._runtime import command_line
    from ..options import DEFAULT_MAX_PIXELS
    from ..report.core import format_table
    from ..workflows.baseline import baseline
    from ..workflows.compare import format_fall_through

    if args.force_finetune and not args.fall_through:
        raise CLIError("--force-finetune goes with --fall-through.")
    ft_opts = {} if args.finetune_epochs is None else {"epochs": args.finetune_epochs}
    res = baseline(args.source, report=args.report, cache=args.cache, backbone=args.backbone,
                   weights=args.weights, layer=args.layers, pooling=args.pooling,
                   input_size=args.input_size, batch_size=args.batch_size,
                   num_workers=args.num_workers, device=args.device, precision=args.precision,
                   threads=args.threads, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                   overwrite=args.overwrite, progress=not args.no_progress,
                   holdout=args.holdout, raw_baseline=args.raw_baseline,
                   raw_size=args.raw_size, raw_grey=args.raw_grey, command=command_line(),
                   budget=args.budget, thresholds=thresholds(args),
                   fall_through=args.fall_through, force_finetune=args.force_finetune,
                   finetune_options=ft_opts, **classifier_kwargs(args))
    if args.json:
        print(json.dumps(res.report, indent=2))
        return 0
    use = res.report.get("advice_use")
    if res.advice is not None and use:
        again = " (reused: recorded in the cache for these training images)" \
            if use.get("reused_from_cache") else ""
        print(f"--layer auto -> {use['layer']}: {res.advice.get('explanation')}{again}")
        if use.get("model_source") == "advice":
            print(f"--model {use['model']}: the classifier advised for this layer (pass --model "
                  "to choose another)")
        print()
    print(format_table(res.report))
    if res.report.get("fall_through"):
        print()
        print(format_fall_through(res.report))
    if res.failures:
        print(f"\n{len(res.failures)} files could not be read and were left out:")
        for p, r in res.failures[:20]:
            print(f"  {p}: {r}")
    print(f"\nmodel, report.json and PNGs in {args.report} ({res.report.get('wall_time_s')} s "
          "in all)")
    return 0
