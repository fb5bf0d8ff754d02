"""Extraction throughput: cnncodes.codes.extraction vs a plain torchvision loop, same images, same run.

    python benchmarks/bench_extract.py --backbone mobilenet_v2 --n 200 --input-size 224
    python benchmarks/bench_extract.py --backbone resnet50 --weights random --n 100
    python benchmarks/bench_extract.py --memory 100,1000      # peak RSS of ours at two sizes
    python benchmarks/bench_extract.py --engine onnxruntime,torch --threads 2 --workers 1

The plain loop is what a user writes by hand: ImageFolder + PIL transforms (Resize, CenterCrop,
ToTensor, Normalize) + DataLoader + an fp32 model with its classifier replaced by Identity. Both see
the same JPEG files (generated from scikit-learn's sample photos: random crops of real photographs,
500x375 like the reference figures). Printed: img/s of both, the ratio, peak memory, and the minimum
cosine similarity between our codes and the plain fp32 codes (row by row, same paths).
``--engine a,b`` times ours once per engine in every round (plain, a, b, plain, a, b: the second
round is reported, the first warms the file cache and the ONNX export cache) and prints each engine's
ratio to the plain loop and to the first engine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T


def make_jpegs(folder: Path, n: int, size=(500, 375), seed: int = 0) -> Path:
    """``n`` JPEGs (in 2 class folders) cut from the real sample photos, resized to ``size``."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    have = len(list(folder.rglob("*.jpg"))) if folder.exists() else 0
    if have == n:
        return folder
    for i in range(n):
        d = folder / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        ph = photos[i % len(photos)]
        h, w = ph.shape[:2]
        ch, cw = rng.integers(h // 2, h), rng.integers(w // 2, w)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(ph[y:y + ch, x:x + cw]).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(d / f"{i:06d}.jpg", quality=90)
    return folder


def plain_model(backbone: str, weights: str) -> nn.Module:
    from cnncodes.backbones import build_model, get_spec
    from cnncodes.backbones.factory import RANDOM_INIT_SEED
    from cnncodes.backbones.weights import load_weights, resolve_weights

    spec = get_spec(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # weights="random": the same net cnncodes builds
        model = build_model(spec)
    load_weights(model, spec, resolve_weights(spec, weights))
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = last.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model.eval()


def run_plain(folder: Path, backbone: str, weights: str, input_size: int | None,
              batch_size: int, workers: int, device: str) -> tuple[float, dict[str, np.ndarray]]:
    from cnncodes.backbones import get_spec
    from cnncodes.backbones.weights import resolve_weights

    t0 = time.perf_counter()  # both timings include building the model and listing the files
    pp = resolve_weights(get_spec(backbone), weights).preprocessing.with_input_size(input_size)
    tf = T.Compose([T.Resize(pp.resize), T.CenterCrop(pp.crop), T.ToTensor(),
                    T.Normalize(pp.mean, pp.std)])
    ds = torchvision.datasets.ImageFolder(os.fspath(folder), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                     pin_memory=device != "cpu")
    model = plain_model(backbone, weights).to(device)
    out = []
    with torch.no_grad():
        for x, _ in dl:
            out.append(model(x.to(device)).float().cpu().numpy())
    if device != "cpu":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    paths = [Path(p).relative_to(folder).as_posix() for p, _ in ds.samples]
    return dt, dict(zip(paths, np.concatenate(out), strict=True))


def run_ours(folder: Path, backbone: str, weights: str, input_size: int | None,
             batch_size: int, workers: int | None, device: str, precision: str,
             out: Path, engine: str = "auto", threads: int | None = None
             ) -> tuple[float, dict[str, np.ndarray], str]:
    """Seconds, codes by path, and the engine that ran."""
    import cnncodes

    if out.exists():
        out.unlink()
    t0 = time.perf_counter()
    cnncodes.extract(folder, out, backbone=backbone, weights=weights, input_size=input_size,
                     batch_size=batch_size, num_workers=workers, device=device,
                     precision=precision, engine=engine, threads=threads)
    dt = time.perf_counter() - t0
    st = cnncodes.FeatureStore(out)
    X, _ = st.load()
    ran = st.provenance.get("engine", {}).get("name", "torch")
    return dt, dict(zip(st.paths.tolist(), X, strict=True)), ran


def min_cos(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    cos = [float(a @ got[p] / (np.linalg.norm(a) * np.linalg.norm(got[p]) + 1e-12))
           for p, a in ref.items()]
    return min(cos)


def peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024


def memory_mode(args: argparse.Namespace) -> None:
    """Peak RSS of our extraction at several N, each in a fresh process."""
    sizes = [int(x) for x in args.memory.split(",")]
    base = Path(args.workdir)
    rows = []
    for n in sizes:
        folder = make_jpegs(base / f"jpegs{n}", n, size=(160, 120))
        code = (
            "import resource, cnncodes, sys; "
            f"cnncodes.extract({os.fspath(folder)!r}, {os.fspath(base / f'mem{n}.h5')!r}, "
            f"backbone={args.backbone!r}, weights={args.weights!r}, input_size=64, "
            f"batch_size={args.batch_size}, num_workers=1, overwrite=True); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
        rows.append((n, float(r.stdout.strip().splitlines()[-1])))
        print(f"N={n:>7}  peak RSS of the extracting process {rows[-1][1]:.0f} MB", flush=True)
    print(json.dumps({"memory_mb_by_n": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--weights", default="auto", help="auto (packaged for mobilenet_v2) or random")
    ap.add_argument("--n", type=int, default=5000,
                    help="JPEGs (default 5000: fewer measure start-up more than throughput)")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="ours (default: cnncodes' choice)")
    ap.add_argument("--plain-workers", type=int, default=None,
                    help="plain loop (default: the same as ours)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--engine", default="auto",
                    help="ours: comma-separated engines to time (auto, torch, onnxruntime)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ours: CPU threads of the forward (default: the engine's choice)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-bench"))
    ap.add_argument("--memory", default=None, help="comma-separated N values: RSS scaling mode")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.memory:
        memory_mode(args)
        return
    from cnncodes._runtime import default_workers, resolve_device

    work = Path(args.workdir)
    folder = make_jpegs(work / f"jpegs{args.n}", args.n)
    workers = args.workers if args.workers is not None else default_workers(
        resolve_device(args.device))
    pworkers = args.plain_workers if args.plain_workers is not None else workers
    engines = args.engine.split(",")
    os.environ.setdefault("CNNCODES_CACHE", os.fspath(work / "export-cache"))
    print(f"{args.n} JPEGs 500x375, {args.backbone} ({args.weights}), device {args.device}, "
          f"engines {engines}, threads {args.threads or torch.get_num_threads()}, workers "
          f"{workers}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
    # order per round: plain, then ours per engine (the second round is reported)
    res: dict = {}
    for rnd in range(2):
        tp, codes_p = run_plain(folder, args.backbone, args.weights, args.input_size,
                                args.batch_size, pworkers, args.device)
        line = f"  round {rnd}: plain {args.n / tp:8.1f} img/s"
        res = {"plain_img_s": args.n / tp, "engines": {}}
        for eng in engines:
            to, codes_o, ran = run_ours(folder, args.backbone, args.weights, args.input_size,
                                        args.batch_size, args.workers, args.device,
                                        args.precision, work / "ours.h5", eng, args.threads)
            res["engines"][eng] = {"img_s": args.n / to, "ran": ran,
                                   "ratio_vs_plain": tp / to,
                                   "min_cosine_vs_plain": min_cos(codes_p, codes_o)}
            line += f"   ours[{eng}->{ran}] {args.n / to:8.1f} img/s"
        print(line, flush=True)
    first = res["engines"][engines[0]]["img_s"]
    for eng, r in res["engines"].items():
        r["ratio_vs_first"] = r["img_s"] / first
    res.update({"n": args.n, "backbone": args.backbone, "device": args.device,
                "input_size": args.input_size, "workers_ours": workers,
                "workers_plain": pworkers, "threads": args.threads,
                "load_1min": os.getloadavg()[0], "peak_rss_mb": peak_rss_mb()})
    if args.device != "cpu":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for eng, r in res["engines"].items():
        print(f"plain torchvision loop: {res['plain_img_s']:.1f} img/s | cnncodes extract "
              f"--engine {eng} ({r['ran']}): {r['img_s']:.1f} img/s (incl. HDF5 writing) | ratio "
              f"{r['ratio_vs_plain']:.2f}x | vs --engine {engines[0]} {r['ratio_vs_first']:.2f}x"
              f" | min cosine vs plain fp32 {r['min_cosine_vs_plain']:.6f}")
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
