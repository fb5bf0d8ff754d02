"""A CPU stand-in for a CUDA tensor: ``.numpy()`` raises as on a GPU until ``.cpu()`` is called."""

from __future__ import annotations

import torch


class FakeCudaTensor(torch.Tensor):
    """Results of torch ops on it stay fake (``__torch_function__``), as they would stay on the
    GPU; only ``.cpu()`` / ``.to("cpu")`` gives back an ordinary tensor."""

    def numpy(self, *args, **kwargs):  # noqa: D102 - mirrors torch's message for CUDA tensors
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to "
                        "copy the tensor to host memory first.")

    def cpu(self, *args, **kwargs):  # noqa: D102
        return torch.Tensor.cpu(self.as_subclass(torch.Tensor), *args, **kwargs)

    def tolist(self):  # noqa: D102 - fine on CUDA, but keep it plain
        return self.as_subclass(torch.Tensor).tolist()


def fake_cuda(t: torch.Tensor) -> FakeCudaTensor:
    return t.as_subclass(FakeCudaTensor)
