"""``cnncodes models``, ``extract`` and ``info``: the backbones and the codes store.

Parse, call the library, print the strings :mod:`cnncodes.report.store_info` makes of the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..options import AUTO_LAYER_BUDGET
from .common import (
    add_backbone_options,
    add_runtime_options,
    backbone_options,
    runtime_options,
)

log = logging.getLogger("cnncodes")


def add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list backbones, their layers and dims",
                       description="Without arguments: the registry. `models timm [PATTERN]`: "
                       "timm's models with stages and dims; `models torchvision`: torchvision's "
                       "classification models; `models timm/<name>` or `models "
                       "torchvision/<name> [--nodes]`: one model's layers (or graph nodes).")
    p.add_argument("target", nargs="?", default=None,
                   help="timm, torchvision, or one backbone (timm/<name>, torchvision/<name>, a "
                        "registry name)")
    p.add_argument("pattern", nargs="?", default=None,
                   help="with `timm`: a name pattern (convnext*, or a word matched anywhere)")
    p.add_argument("--nodes", action="store_true",
                   help="with torchvision/<name>: graph nodes usable as --layers node:<name>")
    p.add_argument("--limit", type=int, default=40,
                   help="with `timm`: read the stages of at most this many matches (default 40)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _format_timm(rows: list[dict[str, Any]], total: int) -> str:
    lines = [f"{'backbone':<42} {'size':>4} {'pool':>5}  stages (name:dim/stride)"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backbone']:<42} (cannot read its stages: {r['error']})")
            continue
        st = " ".join(f"{s['layer']}:{s['dim']}/{s['stride']}" for s in r["stages"])
        size = f"{r['input_size']}{'!' if r.get('fixed_input_size') else ''}"
        lines.append(f"{r['backbone']:<42} {size:>4} {r['pool']:>5}  {st}")
    if total > len(rows):
        lines.append(f"... {total - len(rows)} more of {total} matches (narrow the pattern or "
                     "raise --limit)")
    if any(r.get("fixed_input_size") for r in rows):
        lines.append("size! = the model runs only at that input size (`cnncodes models "
                     "timm/<name>` lists the sizes that work)")
    lines.append("random init works offline; pretrained tags need the Hugging Face hub cache or "
                 "a download (`cnncodes models timm/<name>` shows the tags)")
    return "\n".join(lines)


def _format_spec(row: dict[str, Any]) -> str:
    where = ("on this machine" if row["offline"]
             else "not on this machine: downloaded when online, else --weights random or a file")
    lines = [f"{row['backbone']} ({row['family']}, {row.get('library', '')}); default layer "
             f"{row['default_layer']}; weights auto = {row['default_weights']} ({where})"]
    for k, v in row["layers"].items():
        stride = f" stride {v['stride']}" if "stride" in v else ""
        lines.append(f"  {k:<10} {v['dim']:>6}-d {v['kind']:<6} {v['depth']:<7}{stride:<10} "
                     f"{v.get('node', '')}")
    if row.get("input_sizes"):
        lines.append(f"input sizes that work (weights auto): {row['input_sizes']}")
    if row.get("fixed_sizes"):
        lines.append("fixed size per weights: " + ", ".join(
            f"{k.rpartition('.')[2]} {v} px" for k, v in row["fixed_sizes"].items()))
    if row.get("weights"):
        lines.append(f"weights: {', '.join(row['weights'][:20])}"
                     f"{' ...' if len(row['weights']) > 20 else ''}")
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from ..backbones.factory import describe_backbones, describe_spec
    from ..report.store_info import format_models

    target = args.target
    if target == "timm":
        from ..backbones.timm_models import list_timm

        rows, total = list_timm(args.pattern, limit=args.limit)
        print(json.dumps({"models": rows, "matches": total}, indent=2) if args.json
              else _format_timm(rows, total))
        return 0
    if target == "torchvision":
        from ..backbones.tv_models import classification_models

        names = [f"torchvision/{n}" for n in classification_models()]
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    if target is not None and args.nodes:
        from ..backbones.tv_models import describe_nodes
        from ..errors import OptionError

        if not target.startswith("torchvision/"):
            raise OptionError(f"--nodes lists the graph nodes of torchvision/<name>. Got "
                              f"{target!r} instead.")
        nodes = describe_nodes(target[len("torchvision/"):])
        print(json.dumps(nodes, indent=2) if args.json else "\n".join(
            f"{n['layer'] or '(' + n['node'] + ')':<60} {'x'.join(map(str, n['shape']))}"
            for n in nodes))
        return 0
    if target is not None:
        row = describe_spec(target)
        print(json.dumps(row, indent=2) if args.json else _format_spec(row))
        return 0
    rows = describe_backbones()
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    return 0


def add_extract(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="images -> CNN codes in an HDF5 cache (resumable)")
    p.add_argument("source", help="folder of class folders, flat folder, or .txt/.csv list")
    p.add_argument("-o", "--output", required=True, help="the .h5 store to create or continue")
    add_backbone_options(p)
    add_runtime_options(p)
    g = p.add_argument_group("store")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    g.add_argument("--compression", default=None, choices=["gzip", "lzf", "none"])
    g.add_argument("--overwrite", action="store_true",
                   help="discard an existing store made with other options")
    g.add_argument("--retry-failed", action="store_true",
                   help="try again the files recorded as failures (a failed file that changed "
                        "since is always tried again)")
    g.add_argument("--verify", choices=["stat", "hash"], default=None,
                   help="how a rerun recognises a changed file: stat (size + mtime, default) or "
                        "hash (SHA-256 of the bytes: reads every file each run; for file systems "
                        "whose mtimes cannot be trusted). Default: the store's own mode")
    g.add_argument("--repair", action="store_true",
                   help="read every chunk of the store first and extract again the rows whose "
                        "codes fail their checksum (bit rot; `cnncodes info --verify` lists them)")
    g.add_argument("--add-source", action="store_true",
                   help="add this source's images to a store made from another source")
    g.add_argument("--keep-missing", action="store_true",
                   help="keep (flagged) the rows of files gone from the source instead of "
                        "dropping them")
    g.add_argument("--commit-every", type=float, default=600.0, metavar="SECONDS",
                   help="fold finished batches into the .h5 this often during a long run, so it "
                        "is readable (marked incomplete) while extraction goes on (default 600)")
    g = p.add_argument_group("--layers auto (choose the layer from the data, see `advise`)")
    g.add_argument("--budget", default=AUTO_LAYER_BUDGET,
                   help=f"time budget of the layer choice (default {AUTO_LAYER_BUDGET}; e.g. 90s, "
                        "5min)")
    return p


def auto_layer(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """``--layers auto``: the advised layer and the evidence to record (else the layers as given)."""
    if args.layers is None or args.layers.strip().lower() != "auto":
        return args.layers, None
    from .._distributed import env_info
    from ..advisor.run import choose_layer
    from ..report.store_info import format_auto_layer

    # under torchrun every rank must pick the same layer: no speed-dependent sample size there
    budget = None if env_info().enabled else args.budget
    runtime = runtime_options(args)
    layer, evidence = choose_layer(
        args.source, backbone=args.backbone, weights=args.weights, pooling=args.pooling,
        input_size=args.input_size, budget=budget,
        reuse_from=None if args.overwrite else args.output, batch_size=runtime.batch_size,
        num_workers=runtime.num_workers, device=runtime.device, precision=runtime.precision,
        threads=runtime.threads, max_pixels=runtime.max_pixels,
        progress=runtime.progress)
    if env_info().is_main:
        print(format_auto_layer(layer, evidence))
    return layer, {"advice": evidence}


def cmd_extract(args: argparse.Namespace) -> int:
    from ..outputs import check_output
    from ..sources.folders import check_source_exists

    check_source_exists(args.source)
    check_output(args.output, inputs=(args.source,), expect="store", overwrite=args.overwrite,
                 option="-o", writes=False)  # a rerun with nothing to do writes nothing
    from .._distributed import env_info
    from .._runtime import command_line
    from ..codes.extraction import ExtractResult, extract
    from ..report.store_info import (
        format_extract_result,
        format_interrupted,
        format_nothing_extracted,
    )

    layers, advice = auto_layer(args)
    try:
        res = extract(
            args.source, args.output, backbone=backbone_options(args, layers=layers),
            runtime=runtime_options(args), extra_provenance=advice, dtype=args.dtype,
            compression=args.compression, overwrite=args.overwrite,
            retry_failed=args.retry_failed, repair=args.repair, command=command_line(args.argv),
            commit_every=args.commit_every, verify=args.verify, add_source=args.add_source,
            keep_missing=args.keep_missing)
    except KeyboardInterrupt as e:
        partial = e.args[0] if e.args and isinstance(e.args[0], ExtractResult) else None
        print(format_interrupted(partial), file=sys.stderr)
        return 130
    if env_info().is_main:  # under torchrun only rank 0 reports (failures: its own shard)
        print(format_extract_result(res))
        if res.nothing_extracted:
            print(format_nothing_extracted(res), file=sys.stderr)
    return 1 if res.nothing_extracted else 0


def add_info(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="what a code store holds: counts, layers, provenance, failures")
    p.add_argument("store", help="an .h5 file written by `cnncodes extract`")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk of codes and labels and check its checksum (bit rot); "
                        "exit 1 naming the damaged rows")
    return p


def cmd_info(args: argparse.Namespace) -> int:
    from ..codes.store import FeatureStore
    from ..errors import StoreDamagedError
    from ..report.store_info import format_store_info

    first = _first_run(args)
    if first is not None:
        return first
    store = FeatureStore(args.store)
    info = store.info()
    errors = store.verify() if args.verify else []
    if args.verify:
        info["verified_checksums"] = not errors
    print(json.dumps(info, indent=2, default=str) if args.json else format_store_info(info))
    if errors:
        raise StoreDamagedError(" ".join(str(e) for e in errors))
    return 1 if info.get("damaged") else 0


def _first_run(args: argparse.Namespace) -> int | None:
    """``info`` on a store a first extraction is still creating: what it has journaled (exit 0);
    None when the store exists or no extraction is running."""
    from pathlib import Path

    from ..codes.journal import Journal
    from ..codes.reader import first_run_text

    if Path(args.store).exists():
        return None
    progress = Journal(args.store).progress()
    if not progress or not progress["running"]:
        return None
    if args.json:
        print(json.dumps({"path": args.store, "store": None, "in_progress": progress}, indent=2))
    else:
        print(f"{args.store}: not created yet.{first_run_text(progress)}")
    return 0


def add_compact(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("compact", help="rewrite a segmented code store as one file")
    p.add_argument("store", help="an .h5 file written by `cnncodes extract`")
    return p


def cmd_compact(args: argparse.Namespace) -> int:
    from ..codes.store import FeatureStore, compact

    before = FeatureStore(args.store).layout()
    counts = compact(args.store)
    print(f"{args.store}: {counts['rows']} rows, {counts['failures']} failures; "
          f"{before['segments'] or 1} file(s) of {before['bytes'] / 2**20:.1f} MiB -> one file of "
          f"{counts['written'] / 2**20:.1f} MiB")
    return 0
