"""Calibrate the near-duplicate threshold of ``cnncodes audit`` on real images.

Plants exact copies, JPEG re-encodes (quality 75) and resizes (0.5x, 2x) of training images into
the test split of Animal-MNIST and scikit-learn digits, extracts MobileNetV2 (ImageNet) codes with
the embedded weights, and measures, for cosine thresholds, the share of planted copies whose
nearest training image is their source (recall) and the share of the *other* test images (different
pictures) flagged as a duplicate of some training image (false duplicates). Codes are compared raw
and centred on the training mean. Prints a table and writes benchmarks/results/audit_calibration.json.

    nice python benchmarks/audit_calibrate.py [--input-size 112] [--train-per-class 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnncodes.audit.neighbours import normalize, top_k  # noqa: E402
from cnncodes.datasets import LOADERS, stratified_subset  # noqa: E402

KINDS = ("copy", "jpeg75", "resize0.5", "resize2")
THRESHOLDS = [0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]


def plant(img: np.ndarray, kind: str, path: Path) -> Path:
    im = Image.fromarray(img)
    if kind == "copy":
        im.save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if kind == "jpeg75":
        im.convert("RGB").save(path.with_suffix(".jpg"), quality=75)
        return path.with_suffix(".jpg")
    f = 0.5 if kind == "resize0.5" else 2.0
    w, h = im.size
    im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC).save(
        path.with_suffix(".png"))
    return path.with_suffix(".png")


def run(name: str, tmp: Path, *, per_class: int, test_per_class: int, n_plant: int,
        input_size: int, upscale: int = 0, seed: int = 0) -> dict:
    from cnncodes.codes.extraction import extract_arrays
    from cnncodes.options import BackboneOptions, RuntimeOptions

    images, labels, classes = LOADERS[name]()
    if upscale:  # the data set's pictures as photos of upscale px (bicubic), before planting
        images = np.stack([np.asarray(Image.fromarray(im).resize((upscale, upscale),
                                                                 Image.BICUBIC)) for im in images])
    tr = stratified_subset(labels, per_class, seed=seed)
    te = stratified_subset(labels, test_per_class, seed=seed + 1, exclude=tr)
    rng = np.random.default_rng(seed)
    src = rng.choice(len(tr), size=n_plant, replace=False)
    root = tmp / name
    train_paths, test_paths, planted = [], [], []  # planted: (test row, train row, kind)
    for j, i in enumerate(tr):
        p = root / "train" / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(p)
        train_paths.append(str(p))
    for i in te:
        p = root / "test" / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(p)
        test_paths.append(str(p))
    for s in src:
        for kind in KINDS:
            p = plant(images[tr[s]], kind, root / "test" / f"plant-{kind.replace('.', '_')}-{tr[s]:05d}")
            planted.append((len(test_paths), int(s), kind))
            test_paths.append(str(p))
    # pictures that are pixel-identical in the data set itself are duplicates, not false ones
    digest = {}
    for j, i in enumerate(tr):
        digest.setdefault(hashlib.sha1(images[i].tobytes()).hexdigest(), j)
    dup_in_data = [k for k, i in enumerate(te)
                   if hashlib.sha1(images[i].tobytes()).hexdigest() in digest]
    bopts = BackboneOptions(input_size=input_size)
    ropts = RuntimeOptions(progress=False, num_workers=0)
    t0 = time.perf_counter()
    a = extract_arrays(train_paths, backbone=bopts, runtime=ropts)
    b = extract_arrays(test_paths, backbone=bopts, runtime=ropts)
    t_extract = time.perf_counter() - t0
    assert not a.failures and not b.failures
    Xa, Xb = a.codes["pool"], b.codes["pool"]
    out = {"data": name, "train": len(tr), "test_different": len(te), "planted": len(planted),
           "pixel_duplicates_in_data": len(dup_in_data), "input_size": input_size, "upscale": upscale,
           "extract_s": round(t_extract, 1), "modes": {}}
    planted_rows = np.array([p[0] for p in planted])
    planted_src = np.array([p[1] for p in planted])
    planted_kind = np.array([p[2] for p in planted])
    different = np.setdiff1d(np.arange(len(te)), dup_in_data)
    for mode in ("raw", "centered"):
        c = Xa.mean(axis=0) if mode == "centered" else None
        A, B = normalize(Xa, center=c), normalize(Xb, center=c)
        nb = top_k(B, A, 1, method="exact")
        within = top_k(A, A, 1, same=True, method="exact")
        s_planted = nb.score[planted_rows, 0]
        hit = nb.index[planted_rows, 0] == planted_src
        s_diff = nb.score[different, 0]
        rows = []
        out.setdefault("rank1_source", {})[mode] = float(
            (hit | ((B[planted_rows] * A[planted_src]).sum(axis=1) >= s_planted - 1e-6)).mean())
        for t in THRESHOLDS:
            found = s_planted >= t  # flagged as a leak (its nearest training image is that close)
            rows.append({"threshold": t, "recall": float(found.mean()),
                         **{f"recall_{k}": float(found[planted_kind == k].mean()) for k in KINDS},
                         "false_dup_test": float((s_diff >= t).mean()),
                         "false_dup_train_pairs": float((within.score[:, 0] >= t).mean()),
                         "precision": float(found.sum() / max(1, found.sum()
                                                               + (s_diff >= t).sum()))})
        out["modes"][mode] = {"rows": rows,
                              "planted_score_min_by_kind": {
                                  k: float(s_planted[planted_kind == k].min()) for k in KINDS},
                              "different_score_p99": float(np.quantile(s_diff, 0.99)),
                              "different_score_max": float(s_diff.max())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--plant", type=int, default=100, help="training images planted 4 ways")
    ap.add_argument("--upscale", type=int, default=0,
                    help="write the data set's pictures at this many px first (0: native)")
    ap.add_argument("--data", default="animal-mnist,digits")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="audit-cal-"))
    results = []
    try:
        for name in args.data.split(","):
            r = run(name, tmp, per_class=args.train_per_class,
                    test_per_class=args.test_per_class, n_plant=args.plant,
                    input_size=args.input_size, upscale=args.upscale)
            results.append(r)
            print(f"\n{name}: {r['train']} train, {r['test_different']} different test images "
                  f"({r['pixel_duplicates_in_data']} pixel-identical to a train image in the "
                  f"data set), {r['planted']} planted, pictures at {r['upscale'] or 'native'} px, codes at {r['input_size']} px, extraction "
                  f"{r['extract_s']} s")
            for mode, m in r["modes"].items():
                print(f"  {mode}: planted min score by kind {m['planted_score_min_by_kind']}, "
                      f"different p99 {m['different_score_p99']:.3f} max "
                      f"{m['different_score_max']:.3f}")
                print("   thr  recall " + " ".join(f"{k:>9}" for k in KINDS)
                      + "  false(test) false(train) precision")
                for row in m["rows"]:
                    print(f"  {row['threshold']:.2f}  {row['recall']:.3f} "
                          + " ".join(f"{row['recall_' + k]:9.3f}" for k in KINDS)
                          + f"  {row['false_dup_test']:10.3f} {row['false_dup_train_pairs']:12.3f}"
                          f" {row['precision']:9.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(__file__).parent / "results" / f"audit_calibration_{args.upscale or 'native'}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
