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
    return p


def _cmd_extract(args: argparse.Namespace) -> int:
    from .data import DEFAULT_MAX_PIXELS
    from .extract import ExtractResult, command_line, extract

    try:
        res = extract(
            args.source, args.output, backbone=args.backbone, weights=args.weights,
            layers=args.layers, pooling=args.pooling, input_size=args.input_size,
            batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
            precision=args.precision, dtype=args.dtype, compression=args.compression,
            threads=args.threads, overwrite=args.overwrite, retry_failed=args.retry_failed,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            progress=not args.no_progress, command=command_line(args.argv))
    except KeyboardInterrupt as e:
        res = e.args[0] if e.args and isinstance(e.args[0], ExtractResult) else None
        kept = f" {res.rows} rows are saved in {res.path};" if res else ""
        print(f"\ninterrupted:{kept} run the same command again to continue.", file=sys.stderr)
        return 130
    dims = ", ".join(f"{k} ({d}-d)" for k, d in res.layers.items())
    print(f"{res.path}: {res.rows} images; {res.new} extracted now, {res.skipped} already done; "
          f"layers {dims}")
    if res.new:
        print(f"throughput: {res.images_per_s:.1f} img/s ({res.seconds:.1f} s in all)")
    if res.failed:
        print(f"{len(res.failed)} files could not be read (recorded in the store; "
              f"`cnncodes info {res.path}` lists them):")
        for p, r in res.failed[:20]:
            print(f"  {p}: {r}")
        if len(res.failed) > 20:
            print(f"  ... and {len(res.failed) - 20} more")
    return 0


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
    print(f"  versions   " + " ".join(f"{k} {x}" for k, x in v.items()))
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


# ------------------------------------------------------------------------------------------ main

COMMANDS: dict[str, tuple[Callable[[Any], argparse.ArgumentParser],
                          Callable[[argparse.Namespace], int]]] = {
    "models": (_add_models, _cmd_models),
    "extract": (_add_extract, _cmd_extract),
    "info": (_add_info, _cmd_info),
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
