"""Building a backbone: architecture + resolved weights + cut, as an eval-mode :class:`FeatureExtractor`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import OptionError
from ..options import BackboneOptions
from .catalog import packaged_file
from .cutting import FeatureExtractor
from .registry import BackboneSpec, check_pooling, get_spec, list_backbones, resolve_layers
from .weights import load_weights, resolve_weights

log = logging.getLogger(__name__)


#: ``weights="random"`` initialises with this seed: the same network in every process and run.
RANDOM_INIT_SEED = 0


def build_model(spec: BackboneSpec, weights_id: str | None = None) -> nn.Module:
    """Instantiate ``spec``'s architecture with random weights (no download), at the size the
    weights ``weights_id`` were made for where the architecture is fixed to one size (a
    torchvision ViT: ``spec.extra["build_kwargs"][weights_id]``, e.g. ``image_size=518``)."""
    kwargs = dict(spec.extra.get("build_kwargs", {}).get(weights_id or "random", {}))
    return spec.builder(weights=None, **kwargs)


def meta_model(spec: BackboneSpec, weights_id: str | None = None) -> nn.Module:
    """``spec``'s architecture on the meta device (shapes only), eval mode: built there when its
    builder allows it, else built on the CPU (the caller's RNG left alone) and moved there
    (torchvision's RegNets read a tensor value while building)."""
    try:
        with torch.device("meta"):
            return build_model(spec, weights_id).eval()
    except (NotImplementedError, RuntimeError):
        with torch.random.fork_rng(devices=[]):
            return build_model(spec, weights_id).eval().to("meta")


#: the input sizes :func:`working_sizes` tries (multiples of 32 up to 640, and each model's own)
CANDIDATE_SIZES = tuple(range(32, 641, 32))


def working_sizes(spec: BackboneSpec, weights_id: str | None = None, *,
                  candidates: Sequence[int] = CANDIDATE_SIZES, also: Sequence[int] = (),
                  first: bool = False) -> list[int] | None:
    """The input sizes among ``candidates`` and ``also`` (the weights' own crop) at which the
    network built for ``weights_id`` gives codes, found by forward passes on the meta device
    (shapes only: no memory, no compute). None when the model cannot run on the meta device.
    ``first``: stop at the smallest size that works."""
    import contextlib
    import io

    sizes = sorted({*candidates, *also})
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            model = meta_model(spec, weights_id)
            ext = FeatureExtractor(model, spec, [spec.default_layer], "avg").eval()
    except Exception as e:  # noqa: BLE001 - not buildable on meta: unknown
        log.debug("%s: no meta-device build (%s)", spec.name, e)
        return None
    ok = []
    for n in sizes:
        try:
            with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):
                ext(torch.zeros(1, 3, n, n, device="meta"))
            ok.append(n)
            if first:
                break
        except Exception:  # noqa: BLE001 - this size does not fit the network
            continue
    return ok


def describe_sizes(sizes: Sequence[int] | None, candidates: Sequence[int] = CANDIDATE_SIZES
                   ) -> str:
    """``sizes`` (from :func:`working_sizes`) in words: ``any multiple of 32 from 32 to 640``,
    ``224, 448`` or ``unknown``."""
    if sizes is None:
        return "unknown (the model does not run on the meta device)"
    if not sizes:
        return f"none of {candidates[0]}-{candidates[-1]} px"
    if set(candidates) <= set(sizes):
        return f"any tried ({candidates[0]}-{candidates[-1]} px in steps of 32)"
    if len(sizes) > 12:
        return ", ".join(str(n) for n in sizes[:12]) + ", ... px"
    return ", ".join(str(n) for n in sizes) + " px"


def create_backbone(
    name: str,
    *,
    weights: str | None = BackboneOptions.weights,
    layers: str | Sequence[str] | None = None,
    pooling: str = BackboneOptions.pooling,
) -> tuple[FeatureExtractor, Any]:
    """Build a backbone with its weights, cut at ``layers``.

    Args:
        name: a registry name (see :func:`list_backbones`), ``timm/<model>`` or
            ``torchvision/<model>``.
        weights: ``"auto"`` (the entry's recommended weights; the packaged, offline ImageNet
            weights for mobilenet_v2), a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``,
            ...), a path to a local checkpoint, or ``None``/``"random"`` for a random init
            (seeded with ``RANDOM_INIT_SEED``: the same network in every run and process).
        layers: layer names (``"fc6,fc7"`` or a list); default the entry's default layer.
        pooling: ``avg``, ``max``, ``avgmax`` or ``none`` for spatial maps.

    Returns:
        ``(extractor, resolved_weights)``: an eval-mode :class:`FeatureExtractor` on CPU and a
        :class:`cnncodes.backbones.weights.ResolvedWeights` describing what was loaded and the
        preprocessing.

    Raises:
        OptionError: unknown backbone, layer, pooling or weights name (the message lists the valid
            ones).
    """
    spec = get_spec(name)
    layer_names = resolve_layers(spec, layers)
    check_pooling(pooling)
    resolved = resolve_weights(spec, weights)
    if resolved.is_random:
        # seeded, so "random" codes are the same in every run (resume/append stay consistent);
        # fork_rng leaves the caller's RNG state as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_model(spec, resolved.id)
    else:
        model = build_model(spec, resolved.id)
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


def describe_spec(name: str) -> dict[str, Any]:
    """One backbone as data (a registry entry, ``timm/<model>`` or ``torchvision/<model>``): its
    family, layers (dim, kind, depth, stride where the library says), default layer, the weights
    ``auto`` picks and whether they are on this machine (``offline``)."""
    spec = get_spec(name)
    if spec.tap is None:
        return describe_backbones([name])[0]
    strides = spec.extra.get("strides", {})
    try:
        auto = resolve_weights(spec, "auto")
        default_w, offline, default_crop = auto.id, auto.path is not None, auto.preprocessing.crop
    except OptionError:  # no published weights
        default_w, offline = "random", True
        default_crop = resolve_weights(spec, "random").preprocessing.crop
    return {
        "backbone": spec.name, "family": spec.family,
        "layers": {k: {"dim": c.dim, "kind": c.kind, "depth": c.depth, "node": c.node,
                       **({"stride": strides[k]} if k in strides else {})}
                   for k, c in spec.layers.items()},
        "default_layer": spec.default_layer, "default_weights": default_w, "offline": offline,
        "weights": spec.weight_names(), "preprocessing": resolve_weights(
            spec, "random").preprocessing.to_dict(), "library": spec.extra.get("library", ""),
        "input_sizes": describe_sizes(working_sizes(
            spec, None if default_w == "random" else default_w, also=(default_crop,))),
        **({"fixed_sizes": dict(spec.extra["fixed_sizes"])} if "fixed_sizes" in spec.extra
           else {}),
    }


def describe_backbones(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The registry as data (what ``cnncodes models`` shows): per backbone its family, layers
    (dim, kind, depth), default layer, the weights ``auto`` picks and whether they ship offline."""
    rows = []
    for name in list_backbones() if names is None else names:
        spec = get_spec(name)
        member = (spec.weights.DEFAULT if spec.default_weights == "DEFAULT"
                  else spec.weights[spec.default_weights])
        rows.append({
            "backbone": name, "family": spec.family,
            "library": spec.extra.get("library", "torchvision"),
            "layers": {k: {"dim": c.dim, "kind": c.kind, "depth": c.depth}
                       for k, c in spec.layers.items()},
            "default_layer": spec.default_layer,
            "default_weights": f"{type(member).__name__}.{member.name}",
            "offline": packaged_file(member.url.rsplit("/", 1)[-1]) is not None,
            "weights": spec.weight_names(),
        })
    return rows
