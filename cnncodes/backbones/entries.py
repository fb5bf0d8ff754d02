"""The registry's entries: each :class:`~.catalog.Entry` (the data) with torchvision's builder and
weights enum added, registered as a :class:`BackboneSpec`.

Imported by :func:`.registry.ensure_entries` (on the first :func:`~.registry.get_spec` or
:func:`~.registry.list_backbones`), so every entry is registered before the registry is read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch
import torchvision

from .catalog import ENTRIES, Entry
from .registry import BackboneSpec, register

log = logging.getLogger(__name__)


tvm = torchvision.models


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


#: entry name -> the function fixing legacy keys of its published checkpoints
STATE_DICT_FIXES: dict[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
    "densenet121": _fix_densenet,
}


def spec_of(entry: Entry) -> BackboneSpec:
    """``entry`` with torchvision's builder and weights enum: a buildable spec."""
    return BackboneSpec(
        name=entry.name, family=entry.family, builder=tvm.get_model_builder(entry.name),
        weights=getattr(tvm, entry.weights_enum), layers=entry.layers,
        default_layer=entry.default_layer, default_weights=entry.default_weights,
        state_dict_fix=STATE_DICT_FIXES.get(entry.name), notes=entry.notes,
    )


for _entry in ENTRIES.values():
    register(spec_of(_entry))
