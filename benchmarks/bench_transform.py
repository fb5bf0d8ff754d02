"""``CNNCodes`` in a scikit-learn Pipeline, torch-free against the torch path (issue 28 point 1).

    python benchmarks/bench_transform.py                  # 50 + 50 demo images, 3 rounds
    python benchmarks/bench_transform.py --per-class 10 --rounds 5

One whole process per figure, timed from outside with its own rusage (wall, CPU seconds, peak
RSS): ``Pipeline(CNNCodes("mobilenet_v2", input_size=112), LogisticRegression()).fit(train)``
then ``.predict(test)`` on image paths of the demo data set (Animal-MNIST, as ``make demo`` writes
it: ``--per-class`` images per class in train/ and in test/, 10 classes; the packaged ImageNet
MobileNetV2 weights, 112 px as the demo). Commands, alternated round by round after one warm-up
run of each (which exports and checks the graph into this benchmark's own export cache, and fills
the file cache):

- ``ours``: as it is now (the cached graph: the torch-free LightExtractor, no torch import);
- ``torch``: the same with ``CNNCODES_TORCH_FREE=0`` (the torch extractor, ONNX Runtime engine:
  what ``CNNCodes`` did before).

Medians of the rounds, the ratio torch/ours, whether each imported torch, and whether both
predicted the same labels. Other jobs on the machine slow the wall figures (the load average is
printed); CPU seconds are the steadier comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))

from bench_processes import timed  # noqa: E402

#: the timed process: fit + predict, then what it predicted and imported (to a JSON file)
CHILD = """
import json, sys
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from cnncodes import CNNCodes

root, out, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def part(name):
    paths = sorted(str(p) for p in (root / name).glob("*/*.png"))
    return paths, [Path(p).parent.name for p in paths]
(xtr, ytr), (xte, yte) = part("train"), part("test")
pipe = make_pipeline(CNNCodes("mobilenet_v2", input_size=size), LogisticRegression(max_iter=1000))
pred = pipe.fit(xtr, ytr).predict(xte).tolist()
acc = sum(p == t for p, t in zip(pred, yte)) / len(yte)
Path(out).write_text(json.dumps({"pred": pred, "accuracy": acc, "n_train": len(xtr),
                                 "n_test": len(xte), "torch": "torch" in sys.modules,
                                 "torchvision": "torchvision" in sys.modules}))
"""

COMMANDS = {"ours": {}, "torch": {"CNNCODES_TORCH_FREE": "0"}}


def demo_data(root: Path, per_class: int) -> Path:
    """The demo split (``make demo``'s command), ``per_class`` images per class in each part."""
    if not (root / "test").is_dir():
        subprocess.run([sys.executable, "-m", "cnncodes.datasets", "animal-mnist", str(root),
                        "--train-per-class", str(per_class), "--test-per-class", str(per_class)],
                       check=True)
    return root


def run(name: str, root: Path, work: Path, size: int) -> dict:
    out = work / f"{name}.json"
    env = {**os.environ, "CNNCODES_CACHE": str(work / "cache"), "CUDA_VISIBLE_DEVICES": "",
           **COMMANDS[name]}
    res = timed([sys.executable, "-c", CHILD, str(root), str(out), str(size)], env)
    return {**res, **json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-class", type=int, default=5, help="images per class in train/, test/")
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cnncodes-bench-tf"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = demo_data(work / f"animal-mnist-{a.per_class}", a.per_class)
    print(f"cores {os.cpu_count()}, nice {os.nice(0)}, load average {os.getloadavg()}", flush=True)
    for name in COMMANDS:  # warm-up: exports the graph (first run), file cache
        run(name, root, work, a.input_size)
    runs: dict[str, list[dict]] = {k: [] for k in COMMANDS}
    for r in range(a.rounds):
        for name in COMMANDS:
            runs[name].append(run(name, root, work, a.input_size))
            x = runs[name][-1]
            print(f"round {r + 1} {name:5s}: {x['wall_s']:6.2f} s wall {x['cpu_s']:6.2f} CPU s "
                  f"{x['rss_mb']:6.0f} MB torch={x['torch']} (load {os.getloadavg()[0]:.1f})",
                  flush=True)
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall_s", "cpu_s", "rss_mb")}
           for k, v in runs.items()}
    o, t = runs["ours"][0], runs["torch"][0]
    print(f"\nPipeline(CNNCodes(mobilenet_v2, {a.input_size} px) -> LogisticRegression): fit on "
          f"{o['n_train']}, predict {o['n_test']} demo images; medians of {a.rounds} rounds")
    for k, m in med.items():
        imp = "torch imported" if runs[k][0]["torch"] else "no torch"
        print(f"  {k:5s}  {m['wall_s']:6.2f} s wall  {m['cpu_s']:6.2f} CPU s  "
              f"{m['rss_mb']:6.0f} MB peak RSS  ({imp}, accuracy {runs[k][0]['accuracy']:.2f})")
    ratio = {f: med["torch"][f] / med["ours"][f] for f in ("wall_s", "cpu_s", "rss_mb")}
    print(f"  torch / ours: wall {ratio['wall_s']:.2f}x, CPU {ratio['cpu_s']:.2f}x, "
          f"peak RSS {ratio['rss_mb']:.2f}x; same predictions: {o['pred'] == t['pred']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"medians": med, "ratio": ratio, "runs": runs,
                                            "per_class": a.per_class, "rounds": a.rounds,
                                            "input_size": a.input_size,
                                            "load_end": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
