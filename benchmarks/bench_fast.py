"""Issue 28 in one run: start-up, steady state and phone photos, whole processes, same inputs.

    python benchmarks/bench_fast.py                      # 8 / 240 / 20 / 480 images, 2 rounds
    python benchmarks/bench_fast.py --n 960 --photos 200 --img2vec-n 480 --rounds 3  # the issue
    python benchmarks/bench_fast.py --commands ours,ours-int8,plain   # int8 next to fp32

Every figure is a whole process timed from outside with its own rusage (wall, CPU, peak RSS),
after one warm-up round (which fills the file cache and cnncodes' export cache: the later runs
of ``ours`` take the torch-free path). Commands:

- ``ours``: ``cnncodes extract`` with its defaults (torch-free path once the graph is cached,
  decoding threads, DCT-scaled decoding of large JPEGs);
- ``ours-torch``: the same with ``CNNCODES_TORCH_FREE=0 --jpeg-scaling off`` (what main did:
  torch imported, DataLoader workers, every JPEG decoded in full);
- ``ours-int8`` (only with ``--commands ...,ours-int8,...``): ``--precision int8``;
- ``plain``: the torchvision loop people write (``bench_processes.child_plain``: ImageFolder,
  PIL transforms, DataLoader, fp32 model), the baseline of every ratio.

Sections: **start-up** (8 JPEGs: wall and peak RSS; plus ``-X importtime`` of ours: the slowest
imports), **steady** (``--n`` JPEGs 500x375; plus the ceiling on this machine: the CPU-seconds of
decoding one image and of its forward pass, measured in this process, give
``cores / (decode + forward)`` images/s), **photos** (``--photos`` photo-like 4000x3000 JPEGs made
from scikit-learn's sample photos, upscaled, sharpened, with noise; and the DCT-scaled decode's
code fidelity against a full decode), **img2vec** (``--img2vec-n`` JPEGs 500x375, resnet18 with
the same seeded random weights for all three, offline: ours, ``img2vec_pytorch`` (``pip install
img2vec_pytorch``; its ``get_vec`` on lists of 64 PIL images) and the plain loop; img2vec resizes
to 224x224 without a crop, so its codes are not compared). The steady section also gives ours'
rate beyond start-up, ``(n - 8) / (wall(n) - wall(8))``, against the ceiling. The codes' min cosine to the plain loop is printed for each.
The machine's load average is printed: other jobs on the machine slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))

from bench_processes import load_ours, min_cosine, timed  # noqa: E402


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` photo-like JPEGs, 4000x3000 (every 4th 3000x4000), in ``folder/all``."""
    from PIL import Image, ImageFilter
    from sklearn.datasets import load_sample_images

    out = folder / "all"
    if out.is_dir() and len(list(out.glob("*.jpg"))) >= n:
        return folder
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(a) for a in load_sample_images().images]
    for k in range(n):
        src = imgs[k % 2]
        f = rng.uniform(0.55, 1.0)
        cw, ch = int(src.width * f), int(src.height * f)
        x0, y0 = rng.integers(0, src.width - cw + 1), rng.integers(0, src.height - ch + 1)
        size = (4000, 3000) if k % 4 else (3000, 4000)
        big = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        big = big.filter(ImageFilter.UnsharpMask(4, 120, 2))
        a = np.asarray(big, np.float32) + rng.normal(0, 7, (size[1], size[0], 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(
            out / f"photo_{k:03d}.jpg", quality=int(rng.integers(85, 96)), subsampling=2)
    return folder


def small_jpegs(folder: Path, n: int, size=(500, 375), seed: int = 0) -> Path:
    """``bench_extract.make_jpegs`` (same files), without importing that module: this process
    must not import torch before the timed children are forked (on Linux a child's peak RSS
    starts at its parent's)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    if folder.exists() and len(list(folder.rglob("*.jpg"))) == n:
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


def inputs(kind: str, folder: Path, n: int) -> Path:
    """Make the inputs in a child process: this one must stay small, because on Linux a child's
    peak RSS starts at its parent's (making 4000x3000 photos here grew it to ~1 GB, which every
    later child then reported as its own peak)."""
    subprocess.run([sys.executable, __file__, "--make", kind, os.fspath(folder), str(n)],
                   check=True)
    return folder


def commands(folder: Path, work: Path, tag: str, workers: int,
             only: str = "ours,ours-torch,plain", backbone: str = "mobilenet_v2",
             weights: str = "auto") -> dict[str, tuple[list[str], dict]]:
    ours = [sys.executable, "-m", "cnncodes", "extract", os.fspath(folder), "--overwrite",
            "--no-progress", "--backbone", backbone, "--weights", weights]
    child = [sys.executable, os.fspath(HERE / "bench_processes.py"), "--folder", os.fspath(folder),
             "--backbone", backbone, "--weights", weights, "--workers", str(workers),
             "--batch-size", "64"]
    every = {
        "ours": ([*ours, "-o", os.fspath(work / f"{tag}-ours.h5")], {}),
        "ours-torch": ([*ours, "-o", os.fspath(work / f"{tag}-ours-torch.h5"),
                        "--jpeg-scaling", "off"], {"CNNCODES_TORCH_FREE": "0"}),
        "plain": ([*child, "--child", "plain", "--out", os.fspath(work / f"{tag}-plain.npz")], {}),
        "img2vec": ([*child, "--child", "img2vec", "--out", os.fspath(work / f"{tag}-img2vec.npz")],
                    {}),
        "ours-int8": ([*ours, "-o", os.fspath(work / f"{tag}-ours-int8.h5"), "--precision",
                       "int8"], {}),
    }
    names = [k for k in only.split(",") if k]
    if "plain" not in names or any(k not in every for k in names):
        raise SystemExit(f"--commands: a comma-separated subset of {', '.join(every)} with plain")
    return {k: every[k] for k in names}


def section(name: str, folder: Path, n: int, work: Path, env: dict, rounds: int,
            workers: int, only: str = "ours,ours-torch,plain", **net: str) -> dict:
    cmds = commands(folder, work, name, workers, only, **net)
    print(f"[{name}] {n} images, load average {os.getloadavg()[0]:.1f}", flush=True)
    for k, (c, e) in cmds.items():
        timed(c, {**env, **e})  # warm-up: file cache, the one-off ONNX export
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for _ in range(rounds):
        for k, (c, e) in cmds.items():
            runs[k].append(timed(c, {**env, **e}))
    z = np.load(work / f"{name}-plain.npz")
    plain = dict(zip(z["paths"].tolist(), z["codes"], strict=True))
    res: dict = {"n": n, "load_1min": os.getloadavg()[0]}
    for k, rs in runs.items():
        med = statistics.median(r["wall_s"] for r in rs)
        v = {"median_wall_s": med, "img_s": n / med, "peak_rss_mb": max(r["rss_mb"] for r in rs),
             "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
             "ratio_vs_plain": statistics.median(
                 p["wall_s"] / r["wall_s"] for p, r in zip(runs["plain"], rs, strict=True)),
             "cpu_ratio_vs_plain": statistics.median(
                 p["cpu_s"] / r["cpu_s"] for p, r in zip(runs["plain"], rs, strict=True))}
        if "img2vec" in runs:
            v["ratio_vs_img2vec"] = statistics.median(
                p["wall_s"] / r["wall_s"] for p, r in zip(runs["img2vec"], rs, strict=True))
        if k.startswith("ours"):  # every row's cosine; the min is printed
            v["min_cosine_vs_plain"] = min_cosine(plain, load_ours(work / f"{name}-{k}.h5"))
        res[k] = v
        cos = (f", min cos vs plain {v['min_cosine_vs_plain']:.6f}"
               if "min_cosine_vs_plain" in v else "")
        if "ratio_vs_img2vec" in v and k != "img2vec":
            cos += f", {v['ratio_vs_img2vec']:.2f}x img2vec"
        print(f"  {k:>10}: {med:6.2f} s ({n / med:6.1f} img/s), CPU {v['median_cpu_s']:.1f} s, "
              f"peak RSS {v['peak_rss_mb']:.0f} MB, {v['ratio_vs_plain']:.2f}x plain "
              f"({v['cpu_ratio_vs_plain']:.2f}x in CPU s){cos}",
              flush=True)
    return res


def import_profile(folder: Path, work: Path, env: dict) -> list[tuple[str, float]]:
    """The slowest top-level imports (cumulative seconds) of ``cnncodes extract`` on 8 images."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnncodes", "extract",
                        os.fspath(folder), "-o", os.fspath(work / "imports.h5"), "--overwrite",
                        "--no-progress"], env=env, capture_output=True, text=True)
    top = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            top.append((m.group(2).strip(), int(m.group(1)) / 1e6))
    return sorted(top, key=lambda t: -t[1])[:8]


