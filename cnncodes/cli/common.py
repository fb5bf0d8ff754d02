"""Pieces every command group shares: the user-facing error, option groups built from
:mod:`cnncodes.options`, and the failure printer.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

from ..errors import CnnCodesError
from ..options import (
    BACKBONE_FIELDS,
    DECODERS,
    ENGINES,
    JPEG_SCALINGS,
    POOLINGS,
    PRECISIONS,
    RUNTIME_FIELDS,
    BackboneOptions,
    RuntimeOptions,
    parse_flag,
)

log = logging.getLogger("cnncodes")


class CLIError(CnnCodesError):
    """A user-facing error: printed as ``error: ...`` with exit status 1."""


def int_or_none(s: str) -> int | None:
    return None if s.lower() in ("none", "auto", "") else int(s)


def add_backbone_options(p: argparse.ArgumentParser, *, layers_help: str | None = None) -> None:
    """``--backbone --weights --layers --pooling --input-size``: the fields of BackboneOptions."""
    d = BackboneOptions()
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=d.backbone,
                   help=f"registry name (see `cnncodes models`), timm/<model> or "
                        f"torchvision/<model>; default {d.backbone}")
    g.add_argument("--weights", default=d.weights,
                   help="auto (packaged/recommended), DEFAULT, IMAGENET1K_V1... (a timm tag for "
                        "timm/), a checkpoint path, or random")
    g.add_argument("--layers", "--layer", dest="layers", default=d.layers,
                   help=layers_help or "comma-separated layer names; default the backbone's "
                                       "last layer")
    g.add_argument("--pooling", default=d.pooling, choices=POOLINGS,
                   help="how spatial maps become vectors (none = flatten)")
    g.add_argument("--input-size", type=parse_flag("input_size"), default=d.input_size,
                   help="crop size in pixels (default from the weights, e.g. 224)")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--batch-size --workers --device --precision --threads --decoder --max-pixels
    --no-progress``: the fields of RuntimeOptions (progress is on by default in the CLI)."""
    d = RuntimeOptions()
    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=parse_flag("batch_size"), default=d.batch_size)
    g.add_argument("--workers", "--num-workers", dest="num_workers",
                   type=parse_flag("num_workers"),
                   default=d.num_workers, help="decoding processes (default from the core count)")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="compute precision (auto: fp16 on CUDA, fp32 on CPU; int8: extract on "
                        "the CPU, an ONNX Runtime graph quantised on the run's first 64 images, "
                        "refused below its fidelity bound)")
    g.add_argument("--threads", type=parse_flag("threads"), default=d.threads,
                   help="torch CPU threads")
    g.add_argument("--decoder", default=d.decoder, choices=DECODERS,
                   help="JPEG decoding: tensor (libjpeg-turbo on CPU, nvJPEG on CUDA, tensor "
                        "resize), pil, or auto (tensor unless the interpolation needs PIL)")
    g.add_argument("--max-pixels", type=parse_flag("max_pixels"), default=d.max_pixels,
                   help=f"decompression-bomb limit per image in pixels (default {d.max_pixels:,}; "
                        "0 = no limit)")
    g.add_argument("--engine", default=d.engine, choices=ENGINES,
                   help="inference engine (auto: onnxruntime on the CPU when its exported graph "
                        "gives the torch codes, torch on CUDA)")
    g.add_argument("--jpeg-scaling", default=d.jpeg_scaling, choices=JPEG_SCALINGS,
                   help="large JPEGs (phone photos): dct = decode at 1/2, 1/4 or 1/8 scale in the "
                        "DCT domain while keeping twice the resize (codes within cosine 0.999 of "
                        "a full decode, several times faster), off = full decode, auto = dct "
                        "unless the store or model being continued was made with full decoding")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def backbone_options(args: argparse.Namespace, **changes: Any) -> BackboneOptions:
    """The BackboneOptions of parsed ``args`` (``changes`` override fields, e.g. ``layers=``)."""
    from ..backbones.catalog import check_backbone_name

    values = {f: getattr(args, f) for f in BACKBONE_FIELDS}
    values.update(changes)
    if values.get("backbone") is not None:  # a mistyped name fails before torch is imported
        check_backbone_name(values["backbone"])
    return BackboneOptions(**values)


def runtime_options(args: argparse.Namespace, **changes: Any) -> RuntimeOptions:
    """The RuntimeOptions of parsed ``args``."""
    values = {f: getattr(args, f) for f in RUNTIME_FIELDS if f != "progress"}
    values["progress"] = not args.no_progress
    values.update(changes)
    return RuntimeOptions(**values)


