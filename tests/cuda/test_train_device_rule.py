"""``train --device auto``: the GPU only above the size rule (CUDA_NOTES item 10)."""

from __future__ import annotations

import torch

from cnncodes.linear.array_api import AUTO_GPU_MIN_WORK, auto_uses_gpu, resolve_compute
from cnncodes.linear.pipelines import build_pipeline


def test_size_rule():
    assert not auto_uses_gpu(1000, 1280, 2)  # binary: 1.3e6
    assert auto_uses_gpu(1000, 1280, 10)  # 1.28e7
    assert auto_uses_gpu(10_000, 1000, 2)  # binary counts once: 1e7
    assert not auto_uses_gpu(1797, 64, 10)  # digits
    assert auto_uses_gpu(10, 10, 10, min_work=1000) and AUTO_GPU_MIN_WORK == 10_000_000


def test_auto_takes_the_gpu_only_for_large_problems(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    pipe = build_pipeline()
    small = resolve_compute("auto", pipeline=pipe, shape=(500, 1280, 5))
    assert (small.engine, small.device) == ("numpy", "cpu")
    large = resolve_compute("auto", pipeline=pipe, shape=(20_000, 1280, 10))
    assert large.engine == "array-api" and large.device.startswith("cuda")
    # an explicit cuda is obeyed whatever the size
    assert resolve_compute("cuda", pipeline=pipe, shape=(10, 10, 2)).engine == "array-api"
