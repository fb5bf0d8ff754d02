"""Weights: packaged offline MobileNetV2, local checkpoints, offline errors, preprocessing."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from cnncodes.backbones import create_backbone, get_spec
from cnncodes.backbones.weights import file_sha256, packaged_file, resolve_weights
from cnncodes.codes.extraction import extract_arrays
from cnncodes.codes.extractor import CodeExtractor
from cnncodes.errors import WeightsUnavailableError

from ..conftest import requires_packaged_weights


@requires_packaged_weights
def test_packaged_mobilenet_is_found_offline_and_checksummed():
    p = packaged_file("mobilenet_v2-b0353104.pth")
    assert p is not None and p.is_file()
    assert file_sha256(p).startswith("b03531047ffacf1e")
    r = resolve_weights(get_spec("mobilenet_v2"), "auto")
    assert r.id == "MobileNet_V2_Weights.IMAGENET1K_V1" and r.path == p
    assert (r.preprocessing.resize, r.preprocessing.crop) == (256, 224)


def test_preprocessing_comes_from_the_weights_metadata():
    r = resolve_weights(get_spec("efficientnet_b3"), "DEFAULT")
    pp = r.preprocessing
    assert (pp.resize, pp.crop, pp.interpolation) == (320, 300, "bicubic")
    small = pp.with_input_size(96)
    assert small.crop == 96 and small.resize == round(96 * 320 / 300)
    assert resolve_weights(get_spec("resnet50"), "IMAGENET1K_V1").preprocessing.resize == 256
    assert resolve_weights(get_spec("resnet50"), "DEFAULT").preprocessing.resize == 232


@requires_packaged_weights
def test_pretrained_mobilenet_recognises_a_real_photo(sample_photo):
    """End-to-end check of decode + preprocessing + weights: china.jpg is a palace."""
    ext = CodeExtractor("mobilenet_v2", layers="pool", device="cpu")
    codes = extract_arrays([sample_photo], extractor=ext, num_workers=0).codes["pool"]
    with torch.inference_mode():
        probs = torch.softmax(ext.module.model.classifier(torch.from_numpy(codes)), 1)[0]
    top = int(probs.argmax())
    assert ext.resolved.categories[top] in {"palace", "monastery", "stupa", "pagoda"}
    assert float(probs[top]) > 0.4


def test_offline_download_failure_names_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as e:
        create_backbone("resnet50", weights="DEFAULT")
    msg = str(e.value)
    assert "resnet50" in msg and "offline" in msg and "resnet50-11ad3fa6.pth" in msg
    assert "--weights random" in msg and "mobilenet_v2" in msg and "IMAGENET1K_V1" in msg


def test_cached_hub_file_is_used_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("must not download"))
    torch.manual_seed(3)
    sd = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(sd, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    ext, r = create_backbone("resnet18", weights="IMAGENET1K_V1")
    assert r.id == "ResNet18_Weights.IMAGENET1K_V1"
    torch.testing.assert_close(ext.model.conv1.weight, sd["conv1.weight"])


def test_local_checkpoint_with_another_head_loads_the_backbone(tmp_path):
    torch.manual_seed(1)
    m = torchvision.models.resnet18(num_classes=5)
    torch.save({"model": {f"module.{k}": v for k, v in m.state_dict().items()}, "epoch": 3},
               tmp_path / "ft.pt")
    ext, r = create_backbone("resnet18", weights=str(tmp_path / "ft.pt"), layers="pool")
    assert r.id.startswith("file:")
    torch.testing.assert_close(ext.model.layer4[1].conv2.weight, m.layer4[1].conv2.weight)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    with torch.inference_mode():
        ref = torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(
            m.maxpool(m.relu(m.bn1(m.conv1(x))))))))), 1)
        np.testing.assert_allclose(ext(x)["pool"], ref, rtol=1e-5, atol=1e-5)


def test_bad_checkpoints_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        create_backbone("resnet18", weights=str(tmp_path / "mnv2.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot load checkpoint"):
        create_backbone("resnet18", weights=str(tmp_path / "junk.pth"))
