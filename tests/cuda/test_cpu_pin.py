"""The CPU tests stay on the CPU on a GPU machine (tests/conftest.py ``_cpu_unless_gpu_test``)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from cnncodes._runtime import resolve_device, resolve_precision


def test_auto_means_cpu_fp32_in_cpu_tests():
    dev = resolve_device("auto")
    assert dev == torch.device("cpu")
    assert resolve_precision("auto", dev) == "fp32"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_subprocesses_see_no_gpu():
    out = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ.get("
                          "'CUDA_VISIBLE_DEVICES')))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "''"
