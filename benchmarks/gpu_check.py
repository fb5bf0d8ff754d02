"""One-shot GPU check of cnncodes (run by benchmarks/gpu_check.sh; see its header).

Steps, each in its own process with a time limit (a failing step is recorded, the others run):

1. ``gpu`` tests: ``pytest -m gpu`` over the files that hold them.
2. extraction: ``bench_extract.py`` on N generated JPEGs, cnncodes vs the plain torchvision loop
   (img/s both, ratio, minimum cosine of our codes to the plain fp32 codes).
3. grid search: ``bench_train.py``, the array API on the GPU vs NumPy, at a size below and one
   above the ``train --device auto`` size rule (``AUTO_GPU_MIN_WORK``), to check the crossover.
4. a 2-epoch fine-tune on the generated JPEGs (seconds, epochs, accuracy, precision used).

Everything is local (generated images, the venv's packages, the packaged or random weights): no
network. ``--dry-run`` runs the same steps on the CPU with tiny sizes (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_TEST_FILES = ["tests/sources/test_decode.py", "tests/linear/test_array_api.py", "tests/cuda"]

#: sizes per mode: (JPEGs for extraction, input size, grid-search shapes, fine-tune images)
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {"n_jpegs": 10_000, "input_size": None, "weights": "auto",
            "grids": [(2_000, 1280, 2), (20_000, 1280, 10)], "ft_images": 2_000,
            "ft_backbone": "resnet18", "ft_weights": "random", "ft_input": 224, "device": "cuda",
            "train_device": "cuda"},
    "dry": {"n_jpegs": 24, "input_size": 64, "weights": "random",
            "grids": [(120, 16, 2)], "ft_images": 24, "ft_backbone": "resnet18",
            "ft_weights": "random", "ft_input": 32, "device": "cpu", "train_device": "cpu-torch"},
}


def _env(dry: bool) -> dict[str, str]:
    env = dict(os.environ, SCIPY_ARRAY_API="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU run, also on a GPU machine
    return env


def _run(cmd: list[str], *, env: dict[str, str], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (
            e.stdout or ""), f"timed out after {timeout:g} s"
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 2), "stdout": out,
            "stderr_tail": err[-3000:]}


def step_tests(dry: bool, env: dict[str, str]) -> dict[str, Any]:
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
              *GPU_TEST_FILES], env=env, timeout=60 if dry else 240)
    # pytest's rc 5 = nothing collected/selected; every gpu test skipped (CPU) is rc 0
    summary = (r["stdout"].strip().splitlines() or [""])[-1]
    return {"ok": r["rc"] == 0, "rc": r["rc"], "summary": summary, "seconds": r["seconds"],
            "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def step_extract(dry: bool, env: dict[str, str], work: Path) -> dict[str, Any]:
    s = SIZES["dry" if dry else "gpu"]
    out = work / "extract.json"
    cmd = [sys.executable, str(HERE / "bench_extract.py"), "--n", str(s["n_jpegs"]),
           "--device", s["device"], "--weights", s["weights"], "--workdir", str(work),
           "--json", str(out)]
    if s["input_size"]:
        cmd += ["--input-size", str(s["input_size"])]
    if dry:
        cmd += ["--workers", "0", "--batch-size", "8"]
    r = _run(cmd, env=env, timeout=90 if dry else 300)
    res = json.loads(out.read_text()) if out.is_file() else {}
    if dry:  # the plain loop's random network is not ours: the cosine means nothing here
        res["note"] = "random weights: min_cosine_vs_plain is not comparable in the dry run"
    return {"ok": r["rc"] == 0 and bool(res), "rc": r["rc"], "seconds": r["seconds"],
            **res, "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def step_grid(dry: bool, env: dict[str, str]) -> dict[str, Any]:
    s = SIZES["dry" if dry else "gpu"]
    runs = []
    for n, d, k in s["grids"]:
        r = _run([sys.executable, str(HERE / "bench_train.py"), "--n", str(n), "--d", str(d),
                  "--classes", str(k), "--device", s["train_device"], "--json"],
                 env=env, timeout=60 if dry else 240)
        res: dict[str, Any] = {"n": n, "d": d, "classes": k, "rc": r["rc"]}
        if r["rc"] == 0:
            res.update({k2: v for k2, v in json.loads(r["stdout"]).items()
                        if k2 in ("numpy_s", "array_api_s", "speedup", "best_C",
                                  "same_predictions", "max_cv_diff", "array_api_device")})
        else:
            res["stderr_tail"] = r["stderr_tail"]
        from_rule = n * d * (1 if k <= 2 else k)
        res["work"] = from_rule
        runs.append(res)
    return {"ok": all(r["rc"] == 0 for r in runs), "runs": runs,
            "note": "auto picks the GPU from rows x features x classes >= AUTO_GPU_MIN_WORK "
                    "(1e7): the GPU should win (speedup > 1) above it and lose below it"}


def step_finetune(dry: bool, env: dict[str, str], work: Path) -> dict[str, Any]:
    s = SIZES["dry" if dry else "gpu"]
    code = f"""
