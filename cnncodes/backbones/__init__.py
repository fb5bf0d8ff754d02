"""Backbones: the registry (metadata as data), its entries, weights resolution, cutting, building.

The names below load lazily (PEP 562): ``import cnncodes.backbones.catalog`` (the entries as data)
imports neither torch nor torchvision; the registry registers its entries on first read
(:func:`~.registry.ensure_entries`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

if TYPE_CHECKING:
    from .cutting import FeatureExtractor
    from .factory import (
        build_model,
        create_backbone,
        describe_backbones,
        describe_spec,
        layer_dims,
    )
    from .registry import (
        BackboneSpec,
        Cut,
        check_pooling,
        get_spec,
        list_backbones,
        register,
        resolve_layers,
    )
    from .weights import ResolvedWeights, resolve_weights

_LAZY: dict[str, str] = {
    "FeatureExtractor": ".cutting",
    **dict.fromkeys(("build_model", "create_backbone", "describe_backbones", "describe_spec",
                     "layer_dims"), ".factory"),
    **dict.fromkeys(("BackboneSpec", "Cut", "check_pooling", "get_spec", "list_backbones",
                     "register", "resolve_layers"), ".registry"),
    **dict.fromkeys(("ResolvedWeights", "resolve_weights"), ".weights"),
}

__all__ = ["BackboneSpec", "Cut", "FeatureExtractor", "ResolvedWeights", "build_model",
           "check_pooling", "create_backbone", "describe_backbones", "describe_spec", "get_spec",
           "layer_dims", "list_backbones", "register", "resolve_layers", "resolve_weights"]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
