"""``cnncodes models``, ``extract`` and ``info``: the backbones and the codes store.
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
    print_failures,
    runtime_options,
)

log = logging.getLogger("cnncodes")


def add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list backbones, their layers and dims")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_models(args: argparse.Namespace) -> int:
    from ..backbones.registry import get_spec, list_backbones
    from ..backbones.weights import packaged_file

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
                   help="try again the files recorded as failures")
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
    from ..sources.data import DEFAULT_MAX_PIXELS

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


def cmd_extract(args: argparse.Namespace) -> int:
    from .._runtime import command_line
    from ..codes.extraction import ExtractResult, extract

    layers, advice = auto_layer(args)
    try:
        res = extract(
            args.source, args.output, backbone=backbone_options(args, layers=layers),
            runtime=runtime_options(args), extra_provenance=advice, dtype=args.dtype,
            compression=args.compression, overwrite=args.overwrite,
            retry_failed=args.retry_failed, command=command_line(args.argv),
            commit_every=args.commit_every)
    except KeyboardInterrupt as e:
        res = e.args[0] if e.args and isinstance(e.args[0], ExtractResult) else None
        kept = f" {res.rows} rows are saved in {res.path};" if res else ""
        print(f"\ninterrupted:{kept} run the same command again to continue.", file=sys.stderr)
        return 130
    from .._distributed import env_info
    if not env_info().is_main:  # under torchrun only rank 0 reports (failures: its own shard)
        return 0
    dims = ", ".join(f"{k} ({d}-d)" for k, d in res.layers.items())
    print(f"{res.path}: {res.rows} images; {res.new} extracted now, {res.skipped} already done; "
          f"layers {dims}")
    if res.new:
        print(f"throughput: {res.images_per_s:.1f} img/s ({res.seconds:.1f} s in all)")
    if res.failed:
        print_failures(res.failed, f"recorded in the store; `cnncodes info {res.path}` lists "
                                    "them")
    return 0


def add_info(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="what a code store holds: counts, layers, provenance, failures")
    p.add_argument("store", help="an .h5 file written by `cnncodes extract`")
    p.add_argument("--json", action="store_true")
    return p


def cmd_info(args: argparse.Namespace) -> int:
    from ..codes.store import FeatureStore

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
