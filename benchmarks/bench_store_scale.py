"""Cost of an append (a run that adds images, or a commit point) as the store grows.

    python benchmarks/bench_store_scale.py                       # 10k, 100k, 1M rows of 256-d
    python benchmarks/bench_store_scale.py --rows 10000 20000 --dim 1280 --json

For each size N: a single-file store of N synthetic float32 codes is built through the journal
(parts of 20,000 rows, one fold), then ``--appends`` folds of ``--batch`` new rows each are timed
the way extraction does them (a journal part, then :func:`cnncodes.codes.store.fold`), first with
the default policy (a store over 8 MiB takes the new rows as a segment), then one append with the
old behaviour (``compact=True``: the store rewritten as one file). Printed per append: seconds,
bytes the process wrote (``wchar`` of /proc/self/io: every write() of HDF5 and the journal part),
the fold's own count of bytes written, the segment count; per size: the peak RSS of the append
process after the segment appends (and after the loads and the rewrite), seconds to load all codes
from the segmented store and from the rewritten one.
Each size runs in a subprocess of its own (build, then appends), so peaks do not add up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnncodes.codes.journal import Journal, Part  # noqa: E402
from cnncodes.codes.reader import FeatureStore, store_bytes  # noqa: E402
from cnncodes.codes.store import fold  # noqa: E402

CHUNK = 20_000


def prov(dim: int) -> dict:
    return {"backbone": "synthetic", "weights": "random", "weights_sha256": "",
            "layers": ["pool"], "pooling": "avg", "preprocessing": {}, "dtype": "float32",
            "root": "/data", "layer_info": {"pool": {"node": "x", "kind": "pool",
                                                     "pooling": "avg"}}}


def part(seq: int, start: int, n: int, dim: int, rng: np.random.Generator) -> Part:
    paths = np.array([f"class{(start + i) % 100:03d}/img{start + i:08d}.jpg" for i in range(n)])
    return Part(seq=seq, paths=paths, labels=np.array([p[:8] for p in paths]),
                codes={"pool": rng.standard_normal((n, dim), dtype=np.float32)},
                fail_paths=np.array([], dtype=np.str_), fail_reasons=np.array([], dtype=np.str_),
                sizes=rng.integers(10_000, 200_000, n), mtimes=rng.integers(1, 10**18, n),
                hashes=np.full(n, "", dtype=np.str_), fail_sizes=np.zeros(0, np.int64),
                fail_mtimes=np.zeros(0, np.int64), fail_hashes=np.array([], dtype=np.str_))


def wchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def build(out: Path, rows: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    j = Journal(out)
    j.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for s in range(0, rows, CHUNK):
        j.write_part(part(s, s, min(CHUNK, rows - s), dim, rng))
    fold(out, j, prov(dim), compact=True)
    return {"build_s": round(time.perf_counter() - t0, 1), "store_mb": store_bytes(out) / 2**20}


def appends(out: Path, rows: int, dim: int, n: int, batch: int) -> dict:
    rng = np.random.default_rng(1)
    j = Journal(out)
    res: dict = {"appends": []}
    start = rows
    for k in range(n + 1):
        old = k == n  # the last one: the old behaviour, a rewrite of the whole store
        j.dir.mkdir(parents=True, exist_ok=True)
        w0, t0 = wchar(), time.perf_counter()
        j.write_part(part(start, start, batch, dim, rng))
        counts = fold(out, j, prov(dim), compact=old)
        res["appends"].append({
            "mode": "rewrite" if old else "segment", "seconds": round(time.perf_counter() - t0, 3),
            "process_wrote_mb": round((wchar() - w0) / 2**20, 3),
            "fold_wrote_mb": round(counts["written"] / 2**20, 3), "rows": counts["rows"],
            "segments": FeatureStore(out).layout()["segments"]})
        start += batch
        if k == n - 1:
            res["appends_peak_rss_mb"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            t0 = time.perf_counter()
            FeatureStore(out).load()
            res["load_segmented_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    FeatureStore(out).load()
    res["load_one_file_s"] = round(time.perf_counter() - t0, 2)
    return res


def one(args: argparse.Namespace) -> None:
    out = Path(args.dir) / "codes.h5"
    if args.phase == "build":
        r = build(out, args.one, args.dim)
    else:
        r = appends(out, args.one, args.dim, args.appends, args.batch)
    r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--appends", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    results = []
    for n in args.rows:
        d = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
        try:
            r = {"rows": n, "dim": args.dim, "batch": args.batch}
            for phase in ("build", "append"):
                cmd = [sys.executable, __file__, "--one", str(n), "--phase", phase, "--dir",
                       str(d), "--dim", str(args.dim), "--batch", str(args.batch),
                       "--appends", str(args.appends)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r.update({f"{phase}_{k}" if k == "peak_rss_mb" else k: v
                          for k, v in json.loads(out).items()})
            results.append(r)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        if not args.json:
            report(r)
    if args.json:
        print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores",
                          "results": results}, indent=2))


def report(r: dict) -> None:
    print(f"\n{r['rows']:,} rows x {r['dim']}-d float32: store {r['store_mb']:.0f} MiB "
          f"(built in {r['build_s']} s); appends of {r['batch']} rows:")
    print(f"  {'mode':8} {'seconds':>8} {'wrote MiB':>10} {'fold MiB':>9} {'segments':>8}")
    for a in r["appends"]:
        print(f"  {a['mode']:8} {a['seconds']:8.3f} {a['process_wrote_mb']:10.3f} "
              f"{a['fold_wrote_mb']:9.3f} {a['segments']:8d}")
    print(f"  peak RSS during the segment appends {r['appends_peak_rss_mb']} MiB (with the loads "
          f"and the rewrite {r['append_peak_rss_mb']} MiB; build {r['build_peak_rss_mb']} MiB)")
    print(f"  load all codes: {r['load_segmented_s']} s segmented, {r['load_one_file_s']} s one "
          "file")


if __name__ == "__main__":
    main()
