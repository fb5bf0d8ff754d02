"""Tensors that may live on the GPU reach NumPy only through ``.cpu()`` (CUDA_NOTES item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnncodes.advisor.run import RAW_SIDE, _raw_thumbnails

from .fake import fake_cuda


def test_fake_cuda_tensor_refuses_numpy_like_cuda():
    with pytest.raises(TypeError, match="cuda"):
        (fake_cuda(torch.zeros(2, 3)) * 2).numpy()


def test_raw_thumbnails_copy_a_gpu_batch_to_the_host():
    imgs = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)
    got = _raw_thumbnails(fake_cuda(imgs))
    want = _raw_thumbnails(imgs)
    assert type(got) is np.ndarray and got.shape == (3, 3 * RAW_SIDE * RAW_SIDE)
    np.testing.assert_array_equal(got, want)
    assert 0.0 <= got.min() and got.max() <= 1.0
