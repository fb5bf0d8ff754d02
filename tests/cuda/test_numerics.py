"""Precision, decoder and device as compatibility fields (CUDA_NOTES items 11 and 13)."""

from __future__ import annotations

import shutil

import h5py
import pytest
import torch

from cnncodes.codes.compat import check_store_compatible, config_diff
from cnncodes.codes.extraction import extract
from cnncodes.codes.numerics import (
    COMPAT_DEFAULTS,
    decoding,
    numerics,
    planned_decoder,
    strict_fp32,
    tf32_state,
)
from cnncodes.codes.store import FeatureStore
from cnncodes.errors import ModelMismatchError, StoreMismatchError
from cnncodes.linear.prediction import linear_predict, model_runtime
from cnncodes.linear.training import train
from cnncodes.options import RuntimeOptions

OPTS = dict(backbone="mobilenet_v2", weights="random", layers="pool", input_size=32,
            num_workers=0, batch_size=8)


def test_numerics_decoding_and_planned_decoder():
    assert numerics("fp32", "cpu") == numerics("fp32", torch.device("cuda", 1)) == "fp32"
    assert numerics("fp16", "cuda:0") == "fp16/cuda" and numerics("bf16", "cpu") == "bf16/cpu"
    assert decoding("pil") == decoding("libjpeg-turbo") == "cpu" and decoding("nvjpeg") == "nvjpeg"
    with pytest.raises(ValueError, match="unknown decoder 'x'"):
        decoding("x")
    assert planned_decoder("auto", "cuda", "bilinear") == "nvjpeg"
    assert planned_decoder("auto", "cpu", "bilinear") == "libjpeg-turbo"
    assert planned_decoder("pil", "cuda", "bilinear") == "pil"
    assert planned_decoder("tensor", "cuda", "lanczos") == "pil"
    # DCT-scaled decoding of large JPEGs is a family of its own, on the CPU decoders only
    assert decoding("pil+dct") == decoding("libjpeg-turbo+dct") == "cpu-dct"
    assert planned_decoder("auto", "cpu", "bilinear", dct=True) == "libjpeg-turbo+dct"
    assert planned_decoder("pil", "cuda", "bilinear", dct=True) == "pil+dct"
    assert planned_decoder("auto", "cuda", "bilinear", dct=True) == "nvjpeg"


@pytest.fixture
def tf32_on():
    old = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_strict_fp32_turns_tf32_off_on_cuda_and_restores_the_callers_state(tf32_on):
    with strict_fp32(torch.device("cpu")):
        assert tf32_state() == (True, True)  # nothing to do on the CPU
    with strict_fp32(torch.device("cuda", 0)):
        assert tf32_state() == (False, False)
    assert tf32_state() == (True, True)
    with pytest.raises(RuntimeError, match="boom"), strict_fp32(torch.device("cuda")):
        raise RuntimeError("boom")
    assert tf32_state() == (True, True)


