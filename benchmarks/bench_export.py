"""``cnncodes export`` (block-streamed) next to the plain way (load everything, then NumPy /
pandas / pyarrow write it): seconds and peak memory per format.

    python benchmarks/bench_export.py                    # 20,000 rows x 1280 (synthetic codes)
    python benchmarks/bench_export.py --rows 70000 --formats npz parquet

A synthetic single-file store is built once (as benchmarks/bench_store_scale.py builds it); each
(format, way) then runs in a subprocess of its own (peak RSS: its ``VmHWM``).
"plain" is what a user would write without the export: ``X, y = store.load()`` and the paths in
memory, then ``np.savez`` / ``DataFrame.to_csv(float_format="%.9g")`` / ``pq.write_table``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def plain(store_path: Path, out: Path, fmt: str) -> None:
    import numpy as np

    from cnncodes.codes.reader import FeatureStore

    store = FeatureStore(store_path)
    X, y = store.load()
    paths = np.asarray(store.paths, dtype=str)
    if fmt == "npz":
        np.savez(out, codes=X, labels=y, paths=paths)
    elif fmt == "csv":
        import pandas as pd

        df = pd.DataFrame(X, columns=[f"code_{i}" for i in range(X.shape[1])])
        df.insert(0, "label", y)
        df.insert(0, "path", paths)
        df.to_csv(out, index=False, float_format="%.9g")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        codes = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
        pq.write_table(pa.table({"path": paths, "label": y, "codes": codes}), out)


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``: reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent that forked it)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return round(kb / 1024, 1)


def child(args: argparse.Namespace) -> None:
    store, out = Path(args.store), Path(args.out)
    t0 = time.perf_counter()
    if args.way == "cnncodes":
        from cnncodes.codes.reader import FeatureStore

        FeatureStore(store).export(out)
    else:
        plain(store, out, args.fmt)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mb": peak_rss_mb(),
                      "file_mb": round(out.stat().st_size / 2**20, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--formats", nargs="+", default=["npz", "csv", "parquet"])
    ap.add_argument("--ways", nargs="+", default=["cnncodes", "plain"],
                    help="cnncodes and/or plain (the ratio needs both)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--way", help=argparse.SUPPRESS)
    ap.add_argument("--fmt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from bench_store_scale import build

    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "codes.h5"
        b = build(store, args.rows, args.dim)
        print(f"{platform.node()}: {os.cpu_count()} cores; store {args.rows:,} x {args.dim} "
              f"float32 ({b['store_mb']:.0f} MiB, built in {b['build_s']} s)")
        print(f"{'format':<8} {'way':<9} {'seconds':>8} {'peak RSS MiB':>13} {'file MiB':>9}")
        for fmt in args.formats:
            res = {}
            for way in args.ways:
                out = Path(d) / f"{way}.{fmt}"
                p = subprocess.run([sys.executable, __file__, "--child", "--store", str(store),
                                    "--out", str(out), "--way", way, "--fmt", fmt],
                                   capture_output=True, text=True, check=True)
                r = res[way] = json.loads(p.stdout.strip().splitlines()[-1])
                out.unlink()
                print(f"{fmt:<8} {way:<9} {r['seconds']:>8} {r['peak_rss_mb']:>13} "
                      f"{r['file_mb']:>9}")
            if len(res) < 2:
                continue
            print(f"{fmt:<8} ratio     {res['cnncodes']['seconds'] / res['plain']['seconds']:>8.2f}"
                  f" {res['cnncodes']['peak_rss_mb'] / res['plain']['peak_rss_mb']:>13.2f}"
                  "   (cnncodes / plain)")


if __name__ == "__main__":
    main()
