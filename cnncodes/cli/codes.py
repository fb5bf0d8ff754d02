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
from ..stats import plural
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
    from ..backbones.catalog import ENTRIES, check_backbone_name, describe_catalog, describe_entry
    from ..report.store_info import format_models

    target = args.target
    if target is None:  # the registry is data: no torch, no torchvision
        rows = describe_catalog()
        print(json.dumps(rows, indent=2) if args.json else format_models(rows))
        return 0
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
    if args.nodes:
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
    check_backbone_name(target)  # an unknown name is refused before importing torch
    if target in ENTRIES:
        row = describe_entry(ENTRIES[target])
    else:  # timm/<name>, torchvision/<name>: only the library knows them
        from ..backbones.factory import describe_spec

        row = describe_spec(target)
    print(json.dumps(row, indent=2) if args.json else _format_spec(row))
    return 0


def add_extract(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="images -> CNN codes in an HDF5 cache (resumable)")
    p.add_argument("source", help="folder of class folders, flat folder, or .txt/.csv list")
    p.add_argument("-o", "--output", required=True, help="the .h5 store to create or continue")
    add_backbone_options(p)
    add_runtime_options(p)
    # None = not given: a rerun then takes the store's value (resolved in model_options)
    p.set_defaults(backbone=None, weights=None, layers=None, pooling=None, input_size=None)
    p.epilog = ("A rerun into an existing store needs only SOURCE and -o: the model options "
                "not given (--backbone --weights --layers --pooling --input-size --dtype) are "
                "the store's; a given one that differs is refused (-o another file, or "
                "--overwrite).")
    g = p.add_argument_group("store")
    g.add_argument("--dtype", default=None, choices=["float32", "float16"],
                   help="how codes are stored (default float32; a rerun: the store's)")
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


def model_options(args: argparse.Namespace) -> None:
    """Resolve the model options of ``extract`` in ``args``: on a rerun into an existing store
    (or its unfinished first extraction) every option not given on the command line takes the
    store's value (said on stderr when none was given), and a given option that asks for other
    codes is refused (:func:`cnncodes.codes.rerun.check_rerun`); else the defaults."""
    from ..codes.rerun import MODEL_FLAGS, check_rerun, recorded_options
    from ..options import BackboneOptions

    given = {f: getattr(args, f) for f in MODEL_FLAGS if getattr(args, f) is not None}
    recorded = None if args.overwrite else recorded_options(args.output)
    if recorded is None:
        d = BackboneOptions()
        values = {**{f: getattr(d, f) for f in MODEL_FLAGS if f != "dtype"}, "dtype": "float32",
                  **given}
    else:
        values = check_rerun(args.output, given, recorded)
        taken = [f for f in MODEL_FLAGS if f not in given]
        if taken:
            said = " ".join(f"{MODEL_FLAGS[f]} {recorded[f]}" for f in taken
                            if recorded[f] is not None)
            log.info("%s with the store's settings: %s", "continuing" if not given else
                     "for the options not given, continuing", said)
    for f, v in values.items():
        setattr(args, f, v)


def auto_layer(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """``--layers auto``: the advised layer and the evidence to record (else the layers as
    given)."""
    if args.layers is None or args.layers.strip().lower() != "auto":
        return args.layers, None
    from .._distributed import env_info
    from ..report.store_info import format_auto_layer
    from ..workflows.advice import choose_layer

    # under torchrun every rank must pick the same layer: no speed-dependent sample size there
    budget = None if env_info().enabled else args.budget
    # the probe runs with the extraction's own options objects (every field, decoder and engine)
    layer, evidence = choose_layer(
        args.source, backbone=backbone_options(args, layers=None), runtime=runtime_options(args),
        budget=budget, reuse_from=None if args.overwrite else args.output,
        flags=args.command_flags)
    evidence = {**evidence, "next_command": next_after_extract(evidence.get("next_command"),
                                                               args.output)}
    if env_info().is_main:
        print(format_auto_layer(layer, evidence))
    return layer, {"advice": evidence}


def next_after_extract(command: str | None, output: str) -> str | None:
    """The advisor's next commands after ``extract --layers auto -o OUTPUT``: the extraction
    itself is left out (it is running now) and ``codes.h5`` becomes ``OUTPUT``, the store it
    writes (the fine-tuning route, with no store, is kept as it is)."""
    import shlex

    if not command:
        return command
    parts = [shlex.split(c) for c in command.split(" && ")]
    rest = [p for p in parts if p[:2] != ["cnncodes", "extract"]]
    if not rest or len(rest) == len(parts):
        return command
    return " && ".join(shlex.join([output if (a == "codes.h5" and p[:2] == ["cnncodes", "train"])
                                   else a for a in p]) for p in rest)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..outputs import check_output
    from ..sources.folders import check_source_exists

    check_source_exists(args.source)
    check_output(args.output, inputs=(args.source,), expect="store", overwrite=args.overwrite,
                 option="-o", writes=False)  # a rerun with nothing to do writes nothing
    model_options(args)
    backbone_options(args)  # refuses an unknown --backbone before the heavy imports
    from .._distributed import env_info
    from .._runtime import command_line
    from ..codes.extraction import ExtractResult, extract
    from ..codes.options import StoreOptions
    from ..report.store_info import (
        format_extract_result,
        format_interrupted,
        format_nothing_extracted,
    )

    layers, advice = auto_layer(args)
    try:
        res = extract(
            args.source, args.output, backbone=backbone_options(args, layers=layers),
            runtime=runtime_options(args), extra_provenance=advice,
            store=StoreOptions(
                dtype=args.dtype, compression=args.compression, overwrite=args.overwrite,
                retry_failed=args.retry_failed, repair=args.repair, verify=args.verify,
                add_source=args.add_source, keep_missing=args.keep_missing,
                commit_every=args.commit_every),
            command=command_line(args.argv))
    except KeyboardInterrupt as e:
        partial = e.args[0] if e.args and isinstance(e.args[0], ExtractResult) else None
        print(format_interrupted(partial), file=sys.stderr)
        return 130
    if env_info().is_main:  # under torchrun only rank 0 reports (failures: its own shard)
        print(format_extract_result(res))
        if advice and advice["advice"].get("next_command") and not res.nothing_extracted:
            print(f"next: {advice['advice']['next_command']}")
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
    from .checks import require_store

    require_store(args.store)  # before h5py: a wrong path fails at once
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
    from ..codes.unfinished import first_run_text

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
    from .checks import require_store

    require_store(args.store)
    from ..codes.store import FeatureStore, compact

    before = FeatureStore(args.store).layout()
    counts = compact(args.store)
    print(f"{args.store}: {plural(counts['rows'], 'row')}, "
          f"{plural(counts['failures'], 'failure')}; "
          f"{before['segments'] or 1} file(s) of {before['bytes'] / 2**20:.1f} MiB -> one file of "
          f"{counts['written'] / 2**20:.1f} MiB")
    return 0
