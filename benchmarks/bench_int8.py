"""``--precision int8`` against fp32: whole-process speed, code fidelity and test accuracy on the
demo data set (``make demo``'s Animal-MNIST split, 50 + 50 images per class).

    python benchmarks/bench_int8.py                       # 112 and 224 px, 2 rounds
    python benchmarks/bench_int8.py --sizes 224 --rounds 3

For each input size: one warm-up round (exports the fp32 graph, quantises and caches the int8
one: its time is printed as the first-run cost), then ``--rounds`` rounds of ``cnncodes extract
train/ --overwrite`` in fp32 and in int8, alternated; every figure is a whole process (wall, CPU
seconds, peak RSS; medians). Then the codes' row cosine int8 vs fp32 (mean, min, every row), and
``cnncodes baseline`` in each precision (codes of train/ and test/, C by 5-fold CV on train/,
scored on test/): test accuracy, and its difference. A private export cache is used
(``--workdir``/cache), so nothing of the user's is read or written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))

from bench_processes import load_ours, timed  # noqa: E402


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnncodes", *args]


def cosines(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> np.ndarray:
    a = np.stack([ref[p] for p in ref]).astype(np.float64)
    b = np.stack([got[p] for p in ref]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)


def baseline_accuracy(data: Path, work: Path, size: int, precision: str, env: dict) -> dict:
    cache, report = work / f"bl-{size}-{precision}", work / f"bl-{size}-{precision}-report"
    cmd = cli("baseline", os.fspath(data), "--cache", os.fspath(cache), "--report",
              os.fspath(report), "--input-size", str(size), "--layer", "pool", "--no-progress",
              "--precision", precision, "--no-raw-baseline", "--json")
    t = timed(cmd, env)
    rep = json.loads((report / "report.json").read_text())
    row = next(r for r in rep["rows"] if "codes" in r["name"])
    return {"accuracy": row["accuracy"], "n_test": row["n_test"], "selection": row["selection"],
            **t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="112,224")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default=None, help="the demo split (made when missing)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-int8"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "animal-mnist"
    env = {**os.environ, "CNNCODES_CACHE": os.fspath(work / "cache")}
    if not (data / "train").is_dir():
        subprocess.run([sys.executable, "-m", "cnncodes.datasets", "animal-mnist", os.fspath(data),
                        "--train-per-class", "50", "--test-per-class", "50"], check=True, env=env)
    train = data / "train"
    n = sum(1 for p in train.rglob("*") if p.is_file())
    print(f"load average {os.getloadavg()[0]:.1f}; {n} train images, {os.cpu_count()} cores")
    results: dict = {"n": n, "rounds": args.rounds, "load_start": os.getloadavg()[0], "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",")]:
        out = {p: work / f"train-{size}-{p}.h5" for p in ("fp32", "int8")}

        def run(p: str, out: dict = out, size: int = size) -> dict:
            return timed(cli("extract", os.fspath(train), "-o", os.fspath(out[p]), "--overwrite",
                             "--input-size", str(size), "--layers", "stage4,pool",
                             "--no-progress", "--precision", p), env)

        first = {p: run(p) for p in ("fp32", "int8")}  # export / quantisation + cache
        times: dict[str, list[dict]] = {"fp32": [], "int8": []}
        for _ in range(args.rounds):
            for p in ("fp32", "int8"):
                times[p].append(run(p))
        row: dict = {"first_run": first}
        for p, ts in times.items():
            wall = statistics.median(t["wall_s"] for t in ts)
            cpu = statistics.median(t["cpu_s"] for t in ts)
            row[p] = {"wall_s": wall, "cpu_s": cpu, "img_s": n / wall, "cpu_ms_per_img": 1000 * cpu / n,
                      "rss_mb": max(t["rss_mb"] for t in ts), "runs": ts}
        ref, got = load_ours(out["fp32"]), load_ours(out["int8"])
        cos = cosines(ref, got)
        row["cosine_pool"] = {"mean": float(cos.mean()), "min": float(cos.min())}
        row["speedup_wall"] = row["fp32"]["wall_s"] / row["int8"]["wall_s"]
        row["speedup_cpu"] = row["fp32"]["cpu_s"] / row["int8"]["cpu_s"]
        from cnncodes import FeatureStore

        row["quantisation"] = FeatureStore(out["int8"]).provenance.get("quantisation")
        print(f"{size} px: fp32 {row['fp32']['img_s']:.1f} img/s ({row['fp32']['cpu_s']:.1f} CPU s, "
              f"{row['fp32']['rss_mb']:.0f} MB), int8 {row['int8']['img_s']:.1f} img/s "
              f"({row['int8']['cpu_s']:.1f} CPU s, {row['int8']['rss_mb']:.0f} MB): "
              f"{row['speedup_wall']:.2f}x wall, {row['speedup_cpu']:.2f}x CPU; first run "
              f"fp32 {first['fp32']['wall_s']:.1f} s, int8 {first['int8']['wall_s']:.1f} s; "
              f"cos int8 vs fp32 (pool, every row) mean {cos.mean():.4f} min {cos.min():.4f}",
              flush=True)
        if not args.no_baseline:
            acc = {p: baseline_accuracy(data, work, size, p, env) for p in ("fp32", "int8")}
            row["baseline"] = acc
            print(f"{size} px baseline test accuracy: fp32 {acc['fp32']['accuracy']}, int8 "
                  f"{acc['int8']['accuracy']}", flush=True)
        results["sizes"][size] = row
    results["load_end"] = os.getloadavg()[0]
    results["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
