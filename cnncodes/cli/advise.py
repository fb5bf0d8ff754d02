"""``cnncodes advise``: the quadrant, layer and next command for a labelled folder.

Parses, makes one :func:`cnncodes.workflows.advice.advise` call (or, with ``--backbones``, one
:func:`cnncodes.workflows.advice.rank_backbones` call) and prints; the text comes from
:func:`cnncodes.report.advice.format_advice` / :func:`~cnncodes.report.advice.format_ranking`. The
next commands, printed and in the JSON, are spelled with this CLI's own option names
(``args.command_flags``, read from the parsers by :func:`cnncodes.cli.common.command_flags`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..advisor import defaults as D
from ..options import ADVISE_BUDGET
from .common import (
    add_backbone_options,
    add_runtime_options,
    add_threshold_options,
    backbone_options,
    runtime_options,
    thresholds,
)


def add_advise(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("advise",
                       help="which layer, and codes or fine-tuning? measured on your data",
                       epilog="The decision rule and its thresholds are documented at the top "
                              "of cnncodes/advisor/rule.py (module docstring).")
    p.add_argument("source", help="labelled images: a folder of class folders or a labelled list")
    p.add_argument("--report", default=None, help="folder for advice.json and advice.png")
    p.add_argument("--overwrite", action="store_true",
                   help="write the --report into a folder another command wrote (only advise's "
                        "own files are replaced)")
    p.add_argument("--budget", default=ADVISE_BUDGET,
                   help=f"time budget; it sets the sample size (default {ADVISE_BUDGET}; 90s, 1h, "
                        "none)")
    p.add_argument("--sample", type=int, default=D.SAMPLE,
                   help=f"most images probed (default {D.SAMPLE}); with --budget none the sample "
                        "is exactly this (reproducible)")
    p.add_argument("--folds", type=int, default=D.FOLDS,
                   help=f"stratified CV folds (default {D.FOLDS})")
    p.add_argument("--probe", default=D.PROBE, choices=D.PROBES,
                   help="linear probe: logreg (StandardScaler + LogisticRegression, small C grid) "
                        f"or ridge (closed form, faster on big samples); default {D.PROBE}")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the folds")
    p.add_argument("--head-sample", type=int, default=D.HEAD_SAMPLE,
                   help="images shown to the ImageNet head and BatchNorm check (default "
                        f"{D.HEAD_SAMPLE})")
    add_threshold_options(p)
    p.add_argument("--backbones", default=None,
                   help="rank several backbones and their layers on this data within the budget "
                        "(comma-separated, e.g. mobilenet_v2,efficientnet_b0,resnet50; replaces "
                        "--backbone; the other backbone options apply to each)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_backbone_options(p, layers_help="candidate layers (default: all of the backbone's)")
    add_runtime_options(p)
    return p


def cmd_advise(args: argparse.Namespace) -> int:
    from .checks import require_backbones, require_sources

    require_sources(args.source)  # before the heavy imports: a wrong path fails at once
    require_backbones(args.backbone, args.backbones)
    if args.backbones:
        return _cmd_rank(args)
    from ..report.advice import advice_json, format_advice
    from ..workflows.advice import advise

    flags = args.command_flags
    adv = advise(args.source, backbone=backbone_options(args), runtime=runtime_options(args),
                 budget=args.budget, max_images=args.sample, folds=args.folds, probe=args.probe,
                 seed=args.seed, head_sample=args.head_sample, thresholds=thresholds(args),
                 report=args.report, overwrite=args.overwrite, flags=flags)
    if args.report:
        from .._runtime import command_line
        from ..report.html import write_advice_html

        html = write_advice_html(adv, args.report, command=command_line(), flags=flags)
    if args.json:
        print(json.dumps(advice_json(adv, flags), indent=2))
        return 0
    print(format_advice(adv, flags))
    if args.report:
        print(f"report    {html}, {os.path.join(args.report, 'advice.json')}, "
              f"{os.path.join(args.report, 'advice.png')}")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from ..report.advice import format_ranking, ranking_json
    from ..workflows.advice import rank_backbones

    flags = args.command_flags
    ranking = rank_backbones(args.source, backbones=args.backbones,
                             backbone=backbone_options(args), runtime=runtime_options(args),
                             budget=args.budget, max_images=args.sample, folds=args.folds,
                             probe=args.probe, seed=args.seed, head_sample=args.head_sample,
                             thresholds=thresholds(args), report=args.report, flags=flags)
    html = None
    if args.report:
        from .._runtime import command_line
        from ..report.html import write_ranking_html

        html = write_ranking_html(ranking, args.report, command=command_line(), flags=flags)
    if args.json:
        print(json.dumps(ranking_json(ranking, flags), indent=2))
        return 0
    print(format_ranking(ranking, flags))
    if html is not None:
        print(f"report    {html}, {os.path.join(args.report, 'ranking.json')}, "
              f"{os.path.join(args.report, '<backbone>', 'report.html')}")
    return 0