def ceiling(folder: Path, n: int = 64) -> dict:
    """CPU-seconds per image of decoding + preprocessing (one thread) and of the ONNX forward
    (batch 32, one intra-op thread), and ``cores / (decode + forward)``."""
    from cnncodes.codes.export_cache import read_cached
    from cnncodes.codes.extractor import CodeExtractor
    from cnncodes.codes.ort_engine import OrtEngine
    from cnncodes.sources.images import load_rgb
    from cnncodes.sources.preprocessing import preprocess_array

    ext = CodeExtractor("mobilenet_v2", device="cpu", engine="onnxruntime")
    files = sorted(folder.rglob("*.jpg"))[:n]
    t = time.process_time()
    arrs = [preprocess_array(load_rgb(f), ext.preprocessing, max_pixels=None) for f in files]
    dec = (time.process_time() - t) / len(files)
    one = OrtEngine(read_cached(Path(ext.engine.path)), ext.layers, threads=1)
    x = (np.stack(arrs[:32]).astype(np.float32) - 127.5) / 58.0
    one(x)
    t = time.process_time()
    for _ in range(2):
        one(x)
    fwd = (time.process_time() - t) / 64
    cores = os.cpu_count() or 1
    return {"decode_cpu_ms": dec * 1e3, "forward_cpu_ms": fwd * 1e3,
            "ceiling_img_s": cores / (dec + fwd)}


