"""nvJPEG failures: a warning, a switch to the CPU workers after repeated all-failed batches, and
the decoder that ran in the run record (CUDA_NOTES item 9). The GPU decoder is simulated: a
BytesDataset whose decode device is not the CPU hands raw bytes to the main process, whose
decoder is made to fail."""

from __future__ import annotations

import logging

import numpy as np

from cnncodes.codes.batches import iter_codes
from cnncodes.codes.extractor import CodeExtractor
from cnncodes.sources import tensor_decode
from cnncodes.sources.folders import open_source
from cnncodes.sources.tensor_decode import BytesDataset, GpuDecodeHealth

from ..conftest import write_tree


def test_failing_gpu_decoder_warns_switches_and_is_recorded(tmp_path, monkeypatch, caplog):
    root = write_tree(tmp_path / "jpgs", per_class=8, ext=".jpg")
    src = open_source(root)
    ext = CodeExtractor("mobilenet_v2", weights="random", layers="pool", input_size=32,
                        engine="torch")
    ds = BytesDataset(src, ext.preprocessing, decode_device="meta")  # "a GPU": raw batches
    ds.cpu_below = 0  # every JPEG goes to the batch decoder
    in_main = {"on": False}
    real_decode, real_batch = tensor_decode._decode, tensor_decode.decode_batch

    def decode(datas, dev):
        if in_main["on"]:
            raise RuntimeError("nvjpeg: simulated failure")
        return real_decode(datas, dev)

    def batch(*a, **k):
        in_main["on"] = True
        try:
            return real_batch(*a, **k)
        finally:
            in_main["on"] = False

    monkeypatch.setattr(tensor_decode, "_decode", decode)
    monkeypatch.setattr(tensor_decode, "decode_batch", batch)
    health = GpuDecodeHealth(switch_after=2)
    with caplog.at_level(logging.WARNING):
        out = list(iter_codes(ds, ext, list(range(len(src))), batch_size=4, num_workers=0,
                              health=health))
    got = [i for b, _ in out for i in b.indices]
    assert got == list(range(24)) and all(c["pool"].shape == (len(b.indices), 1280)
                                          for b, c in out)
    assert health.record() == {"nvjpeg": 0, "pil_after_nvjpeg_error": 8,
                               "cpu_workers_after_switch": 16, "switched_to_cpu": True}
    assert health.decoder() == "nvjpeg, then libjpeg-turbo (nvJPEG failed)"
    text = caplog.text
    assert "nvJPEG rejected 4 of 4 JPEGs of a batch" in text
    assert "decoding the rest on the CPU workers" in text
    # the codes are those of the CPU path
    cpu = BytesDataset(src, ext.preprocessing)
    ref = np.concatenate([c["pool"] for _, c in iter_codes(cpu, ext, list(range(24)),
                                                           batch_size=4, num_workers=0)])
    mine = np.concatenate([c["pool"] for _, c in out])
    np.testing.assert_allclose(mine[8:], ref[8:], rtol=1e-5, atol=1e-6)


def test_health_counts_partial_failures_without_switching():
    class Raw:
        def __init__(self, n, bad):
            self.jpeg_indices = list(range(n))
            self.routes = {i: tensor_decode.DECODER_ERROR if i < bad else "tensor"
                           for i in range(n)}

    h = GpuDecodeHealth(switch_after=2)
    for n, bad in ((4, 4), (4, 1), (4, 4), (0, 0), (4, 0)):
        h.update(Raw(n, bad))
    assert not h.switched and (h.sent, h.rejected) == (16, 9)
    assert h.decoder() == "nvjpeg (with PIL for the JPEGs it rejected)"
    h.update(Raw(4, 4))
    h.update(Raw(4, 4))
    assert h.switched