def test_the_torch_engine_runs_under_strict_fp32(monkeypatch):
    from cnncodes.codes import engines
    from cnncodes.codes.extractor import CodeExtractor

    seen = []
    real = engines.strict_fp32
    monkeypatch.setattr(engines, "strict_fp32", lambda d: seen.append(d) or real(d))
    ext = CodeExtractor("mobilenet_v2", weights="random", layers="pool", input_size=32,
                        engine="torch")
    ext(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert seen == [torch.device("cpu")]
    prov = ext.provenance()
    assert (prov["numerics"], prov["decoding"], prov["tf32"]) == ("fp32", "cpu-dct", False)
    off = CodeExtractor("mobilenet_v2", weights="random", layers="pool", input_size=32,
                        engine="torch", jpeg_scaling="off")
    assert off.provenance()["decoding"] == "cpu"


def test_old_files_read_as_cpu_fp32():
    assert config_diff({}, dict(COMPAT_DEFAULTS), ("numerics", "decoding")) == []
    diff = config_diff({}, {"numerics": "fp16/cuda", "decoding": "nvjpeg"},
                       ("numerics", "decoding"))
    assert diff[0].startswith("numerics: file has fp32, requested fp16/cuda (")
    assert diff[1].startswith("decoding: file has cpu, requested nvjpeg (")


def test_append_refuses_other_numerics_by_name_and_mixes_cpu_decoders(image_tree, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_tree, out, decoder="pil", **OPTS)
    prov = FeatureStore(out).provenance
    assert (prov["numerics"], prov["decoding"]) == ("fp32", "cpu-dct")
    with pytest.raises(StoreMismatchError, match=r"numerics: file has fp32, requested bf16/cpu"):
        extract(image_tree, out, precision="bf16", **OPTS)
    # PIL and libjpeg-turbo pixels mix: the tensor decoder appends to a PIL store
    extract(image_tree, out, decoder="tensor", overwrite=False, **OPTS)
    with pytest.raises(StoreMismatchError, match=r"decoding: file has cpu-dct, requested nvjpeg"):
        check_store_compatible(out, {**prov, "decoding": "nvjpeg"})
    # full decoding does not silently mix with DCT-scaled decoding
    with pytest.raises(StoreMismatchError, match=r"decoding: file has cpu-dct, requested cpu "):
        extract(image_tree, out, jpeg_scaling="off", **OPTS)


def test_store_without_the_fields_is_cpu_fp32(image_tree, tmp_path):
    out = tmp_path / "old.h5"
    extract(image_tree, out, **OPTS)
    with h5py.File(out, "r+") as f:  # as a store written before the fields existed
        del f.attrs["numerics"], f.attrs["decoding"]
    assert "numerics" not in FeatureStore(out).provenance
    first = sorted(image_tree.rglob("*.png"))[0]
    shutil.copy(first, first.with_name("added.png"))
    extract(image_tree, out, **OPTS)  # appends (fp32, CPU decoding: auto follows the store)
    prov = FeatureStore(out).provenance
    assert prov["decoding"] == "cpu" and prov["runs"][-1]["jpeg_scaling"] == "off"
    with pytest.raises(StoreMismatchError, match="decoding: file has cpu, requested cpu-dct"):
        extract(image_tree, out, jpeg_scaling="dct", **OPTS)
    with pytest.raises(StoreMismatchError, match="numerics: file has fp32, requested bf16/cpu"):
        extract(image_tree, out, precision="bf16", **OPTS)


def test_a_model_refuses_codes_of_another_precision(image_tree, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    extract(image_tree, out, **OPTS)
    m = train(out, device="cpu")
    assert m.provenance["numerics"] == "fp32" and m.provenance["decoding"] == "cpu-dct"
    with pytest.raises(ModelMismatchError, match="numerics: model has fp32, .* have bf16/cpu"):
        linear_predict(m, image_tree, runtime=RuntimeOptions(precision="bf16", num_workers=0))
    pred = linear_predict(m, image_tree, runtime=RuntimeOptions(num_workers=0))
    assert len(pred.paths) == 24
    # on a GPU, "auto" follows the model: fp32 and CPU decoding
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    r = model_runtime(m, RuntimeOptions())
    assert (r.precision, r.decoder, r.jpeg_scaling) == ("fp32", "pil", "dct")
    m.provenance["decoding"] = "cpu"  # a model of full-decoding codes predicts with full decoding
    assert model_runtime(m, RuntimeOptions()).jpeg_scaling == "off"
    assert model_runtime(m, RuntimeOptions(precision="fp16")).precision == "fp16"  # refused later
    m.provenance["numerics"], m.provenance["decoding"] = "fp16/cuda", "nvjpeg"
    r = model_runtime(m, RuntimeOptions())
    assert (r.precision, r.decoder) == ("fp16", "auto")


def test_cnncodes_memory_key_holds_numerics_and_decoding(image_tree):
    from cnncodes.linear.transformer import CNNCodes

    t = CNNCodes(backbone="mobilenet_v2", weights="random", layer="pool", input_size=32,
                 cache="memory", num_workers=0).fit([])
    key = t._memory_key()
    assert key[-2:] == ("fp32", "cpu-dct")
    t.provenance_ = {**t.provenance_, "numerics": "fp16/cuda"}
    assert t._memory_key() != key
