"""The "likely slow" fixes that the CPU can check (CUDA_NOTES items 5, 7, 12)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cnncodes.codes.numerics import cudnn_autotune
from cnncodes.sources import loader
from cnncodes.sources.loader import normalize_batch
from cnncodes.sources.preprocessing import IMAGENET
from cnncodes.sources.tensor_decode import CPU_PROGRESSIVE, TENSOR, decode_batch, read_item

from ..conftest import make_image


def test_mean_std_are_built_once_per_device_and_give_the_same_batch():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    loader._MEAN_STD.clear()
    a = normalize_batch(x, IMAGENET)
    with torch.inference_mode():
        b = normalize_batch(x, IMAGENET)
    assert len(loader._MEAN_STD) == 1
    mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1) * 255
    ref = (x.float() - mean) / std
    assert torch.equal(a, ref) and torch.equal(b, ref)
    w = torch.ones(1, requires_grad=True)  # the cached tensors work under autograd too
    (normalize_batch(x, IMAGENET) * w).sum().backward()
    assert w.grad is not None


def test_cudnn_autotune_is_scoped():
    old = torch.backends.cudnn.benchmark
    with cudnn_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == old
    with cudnn_autotune(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == old


def test_progressive_jpegs_are_decoded_by_the_workers_when_the_gpu_decodes(tmp_path):
    img = make_image(np.random.default_rng(0), 1, size=(240, 320))
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True, quality=90, subsampling=0)
    p = tmp_path / "prog.jpg"
    p.write_bytes(buf.getvalue())
    assert Image.open(p).info.get("progressive")
    plain = read_item(0, p, IMAGENET)
    assert plain.route == TENSOR  # CPU decoding: the batch decoder takes it
    moved = read_item(0, p, IMAGENET, cpu_below=1, progressive_on_cpu=True)
    assert moved.route == CPU_PROGRESSIVE and moved.image is not None
    ref = decode_batch([plain], IMAGENET).images[0]
    assert (moved.image.int() - ref.int()).abs().max() <= 2


def test_per_rank_workers_on_a_gpu_node(monkeypatch):
    from cnncodes import _runtime

    monkeypatch.setattr(_runtime.os, "cpu_count", lambda: 64)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _runtime.per_rank_workers(cuda, 8) == 8  # was 8 // 8 = 1
    assert _runtime.per_rank_workers(cuda, 1) == 8
    monkeypatch.setattr(_runtime.os, "cpu_count", lambda: 16)
    assert _runtime.per_rank_workers(cuda, 8) == 2
    assert _runtime.per_rank_workers(cpu, 2) == 2  # CPU unchanged: min(4, 16 // 2) // 2


def test_png_only_batch_is_returned_without_row_copies(tmp_path):
    from cnncodes.sources.tensor_decode import collate_raw

    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        make_image(rng, i).save(p)
        items.append(read_item(i, p, IMAGENET))
    raw = collate_raw(items)
    assert not raw.jpeg_indices
    b = decode_batch(raw, IMAGENET)
    assert b.indices == [0, 1, 2] and b.images.data_ptr() == raw.ready.data_ptr()
