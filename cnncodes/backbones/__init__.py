"""Backbones: the registry (metadata as data), its entries, weights resolution, cutting, building."""

from . import entries as _entries  # noqa: F401  (registers every entry)
from . import timm_models as _timm_models  # noqa: F401  (resolves timm/<name>; timm loads lazily)
from . import tv_models as _tv_models  # noqa: F401  (resolves torchvision/<name>)
from .cutting import FeatureExtractor
from .factory import build_model, create_backbone, describe_backbones, describe_spec, layer_dims
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

__all__ = ["BackboneSpec", "Cut", "FeatureExtractor", "ResolvedWeights", "build_model",
           "check_pooling", "create_backbone", "describe_backbones", "describe_spec", "get_spec",
           "layer_dims", "list_backbones", "register", "resolve_layers", "resolve_weights"]
