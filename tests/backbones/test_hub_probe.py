"""Offline, a weights download fails in about the probe's 2 s with the usual message, instead of
the download clients' retries (~93 s for the Hugging Face hub). The probe is monkeypatched:
these tests never touch the network."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import torch

from cnncodes.backbones import timm_models, weights
from cnncodes.errors import WeightsUnavailableError
from cnncodes.sources.preprocessing import IMAGENET


def never(*a, **k):
    raise AssertionError("the download was attempted although the host did not answer")


def test_probe_connects_to_the_host_or_its_proxy(monkeypatch):
    seen = []

    class Conn:
        def __init__(self, addr, timeout):
            seen.append((addr, timeout))
            if addr[0] == "down.example":
                raise OSError("unreachable")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return None

    monkeypatch.setattr(socket, "create_connection", Conn)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert weights.host_reachable("https://up.example/models/x.pth")
    assert seen[-1] == (("up.example", 443), weights.PROBE_TIMEOUT_S)
    assert not weights.host_reachable("https://down.example/x")
    assert weights.host_reachable("http://up.example:8080/x") and seen[-1][0] == (
        "up.example", 8080)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert weights.host_reachable("https://down.example/x")  # the proxy answers for it
    assert seen[-1][0] == ("proxy.example", 3128)


def test_timm_hub_unreachable_fails_fast_with_the_same_message(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants  # noqa: F401 - hub.constants below
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "host_reachable", lambda url, timeout=2.0: False)
    monkeypatch.setattr(hub, "hf_hub_download", never)
    spec = SimpleNamespace(name="timm/resnet18")
    resolved = weights.ResolvedWeights("timm/resnet18.a1_in1k", None,
                                       "hf-hub:timm/resnet18.a1_in1k", IMAGENET)
    with pytest.raises(WeightsUnavailableError) as e:
        timm_models.TimmWeights.fetch(spec, resolved)
    msg = str(e.value)
    assert "did not answer within 2 s" in msg and "looks offline" in msg
    assert "--weights random" in msg and "models--timm--resnet18.a1_in1k" in msg


def test_timm_hub_reachable_downloads(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants  # noqa: F401 - hub.constants below
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "host_reachable", lambda url, timeout=2.0: True)
    got = tmp_path / "model.safetensors"
    monkeypatch.setattr(hub, "hf_hub_download", lambda repo, fname: str(got))
    resolved = weights.ResolvedWeights("timm/x.t", None, "hf-hub:timm/x.t", IMAGENET)
    out = timm_models.TimmWeights.fetch(SimpleNamespace(name="timm/x"), resolved)
    assert out.path == got


def test_torch_hub_unreachable_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "host_reachable", lambda url, timeout=2.0: False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", never)
    monkeypatch.setattr(weights, "_hub_checkpoint_dir", lambda: tmp_path)
    with pytest.raises(WeightsUnavailableError, match="did not answer within 2 s.*offline"):
        weights._download("https://download.pytorch.org/models/resnet18-f37072fd.pth",
                          SimpleNamespace(name="resnet18"), "ResNet18_Weights.IMAGENET1K_V1")
