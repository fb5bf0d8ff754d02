"""DCT-scaled decoding of large JPEGs (cnncodes.sources.dct): the scale rule, pixels close to a
full decode, routing in both decoders, the start-up check, provenance and fidelity of codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.codes.extraction import extract
from cnncodes.codes.reader import FeatureStore
from cnncodes.sources import dct
from cnncodes.sources.folders import open_source
from cnncodes.sources.images import draft_scale, load_rgb
from cnncodes.sources.loader import ImageDataset, preprocess_pil
from cnncodes.sources.preprocessing import IMAGENET
from cnncodes.sources.tensor_decode import CPU_DCT, TENSOR, BytesDataset, read_item

from ..conftest import requires_packaged_weights


def big_photo(path: Path, size=(2048, 1536), seed=0) -> Path:
    """A photo-like JPEG: a real sample photo upscaled, with seeded noise, 4:2:0."""
    from sklearn.datasets import load_sample_images

    img = Image.fromarray(load_sample_images().images[seed % 2]).resize(size, Image.BICUBIC)
    a = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, 5, (*size[::-1], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90, subsampling=2)
    return path


def test_draft_scale_keeps_the_shorter_side_above_the_target():
    assert draft_scale(4000, 3000, 512) == 4  # 750 >= 512; 1/8 would give 375
    assert draft_scale(3000, 4000, 512) == 4
    assert draft_scale(1024, 1023, 512) == 1  # under twice the target: full decode
    assert draft_scale(1024, 1024, 512) == 2
    assert draft_scale(9000, 8000, 100) == 8  # never below 1/8
    assert draft_scale(4000, 3000, None) == 1 and draft_scale(4000, 3000, 0) == 1
    assert dct.draft_target(256) == 512


def test_load_rgb_decodes_large_jpegs_scaled_and_close_to_full(tmp_path):
    p = big_photo(tmp_path / "a.jpg")
    full = load_rgb(p)
    small = load_rgb(p, draft_to=dct.draft_target(IMAGENET.resize))
    assert full.size == (2048, 1536) and small.size == (1024, 768)
    a = preprocess_pil(full, IMAGENET).numpy().astype(int)
    b = preprocess_pil(small, IMAGENET).numpy().astype(int)
    assert np.abs(a - b).mean() < 1.0
    # PNGs and small JPEGs are not touched
    Image.open(p).save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png", draft_to=512).size == (2048, 1536)


def test_both_decoders_route_large_jpegs_to_dct(tmp_path):
    big = big_photo(tmp_path / "t" / "big.jpg")
    Image.open(big).resize((640, 480)).save(tmp_path / "t" / "small.jpg", quality=90)
    src = open_source(tmp_path / "t")
    target = dct.draft_target(IMAGENET.resize)
    routes = {Path(p).name: read_item(i, src.abspath(i), IMAGENET, draft_to=target).route
              for i, p in enumerate(src.paths)}
    assert routes == {"big.jpg": CPU_DCT, "small.jpg": TENSOR}
    assert read_item(0, big, IMAGENET).route == TENSOR  # off unless asked
    ds_pil = ImageDataset(src, IMAGENET, draft_to=target)
    ds_tensor = BytesDataset(src, IMAGENET, draft_to=target)
    i = [Path(p).name for p in src.paths].index("big.jpg")
    item = ds_tensor[i]
    assert item.route == CPU_DCT
    assert np.array_equal(item.image.numpy(), ds_pil[i][1].numpy())  # the same pixels


def test_failing_startup_check_turns_dct_off(monkeypatch, caplog):
    assert dct.dct_check()[0]  # this build's scaled IDCT agrees with a full decode
    assert dct.dct_enabled("auto") and dct.dct_enabled("dct") and not dct.dct_enabled("off")
    monkeypatch.setattr(dct, "dct_check", lambda: (False, "mean 9.00, max 80 grey levels"))
    assert not dct.dct_enabled("auto")
    assert "decoding every JPEG in full" in caplog.text


def test_extract_records_dct_and_refuses_mixing(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for k in range(2):
        big_photo(root / "a" / f"{k}.jpg", size=(1200, 900), seed=k)
    opts = dict(backbone="mobilenet_v2", weights="random", layers="pool", input_size=32,
                num_workers=0, batch_size=4)
    out = tmp_path / "c.h5"
    extract(root, out, **opts)
    prov = FeatureStore(out).provenance
    assert prov["decoding"] == "cpu-dct"
    # libjpeg-turbo+dct, or pil+dct when an earlier test left this graph's torch-free manifest
    assert prov["runs"][-1]["decoder"] in ("libjpeg-turbo+dct", "pil+dct")
    assert prov["runs"][-1]["jpeg_scaling"] == "dct"
    from cnncodes.errors import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="decoding: file has cpu-dct, requested cpu"):
        extract(root, out, jpeg_scaling="off", **opts)
    monkeypatch.setattr(dct, "dct_check", lambda: (False, "broken"))
    out2 = tmp_path / "d.h5"
    extract(root, out2, decoder="pil", **opts)  # the check fails: full decoding, recorded so
    prov = FeatureStore(out2).provenance
    assert prov["decoding"] == "cpu" and prov["runs"][-1]["decoder"] == "pil"


@requires_packaged_weights
def test_dct_codes_stay_within_the_bound(tmp_path):
    """Embedded MobileNetV2 codes of DCT-scaled decoding vs a full decode (the bound the
    default rests on; benchmarks/bench_photos.py measures it on 12-Mpx photos)."""
    import torch

    from cnncodes.codes.extractor import CodeExtractor

    ext = CodeExtractor("mobilenet_v2", layers="pool", device="cpu", engine="torch")
    paths = [big_photo(tmp_path / f"{k}.jpg", size=(2400, 1800), seed=k) for k in range(2)]
    target = dct.draft_target(ext.preprocessing.resize)
    x_full = torch.stack([preprocess_pil(load_rgb(p), ext.preprocessing) for p in paths])
    x_dct = torch.stack([preprocess_pil(load_rgb(p, draft_to=target), ext.preprocessing)
                         for p in paths])
    a, b = ext(x_full)["pool"], ext(x_dct)["pool"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= dct.DCT_MIN_COSINE


@pytest.mark.parametrize("names", [("0.png", "1.png"), ("0.png", "1.JPG")])
def test_continuing_a_full_decoding_store_mentions_jpeg_only_when_there_are_jpegs(
        tmp_path, caplog, names):
    """A store made with --jpeg-scaling off, continued with auto, is continued with full
    decoding (no refusal); the note says so only when the source holds a JPEG."""
    import logging

    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            root / "a" / n, format="JPEG" if n.lower().endswith(".jpg") else "PNG")
    opts = dict(backbone="mobilenet_v2", weights="random", layers="pool", input_size=32,
                num_workers=0, batch_size=4, progress=False)
    out = tmp_path / "c.h5"
    extract(root, out, jpeg_scaling="off", **opts)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "a" / "2.png")
    with caplog.at_level(logging.INFO, logger="cnncodes"):
        res = extract(root, out, **opts)  # jpeg_scaling="auto"
    assert res.new == 1 and FeatureStore(out).provenance["decoding"] == "cpu"
    said = "was made with full JPEG decoding" in caplog.text
    assert said == any(n.lower().endswith(".jpg") for n in names), caplog.text
