"""Time and peak memory of ``cnncodes audit`` at 10k and 100k rows of 1,280-d codes.

Random but clustered codes (non-negative like ReLU-pooled codes: 10 classes of 20 clusters each,
0.5% of rows planted as near-copies of another row, 2% of labels flipped), each measurement in its
own child process (peak RSS = the child's ``ru_maxrss``):

* ``search``: every row's 10 nearest rows, exact blocked NumPy search against faiss HNSW (with
  faiss' agreement with the exact top-1 on 1,000 rows);
* ``map``: PCA to 50 then scikit-learn t-SNE against umap-learn, on 10,000 rows;
* ``audit``: the whole :func:`cnncodes.audit.audit_arrays` (method auto, label issues, map of
  5,000 rows).

    nice python benchmarks/audit_scale.py [--rows 10000,100000] [--skip map]
Writes benchmarks/results/audit_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def codes(n: int, d: int = 1280, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.6, 1.0, (200, d)).astype(np.float32)
    cl = rng.integers(0, 200, n)
    X = np.empty((n, d), np.float32)
    for s in range(0, n, 10_000):
        e = min(n, s + 10_000)
        X[s:e] = np.maximum(0, centres[cl[s:e]] + rng.normal(0, 0.9, (e - s, d)))
    y = cl // 20
    dup = rng.choice(n, size=n // 200, replace=False)
    src = rng.choice(n, size=len(dup), replace=False)
    X[dup] = X[src] + rng.normal(0, 0.02, (len(dup), d)).astype(np.float32)
    y[dup] = y[src]
    flip = rng.choice(n, size=n // 50, replace=False)
    y[flip] = (y[flip] + rng.integers(1, 10, len(flip))) % 10
    return X, y.astype(np.int64)


def child(what: str, n: int, method: str) -> dict:
    from cnncodes.audit.neighbours import normalize, top_k

    X, y = codes(n)
    t0 = time.perf_counter()
    out: dict = {"what": what, "rows": n, "method": method}
    if what == "search":
        A = normalize(X, center=X.mean(axis=0))
        nb = top_k(A, A, 10, same=True, method=method)
        out["seconds"] = time.perf_counter() - t0
        if method == "faiss":
            q = np.random.default_rng(1).choice(n, 1000, replace=False)
            ex = top_k(A[q], A, 2, method="exact")
            own = ex.index[:, 0] == q
            want = np.where(own, ex.index[:, 1], ex.index[:, 0])
            out["top1_agreement_with_exact"] = float((nb.index[q, 0] == want).mean())
    elif what == "map":
        from cnncodes.audit.embedding import map_2d

        map_2d(X, method=method)
        out["seconds"] = time.perf_counter() - t0
    else:
        from cnncodes.audit.run import audit_arrays

        res = audit_arrays(X, y, [str(i) for i in range(10)], [f"{i}.png" for i in range(n)],
                           method=method)
        out["seconds"] = time.perf_counter() - t0
        out["stages"] = {k: round(v, 1) for k, v in res.seconds.items()}
        out["search"] = res.method
        out["groups"] = len(res.groups)
        out["label_issues"] = int(len(res.label_issues.rows))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = ru.ru_maxrss / 1024
    out["cpu_s"] = ru.ru_utime + ru.ru_stime  # wall time depends on the other jobs of the VM
    out["load_avg_1min"] = __import__("os").getloadavg()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="10000,100000")
    ap.add_argument("--skip", default="", help="comma list of search,map,audit to skip")
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "N", "METHOD"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return 0
    skip = set(args.skip.split(",")) - {""}
    plan = []
    for n in (int(r) for r in args.rows.split(",")):
        if "search" not in skip:
            plan += [("search", n, "exact"), ("search", n, "faiss")]
        if "audit" not in skip:
            plan.append(("audit", n, "auto"))
    if "map" not in skip:
        plan += [("map", 10_000, "tsne"), ("map", 10_000, "umap")]
    results = []
    out = Path(__file__).parent / "results" / "audit_scale.json"
    for what, n, method in plan:
        r = subprocess.run([sys.executable, __file__, "--child", what, str(n), method],
                           capture_output=True, text=True)
        if r.returncode:
            res = {"what": what, "rows": n, "method": method, "error": r.stderr[-500:]}
        else:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        results.append(res)
        print(json.dumps(res), flush=True)
        out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