def print_failures(failures: Sequence[tuple[str, str]], where: str, most: int = 20) -> None:
    """Print the list of files that could not be read (text from :mod:`cnncodes.report`)."""
    from ..report.text import format_failures

    print(format_failures(failures, where, most))


def pca_arg(s: str) -> int | float | None:
    if s.lower() in ("none", ""):
        return None
    return float(s) if "." in s or "e" in s.lower() else int(s)


def add_classifier_options(p: argparse.ArgumentParser, *, holdout: float = 0.0) -> None:
    """``--model --c-grid --cv --n-jobs --class-weight --l2 --no-standardize --pca --scoring
    --max-iter`` (the fields of ClassifierOptions) and ``--holdout --seed``."""
    from ..linear.options import (
        DEFAULT_C_GRID,
        DEFAULT_MODEL,
        FULL_C_GRID,
        MODELS,
        ClassifierOptions,
    )

    d = ClassifierOptions()
    g = p.add_argument_group("classifier")
    g.add_argument("--model", default=d.model, choices=MODELS,
                   help=f"logreg = LogisticRegression (lbfgs, multinomial); linearsvc = "
                        f"LinearSVC (default {DEFAULT_MODEL})")
    g.add_argument("--c-grid", default="default",
                   help="C values searched by CV: start:stop:count log-spaced (e.g. 1e-4:1e2:13), "
                        f"a comma list, 'default' ({DEFAULT_C_GRID}) or 'full' (the "
                        f"{FULL_C_GRID} linear-probe grid)")
    g.add_argument("--cv", type=int, default=d.cv,
                   help="stratified folds (reduced automatically for classes with fewer images)")
    g.add_argument("--n-jobs", type=int_or_none, default=d.n_jobs, help="parallel CV fits (-1 = "
                   "all cores; the GPU/array-API path runs them one after the other)")
    g.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                   help="balanced: weight classes inversely to their frequency")
    g.add_argument("--l2", action="store_true", default=d.l2, help="L2-normalise codes first")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   default=d.standardize, help="skip per-feature standardisation")
    g.add_argument("--pca", type=pca_arg, default=d.pca,
                   help="PCA to N components (int) or a variance fraction (e.g. 0.95)")
    g.add_argument("--scoring", default=d.scoring,
                   help="CV score (any sklearn scorer name, e.g. balanced_accuracy)")
    g.add_argument("--max-iter", type=int, default=d.max_iter, help="solver iterations")
    g.add_argument("--large-set", type=int, default=d.large_set, metavar="VALUES",
                   help="above this many training values (rows x features) C is chosen on one "
                        "stratified validation split with a warm-started C path instead of "
                        f"k-fold (default {d.large_set:,}; 0 = always k-fold)")
    g.add_argument("--holdout", type=float, default=holdout,
                   help="fraction of each class held out for testing (seeded, stratified; 0 = "
                        f"none; default {holdout:g})")
    g.add_argument("--seed", type=int, default=0, help="seed of the hold-out split and CV folds")


def classifier_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``classifier=`` (a ClassifierOptions from the parsed options) and ``seed=``, as
    :func:`cnncodes.train` and :func:`cnncodes.baseline` take them."""
    from ..linear.options import ClassifierOptions

    return dict(classifier=ClassifierOptions(
        model=args.model, c_grid=args.c_grid, cv=args.cv, n_jobs=args.n_jobs,
        class_weight=None if args.class_weight == "none" else args.class_weight, l2=args.l2,
        standardize=args.standardize, pca=args.pca, scoring=args.scoring,
        max_iter=args.max_iter, large_set=args.large_set), seed=args.seed)


def check_report(args: argparse.Namespace, inputs: Sequence[Any]) -> None:
    """Check ``--report`` (a folder, not an input) before the command's work."""
    from ..report.files import check_report_folder

    if args.report:
        check_report_folder(args.report, inputs=inputs, owner=args.command,
                            overwrite=getattr(args, "overwrite", False))


def emit_report(rep: dict[str, Any], args: argparse.Namespace, evaluation: Any,
                inputs: Sequence[Any] = ()) -> bool:
    """Write the report files if --report, print JSON (--json) or the table; True for the table."""
    from ..report.files import write_report
    from ..report.text import format_table

    if args.report:
        from .._runtime import command_line

        rep.setdefault("command", command_line())
        write_report(rep, args.report, evaluation=evaluation, inputs=inputs, owner=args.command,
                     overwrite=getattr(args, "overwrite", False))
    if args.json:
        print(json.dumps(rep, indent=2))
        return False
    print(format_table(rep))
    return True


