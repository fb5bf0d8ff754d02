"""Where the memory of ``cnncodes audit`` goes: the peak RSS of each phase of
:func:`cnncodes.audit.audit_arrays`, run one after the other in one process on the clustered
1,280-d codes of ``benchmarks/audit_scale.py``.

Before each phase the kernel's high-water mark is reset (``/proc/self/clear_refs``, Linux), so
each figure is that phase's own peak (what is alive from earlier phases included); ``held`` is the
RSS once the phase is done.

    nice python benchmarks/audit_memory.py [--rows 30000] [--method faiss] [--skip labels]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> int:
    from audit_scale import codes

    from cnncodes.audit.embedding import map_2d, sample_rows
    from cnncodes.audit.findings import duplicate_groups, find_outliers
    from cnncodes.audit.labels import find_label_issues
    from cnncodes.audit.neighbours import normalize, top_k

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--method", default="auto", choices=("auto", "exact", "faiss"))
    p.add_argument("--skip", default="", help="comma list of phases to skip: labels,map")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    X, y = codes(a.rows)
    mb = 1 / 2**20
    print(f"{a.rows} x {X.shape[1]} float32 codes: {X.nbytes * mb:.0f} MB; RSS "
          f"{_status('VmRSS') * mb:.0f} MB after making them")
    state: dict = {}

    def phase(name: str, fn) -> None:
        _reset()
        t0 = time.perf_counter()
        fn()
        print(f"{name:<12} peak {_status('VmHWM') * mb:7.0f} MB  held "
              f"{_status('VmRSS') * mb:7.0f} MB  {time.perf_counter() - t0:7.1f} s", flush=True)

    phase("normalize", lambda: state.update(A=normalize(X, center=X.mean(axis=0))))
    phase("search", lambda: state.update(nb=top_k(state["A"], state["A"], 10, same=True,
                                                   method=a.method)))
    phase("groups", lambda: duplicate_groups(state["nb"]))
    phase("outliers", lambda: find_outliers(state["A"], y, 10, state["nb"]))
    del state["A"]
    if "labels" not in skip:
        phase("labels", lambda: find_label_issues(X, y, n_classes=10))
    if "map" not in skip:
        phase("map", lambda: map_2d(X[sample_rows(len(X), 2000)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
