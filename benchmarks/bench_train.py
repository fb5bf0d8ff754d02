"""Model selection speed: the NumPy path vs scikit-learn's array API on torch tensors, same data.

    python benchmarks/bench_train.py                              # 5000 x 1280, 10 classes, CPU
    python benchmarks/bench_train.py --n 20000 --d 2048 --device cuda   # the issue's GPU figure
    python benchmarks/bench_train.py --threads 2 --json

Both runs call ``cnncodes.fit_codes`` (StandardScaler + LogisticRegression lbfgs, C chosen by
stratified k-fold GridSearchCV, refit on all rows) on the same synthetic codes: non-negative,
ReLU-like vectors around one random centre per class, float32 like stored codes, with a class
signal weak enough that the CV curve is not flat (default: CV accuracy about 0.8, best C 1e-3). Printed: seconds of each path, the ratio, the
chosen C of each, the largest CV-score and coefficient differences and the share of identical
predictions on held-out rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import cnncodes  # first: sets SCIPY_ARRAY_API before scipy is imported  # noqa: I001
from cnncodes.linear.selection import fit_codes
from cnncodes.sources.splits import stratified_holdout


def make_codes(n: int, d: int, k: int, *, signal: float, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    X = centres[y] * signal + rng.normal(0.0, 1.0, (n, d)).astype(np.float32)
    return np.maximum(X, 0.0).astype(np.float32), y.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="training rows (default 5000)")
    ap.add_argument("--d", type=int, default=1280, help="code dimension (default 1280)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--c-grid", default="1e-4:1e-2:3", help="default 3 C values, 1e-4..1e-2")
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--signal", type=float, default=0.1,
                    help="class signal per dimension (default 0.1: CV accuracy about 0.8, "
                         "best C inside the grid)")
    ap.add_argument("--device", default=None,
                    help="array-API device (default cuda when available, else cpu-torch)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/torch threads for both paths (default: fit_codes' own choice, "
                         "1 thread up to 20M values)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu-torch")
    X, y = make_codes(args.n + args.n // 4, args.d, args.classes, signal=args.signal)
    X = X.astype(args.dtype)
    tr, te = stratified_holdout(y, test_size=0.2, seed=0)
    threads = args.threads
    runs = {}
    for name, dev in (("numpy", "cpu"), ("array-api", device)):
        t0 = time.perf_counter()
        pipe, sel = fit_codes(X[tr], y[tr], c_grid=args.c_grid, cv=args.cv, device=dev,
                              threads=threads, max_iter=1000)
        seconds = time.perf_counter() - t0
        if sel["compute"]["engine"] != ("numpy" if dev == "cpu" else "array-api"):
            print(f"{name}: ran as {sel['compute']}", file=sys.stderr)
            return 1
        runs[name] = {"seconds": round(seconds, 3), "best_C": sel["best_C"],
                      "cv_mean": sel["cv_mean"], "pred": pipe.predict(X[te]),
                      "coef": pipe.named_steps["clf"].coef_,
                      "accuracy": float((pipe.predict(X[te]) == y[te]).mean())}
    a, b = runs["numpy"], runs["array-api"]
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                   + (f", {torch.cuda.get_device_name()}" if "cuda" in device else ""),
        "shape": [len(tr), args.d], "classes": args.classes, "c_grid": args.c_grid,
        "cv": args.cv, "dtype": args.dtype, "threads": threads, "array_api_device": device,
        "numpy_s": a["seconds"], "array_api_s": b["seconds"],
        "speedup": round(a["seconds"] / b["seconds"], 2),
        "best_C": [a["best_C"], b["best_C"]],
        "max_cv_diff": float(np.max(np.abs(np.subtract(a["cv_mean"], b["cv_mean"])))),
        "max_coef_diff": float(np.max(np.abs(a["coef"] - b["coef"]))),
        "same_predictions": float(np.mean(a["pred"] == b["pred"])),
        "test_accuracy": [a["accuracy"], b["accuracy"]],
        "versions": {"cnncodes": cnncodes.__version__, "torch": torch.__version__,
                     "scikit-learn": __import__("sklearn").__version__},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['shape'][0]} x {args.d} {args.dtype} codes, {args.classes} classes, "
          f"C grid {args.c_grid}, {args.cv} folds, {threads or 'default'} threads "
          f"({out['machine']})")
    print(f"  NumPy (cpu)           {a['seconds']:8.2f} s   best C {a['best_C']:.3g}   "
          f"test acc {a['accuracy']:.4f}")
    print(f"  array API ({device:<9}) {b['seconds']:8.2f} s   best C {b['best_C']:.3g}   "
          f"test acc {b['accuracy']:.4f}")
    print(f"  ratio NumPy / array API: {out['speedup']:.2f}x; identical predictions "
          f"{out['same_predictions']:.2%}; max |CV diff| {out['max_cv_diff']:.2e}; "
          f"max |coef diff| {out['max_coef_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
