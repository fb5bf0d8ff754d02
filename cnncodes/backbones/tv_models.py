"""Any torchvision classification model as a backbone: ``torchvision/<name>``
(``torchvision/regnet_y_400mf``).

The model's FX graph (``torchvision.models.feature_extraction``, eval mode) is traced once and its
node shapes propagated on the meta device at the weights' crop size. Cut points: ``pool`` (the
input of the last ``nn.Linear``: the pooled code the classifier reads; the default), ``stage1..N``
(the last N x C x H x W node at each spatial size, as timm's feature_info marks stages) and any
graph node as ``node:<name>`` (``cnncodes models torchvision/<name> --nodes`` lists them). Codes
come from ``create_feature_extractor`` with just the asked nodes. Weights: the torchvision
``WeightsEnum`` as for the registry's entries.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import OptionError
from .registry import BackboneSpec, Cut, get_spec, register_resolver

log = logging.getLogger(__name__)

PREFIX = "torchvision/"


def classification_models() -> list[str]:
    """Names of torchvision's classification builders."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _random_model(name: str) -> nn.Module:
    """The architecture on the meta device when its builder allows it, else built on the CPU
    (caller's RNG left alone) and moved there: only shapes are needed."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    try:
        with torch.device("meta"):
            return builder(weights=None).eval()
    except (NotImplementedError, RuntimeError):
        with torch.random.fork_rng(devices=[]):
            return builder(weights=None).eval().to("meta")


def _crop_size(name: str) -> int:
    import torchvision

    w = torchvision.models.get_model_weights(name)
    try:
        return int(w.DEFAULT.transforms().crop_size[0])
    except (AttributeError, IndexError, TypeError):
        return 224


def native_size(model: nn.Module) -> int | None:
    """The one input size a torchvision model is built for (a ViT's ``image_size``: its position
    embedding and its own check fix it), else None (any size)."""
    size = getattr(model, "image_size", None)
    return int(size) if isinstance(size, int) else None


def fixed_size_extra(name: str, native: int) -> dict[str, Any]:
    """For a model fixed to one size: each weights' size (``min_size`` of their metadata, where
    torchvision's builder sets ``image_size``) as ``build_kwargs`` for :func:`build_model`, the
    sizes that work per weights (``fixed_sizes``), and the random-init preprocessing: the default
    weights' transforms at the weightless builder's size (``vit_h_14``: 518 px weights, 224 px
    weightless model)."""
    import torchvision

    from .weights import _preprocessing_of

    enum = torchvision.models.get_model_weights(name)
    build: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {"random": native}
    for m in enum:
        size = int((m.meta.get("min_size") or (native,))[0])
        wid = f"{type(m).__name__}.{m.name}"
        sizes[wid] = size
        if size != native:
            build[wid] = {"image_size": size}
    pp = _preprocessing_of(enum.DEFAULT)
    return {"build_kwargs": build, "fixed_sizes": sizes,
            "preprocessing": pp if pp.crop == native else pp.with_input_size(native)}


def _module_of(node: str, modules: dict[str, nn.Module]) -> str:
    """The module a graph node belongs to (itself, or the module around a functional op)."""
    path = node
    while path:
        base = re.sub(r"_\d+$", "", path)
        if base in modules:
            return base
        path = path.rpartition(".")[0]
    return ""


def trace_nodes(name: str) -> dict[str, Any]:
    """The eval graph of ``name``: ``{"nodes": {node: shape}, "head": last Linear module,
    "pool": its input node, "modules": {node: owning module}}`` (shapes at the crop size)."""
    from torch.fx import GraphModule
    from torch.fx.passes.shape_prop import ShapeProp
    from torchvision.models.feature_extraction import NodePathTracer, _set_default_tracer_kwargs

    model = _random_model(name)
    tracer = NodePathTracer(**_set_default_tracer_kwargs(None))
    graph = tracer.trace(model)
    gm = GraphModule(tracer.root, graph)
    size = native_size(model) or _crop_size(name)
    with torch.device("meta"):
        ShapeProp(gm).propagate(torch.zeros(1, 3, size, size))
    modules = dict(model.named_modules())
    order = {node: i for i, node in enumerate(graph.nodes)}
    covered = [0] * (len(order) + 1)  # edges jumping over a position: not a bottleneck
    from_input: set[Any] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in from_input for a in node.all_input_nodes):
            from_input.add(node)
        if not hasattr(node.meta.get("tensor_meta"), "shape"):
            continue  # sizes and other Python values do not carry the image
        for user in node.users:
            if order[user] > order[node] + 1:
                covered[order[node] + 1] += 1
                covered[order[user]] -= 1
    nodes: dict[str, tuple[int, ...]] = {}
    bottlenecks: set[str] = set()
    head = pool = None
    running = 0
    for node in graph.nodes:
        running += covered[order[node]]
        qual = tracer.node_to_qualname.get(node)
        meta = node.meta.get("tensor_meta")
        if (node.op != "placeholder" and qual is not None and meta is not None
                and hasattr(meta, "shape")):
            nodes[qual] = tuple(int(d) for d in meta.shape)
            if running == 0 and node in from_input:
                bottlenecks.add(qual)
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.Linear):
            head, arg = str(node.target), node.args[0]
            pool = tracer.node_to_qualname.get(arg) if isinstance(arg, torch.fx.Node) else None
    return {"nodes": nodes, "head": head, "pool": pool, "size": size, "bottlenecks": bottlenecks,
            "native": native_size(model),
            "modules": {n: _module_of(n, modules) for n in nodes}}


def _node_cut(node: str, shape: tuple[int, ...]) -> Cut | None:
    """A cut at ``node``: N x C x H x W maps (square H = W), vectors, N x L x C tokens."""
    if len(shape) == 4 and shape[2] == shape[3]:
        return Cut(node, shape[1], "map")
    if len(shape) == 2:
        return Cut(node, shape[1], "vector")
    if len(shape) == 3:
        return Cut(node, shape[2], "map")
    return None


def _stages(g: dict[str, Any]) -> tuple[list[str], bool]:
    """The last bottleneck (every path from the input passes through it) square map node at each
    spatial size larger than 1 x 1, before the pool; and whether token (N x L x C) bottlenecks
    follow the last of them (a ViT: its last map is then an early layer)."""
    last: dict[int, str] = {}
    tokens_after = False
    for n, shape in g["nodes"].items():
        if n == g["pool"]:
            break
        if n not in g["bottlenecks"]:
            continue
        if len(shape) == 4 and shape[2] == shape[3] and shape[2] > 1:
            last[shape[2]] = n
            tokens_after = False
        elif len(shape) == 3:
            tokens_after = True
    return [last[h] for h in sorted(last, reverse=True)], tokens_after


def _tap(model: nn.Module, layers: Sequence[str], *, spec_name: str) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    spec = get_spec(spec_name)
    return create_feature_extractor(model, return_nodes={spec.cut(n).node: n for n in layers})


@functools.lru_cache(maxsize=32)
def torchvision_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of torchvision classification model ``name``, cached."""
    import torchvision

    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(PREFIX + c for c in close)}." if close else ""
        raise OptionError(f"backbone {PREFIX}{name} is not a torchvision classification model "
                          f"(torchvision {torchvision.__version__}).{hint} Known: "
                          f"{', '.join(known)}.")
    builder = torchvision.models.get_model_builder(name)
    g = trace_nodes(name)
    nodes = {n: c for n, s in g["nodes"].items() if (c := _node_cut(n, s)) is not None}
    layers: dict[str, Cut] = {}
    stages, tokens_after = _stages(g)
    for i, n in enumerate(stages):
        last = i == len(stages) - 1 and not tokens_after
        layers[f"stage{i + 1}"] = Cut(n, nodes[n].dim, "map", depth="last" if last else "earlier")
    pool = g["pool"]
    if pool is None or pool not in nodes:  # no Linear classifier (SqueezeNet): the last stage
        if not stages:
            raise OptionError(f"{PREFIX}{name}: found neither a Linear classifier nor a feature "
                              "map to cut; use a node with --layers node:<name>.")
        pool = stages[-1]
    pc = nodes[pool]
    layers["pool"] = Cut(pool, pc.dim, pc.kind, depth="last")
    modules = {layer: g["modules"].get(c.node, "") for layer, c in layers.items()}
    return BackboneSpec(
        name=PREFIX + name, family=f"torchvision:{builder.__module__.rsplit('.', 1)[-1]}",
        builder=builder,
        weights=torchvision.models.get_model_weights(name), layers=layers, default_layer="pool",
        notes="pool = the input of the last Linear; stages = last map at each spatial size",
        extra={"head": g["head"], "modules": modules, "trace_size": g["size"],
               "uncut_nodes": {n: s for n, s in g["nodes"].items() if n not in nodes},
               "library": f"torchvision {torchvision.__version__}",
               **(fixed_size_extra(name, g["native"]) if g["native"] else {})},
        nodes=nodes, tap=functools.partial(_tap, spec_name=PREFIX + name))


def describe_nodes(name: str) -> list[dict[str, Any]]:
    """Every graph node of ``torchvision/<name>`` with its output shape (at the crop size) and
    whether it can be cut (``layer`` is what ``--layers`` takes)."""
    spec = torchvision_spec(name)
    g = trace_nodes(name)
    return [{"node": n, "shape": list(s), "layer": f"node:{n}" if n in spec.nodes else None}
            for n, s in g["nodes"].items()]


register_resolver(PREFIX, torchvision_spec)
