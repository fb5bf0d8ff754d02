"""``cnncodes export``: a store's codes as .npz/.csv/.parquet (:meth:`FeatureStore.export`), and
``cnncodes cache``: the ONNX export cache listed, pruned or cleared
(:mod:`cnncodes.codes.cache_files`). Neither imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .linear import add_allow_incomplete


def add_export(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="write a store's codes, labels, paths and provenance as .npz/.csv/.parquet",
        description="Write one layer of a code store for your own code: codes, label index, "
                    "class name and path of each image, the class list and the store's "
                    "provenance (backbone, weights, layer, input size, versions) as JSON. .npz: "
                    "arrays codes/labels/paths/classes/provenance; .csv: path,label,class,"
                    "code_0.. with the provenance in <file>.csv.json; .parquet (needs pyarrow): "
                    "columns path/label/class/codes, provenance in the schema metadata "
                    "'cnncodes'.")
    p.add_argument("store", help="an .h5 file written by `cnncodes extract`")
    p.add_argument("-o", "--output", required=True,
                   help="the file to write: .npz, .csv or .parquet (the extension picks)")
    p.add_argument("--layer", default=None,
                   help="the layer to export (default: the store's default layer)")
    add_allow_incomplete(p)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from ..codes.export_codes import csv_sidecar, export_format, require_pyarrow
    from ..outputs import check_output
    from .checks import require_store

    kind = export_format(args.output)  # refuse a bad extension before reading anything
    require_store(args.store)  # before numpy and h5py: a wrong path fails at once
    if kind == "parquet":
        require_pyarrow()
    check_output(args.output, inputs=(args.store,), option="-o")
    if kind == "csv":
        check_output(csv_sidecar(args.output), inputs=(args.store,), expect="json")
    from ..codes.reader import FeatureStore

    res = FeatureStore(args.store).export(args.output, args.layer,
                                          allow_incomplete=args.allow_incomplete)
    print(f"{res['path']}: {res['rows']} rows x {res['dim']} codes of layer {res['layer']}, "
          f"labels, paths, classes and provenance ({res['format']})"
          + (f"; provenance also in {res['files'][1]}" if len(res["files"]) > 1 else ""))
    return 0


def add_cache(sub: Any) -> argparse.ArgumentParser:
    from ..codes.cache_files import CACHE_ENV

    p = sub.add_parser(
        "cache", help="list, prune or clear the ONNX export cache",
        description="The exported ONNX graphs of `--engine onnxruntime` (per user: "
                    f"${CACHE_ENV}, else $XDG_CACHE_HOME/cnncodes, else ~/.cache/cnncodes). "
                    "Without options: each entry with its size, model and last use. Only the "
                    "cache's own entries are ever deleted (never a symlink's target).")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prune", action="store_true",
                   help="delete the entries matching --older-than and/or --larger-than")
    g.add_argument("--clear", action="store_true", help="delete every entry")
    p.add_argument("--older-than", default=None, metavar="AGE",
                   help="with --prune: last used longer ago than AGE (30d, 12h, 90min, 2w)")
    p.add_argument("--larger-than", default=None, metavar="SIZE",
                   help="with --prune: larger than SIZE (100MB, 1.5GB, 500KiB, bytes)")
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")
    p.add_argument("--json", action="store_true", help="machine-readable listing")
    return p


def _confirm(prompt: str) -> bool:
    """Ask on the terminal; False when stdin is not one (then --yes is needed)."""
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _format_entries(root: str, entries: list[dict[str, Any]], title: str = "") -> str:
    """The table of cache entries: size, last use, model, file name."""
    import time

    from ..codes.cache_files import human_age, human_size

    now = time.time()
    total = human_size(sum(e["bytes"] for e in entries))
    lines = [f"{root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total}"
             + (f" {title}" if title else "")]
    if entries:
        lines.append(f"  {'size':>9}  {'last use':<12}  {'model':<32} file")
    for e in entries:
        lines.append(f"  {human_size(e['bytes']):>9}  {human_age(now - e['last_used']):<12}  "
                     f"{e['model']:<32} {Path(e['path']).name}")
    return "\n".join(lines)


def cmd_cache(args: argparse.Namespace) -> int:
    from ..codes import cache_files as cf
    from ..errors import OptionError

    age = cf.parse_age(args.older_than) if args.older_than is not None else None
    size = cf.parse_size(args.larger_than) if args.larger_than is not None else None
    if (age is not None or size is not None) and not args.prune:
        raise OptionError("--older-than and --larger-than select what --prune deletes: add "
                          "--prune (or leave them out to list the cache).")
    if args.prune and age is None and size is None:
        raise OptionError("--prune needs --older-than AGE and/or --larger-than SIZE (e.g. "
                          "--prune --older-than 30d); --clear deletes every entry.")
    root = cf.cache_dir()
    entries = cf.list_entries(root)
    if not (args.prune or args.clear):
        if args.json:
            print(json.dumps({"cache": str(root), "entries": entries}, indent=2, default=str))
        else:
            print(_format_entries(str(root), entries))
        return 0
    chosen = entries if args.clear else cf.select(entries, older_than=age, larger_than=size)
    if not chosen:
        print(f"{root}: nothing to delete ({len(entries)} entries, none matching).")
        return 0
    total = sum(e["bytes"] for e in chosen)
    print(_format_entries(str(root), chosen, title="to delete"))
    if not args.yes and not _confirm(f"delete these {len(chosen)} entries "
                                     f"({cf.human_size(total)})? [y/N] "):
        raise OptionError(f"Nothing deleted from {root}: confirm at the prompt, or pass --yes "
                          "(needed when stdin is not a terminal).")
    removed = cf.remove_entries(root, chosen)
    print(f"deleted {len(removed)} entries ({cf.human_size(sum(e['bytes'] for e in removed))}) "
          f"from {root}")
    return 0
