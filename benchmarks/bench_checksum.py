"""Cost of the fletcher32 checksum on codes (issue 25): fold and load of a 20,000 x 1,280
float32 store, with and without ``store_layout.CHECKSUM``. Prints seconds (best of 3) and the ratio.

    PYTHONPATH=. python benchmarks/bench_checksum.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cnncodes import FeatureStore
from cnncodes.codes import store as store_mod
from cnncodes.codes import store_layout
from cnncodes.codes.journal import Journal, Part

N, D, PER_PART = 20_000, 1280, 1000
PROV = {"backbone": "bench", "weights": "random", "weights_sha256": "", "layers": ["pool"],
        "pooling": "avg", "preprocessing": {}, "dtype": "float32", "root": "/data",
        "layer_info": {"pool": {"node": "x", "kind": "pool", "pooling": "avg"}}}


def run(tmp: Path, checksum: bool, codes: np.ndarray, compression: str | None) -> tuple[float, float]:
    store_layout.CHECKSUM = checksum
    path = tmp / f"s-{checksum}-{compression}.h5"
    j = Journal(path)
    j.dir.mkdir(exist_ok=True)
    for s in range(0, N, PER_PART):
        j.write_part(Part(seq=s, paths=np.array([f"x/{i:06d}.jpg" for i in range(s, s + PER_PART)]),
                          labels=np.array(["a"] * PER_PART), codes={"pool": codes[s:s + PER_PART]},
                          fail_paths=np.array([], np.str_), fail_reasons=np.array([], np.str_)))
    t = time.perf_counter()
    store_mod.fold(path, j, PROV, compression=compression)
    t_fold = time.perf_counter() - t
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        X, _ = FeatureStore(path).load()
        best = min(best, time.perf_counter() - t)
    assert X.shape == (N, D)
    path.unlink()
    return t_fold, best


def main() -> None:
    codes = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    for compression in (None, "gzip") if "--gzip" in sys.argv else (None,):
        res = {}
        with tempfile.TemporaryDirectory(dir=".") as d:
            for checksum in (False, True, False, True):
                f, lo = run(Path(d), checksum, codes, compression)
                old = res.get(checksum, (float("inf"), float("inf")))
                res[checksum] = (min(old[0], f), min(old[1], lo))
        (f0, l0), (f1, l1) = res[False], res[True]
        print(f"compression={compression}: fold {f0:.2f} s -> {f1:.2f} s with fletcher32 "
              f"(x{f1 / f0:.2f}); load {l0:.3f} s -> {l1:.3f} s (x{l1 / l0:.2f}); "
              f"{N} x {D} float32 ({N * D * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