import json, sys, time, shutil
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
from bench_extract import make_jpegs
from cnncodes.finetuning.run import finetune
src = make_jpegs(Path({str(work)!r}) / "ft-jpegs", {s['ft_images']}, size=(160, 120))
out = Path({str(work)!r}) / "ft-run"
shutil.rmtree(out, ignore_errors=True)
t0 = time.perf_counter()
res = finetune(src, out, epochs=2, backbone={s['ft_backbone']!r}, weights={s['ft_weights']!r},
               input_size={s['ft_input']}, device={s['device']!r}, batch_size={8 if dry else 64},
               num_workers={0 if dry else 'None'}, val_fraction=0.2, test_fraction=0.2)
print(json.dumps({{"seconds": time.perf_counter() - t0, "epochs_run": res.epochs_run,
                  "status": res.status, "val_accuracy": res.val_accuracy,
                  "test_accuracy": res.test_accuracy,
                  "precision": res.report.get("precision") or res.report.get("run", {{}}).get(
                      "precision")}}))
"""
    r = _run([sys.executable, "-c", code], env=env, timeout=90 if dry else 300)
    res = json.loads(r["stdout"].strip().splitlines()[-1]) if r["rc"] == 0 else {}
    return {"ok": r["rc"] == 0 and res.get("epochs_run") == 2, "rc": r["rc"], **res,
            "stderr_tail": r["stderr_tail"] if r["rc"] else ""}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "torch": torch.__version__, "cores": os.cpu_count(),
                            "cuda_available": torch.cuda.is_available()}
    try:
        import sklearn
        import torchvision

        info.update(torchvision=torchvision.__version__, sklearn=sklearn.__version__)
    except ImportError as e:  # pragma: no cover - recorded, not fatal
        info["import_error"] = str(e)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["tf32_defaults"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                 "cudnn": torch.backends.cudnn.allow_tf32}
    from cnncodes.backbones.weights import packaged_file

    info["packaged_weights"] = packaged_file("mobilenet_v2-b0353104.pth") is not None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (< 2 min)")
    ap.add_argument("--out", default=None, help="the JSON of results (default: "
                    "benchmarks/results/gpu_check[_dry].json)")
    ap.add_argument("--workdir", default=None, help="generated images and runs (default: temp)")
    ap.add_argument("--steps", default="tests,extract,grid,finetune")
    args = ap.parse_args(argv)
    dry = args.dry_run
    out = Path(args.out or HERE / "results" / f"gpu_check{'_dry' if dry else ''}.json")
    env = _env(dry)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnncodes-gpu-check-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not dry:
            import torch

            if not torch.cuda.is_available():
                print("gpu_check: no CUDA device visible; use --dry-run for the CPU run",
                      file=sys.stderr)
                return 2
        result: dict[str, Any] = {"mode": "dry-run (cpu)" if dry else "gpu",
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "machine": machine(), "steps": {}}
        steps = {"tests": lambda: step_tests(dry, env),
                 "extract": lambda: step_extract(dry, env, work),
                 "grid": lambda: step_grid(dry, env),
                 "finetune": lambda: step_finetune(dry, env, work)}
        for name in args.steps.split(","):
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            result["steps"][name] = steps[name]()
            print(f"gpu_check: {name} ok={result['steps'][name]['ok']}", file=sys.stderr,
                  flush=True)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["ok"] = all(s["ok"] for s in result["steps"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"gpu_check: {'all ok' if result['ok'] else 'FAILED steps: ' + ', '.join(k for k, v in result['steps'].items() if not v['ok'])}"
          f" in {result['seconds']:.0f} s; results in {out}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
