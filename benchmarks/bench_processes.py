"""Whole processes, same JPEG files, same run: `cnncodes extract` against the loops people write.

    python benchmarks/bench_processes.py --backbone mobilenet_v2 --n 960
    python benchmarks/bench_processes.py --backbone resnet50 --weights random --n 960
    python benchmarks/bench_processes.py --backbone resnet18 --weights random --vs img2vec

Each figure is a whole process (interpreter start-up, imports, model build, listing, decoding,
forward, writing the codes), timed from outside with its own rusage (CPU seconds, peak RSS), in
rounds A B A B ... after one warm-up round (which also fills the file cache and cnncodes' ONNX
export cache; the first export is timed and printed apart). Quoted: the median of each and the
median of the per-round ratios.

The competitors:
- ``plain``: what a user writes by hand with torchvision: ImageFolder + PIL transforms (Resize,
  CenterCrop, ToTensor, Normalize) + DataLoader (as many workers as cnncodes uses) + the fp32 model
  with its classifier replaced by Identity; codes saved with numpy.
- ``img2vec``: img2vec_pytorch's ``Img2Vec.get_vec`` on lists of 64 PIL images (its documented
  batch use). Offline, its ``weights=DEFAULT`` download is replaced by the same seeded random
  network (speed does not depend on the weights; img2vec resizes to 224x224 without a crop, so its
  codes are not compared).

Codes: ours are compared row by row (same paths) with the plain fp32 codes: min cosine printed.
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


# --- the child processes -------------------------------------------------------------------------

def child_plain(folder: str, out: str, backbone: str, weights: str, workers: int,
                batch_size: int) -> None:
    import torch
    import torchvision
    from torchvision import transforms as T

    sys.path.insert(0, os.fspath(HERE))
    from bench_extract import plain_model

    from cnncodes.backbones import get_spec
    from cnncodes.backbones.weights import resolve_weights

    pp = resolve_weights(get_spec(backbone), weights).preprocessing
    tf = T.Compose([T.Resize(pp.resize), T.CenterCrop(pp.crop), T.ToTensor(),
                    T.Normalize(pp.mean, pp.std)])
    ds = torchvision.datasets.ImageFolder(folder, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
    model = plain_model(backbone, weights)
    codes = []
    with torch.no_grad():
        for x, _ in dl:
            codes.append(model(x).numpy())
    paths = [os.path.relpath(p, folder) for p, _ in ds.samples]
    np.savez(out, codes=np.concatenate(codes), paths=np.array(paths))


def child_img2vec(folder: str, out: str, backbone: str, batch_size: int) -> None:
    import torch
    import torchvision
    from img2vec_pytorch import img_to_vec
    from PIL import Image

    sys.path.insert(0, os.fspath(HERE))
    from cnncodes.backbones.factory import RANDOM_INIT_SEED

    def offline(weights=None, **kw):  # the download img2vec asks for is unreachable here
        torch.manual_seed(RANDOM_INIT_SEED)
        return getattr(torchvision.models, backbone)(weights=None, **kw)

    setattr(img_to_vec, backbone, offline)
    vec = img_to_vec.Img2Vec(cuda=False, model=backbone)
    files = sorted(Path(folder).rglob("*.jpg"))
    codes = []
    for i in range(0, len(files), batch_size):
        ims = [Image.open(f).convert("RGB") for f in files[i:i + batch_size]]
        codes.append(vec.get_vec(ims))
    np.savez(out, codes=np.concatenate(codes),
             paths=np.array([os.path.relpath(f, folder) for f in files]))


# --- the driver ----------------------------------------------------------------------------------

def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one whole process (its own rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}


def load_ours(path: Path) -> dict[str, np.ndarray]:
    import cnncodes

    st = cnncodes.FeatureStore(path)
    X, _ = st.load()
    return dict(zip(st.paths.tolist(), X, strict=True))


def min_cosine(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    a = np.stack([ref[p] for p in ref]).astype(np.float64)
    b = np.stack([got[p] for p in ref]).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)
    return float(cos.min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--weights", default="auto", help="auto (packaged for mobilenet_v2) or random")
    ap.add_argument("--n", type=int, default=960)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--vs", default="plain", help="comma-separated: plain, img2vec")
    ap.add_argument("--engine", default="auto", help="ours: comma-separated engines")
    ap.add_argument("--variants", default="",
                    help="ours, extra runs: 'NAME=ARGS;NAME=ARGS' (e.g. 'w0=--workers 0')")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-bench"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "plain":
        return child_plain(args.folder, args.out, args.backbone, args.weights, args.workers,
                           args.batch_size)
    if args.child == "img2vec":
        return child_img2vec(args.folder, args.out, args.backbone, args.batch_size)

    sys.path.insert(0, os.fspath(HERE))
    from bench_extract import make_jpegs

    from cnncodes._runtime import default_workers, resolve_device

    work = Path(args.workdir)
    folder = make_jpegs(work / f"jpegs{args.n}", args.n)
    workers = default_workers(resolve_device("cpu"))
    env = {**os.environ, "CNNCODES_CACHE": os.fspath(work / f"export-cache-{os.getpid()}")}
    me = [sys.executable, os.fspath(Path(__file__).resolve())]
    cmds: dict[str, list[str]] = {}
    for eng in args.engine.split(","):
        cmds[f"cnncodes[{eng}]"] = [
            sys.executable, "-m", "cnncodes", "extract", os.fspath(folder), "-o", os.fspath(work / f"ours-{eng}.h5"),
            "--backbone", args.backbone, "--weights", args.weights, "--overwrite",
            "--batch-size", str(args.batch_size), "--engine", eng, "--no-progress"]
    for spec in filter(None, args.variants.split(";")):
        name, _, extra = spec.partition("=")
        cmds[f"cnncodes[{name}]"] = [
            sys.executable, "-m", "cnncodes", "extract", os.fspath(folder), "-o",
            os.fspath(work / f"ours-{name}.h5"), "--backbone", args.backbone, "--weights",
            args.weights, "--overwrite", "--batch-size", str(args.batch_size), "--no-progress",
            *extra.split()]
    for other in args.vs.split(","):
        cmds[other] = [*me, "--child", other, "--folder", os.fspath(folder), "--out",
                       os.fspath(work / f"{other}.npz"), "--backbone", args.backbone,
                       "--weights", args.weights, "--workers", str(workers),
                       "--batch-size", str(args.batch_size)]
    print(f"{args.n} JPEGs 500x375, {args.backbone} ({args.weights}), 224 px, batch "
          f"{args.batch_size}, decode workers {workers}, cores {os.cpu_count()}, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    first = {k: timed(c, env) for k, c in cmds.items()}  # warm-up; ours exports here
    print("  warm-up (ours incl. the one-off ONNX export): " + ", ".join(
        f"{k} {v['wall_s']:.1f} s" for k, v in first.items()), flush=True)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in cmds}
    for r in range(args.rounds):
        for k, c in cmds.items():
            runs[k].append(timed(c, env))
        print(f"  round {r}: " + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s"
                                           for k, v in runs.items()), flush=True)
    ours = [k for k in cmds if k.startswith("cnncodes")]
    res: dict = {"n": args.n, "backbone": args.backbone, "weights": args.weights,
                 "workers": workers, "rounds": args.rounds, "load_1min": os.getloadavg()[0],
                 "commands": {}}
    for k, rs in runs.items():
        med = statistics.median(x["wall_s"] for x in rs)
        res["commands"][k] = {"median_wall_s": med, "img_s": args.n / med,
                              "median_cpu_s": statistics.median(x["cpu_s"] for x in rs),
                              "peak_rss_mb": max(x["rss_mb"] for x in rs),
                              "min_wall_s": min(x["wall_s"] for x in rs),
                              "max_wall_s": max(x["wall_s"] for x in rs)}
    plain = None
    if "plain" in cmds:
        z = np.load(work / "plain.npz")
        plain = dict(zip(z["paths"].tolist(), z["codes"], strict=True))
    for o in ours:
        eng = o[len("cnncodes["):-1]
        got = load_ours(work / f"ours-{eng}.h5")
        if plain is not None:
            res["commands"][o]["min_cosine_vs_plain"] = min_cosine(plain, got)
        for other in args.vs.split(","):
            ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[other], runs[o], strict=True)]
            res["commands"][o][f"ratio_vs_{other}"] = statistics.median(ratios)
    for k, v in res["commands"].items():
        extra = "".join(f" | {key[9:]} {val:.2f}x" for key, val in v.items()
                        if key.startswith("ratio_vs_"))
        cos = (f" | min cosine vs plain {v['min_cosine_vs_plain']:.6f}"
               if "min_cosine_vs_plain" in v else "")
        print(f"{k:>22}: {v['img_s']:7.1f} img/s (median {v['median_wall_s']:.1f} s, "
              f"min {v['min_wall_s']:.1f}, max {v['max_wall_s']:.1f}; CPU {v['median_cpu_s']:.1f} s"
              f"; peak RSS {v['peak_rss_mb']:.0f} MB){extra}{cos}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