def photo_fidelity(folder: Path) -> dict:
    """MobileNetV2 codes of DCT-scaled vs full decoding of the photos (min and mean cosine)."""
    from cnncodes.codes.extractor import CodeExtractor
    from cnncodes.sources.dct import draft_target
    from cnncodes.sources.images import load_rgb
    from cnncodes.sources.preprocessing import preprocess_array

    ext = CodeExtractor("mobilenet_v2", device="cpu", engine="onnxruntime")
    pp = ext.preprocessing
    files = sorted(folder.rglob("*.jpg"))
    res = {}
    for margin in (1, 2):
        full, small = [], []
        for f in files:
            full.append(preprocess_array(load_rgb(f), pp, max_pixels=None))
            small.append(preprocess_array(load_rgb(f, draft_to=margin * pp.resize), pp,
                                          max_pixels=None))
        import torch

        a = ext(torch.from_numpy(np.stack(full)))["pool"].astype(np.float64)
        b = ext(torch.from_numpy(np.stack(small)))["pool"].astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        res[f"margin{margin}"] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean())}
    assert draft_target(pp.resize) == 2 * pp.resize  # the default is margin 2
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=240, help="500x375 JPEGs of the steady section")
    ap.add_argument("--photos", type=int, default=20, help="4000x3000 JPEGs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sections", default="startup,steady,photos,img2vec")
    ap.add_argument("--img2vec-n", type=int, default=480,
                    help="500x375 JPEGs of the img2vec section (resnet18, random init: offline)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-fast"))
    ap.add_argument("--commands", default="ours,ours-torch,plain",
                    help="which to run: ours, ours-torch, ours-int8 (--precision int8), plain")
    ap.add_argument("--json", default=None)
    ap.add_argument("--make", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        kind, where, n = args.make
        (make_photos if kind == "photos" else small_jpegs)(Path(where), int(n))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CNNCODES_CACHE": os.fspath(work / "export-cache")}
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))  # cnncodes' default on the CPU
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()}", flush=True)
    res: dict = {"cores": os.cpu_count()}
    todo = args.sections.split(",")
    if "startup" in todo:
        f8 = inputs("jpegs", work / "jpegs8", 8)
        res["startup"] = section("startup", f8, 8, work, env, args.rounds, workers,
                                 args.commands)
        res["startup"]["imports"] = import_profile(f8, work, env)
        print("  slowest imports of ours: " + ", ".join(f"{k} {v:.2f} s"
                                                        for k, v in res["startup"]["imports"]))
    if "steady" in todo:
        fn = inputs("jpegs", work / f"jpegs{args.n}", args.n)
        res["steady"] = section("steady", fn, args.n, work, env, args.rounds, workers,
                                 args.commands)
    if "photos" in todo:
        fp = inputs("photos", work / f"photos{args.photos}", args.photos)
        res["photos"] = section("photos", fp, args.photos, work, env, args.rounds, workers,
                                 args.commands)
    if "img2vec" in todo:
        fi = inputs("jpegs", work / f"jpegs{args.img2vec_n}", args.img2vec_n)
        res["img2vec"] = section("img2vec", fi, args.img2vec_n, work, env, args.rounds, workers,
                                 "ours,img2vec,plain", backbone="resnet18", weights="random")
    # in-process measurements last: they import torch into this process
    os.environ["CNNCODES_CACHE"] = env["CNNCODES_CACHE"]
    if "steady" in todo:
        res["steady"]["ceiling"] = c = ceiling(fn)
        print(f"[steady] ceiling: decode {c['decode_cpu_ms']:.1f} ms + forward "
              f"{c['forward_cpu_ms']:.1f} ms CPU per image -> {c['ceiling_img_s']:.0f} img/s on "
              f"{os.cpu_count()} cores; ours reaches "
              f"{res['steady']['ours']['img_s'] / c['ceiling_img_s']:.0%} of it (whole process)")
        if "startup" in res:  # the steady rate: the images beyond the 8 over the time beyond
            extra = res["steady"]["ours"]["median_wall_s"] - res["startup"]["ours"]["median_wall_s"]
            c["ours_steady_img_s"] = rate = (args.n - 8) / extra
            c["ours_steady_share"] = rate / c["ceiling_img_s"]
            print(f"[steady] ours beyond start-up: ({args.n} - 8) images in {extra:.1f} s more "
                  f"than 8 -> {rate:.0f} img/s = {rate / c['ceiling_img_s']:.0%} of the ceiling")
    if "photos" in todo:
        res["photos"]["fidelity"] = fid = photo_fidelity(fp)
        print("[photos] DCT-scaled vs full decode, MobileNetV2 codes: " + ", ".join(
            f"{k} min cos {v['min_cos']:.6f} (mean {v['mean_cos']:.6f})" for k, v in fid.items()))
    res["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
