"""``cnncodes finetune``: training the network end to end (and the escalation comparison).

Parse -> one library call (:func:`cnncodes.finetune` or :func:`cnncodes.escalate`) -> print
(:mod:`cnncodes.report.finetune`). Options are :class:`~cnncodes.FinetuneConfig` fields and the
fields of its ``runtime`` (:class:`~cnncodes.RuntimeOptions`) that training uses; only those given
on the command line reach the library, so ``--resume`` alone continues with the saved ones.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..finetuning.config import (
    OPTIMIZERS,
    OPTION_NAMES,
    SCHEDULES,
    STATES,
    FinetuneConfig,
    finetune_runtime,
)
from ..options import TRAIN_PRECISIONS, parse_flag

_D = FinetuneConfig()
_R = finetune_runtime()


def crop_scale(s: str) -> tuple[float, float]:
    lo, _, hi = s.partition(",")
    try:
        return float(lo), float(hi or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--crop-scale wants MIN,MAX (e.g. 0.35,1); got {s!r}") from None


def add_finetune(sub: Any) -> argparse.ArgumentParser:
    # argument_default=SUPPRESS: only options given on the command line reach the library, so
    # `--resume` alone continues a run with its saved options.
    p = sub.add_parser("finetune", help="fine-tune a backbone end to end (states predict, "
                       "head-only, full); resumable; --escalation compares with the linear probe",
                       argument_default=argparse.SUPPRESS,
                       epilog="Defaults: see cnncodes.FinetuneConfig (SGD momentum 0.9, "
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
    g.add_argument("--backbone", help=f"registry name (see `cnncodes models`), timm/<model> or "
                                      f"torchvision/<model> (default {_D.backbone})")
    g.add_argument("--weights", help="auto, a weights name, a checkpoint or RUN/model.pt, random")
    g.add_argument("--input-size", type=parse_flag("input_size"),
                   help="crop size in pixels (default from the weights)")
    g.add_argument("--state", choices=STATES,
                   help="full (default), head-only (backbone frozen), predict (evaluate "
                        "--weights RUN/model.pt, no training)")
    g.add_argument("--freeze", type=int,
                   help=f"freeze the first K stages (default {_D.freeze})")
    _add_optimisation(p.add_argument_group("optimisation"))
    _add_data_and_runtime(p)
    return p


def _add_optimisation(g: Any) -> None:
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=parse_flag("batch_size"),
                   help=f"images per step per process (default {_R.batch_size}); under torchrun "
                        "each of the N processes takes this many, so the global batch is N x "
                        "this (the learning rate is not rescaled)")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, help="base learning rate of the pretrained layers")
    g.add_argument("--head-lr-mult", type=float,
                   help=f"head lr = lr x this (default {_D.head_lr_mult:g})")
    g.add_argument("--layer-decay", type=float,
                   help="layer-wise lr decay per stage from the top (e.g. 0.7)")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--step-size", type=int, help="epochs between steps (schedule step)")
    g.add_argument("--gamma", type=float, help="step factor (schedule step)")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm")
    g.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without validation improvement")


def _add_data_and_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random resized crop / flip")
    g.add_argument("--crop-scale", type=crop_scale, metavar="MIN,MAX",
                   help="random resized crop area range (default 0.35,1)")
    g.add_argument("--no-hflip", dest="hflip", action="store_false")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", choices=TRAIN_PRECISIONS,
                   help="auto: fp16 AMP on CUDA, fp32 on CPU")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    g.add_argument("--workers", "--num-workers", dest="num_workers",
                   type=parse_flag("num_workers"))
    g.add_argument("--threads", type=parse_flag("threads"), help="torch CPU threads")
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true",
                   help="under torchrun on GPUs: SyncBatchNorm (batch statistics over all "
                        "processes) for the layers that train; frozen stages keep theirs")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms during the run")
    g.add_argument("--max-pixels", type=parse_flag("max_pixels"),
                   help=f"decompression-bomb limit per image in pixels (default {_R.max_pixels:,}; "
                        "0 = no limit)")


def cmd_finetune(args: argparse.Namespace) -> int:
    from .checks import require_backbones, require_sources

    require_sources(args.source, getattr(args, "test", None))  # before the heavy imports
    require_backbones(getattr(args, "backbone", None))  # unset options are absent here
    from .._distributed import env_info
    from .._runtime import command_line
    from ..report.finetune import format_escalation, format_finetune

    # the options given (unset ones are absent): make_config sorts them into FinetuneConfig and
    # its RuntimeOptions; a RuntimeOptions built here would carry defaults that --resume refuses
    options = {k: v for k, v in vars(args).items() if k in OPTION_NAMES}
    common = dict(test=getattr(args, "test", None), resume=args.resume,
                  overwrite=args.overwrite, progress=not args.no_progress,
                  command=command_line())
    if args.escalation:
        from ..workflows.compare import escalate

        esc = escalate(args.source, args.output, **common, **options)
        print(esc.json_path.read_text() if args.json else format_escalation(esc))
        return 0
    from ..errors import FinetuneDivergedError
    from ..finetuning.run import finetune
    from ..report.html import write_finetune_html

    try:
        res = finetune(args.source, args.output, **common, **options)
    except FinetuneDivergedError:  # its report.json is written: the page shows what happened
        if env_info().is_main:
            write_finetune_html(args.output)
        raise
    if not env_info().is_main:  # under torchrun rank 0 reports for the job
        return 0
    write_finetune_html(res.output)
    print(json.dumps(res.report, indent=2, default=str) if args.json else format_finetune(res))
    return 0
