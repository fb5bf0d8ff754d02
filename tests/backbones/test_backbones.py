"""Every registry entry and layer: shape, declared dim, finite, deterministic, batch invariant."""

from __future__ import annotations

import gc

import pytest
import torch

from cnncodes.backbones import create_backbone, get_spec, layer_dims, list_backbones, resolve_layers
from cnncodes.errors import OptionError
from cnncodes.options import POOLINGS

SIZE = 64


@pytest.mark.parametrize("name", list_backbones())
def test_every_layer_of_every_backbone(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    ext, resolved = create_backbone(name, weights="random", layers=list(spec.layers))
    assert resolved.is_random and resolved.preprocessing.crop >= 200
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = ext(x)
        again = ext(x)
        single = ext(x[1:2])
    assert list(out) == list(spec.layers)
    for layer, cut in spec.layers.items():
        v = out[layer]
        assert v.shape == (3, cut.dim), (layer, v.shape, cut.dim)
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all(), layer
        assert torch.equal(v, again[layer]), f"{layer} not deterministic"
        scale = float(v.abs().max()) + 1e-6  # random-init deep nets have large activations
        torch.testing.assert_close(single[layer][0], v[1], atol=1e-4 * scale, rtol=1e-3)
    assert spec.default_layer in spec.layers and spec.last_layers and spec.earlier_layers
    del ext
    gc.collect()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_modes_on_a_map_layer(pooling):
    ext, _ = create_backbone("resnet18", weights="random", layers="layer3,pool", pooling=pooling)
    dims = layer_dims(ext, SIZE)
    expected = {"avg": 256, "max": 256, "avgmax": 512, "none": 256 * 4 * 4}[pooling]
    assert dims["layer3"] == expected
    assert dims["pool"] == 512  # the network's own pooled code ignores --pooling
    assert get_spec("resnet18").cut("layer3").out_dim(pooling, (4, 4)) == expected


def test_avg_pool_of_last_map_equals_network_pool():
    ext, _ = create_backbone("resnet18", weights="random", layers="layer4,pool")
    with torch.inference_mode():
        out = ext(torch.randn(2, 3, SIZE, SIZE))
    torch.testing.assert_close(out["layer4"], out["pool"])


def test_forward_stops_after_the_deepest_requested_layer():
    ext, _ = create_backbone("resnet18", weights="random", layers="layer2")
    called = []
    ext.model.layer3.register_forward_hook(lambda *a: called.append(1))
    with torch.inference_mode():
        ext(torch.randn(1, 3, SIZE, SIZE))
    assert not called


def test_vgg_fc_codes_are_after_relu():
    ext, _ = create_backbone("vgg11", weights="random", layers="fc6,fc7")
    with torch.inference_mode():
        out = ext(torch.randn(2, 3, SIZE, SIZE))
    assert (out["fc6"] >= 0).all() and (out["fc7"] >= 0).all()
    assert (out["fc6"] == 0).any()  # a ReLU really was applied


@pytest.mark.parametrize("bad, match", [
    (dict(name="resnet5"),
     "backbone must be a registered name .*Got 'resnet5' instead. Did you mean resnet50"),
    (dict(name="vgg16", layers="fc8"),
     "layer must be one of vgg16's layers: pool5, fc6, fc7 .*Got 'fc8' instead"),
    (dict(name="resnet18", pooling="mean"),
     "pooling must be one of avg, max, avgmax, none. Got 'mean' instead"),
    (dict(name="resnet18", weights="IMAGENET1K_V9"),
     "weights must be one of DEFAULT, IMAGENET1K_V1.*Got 'IMAGENET1K_V9' instead"),
])
def test_bad_names_are_explained(bad, match):
    kw = {"weights": "random", **bad}
    name = kw.pop("name")
    with pytest.raises(OptionError, match=match):
        create_backbone(name, **kw)


def test_resolve_layers_orders_and_dedupes():
    spec = get_spec("resnet50")
    assert resolve_layers(spec, "pool,layer2,pool") == ["layer2", "pool"]
    assert resolve_layers(spec, None) == ["pool"]


def test_random_init_is_reproducible_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = create_backbone("resnet18", weights="random")
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = create_backbone("resnet18", weights="random")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
