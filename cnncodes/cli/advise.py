"""``cnncodes advise``: the quadrant, layer and next command for a labelled folder.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..options import ADVISE_BUDGET
from .common import add_backbone_options, add_runtime_options, add_threshold_options, thresholds

log = logging.getLogger("cnncodes")


def add_advise(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("advise", help="which layer, and codes or fine-tuning? measured on your data",
                       epilog="The decision rule and its thresholds are documented at the top "
                              "of cnncodes/advise.py (module docstring).")
    p.add_argument("source", help="labelled images: a folder of class folders or a labelled list")
    p.add_argument("--report", default=None, help="folder for advice.json and advice.png")
    p.add_argument("--budget", default=ADVISE_BUDGET,
                   help=f"time budget; it sets the sample size (default {ADVISE_BUDGET}; 90s, 1h, none)")
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
    add_threshold_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_backbone_options(p, layers_help="candidate layers (default: all of the backbone's)")
    add_runtime_options(p)
    return p


def cmd_advise(args: argparse.Namespace) -> int:
    from ..advisor.advise import advise, format_advice
    from ..options import DEFAULT_MAX_PIXELS

    th = thresholds(args)
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
