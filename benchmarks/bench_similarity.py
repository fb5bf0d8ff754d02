"""Calibration of advise's similarity verdict: the evidence on data sets of known kinds.

For each offline data set (scikit-learn digits, Fashion-MNIST, Animal-MNIST and crops of
scikit-learn's two sample photos as the natural-photo case) and each network (MobileNetV2 with its
packaged ImageNet weights, and the same architecture with random weights as the control) this runs
``advise`` on a small stratified sample and prints the similarity evidence of
:mod:`cnncodes.advisor.similarity`: the LEEP share of the ImageNet head, Cui et al.'s domain EMD,
and the probe's gain of the codes over raw pixels, with the verdict.

    python benchmarks/bench_similarity.py                       # 224 px (advise's default)
    python benchmarks/bench_similarity.py --input-size 112 --per-class 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncodes.datasets import LOADERS, stratified_subset, write_tree  # noqa: E402
from cnncodes.report.verdict_text import render  # noqa: E402
from cnncodes.workflows.advice import advise  # noqa: E402


def photo_crops(per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Random square crops (64-200 px, resized to 96) of china.jpg and flower.jpg."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    ims, labels = [], []
    photos = load_sample_images().images
    for c, img in enumerate(photos):
        h, w = img.shape[:2]
        for _ in range(per_class):
            s = int(rng.integers(64, 200))
            y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
            crop = Image.fromarray(img[y:y + s, x:x + s]).resize((96, 96), Image.BILINEAR)
            ims.append(np.asarray(crop))
            labels.append(c)
    return np.stack(ims), np.asarray(labels), ["china", "flower"]


def make_tree(name: str, out: Path, per_class: int) -> Path:
    if name == "photos":
        images, labels, classes = photo_crops(per_class)
    else:
        images, labels, classes = LOADERS[name]()
    idx = stratified_subset(labels, per_class, seed=0)
    write_tree(images, labels, classes, out / name, idx)
    return out / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-similarity"))
    ap.add_argument("--datasets", default="digits,fashion-mnist,animal-mnist,photos")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--input-size", type=int, default=None, help="default: the backbone's (224)")
    ap.add_argument("--weights", default="auto,random")
    a = ap.parse_args(argv)
    out = Path(a.out)
    rows = []
    for ds in a.datasets.split(","):
        per = a.per_class * (5 if ds == "photos" else 1)  # 2 classes only: more per class
        tree = make_tree(ds, out / "data", per)
        for w in a.weights.split(","):
            t0 = time.perf_counter()
            adv = advise(tree, weights=w, input_size=a.input_size, budget=None,
                         max_images=10 * per, head_sample=256, progress=False)
            ev = adv.verdict.similarity_verdict.to_dict()
            head = {k: adv.head.get(k) for k in ("leep", "leep_share", "domain_emd",
                                                 "domain_nearest", "mean_top1_prob",
                                                 "nmi_classes_vs_imagenet")}
            layers = {k: {"cv": round(v.mean, 4), "ci95": round(v.ci95, 4),
                          "logme": v.logme} for k, v in adv.probe.layers.items()}
            raw = adv.probe.raw
            row = {"dataset": ds, "weights": w, "n": adv.probe.n_images,
                   "verdict": adv.verdict.similarity.value, "layer": adv.layer,
                   "seconds": round(time.perf_counter() - t0, 1), "head": head,
                   "layers": layers, "raw": None if raw is None else round(raw.mean, 4),
                   "votes": {v["measure"]: round(v["value"], 4) for v in ev["votes"]},
                   "reasons": ev["reasons"], "explanation": render(adv.verdict, adv.setup).explanation}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
