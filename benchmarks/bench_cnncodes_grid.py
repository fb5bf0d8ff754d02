"""CNNCodes inside GridSearchCV: seconds per fit spent outside the classifier, with cached codes.

    python benchmarks/bench_cnncodes_grid.py                  # resnet18 random init, 64 px
    python benchmarks/bench_cnncodes_grid.py --backbone mobilenet_v2 --weights auto --json

A Pipeline(CNNCodes, LogisticRegression) is fitted once (computing and caching the codes), then
GridSearchCV over 5 C values (cv=3: 15 fits + the refit) runs on the same image paths. The plain
alternative is the same GridSearchCV of the classifier alone on the code array: what the grid
costs without images. Printed: the best of ``--repeat`` seconds of both, their difference per fit (what CNNCodes adds:
describe, cache look-ups), the network builds counted, and for scale one cold fit that builds the
network (what every fit cost before the network was shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

import cnncodes.codes.extractor as extractor
from cnncodes import CNNCodes
from cnncodes.linear.transformer import clear_memory_cache, clear_network_cache


def write_images(root: Path, n: int, k: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        base[..., y[i] % 3] = 255 - 20 * y[i]  # a class signal in one channel
        p = root / f"{i:05d}.png"
        Image.fromarray(base).resize((64, 64)).save(p)
        paths.append(str(p))
    return paths, y


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    builds: list[str] = []
    real = extractor.create_backbone

    def counting(name: str, **kw: object) -> object:
        builds.append(name)
        return real(name, **kw)

    extractor.create_backbone = counting
    Cs = [0.001, 0.01, 0.1, 1.0, 10.0]
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        paths, y = write_images(Path(tmp), a.n, 4)
        codes = CNNCodes(a.backbone, weights=a.weights, input_size=a.input_size, engine=a.engine)
        pipe = Pipeline([("codes", codes), ("clf", LogisticRegression(max_iter=2000))])
        t = time.perf_counter()
        pipe.fit(paths, y)
        cold = time.perf_counter() - t
        X = pipe.named_steps["codes"].transform(paths)
        n_builds = len(builds)
        plain, ours = float("inf"), float("inf")
        for _ in range(a.repeat):  # interleaved, best of each: the VM's noise is large
            t = time.perf_counter()
            GridSearchCV(LogisticRegression(max_iter=2000), {"C": Cs}, cv=3).fit(X, y)
            plain = min(plain, time.perf_counter() - t)
            t = time.perf_counter()
            GridSearchCV(pipe, {"clf__C": Cs}, cv=3).fit(paths, y)
            ours = min(ours, time.perf_counter() - t)
        grid_builds = len(builds) - n_builds
        # the cost of one fit that builds the network (every fit before sharing)
        clear_network_cache()
        t = time.perf_counter()
        CNNCodes(a.backbone, weights=a.weights, input_size=a.input_size, engine=a.engine,
                 ).fit(paths[:1]).transform(paths[:1])
        rebuild = time.perf_counter() - t
        clear_memory_cache()
    fits = len(Cs) * 3 + 1
    res = {"backbone": a.backbone, "weights": a.weights, "engine": a.engine,
           "input_size": a.input_size, "images": a.n, "fits": fits,
           "first_fit_s": round(cold, 3), "grid_pipeline_s": round(ours, 3),
           "grid_classifier_alone_s": round(plain, 3),
           "overhead_per_fit_s": round((ours - plain) / fits, 4),
           "builds_in_grid": grid_builds, "one_build_s": round(rebuild, 3),
           "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "python": sys.version.split()[0]}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{a.backbone} ({a.weights}, {a.input_size} px, engine {a.engine}), {a.n} images, "
              f"GridSearchCV 5 C x 3 folds + refit = {fits} fits")
        print(f"  pipeline grid (codes cached) : {ours:7.3f} s, {grid_builds} network builds")
        print(f"  classifier alone on codes    : {plain:7.3f} s")
        print(f"  CNNCodes overhead per fit    : {(ours - plain) / fits:7.4f} s "
              f"(ratio pipeline/classifier {ours / plain:.2f}x)")
        print(f"  one fit that builds the net  : {rebuild:7.3f} s (x{fits} = "
              f"{rebuild * fits:.1f} s if every fit rebuilt)")
    return res


if __name__ == "__main__":
    main()
