"""The ``cnncodes`` command line: parse -> call the library -> print. Nothing else lives here.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_cmd_<name>(args) -> int`` registered in
``COMMANDS``; option names match the library's keyword arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__

log = logging.getLogger("cnncodes")


class CLIError(Exception):
    """A user-facing error: printed as ``error: ...`` with exit status 1."""


def _int_or_none(s: str) -> int | None:
    return None if s.lower() in ("none", "auto", "") else int(s)


def _add_backbone_options(p: argparse.ArgumentParser, *, layers_help: str | None = None) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default="mobilenet_v2",
                   help="registry name (see `cnncodes models`); default mobilenet_v2")
    g.add_argument("--weights", default="auto",
                   help="auto (packaged/recommended), DEFAULT, IMAGENET1K_V1..., a checkpoint "
                        "path, or random")
    g.add_argument("--layers", "--layer", dest="layers", default=None,
                   help=layers_help or "comma-separated layer names; default the backbone's "
                                       "last layer")
    g.add_argument("--pooling", default="avg", choices=["avg", "max", "avgmax", "none"],
                   help="how spatial maps become vectors (none = flatten)")
    g.add_argument("--input-size", type=int, default=None,
                   help="crop size in pixels (default from the weights, e.g. 224)")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", "--num-workers", dest="num_workers", type=_int_or_none,
                   default=None, help="decoding processes (default from the core count)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="compute precision (auto: fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--max-pixels", type=int, default=None,
                   help="decompression-bomb limit per image (default 89.5 MP)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------- models


def _add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list backbones, their layers and dims")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _cmd_models(args: argparse.Namespace) -> int:
    from .backbones import get_spec, list_backbones
    from .weights import packaged_file

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        default_w = spec.default_weights
        member = spec.weights.DEFAULT if default_w == "DEFAULT" else spec.weights[default_w]
        offline = packaged_file(member.url.rsplit("/", 1)[-1]) is not None
        rows.append({
            "backbone": name, "family": spec.family,
            "layers": {k: {"dim": c.dim, "kind": c.kind, "depth": c.depth}
                       for k, c in spec.layers.items()},
            "default_layer": spec.default_layer,
            "default_weights": f"{type(member).__name__}.{member.name}",
            "offline": offline, "weights": spec.weight_names(),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'backbone':<19} {'default':<8} {'weights (auto)':<42} layers (name:dim; * = last)")
    for r in rows:
        layers = " ".join(f"{k}:{v['dim']}{'*' if v['depth'] == 'last' else ''}"
                          for k, v in r["layers"].items())
        w = r["default_weights"] + (" [offline]" if r["offline"] else "")
        print(f"{r['backbone']:<19} {r['default_layer']:<8} {w:<42} {layers}")
    print("\nmap layers are pooled by --pooling (avg, max, avgmax: 2x dim, none: dim x H x W); "
          "weights marked [offline] ship in a pip package, the others download on first use.")
    return 0


# --------------------------------------------------------------------------------------- extract


def _add_extract(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="images -> CNN codes in an HDF5 cache (resumable)")
    p.add_argument("source", help="folder of class folders, flat folder, or .txt/.csv list")
    p.add_argument("-o", "--output", required=True, help="the .h5 store to create or continue")
    _add_backbone_options(p)
    _add_runtime_options(p)
    g = p.add_argument_group("store")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    g.add_argument("--compression", default=None, choices=["gzip", "lzf", "none"])
    g.add_argument("--overwrite", action="store_true",
                   help="discard an existing store made with other options")
    g.add_argument("--retry-failed", action="store_true",
                   help="try again the files recorded as failures")
    g.add_argument("--commit-every", type=float, default=600.0, metavar="SECONDS",
                   help="fold finished batches into the .h5 this often during a long run, so it "
                        "is readable (marked incomplete) while extraction goes on (default 600)")
    g.add_argument("--decoder", default="auto", choices=["auto", "tensor", "pil"],
                   help="JPEG decoding: tensor (libjpeg-turbo on CPU, nvJPEG on CUDA, tensor "
                        "resize), pil, or auto (tensor unless the interpolation needs PIL)")
    g = p.add_argument_group("--layers auto (choose the layer from the data, see `advise`)")
    g.add_argument("--budget", default="2min",
                   help="time budget of the layer choice (default 2min; e.g. 90s, 5min)")
    return p


def _auto_layer(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """``--layers auto``: the advised layer and the evidence to record (else the layers as given)."""
    if args.layers is None or args.layers.strip().lower() != "auto":
        return args.layers, None
    from .advise import choose_layer
    from .data import DEFAULT_MAX_PIXELS
    from .distributed import env_info

    # under torchrun every rank must pick the same layer: no speed-dependent sample size there
    budget = None if env_info().enabled else args.budget
    layer, evidence = choose_layer(
        args.source, backbone=args.backbone, weights=args.weights, pooling=args.pooling,
        input_size=args.input_size, budget=budget,
        reuse_from=None if args.overwrite else args.output, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, precision=args.precision,
        threads=args.threads, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        progress=not args.no_progress)
    if env_info().is_main:
        print(f"--layers auto -> {layer}: {evidence.get('explanation')}")
    return layer, {"advice": evidence}


def _cmd_extract(args: argparse.Namespace) -> int:
    from .data import DEFAULT_MAX_PIXELS
    from .extract import ExtractResult, command_line, extract

    layers, advice = _auto_layer(args)
    try:
        res = extract(
            args.source, args.output, backbone=args.backbone, weights=args.weights,
            layers=layers, extra_provenance=advice, pooling=args.pooling,
            input_size=args.input_size,
            batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
            precision=args.precision, dtype=args.dtype, compression=args.compression,
            threads=args.threads, overwrite=args.overwrite, retry_failed=args.retry_failed,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            progress=not args.no_progress, command=command_line(args.argv),
            decoder=args.decoder, commit_every=args.commit_every)
    except KeyboardInterrupt as e:
        res = e.args[0] if e.args and isinstance(e.args[0], ExtractResult) else None
        kept = f" {res.rows} rows are saved in {res.path};" if res else ""
        print(f"\ninterrupted:{kept} run the same command again to continue.", file=sys.stderr)
        return 130
    from .distributed import env_info
    if not env_info().is_main:  # under torchrun only rank 0 reports (failures: its own shard)
        return 0
    dims = ", ".join(f"{k} ({d}-d)" for k, d in res.layers.items())
    print(f"{res.path}: {res.rows} images; {res.new} extracted now, {res.skipped} already done; "
          f"layers {dims}")
    if res.new:
        print(f"throughput: {res.images_per_s:.1f} img/s ({res.seconds:.1f} s in all)")
    if res.failed:
        _print_failures(res.failed, f"recorded in the store; `cnncodes info {res.path}` lists "
                                    "them")
    return 0


def _print_failures(failures: Sequence[tuple[str, str]], where: str, most: int = 20) -> None:
    print(f"{len(failures)} files could not be read ({where}):")
    for p, r in failures[:most]:
        print(f"  {p}: {r}")
    if len(failures) > most:
        print(f"  ... and {len(failures) - most} more")


# ------------------------------------------------------------------------------------------ info


def _add_info(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="what a code store holds: counts, layers, provenance, failures")
    p.add_argument("store", help="an .h5 file written by `cnncodes extract`")
    p.add_argument("--json", action="store_true")
    return p


def _cmd_info(args: argparse.Namespace) -> int:
    from .store import FeatureStore

    info = FeatureStore(args.store).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    prov = info["provenance"]
    print(f"{info['path']}")
    print(f"  images     {info['images']} ({info['unlabelled']} unlabelled), "
          f"{len(info['failures'])} failed")
    if info["classes"]:
        cls = ", ".join(f"{c} {n}" for c, n in info["classes"].items())
        print(f"  classes    {len(info['classes'])}: {cls}")
    for name, li in info["layers"].items():
        print(f"  layer      {name}: {li['dim']}-d {li['dtype']} (node {li.get('node')}, "
              f"{li.get('kind')}, pooling {li.get('pooling')})")
    pp = prov.get("preprocessing", {})
    print(f"  backbone   {prov.get('backbone')}  weights {prov.get('weights')} "
          f"(sha256 {str(prov.get('weights_sha256') or '-')[:16]})")
    print(f"  preprocess resize {pp.get('resize')} crop {pp.get('crop')} "
          f"{pp.get('interpolation')} mean {pp.get('mean')} std {pp.get('std')}")
    print(f"  source     {prov.get('root')} ({prov.get('source_kind')})")
    v = prov.get("versions", {})
    print("  versions   " + " ".join(f"{k} {x}" for k, x in v.items()))
    print(f"  created    {prov.get('created')}  updated {prov.get('updated')}")
    for r in prov.get("runs", []):
        print(f"  run        {r.get('time')}: {r.get('new')} new, {r.get('failed')} failed, "
              f"{r.get('images_per_s')} img/s on {r.get('device')} {r.get('precision')}"
              f"{' (interrupted)' if r.get('interrupted') else ''}: {r.get('command')}")
    for k in ("advice",):
        if k in prov:
            print(f"  {k:<10} {json.dumps(prov[k])[:200]}")
    if info["pending_parts"]:
        print(f"  pending    {info['pending_parts']} journal parts not yet folded in: rerun the "
              "extract command to finish")
    if info["failures"]:
        print("  failures:")
        for f in info["failures"]:
            print(f"    {f['path']}: {f['reason']}")
    return 0


# ------------------------------------------------- classifiers: train / evaluate / predict / baseline

_TRUST_NOTE = ("Model files are joblib pickles: loading one runs code, so use only model files you "
               "made or that come from a source you trust.")


def _pca_arg(s: str) -> int | float | None:
    if s.lower() in ("none", ""):
        return None
    return float(s) if "." in s or "e" in s.lower() else int(s)


def _add_classifier_options(p: argparse.ArgumentParser, *, holdout: float = 0.0) -> None:
    g = p.add_argument_group("classifier")
    g.add_argument("--model", default="logreg", choices=["logreg", "linearsvc"],
                   help="logreg = LogisticRegression (lbfgs, multinomial); linearsvc = LinearSVC")
    g.add_argument("--c-grid", default="default",
                   help="C values searched by CV: start:stop:count log-spaced (e.g. 1e-4:1e2:13), "
                        "a comma list, 'default' (1e-4:1e2:7) or 'full' (the 45-value [1e-6, "
                        "1e5] linear-probe grid)")
    g.add_argument("--cv", type=int, default=5,
                   help="stratified folds (reduced automatically for classes with fewer images)")
    g.add_argument("--n-jobs", type=_int_or_none, default=None, help="parallel CV fits (-1 = all "
                   "cores; the GPU/array-API path runs them one after the other)")
    g.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                   help="balanced: weight classes inversely to their frequency")
    g.add_argument("--l2", action="store_true", help="L2-normalise codes first")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="skip per-feature standardisation")
    g.add_argument("--pca", type=_pca_arg, default=None,
                   help="PCA to N components (int) or a variance fraction (e.g. 0.95)")
    g.add_argument("--scoring", default="accuracy",
                   help="CV score (any sklearn scorer name, e.g. balanced_accuracy)")
    g.add_argument("--max-iter", type=int, default=1000, help="solver iterations")
    g.add_argument("--holdout", type=float, default=holdout,
                   help="fraction of each class held out for testing (seeded, stratified; 0 = "
                        f"none; default {holdout:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the hold-out split and CV folds")


def _classifier_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, c_grid=args.c_grid, cv=args.cv, n_jobs=args.n_jobs,
                class_weight=None if args.class_weight == "none" else args.class_weight,
                l2=args.l2, standardize=args.standardize, pca=args.pca, scoring=args.scoring,
                max_iter=args.max_iter, seed=args.seed)


def _add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="fit a linear classifier on cached codes (C chosen by CV)",
                       epilog=_TRUST_NOTE)
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
    _add_classifier_options(p)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    from .classify import evaluate, save_model, train
    from .report import build_report

    if args.test and args.holdout:
        raise CLIError("pass either --test STORE or --holdout FRACTION, not both.")
    model = train(args.store, layer=args.layer, holdout=args.holdout, device=args.device,
                  **_classifier_kwargs(args))
    path = save_model(model, args.output)
    evaluation = None
    if args.test or args.holdout:
        evaluation = evaluate(model, args.test or args.store)
    rep = build_report(model=model, evaluation=evaluation, extra={"model_file": str(path)})
    if _emit_report(rep, args, evaluation):
        print(f"\nmodel written to {path}" + (f"; report in {args.report}" if args.report else ""))
    return 0


def _emit_report(rep: dict[str, Any], args: argparse.Namespace, evaluation: Any) -> bool:
    """Write the report files if --report, print JSON (--json) or the table; True for the table."""
    from .report import format_table, write_report

    if args.report:
        write_report(rep, args.report, evaluation=evaluation)
    if args.json:
        print(json.dumps(rep, indent=2))
        return False
    print(format_table(rep))
    return True


def _add_evaluate(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="score a model on a labelled code store it was not "
                       "trained on", epilog=_TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train` (trusted source only)")
    p.add_argument("store", help="an .h5 code store extracted with the model's settings")
    p.add_argument("--report", default=None, help="folder for report.json and PNGs")
    p.add_argument("--raw-baseline", action="store_true",
                   help="also train/evaluate the same protocol on raw pixels of the same images")
    p.add_argument("--raw-size", type=int, default=32, help="raw-pixel side (default 32)")
    p.add_argument("--raw-grey", action="store_true", help="grey instead of RGB raw pixels")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .classify import evaluate, load_model, pixel_baseline
    from .report import build_report

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
    if _emit_report(rep, args, evaluation) and args.report:
        print(f"\nreport in {args.report}")
    return 0


def _add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="label images with a trained model (extracts with the "
                       "model's own backbone/weights/layer/preprocessing) or a fine-tuned "
                       "RUN/model.pt", epilog=_TRUST_NOTE)
    p.add_argument("model", help="a model file from `cnncodes train` (trusted source only), or "
                                 "a fine-tuned RUN/model.pt from `cnncodes finetune`")
    p.add_argument("source", help="folder, class-folder tree, .txt/.csv list, or an .h5 store")
    p.add_argument("-o", "--output", default="predictions.csv",
                   help="CSV with path,label,probability|score,error (default predictions.csv)")
    _add_runtime_options(p)
    return p


def _cmd_predict(args: argparse.Namespace) -> int:
    from .classify import predict
    from .data import DEFAULT_MAX_PIXELS

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
        _print_failures(pred.failures, "listed in the CSV with an error")
    return 0


def _add_baseline(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("baseline", help="small-dataset quick baseline: extract (cached) + train "
                       "with CV + held-out test + raw-pixel comparison, in one command",
                       epilog="SOURCE may hold train/ and test/ (or val/) class trees: that split "
                              "is used as is. " + _TRUST_NOTE)
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
    _add_backbone_options(p, layers_help="the layer to classify on (default the backbone's "
                                         "default layer); auto: chosen by `advise` on the "
                                         "training images only")
    _add_runtime_options(p)
    _add_classifier_options(p, holdout=0.2)
    # --model not given: logistic regression, or the classifier advised by --layer auto
    p.set_defaults(model=None)
    g = p.add_argument_group("--layer auto")
    g.add_argument("--budget", default="2min",
                   help="time budget of the layer choice (default 2min; e.g. 90s, 5min, none)")
    g = p.add_argument_group("--fall-through (fine-tune when the data is large)")
    g.add_argument("--fall-through", action="store_true",
                   help="after the linear probe, fine-tune the backbone end to end on the same "
                        "split when the training images are large by advise's size rule, and "
                        "compare accuracy and wall time (run in REPORT/finetune)")
    g.add_argument("--force-finetune", action="store_true",
                   help="with --fall-through: fine-tune whatever the data size")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="epochs of the fall-through fine-tuning (default 15)")
    _add_threshold_options(p, "size and layer thresholds (shared with `cnncodes advise`)")
    return p


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .classify import baseline, format_fall_through
    from .data import DEFAULT_MAX_PIXELS
    from .extract import command_line
    from .report import format_table

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
                   budget=args.budget, thresholds=_thresholds(args),
                   fall_through=args.fall_through, force_finetune=args.force_finetune,
                   finetune_options=ft_opts, **_classifier_kwargs(args))
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


# -------------------------------------------------------------------------------------- finetune


def _crop_scale(s: str) -> tuple[float, float]:
    lo, _, hi = s.partition(",")
    try:
        return float(lo), float(hi or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop-scale wants MIN,MAX (e.g. 0.35,1); got {s!r}")


def _add_finetune(sub: Any) -> argparse.ArgumentParser:
    # argument_default=SUPPRESS: only options given on the command line reach the library, so
    # `--resume` alone continues a run with its saved options.
    p = sub.add_parser("finetune", help="fine-tune a backbone end to end (states predict, "
                       "head-only, full); resumable; --escalation compares with the linear probe",
                       argument_default=argparse.SUPPRESS,
                       epilog="Defaults: see cnncodes.finetune.FinetuneConfig (SGD momentum 0.9, "
                              "lr 0.001 (AdamW 1e-4), head x10, weight decay 1e-3, 15 epochs, "
                              "cosine after 1 warmup epoch, val 0.15, test 0.2). The same "
                              "command runs under `torchrun --nproc-per-node N -m cnncodes "
                              "finetune ...`: DistributedDataParallel (gloo on CPU, nccl on "
                              "cuda:LOCAL_RANK), --batch-size per process, metrics reduced over "
                              "processes, rank 0 writes the run folder; --resume works the same.")
    p.add_argument("source", help="a folder of class folders, or a labelled .txt/.csv list")
    p.add_argument("-o", "--output", required=True,
                   help="run folder: checkpoint.pt, model.pt, report.json, curves.png")
    p.add_argument("--test", help="a separate labelled test source (default: --test-fraction of "
                                  "SOURCE)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in -o from its last checkpoint (saved options are used)")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="delete a previous run in -o first")
    p.add_argument("--escalation", action="store_true", default=False,
                   help="run the linear probe, head-only and full fine-tuning on one split and "
                        "write escalation.json/.md/.png")
    p.add_argument("--no-progress", action="store_true", default=False, help="no progress bars")
    p.add_argument("--json", action="store_true", default=False, help="print the report as JSON")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", help="registry name (default mobilenet_v2)")
    g.add_argument("--weights", help="auto, a weights name, a checkpoint or RUN/model.pt, random")
    g.add_argument("--input-size", type=int, help="crop size in pixels (default from the weights)")
    g.add_argument("--state", choices=["predict", "head-only", "full"],
                   help="full (default), head-only (backbone frozen), predict (evaluate "
                        "--weights RUN/model.pt, no training)")
    g.add_argument("--freeze", type=int, help="freeze the first K stages (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int,
                   help="images per step per process (default 32); under torchrun each of the "
                        "N processes takes this many, so the global batch is N x this (the "
                        "learning rate is not rescaled)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"])
    g.add_argument("--lr", type=float, help="base learning rate of the pretrained layers")
    g.add_argument("--head-lr-mult", type=float, help="head lr = lr x this (default 10)")
    g.add_argument("--layer-decay", type=float,
                   help="layer-wise lr decay per stage from the top (e.g. 0.7)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["cosine", "step", "constant"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--step-size", type=int, help="epochs between steps (schedule step)")
    g.add_argument("--gamma", type=float, help="step factor (schedule step)")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without validation improvement")
    g = p.add_argument_group("data")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random resized crop / flip")
    g.add_argument("--crop-scale", type=_crop_scale, metavar="MIN,MAX",
                   help="random resized crop area range (default 0.35,1)")
    g.add_argument("--no-hflip", dest="hflip", action="store_false")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 AMP on CUDA, fp32 on CPU")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--workers", "--num-workers", dest="num_workers", type=_int_or_none)
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun on GPUs: SyncBatchNorm (batch statistics over all "
                        "processes) for the layers that train; frozen stages keep theirs")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms during the run")
    g.add_argument("--max-pixels", type=int, help="decompression-bomb limit per image")
    return p


def _cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from .extract import command_line
    from .finetune import FinetuneConfig, escalate, finetune

    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    options = {k: v for k, v in vars(args).items() if k in names}
    common = dict(test=getattr(args, "test", None), resume=args.resume,
                  overwrite=args.overwrite, progress=not args.no_progress,
                  command=command_line())
    if args.escalation:
        esc = escalate(args.source, args.output, **common, **options)
        if args.json:
            print(esc.json_path.read_text())
            return 0
        print(esc.table())
        print(f"\n{esc.verdict}")
        print(f"\nreports: {esc.markdown_path}, {esc.json_path}, {esc.png_path}; runs in "
              f"{esc.output / 'head-only'} and {esc.output / 'full'}")
        return 0
    res = finetune(args.source, args.output, **common, **options)
    from .distributed import env_info
    if not env_info().is_main:  # under torchrun rank 0 reports for the job
        return 0
    if args.json:
        print(json.dumps(res.report, indent=2, default=str))
        return 0
    rep = res.report

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    if res.state == "predict":
        print(f"{res.output}: evaluated {rep['backbone']} fine-tuned model on "
              f"{rep['split']['test']} images: accuracy {f(res.test_accuracy)}")
    else:
        resumed = f" (resumed at epoch {res.resumed_from})" if res.resumed_from else ""
        print(f"{res.output}: {res.state} fine-tuning of {rep['backbone']} ({rep['weights']}) "
              f"{res.status}{resumed}: {res.epochs_run} epochs, best epoch {res.best_epoch}")
        print(f"  validation accuracy {f(res.val_accuracy)}, test accuracy "
              f"{f(res.test_accuracy)} ({rep['split']['test']} images); "
              f"{rep['trainable_params']:,} trainable parameters; {res.seconds:.1f} s")
        print(f"  model {res.model_path} (usable as --weights for extract; predict with "
              f"`cnncodes predict {res.model_path} IMAGES`), report {res.report_path}, curves "
              f"{res.curves_path}")
    if res.failures:
        print(f"{len(res.failures)} files could not be read and were skipped:")
        for p, r in res.failures[:20]:
            print(f"  {p}: {r}")
    return 0


# ---------------------------------------------------------------------------------------- advise


def _add_threshold_options(p: argparse.ArgumentParser,
                           title: str = "decision thresholds (see cnncodes.advise)") -> None:
    g = p.add_argument_group(title)
    g.add_argument("--small-per-class", type=int, default=None,
                   help="median images/class below which data is small (default 200)")
    g.add_argument("--large-per-class", type=int, default=None,
                   help="median images/class from which data can be large (default 1000)")
    g.add_argument("--large-total", type=int, default=None,
                   help="total images also needed to be large (default 10000)")
    g.add_argument("--margin", type=float, default=None,
                   help="points an earlier layer must win by (default 1.0)")
    g.add_argument("--se-mult", type=float, default=None,
                   help="...and by this many paired standard errors over the folds (default 0)")


def _thresholds(args: argparse.Namespace) -> Any:
    """The :class:`cnncodes.advise.Thresholds` with the options given on the command line."""
    import dataclasses

    from .advise import Thresholds

    over = {k: getattr(args, k) for k in ("small_per_class", "large_per_class", "large_total",
                                          "margin", "se_mult") if getattr(args, k) is not None}
    return dataclasses.replace(Thresholds(), **over)


def _add_advise(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("advise", help="which layer, and codes or fine-tuning? measured on your data",
                       epilog="The decision rule and its thresholds are documented at the top "
                              "of cnncodes/advise.py (module docstring).")
    p.add_argument("source", help="labelled images: a folder of class folders or a labelled list")
    p.add_argument("--report", default=None, help="folder for advice.json and advice.png")
    p.add_argument("--budget", default="5min",
                   help="time budget; it sets the sample size (default 5min; 90s, 1h, none)")
    p.add_argument("--sample", type=int, default=2000,
                   help="most images probed (default 2000); with --budget none the sample is "
                        "exactly this (reproducible)")
    p.add_argument("--folds", type=int, default=5, help="stratified CV folds (default 5)")
    p.add_argument("--probe", default="logreg", choices=["logreg", "ridge"],
                   help="linear probe: logreg (StandardScaler + LogisticRegression, small C grid; "
                        "default) or ridge (closed form, faster on big samples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the folds")
    p.add_argument("--head-sample", type=int, default=256,
                   help="images shown to the ImageNet head and BatchNorm check (default 256)")
    _add_threshold_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_backbone_options(p, layers_help="candidate layers (default: all of the backbone's)")
    _add_runtime_options(p)
    return p


def _cmd_advise(args: argparse.Namespace) -> int:
    from .advise import advise, format_advice
    from .data import DEFAULT_MAX_PIXELS

    th = _thresholds(args)
    adv = advise(args.source, backbone=args.backbone, weights=args.weights, layers=args.layers,
                 pooling=args.pooling, input_size=args.input_size, budget=args.budget,
                 max_images=args.sample, folds=args.folds, probe=args.probe, seed=args.seed,
                 head_sample=args.head_sample, thresholds=th, batch_size=args.batch_size,
                 num_workers=args.num_workers, device=args.device, precision=args.precision,
                 threads=args.threads, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
                 progress=not args.no_progress, report=args.report)
    if args.json:
        print(json.dumps(adv.to_dict(), indent=2))
        return 0
    print(format_advice(adv))
    if args.report:
        print(f"report    {args.report}/advice.json, {args.report}/advice.png")
    return 0


# ------------------------------------------------------------------------------------------ main

COMMANDS: dict[str, tuple[Callable[[Any], argparse.ArgumentParser],
                          Callable[[argparse.Namespace], int]]] = {
    "models": (_add_models, _cmd_models),
    "extract": (_add_extract, _cmd_extract),
    "info": (_add_info, _cmd_info),
    "train": (_add_train, _cmd_train),
    "evaluate": (_add_evaluate, _cmd_evaluate),
    "predict": (_add_predict, _cmd_predict),
    "baseline": (_add_baseline, _cmd_baseline),
    "finetune": (_add_finetune, _cmd_finetune),
    "advise": (_add_advise, _cmd_advise),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncodes",
        description="CNN codes from pretrained backbones, cached in HDF5, with linear classifiers.")
    parser.add_argument("--version", action="version", version=f"cnncodes {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, _cmd) in COMMANDS.items():
        add(sub).set_defaults(_cmd=_cmd)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("cnncodes")
    root.setLevel(level)
    if not any(getattr(h, "_cnncodes", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("cnncodes: %(message)s"))
        h._cnncodes = True  # type: ignore[attr-defined]
        root.addHandler(h)
        root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnncodes`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _setup_logging(args.verbose, args.quiet)
    from .store import StoreMismatchError
    from .weights import WeightsUnavailableError

    try:
        return int(args._cmd(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, StoreMismatchError,
            WeightsUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