def add_threshold_options(p: argparse.ArgumentParser,
                          title: str = "decision thresholds (see cnncodes.advisor.rule)") -> None:
    from ..advisor import defaults as D

    g = p.add_argument_group(title)
    g.add_argument("--small-per-class", type=int, default=None,
                   help=f"median images/class below which data is small (default "
                        f"{D.SMALL_PER_CLASS})")
    g.add_argument("--large-per-class", type=int, default=None,
                   help=f"median images/class from which data can be large (default "
                        f"{D.LARGE_PER_CLASS})")
    g.add_argument("--large-total", type=int, default=None,
                   help=f"total images also needed to be large (default {D.LARGE_TOTAL})")
    g.add_argument("--margin", type=float, default=None,
                   help=f"points an earlier layer must win by (default {D.MARGIN_POINTS:g})")
    g.add_argument("--se-mult", type=float, default=None,
                   help="...and by this many paired standard errors over the folds (default "
                        f"{D.SE_MULT:g})")
    g.add_argument("--leep-share", type=float, default=None,
                   help=f"similarity vote: LEEP share at least (default {D.SIM_LEEP_SHARE:g})")
    g.add_argument("--code-gain", type=float, default=None,
                   help="similarity vote: codes beat raw pixels by at least this many points "
                        f"(default {D.SIM_CODE_GAIN:g})")
    g.add_argument("--code-loss", type=float, default=None,
                   help="codes losing to raw pixels by more than this many points make the data "
                        f"dissimilar (default {D.SIM_CODE_LOSS:g})")


def thresholds(args: argparse.Namespace) -> Any:
    """The :class:`cnncodes.advisor.rule.Thresholds` with the options given on the command line."""
    import dataclasses

    from ..advisor.rule import Thresholds

    over = {k: getattr(args, k) for k in ("small_per_class", "large_per_class", "large_total",
                                          "margin", "se_mult", "leep_share", "code_gain",
                                          "code_loss") if getattr(args, k, None) is not None}
    return dataclasses.replace(Thresholds(), **over)


TRUST_NOTE = ("Model files of `cnncodes train` hold only arrays and JSON: loading one runs no "
              "code. Model files of older cnncodes are joblib pickles, which run code when "
              "loaded: they are read only with --trust-pickle, for files you made or trust.")


def add_trust_pickle(p: argparse.ArgumentParser) -> None:
    """``--trust-pickle``, on every command that loads a linear model file."""
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load a model file of older cnncodes (a joblib pickle): unpickling "
                        "runs any code the file holds, so only for files you made or trust; a "
                        "warning is printed")


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{python_name: --cli-option}`` for a (sub)parser's long options (``input_size`` ->
    ``--input-size``, ``num_workers`` -> ``--workers``, ``freeze`` -> ``--freeze``): the
    library's errors and warnings say the Python keyword; the CLI says the option the user typed
    (:func:`cli_message`)."""
    out: dict[str, str] = {}
    for a in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        longs = [o for o in a.option_strings if o.startswith("--")]
        if longs and a.dest not in ("help", "version"):
            out[a.dest] = longs[0]
    return out


def cli_message(message: str, names: dict[str, str]) -> str:
    """``message`` with each Python option name of ``names`` said as its CLI option:
    ``input_size=7`` -> ``--input-size 7``, ``input_size must`` -> ``--input-size must``. A name
    that is also a plain word (``freeze``, ``layers``) is replaced only in ``name=value``
    (``freeze=3`` -> ``--freeze 3``), never in prose."""
    import re

    if not names:
        return message
    words = sorted(names, key=len, reverse=True)
    snake = [n for n in words if "_" in n]
    plain = [n for n in words if "_" not in n]
    if snake:
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, snake)) + r")\b(=)?")
        message = pattern.sub(lambda m: names[m.group(1)] + (" " if m.group(2) else ""), message)
    if plain:
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, plain)) + r")=(?!=)")
        message = pattern.sub(lambda m: names[m.group(1)] + " ", message)
    return message


def command_flags(parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    """``{subcommand: {dest: option}}`` of ``parser``'s subcommands (each option's first spelling,
    ``output`` -> ``-o``): the names :func:`cnncodes.report.verdict_text.render` spells the
    advisor's next commands with, so they are always this parser's own."""
    out: dict[str, dict[str, str]] = {}
    for a in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if isinstance(a, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in a.choices.items():
                out[name] = {x.dest: x.option_strings[0] for x in sub._actions  # noqa: SLF001
                             if x.option_strings}
    return out
