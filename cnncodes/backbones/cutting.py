"""Cutting a network: :class:`FeatureExtractor` collects the requested layers' codes in forward hooks.

Pooling happens inside the hooks, and the forward pass stops after the deepest requested layer.
A spec with a ``tap`` (timm, any torchvision model) is cut by the library's own API instead: the
tap module returns the raw outputs of the requested layers, pooled here the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import OptionError
from .registry import BackboneSpec, Cut, check_pooling

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised inside a hook once every requested layer is collected (skips the rest of the net)."""


def _pool(x: torch.Tensor, cut: Cut, pooling: str) -> torch.Tensor:
    if cut.relu:
        x = torch.relu(x)
    if cut.kind == "vector":
        return x.flatten(1).clone()
    if x.ndim == 2:  # already a vector (e.g. a 1x1 map flattened by the net)
        return x.clone()
    if x.ndim == 3:  # tokens (N, L, C): pooled over L like a map over its positions
        x = x.transpose(1, 2).unsqueeze(-1)
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
        self._cuts = {layer: spec.cut(layer) for layer in self.layers}
        self._tapped = spec.tap is not None
        #: each layer -> the first requested layer cut at the same graph node (a node is
        #: computed and returned once; ``stage4`` and ``pool`` may be one node of a model)
        self._same: dict[str, str] = {}
        first: dict[str, str] = {}
        for layer in self.layers:
            self._same[layer] = first.setdefault(self._cuts[layer].node, layer)
        if self._tapped:
            assert spec.tap is not None
            self.model = spec.tap(model, list(dict.fromkeys(self._same.values())))
            return
        modules = dict(model.named_modules())
        for layer in self.layers:
            cut = spec.cut(layer)
            if cut.node not in modules:
                raise OptionError(f"{spec.name}: a cut node must be a module of the model. Got "
                                  f"{cut.node!r} (layer {layer}) instead; fix its registry entry.")
            modules[cut.node].register_forward_hook(self._make_hook(layer, cut))

    def _make_hook(self, layer: str, cut: Cut) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            self._outs[layer] = _pool(out, cut, self.pooling)
            if len(self._outs) == len(self.layers):
                raise _StopForward

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._tapped:
            raw = self.model(x)
            return {n: _pool(raw[self._same[n]], self._cuts[n], self.pooling)
                    for n in self.layers}
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

