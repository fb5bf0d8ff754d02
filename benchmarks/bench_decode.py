"""Decode + resize + crop throughput: the PIL path vs the tensor path (cnncodes.sources.tensor_decode).

    python benchmarks/bench_decode.py                       # 256 JPEGs 500x375, CPU (+ CUDA)
    python benchmarks/bench_decode.py --n 512 --repeats 5 --batch-size 64 --workers 2

Same files for every path (benchmarks/bench_extract.py's make_jpegs: crops of scikit-learn's sample
photos, 500x375, quality 90). Timed, per path, as the median of ``--repeats`` passes over all files:

* ``pil``          load_rgb + preprocess_pil per file (what ImageDataset does), 1 thread
* ``tensor-cpu``   read bytes + header routing + batched decode_jpeg + uint8 resize/crop, 1 thread
* ``tensor-cuda``  the same with decode_jpeg(device="cuda") + float resize on the GPU (if present)
* ``loader-*``     the two DataLoader pipelines end to end with ``--workers`` processes

Also printed: the max / mean absolute difference (uint8) of each tensor path from the PIL path.
The files are read once before timing starts (page cache warm), so disk speed is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_extract import make_jpegs  # noqa: E402

from cnncodes.sources.folders import open_source
from cnncodes.sources.images import load_rgb
from cnncodes.sources.loader import ImageDataset, make_loader, preprocess_pil
from cnncodes.sources.preprocessing import IMAGENET, Preprocessing
from cnncodes.sources.tensor_decode import (  # noqa: E402
    BytesDataset,
    decode_batch,
    gpu_min_side,
    make_bytes_loader,
    read_item,
)


def timed(fns: dict[str, Callable[[], Any]], repeats: int
          ) -> dict[str, tuple[float, list[float], Any]]:
    """Median seconds of each function; the functions take turns, so that a change in the load
    of a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), v, outs[k]) for k, v in times.items()}


def run_pil(paths: list[Path], pp: Preprocessing) -> torch.Tensor:
    return torch.stack([preprocess_pil(load_rgb(p), pp) for p in paths])


def run_tensor(paths: list[Path], pp: Preprocessing, batch_size: int, device: str) -> torch.Tensor:
    out = []
    for s in range(0, len(paths), batch_size):
        items = [read_item(i, p, pp, cpu_below=0 if device == "cpu" else gpu_min_side(pp))
                 for i, p in enumerate(paths[s:s + batch_size], s)]
        out.append(decode_batch(items, pp, device=device).images)
    if device != "cpu":
        torch.cuda.synchronize()
    return torch.cat(out)


def run_loader(src, pp: Preprocessing, batch_size: int, workers: int, kind: str) -> int:
    if kind == "pil":
        loader = make_loader(ImageDataset(src, pp), range(len(src)), batch_size=batch_size,
                             num_workers=workers)
    else:
        loader = make_bytes_loader(BytesDataset(src, pp), range(len(src)), batch_size=batch_size,
                                   num_workers=workers)
    return sum(len(b.indices) for b in loader)


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    d = (a.cpu().int() - b.cpu().int()).abs()
    return int(d.max()), float(d.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="for the loader-* rows (0 = skip)")
    ap.add_argument("--interpolation", default="bilinear", choices=["bilinear", "bicubic"])
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-bench"))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    pp = Preprocessing(IMAGENET.resize, IMAGENET.crop, IMAGENET.mean, IMAGENET.std,
                       args.interpolation)
    folder = make_jpegs(Path(args.workdir) / f"jpegs{args.n}", args.n)
    src = open_source(folder)
    paths = [src.abspath(i) for i in range(len(src))]
    for p in paths:  # warm the page cache
        p.read_bytes()
    print(f"{len(paths)} JPEGs 500x375 -> {pp.resize}/{pp.crop} {pp.interpolation}, "
          f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    res: dict[str, object] = {"n": len(paths), "interpolation": pp.interpolation}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = timed({"pil": lambda: run_pil(paths, pp),
                   "cpu": lambda: run_tensor(paths, pp, args.batch_size, "cpu")}, args.repeats)
    finally:
        torch.set_num_threads(old_threads)
    (t_pil, all_pil, ref), (t_cpu, all_cpu, cpu) = r["pil"], r["cpu"]
    rows = [("pil", t_pil, all_pil, None), ("tensor-cpu", t_cpu, all_cpu, diff(cpu, ref))]
    if torch.cuda.is_available():
        run_tensor(paths[:args.batch_size], pp, args.batch_size, "cuda")  # init nvJPEG, kernels
        t_gpu, all_gpu, gpu = timed({"gpu": lambda: run_tensor(paths, pp, args.batch_size,
                                                                "cuda")}, args.repeats)["gpu"]
        rows.append(("tensor-cuda", t_gpu, all_gpu, diff(gpu, ref)))
        rows.append(("cuda-vs-cpu", float("nan"), [], diff(gpu, cpu)))
    if args.workers:
        r = timed({kind: (lambda k=kind: run_loader(src, pp, args.batch_size, args.workers, k))
                   for kind in ("pil", "tensor")}, args.repeats)
        for kind in ("pil", "tensor"):
            t, allt, n = r[kind]
            assert n == len(paths)
            rows.append((f"loader-{kind} ({args.workers} workers)", t, allt, None))
    for name, t, allt, d in rows:
        rate = len(paths) / t if t == t else float("nan")
        spread = " ".join(f"{len(paths) / x:.0f}" for x in allt)
        extra = f"   vs PIL: max |diff| {d[0]}, mean {d[1]:.4f}" if d else ""
        if name == "cuda-vs-cpu":
            print(f"{name:<28}{'':>26}   vs CPU tensor: max |diff| {d[0]}, mean {d[1]:.4f}")
            continue
        print(f"{name:<28}{rate:8.1f} img/s (runs: {spread}){extra}", flush=True)
        res[name] = {"img_s": rate, "runs_img_s": [len(paths) / x for x in allt],
                     **({"max_abs_diff": d[0], "mean_abs_diff": d[1]} if d else {})}
    res["speedup_tensor_cpu_vs_pil"] = t_pil / t_cpu
    print(f"tensor-cpu / pil (1 thread): {t_pil / t_cpu:.2f}x")
    if args.workers:
        ratio = r["pil"][0] / r["tensor"][0]
        res["speedup_loader_tensor_vs_pil"] = ratio
        print(f"loader-tensor / loader-pil ({args.workers} workers): {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
