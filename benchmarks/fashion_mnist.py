"""Fashion-MNIST end to end: write the train/ + test/ PNG tree from the Debian package
``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``), run ``cnncodes
baseline`` on it in a child process, and print accuracy, time per stage and peak RSS beside the
published Zalando scikit-learn figures on raw pixels.

    python benchmarks/fashion_mnist.py --out /tmp/fm            # full: 60,000 + 10,000 images
    python benchmarks/fashion_mnist.py --out /tmp/fm --train-per-class 1600 --test-per-class 400

The full run extracts 70,000 images (minutes on a small CPU); use ``nice`` on a shared machine.
Extra arguments after ``--`` go to ``cnncodes baseline`` (e.g. ``-- --large-set 0`` for the
exhaustive 5-fold search, ``-- --no-raw-baseline``). ``--finetune-epochs 6`` then runs the
fine-tuning advise recommends for this data (head x10, first stage frozen; 64 px by default):
README's 0.923.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

#: Zalando's benchmark (github.com/zalandoresearch/fashion-mnist, benchmark table): scikit-learn
#: on the raw 28x28 pixels, best setting of each classifier, full 60,000 / 10,000 split.
PUBLISHED = {"LogisticRegression (raw pixels, Zalando)": 0.842,
             "SVC RBF (raw pixels, Zalando)": 0.897}


def write_tree(out: Path, train_per_class: int, test_per_class: int, seed: int) -> Path:
    from cnncodes.datasets import make_split_tree

    root = out / f"fm_{train_per_class}_{test_per_class}"
    t = time.perf_counter()
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        make_split_tree("fashion-mnist", root, train_per_class=train_per_class,
                        test_per_class=test_per_class, seed=seed)
    print(f"tree {root}: {time.perf_counter() - t:.1f} s", flush=True)
    return root


def run_baseline(root: Path, report: Path, input_size: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "cnncodes", "baseline", str(root), "--report", str(report),
           "--input-size", str(input_size), "--overwrite", *extra]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rep = json.loads((report / "report.json").read_text())
    return {"report": rep, "wall_s": wall, "peak_rss_mb": peak_mb}


def run_finetune(root: Path, out: Path, input_size: int, epochs: int, head_lr_mult: float,
                 freeze: int) -> dict:
    """``cnncodes finetune train/ --test test/`` with advise's policy for this data (large,
    similar at 112 px: head x10, first stage frozen), in a child process; its report and time."""
    cmd = [sys.executable, "-m", "cnncodes", "finetune", str(root / "train"), "--test",
           str(root / "test"), "-o", str(out), "--input-size", str(input_size), "--epochs",
           str(epochs), "--head-lr-mult", f"{head_lr_mult:g}", "--freeze", str(freeze),
           "--overwrite"]
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    rep = json.loads((out / "report.json").read_text())
    return {"report": rep, "wall_s": time.perf_counter() - t}


def table(res: dict) -> str:
    rep = res["report"]
    lines = [f"{'row':<46} {'test acc':>8} {'train':>7} {'extract s':>9} {'select s':>8} "
             f"{'total s':>8}"]
    for r in rep.get("rows", []):
        if "skipped" in r:
            lines.append(f"{r['name']:<46} skipped: {r['skipped']}")
            continue
        sel = r.get("selection") or {}
        n = (r.get("subsample") or {}).get("n_train", sel.get("n_train"))
        extract = r.get("extract_s", r.get("load_time_s"))
        lines.append(f"{r['name'][:46]:<46} {r['accuracy']:>8.4f} {n or '-':>7} "
                     f"{extract if extract is not None else '-':>9} "
                     f"{sel.get('train_time_s', '-'):>8} {r.get('wall_time_s', '-'):>8}")
    for name, acc in PUBLISHED.items():
        lines.append(f"{name:<46} {acc:>8.4f} {60000:>7} {'-':>9} {'-':>8} {'-':>8}")
    sel = (rep.get("selection") or {}).get("search") or {}
    lines.append(f"model selection: {sel.get('reason', '-')}")
    lines.append(f"baseline wall {res['wall_s']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                 f"(largest process), {os.cpu_count()} CPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/fashion_mnist_bench")
    p.add_argument("--train-per-class", type=int, default=6000)
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="then fine-tune this many epochs with advise's policy (0: not)")
    p.add_argument("--finetune-size", type=int, default=64,
                   help="input size of the fine-tuning (README: 64 px, 6 epochs -> 0.923)")
    p.add_argument("--head-lr-mult", type=float, default=10.0)
    p.add_argument("--freeze", type=int, default=1)
    a = p.parse_args(argv)
    out = Path(a.out)
    root = write_tree(out, a.train_per_class, a.test_per_class, a.seed)
    res = run_baseline(root, out / "report", a.input_size, extra)
    text = table(res)
    if a.finetune_epochs > 0:
        ft = run_finetune(root, out / "finetune", a.finetune_size, a.finetune_epochs,
                          a.head_lr_mult, a.freeze)
        r = ft["report"]
        ci = r.get("test_accuracy_ci95") or ["-", "-"]
        n = int(r.get("epochs_run") or 0)
        text += (f"\nfine-tuning {a.finetune_size} px, {n} epoch{'' if n == 1 else 's'} (head "
                 f"x{a.head_lr_mult:g}, freeze {a.freeze}): test {r.get('test_accuracy'):.4f} "
                 f"(95% CI {ci[0]}-{ci[1]}), validation {r.get('val_accuracy')}, "
                 f"{ft['wall_s']:.0f} s")
    print(text)
    (out / "bench.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
