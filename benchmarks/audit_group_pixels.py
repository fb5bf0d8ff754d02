"""The pixel check of the training set's near-duplicate groups (:mod:`cnncodes.audit.groups`):
counts, and its time against the plain alternative (:func:`cnncodes.audit.pixels.pixel_difference`
on each pair alone, each image decoded once per pair it is in) on the same pairs.

    nice python benchmarks/audit_group_pixels.py TRAIN.h5 [--test TEST.h5] [--per-class 600]
        [--test-per-class 100] [--layer pool]

``--per-class``: a random subset of that many training images per class (seed 0). Prints one JSON
line. The first pass reads the images' files cold unless the page cache holds them: the figure
printed second (the check again, then the plain way) compares the two warm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _subset(y: np.ndarray, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
    if not per_class:
        return np.arange(len(y))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                   for c in np.unique(y[y >= 0])]))


def main() -> int:
    from cnncodes.audit import AuditSettings, audit_arrays
    from cnncodes.audit.groups import check_groups
    from cnncodes.audit.pixels import pair_differences
    from cnncodes.codes.store import FeatureStore

    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("--test", default=None)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--layer", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tr = FeatureStore(args.train)
    layer = tr._layer(args.layer)
    X, y = tr.load(layer)
    keep = _subset(y, args.per_class, rng)
    paths = [os.fspath(p) for p in tr.abspaths()]
    X, y, paths = X[keep], y[keep], [paths[i] for i in keep]
    test = None
    if args.test:
        te = FeatureStore(args.test)
        Xt, yt = te.load(layer)
        tk = _subset(yt, args.test_per_class, rng)
        tpaths = [os.fspath(p) for p in te.abspaths()]
        test = (Xt[tk], yt[tk], [tpaths[i] for i in tk])
    t0 = time.perf_counter()
    res = audit_arrays(X, y, tr.classes, paths, test=test, overwrite_X=True,
                       settings=AuditSettings(label_issues=False, map_method=None,
                                              test_accuracy=False))
    wall = time.perf_counter() - t0
    gc = res.group_check
    assert gc is not None
    t0 = time.perf_counter()
    again = check_groups(res.groups, gc.a, gc.b, paths)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = pair_differences([paths[i] for i in gc.a], [paths[i] for i in gc.b])
    plain_s = time.perf_counter() - t0
    s = res.summary()
    out = {k: s[k] for k in ("rows", "test_rows", "duplicate_groups", "duplicate_images",
                             "duplicate_groups_same_picture", "duplicate_images_same_picture",
                             "duplicate_extra_copies_same_picture", "leaks", "leaks_same_picture",
                             "neighbour_search")}
    out.update(pairs=int(len(gc.a)), largest_group=max((len(g) for g in res.groups), default=0),
               seconds={k: round(v, 2) for k, v in res.seconds.items()}, audit_wall_s=round(wall, 1),
               group_check_warm_s=round(ours, 3), plain_pairs_warm_s=round(plain_s, 3),
               plain_over_ours=round(plain_s / ours, 1) if ours > 0 else None,
               same_as_plain=bool(np.array_equal(again.diff, plain, equal_nan=True)),
               load_avg_1min=round(os.getloadavg()[0], 1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
