"""How many randomly flipped labels ``cnncodes audit`` recovers (cleanlab on out-of-fold
logistic-regression probabilities of MobileNetV2 ImageNet codes).

For Animal-MNIST and scikit-learn digits (100 training images per class, codes at 112 px with
the embedded weights), flips 5% of the labels to another class at random, then reports how many
of the flipped images cleanlab flags (recall), how many flagged images were flipped (precision),
and the share of flipped images among the top-N suggestions (N = the number flipped). Writes
benchmarks/results/audit_label_flips.json.

    nice python benchmarks/audit_label_flips.py [--per-class 100] [--input-size 112]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnncodes.datasets import LOADERS, stratified_subset, write_tree  # noqa: E402


def main() -> int:
    from cnncodes.audit.labels import find_label_issues
    from cnncodes.codes.extraction import extract_arrays
    from cnncodes.options import BackboneOptions, RuntimeOptions

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=3, help="flip draws per data set")
    args = ap.parse_args()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="audit-flips-"))
    try:
        for name in ("animal-mnist", "digits"):
            images, labels, classes = LOADERS[name]()
            idx = stratified_subset(labels, args.per_class)
            write_tree(images, labels, classes, tmp / name, idx)
            codes = extract_arrays(tmp / name, backbone=BackboneOptions(
                input_size=args.input_size), runtime=RuntimeOptions(progress=False,
                                                                    num_workers=0))
            X, y = codes.codes["pool"], codes.labels
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                flip = rng.choice(len(y), size=round(args.rate * len(y)), replace=False)
                noisy = y.copy()
                noisy[flip] = (y[flip] + rng.integers(1, len(classes), len(flip))) % len(classes)
                res = find_label_issues(X, noisy, n_classes=len(classes), seed=seed)
                flagged = set(res.rows.tolist())
                fl = set(flip.tolist())
                top = set(res.rows[:len(flip)].tolist())
                right = sum(int(res.suggested[i] == y[r]) for i, r in enumerate(res.rows)
                            if r in fl)
                r = {"data": name, "rows": len(y), "seed": seed, "flipped": len(flip),
                     "flagged": len(flagged), "recall": len(flagged & fl) / len(fl),
                     "precision": len(flagged & fl) / max(1, len(flagged)),
                     "recall_top_n": len(top & fl) / len(fl),
                     "suggested_true_label": right / max(1, len(flagged & fl)),
                     "clean_accuracy_oof": float((res.probabilities.argmax(1) == y).mean())}
                results.append(r)
                print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(__file__).parent / "results" / "audit_label_flips.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
