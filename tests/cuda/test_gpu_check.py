"""benchmarks/gpu_check.sh --dry-run: the one-shot GPU check runs end to end on the CPU, so the
script cannot rot between the rare runs on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    p = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
                        str(out), "--workdir", str(tmp_path / "work")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["mode"] == "dry-run (cpu)"
    steps = res["steps"]
    assert set(steps) == {"tests", "extract", "grid", "finetune"}
    assert "skipped" in steps["tests"]["summary"] and steps["tests"]["rc"] == 0
    ex = steps["extract"]
    assert ex["n"] == 24 and ex["plain_img_s"] > 0 and ex["engines"]["auto"]["img_s"] > 0
    run = steps["grid"]["runs"][0]
    assert run["same_predictions"] >= 0.95 and run["numpy_s"] > 0 and run["array_api_s"] > 0
    ft = steps["finetune"]
    assert ft["epochs_run"] == 2 and ft["precision"] == "fp32"
