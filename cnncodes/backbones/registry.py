"""The backbone registry: which networks exist, where they can be cut, and how to build them.

Every backbone is one declarative :class:`BackboneSpec`: the torchvision builder, its weights enum,
named cut points (module path -> output dimension and kind) and the default ("last") layer. Adding a
family is adding entries to :mod:`.catalog`; ``cnncodes models`` and the parametrised tests read
the same registry.

The entries' data (names, cut points, weights names) is :mod:`.catalog`, readable without torch;
:mod:`.entries` registers them on the first read of the registry (:func:`ensure_entries`). A cut
point (:class:`Cut`, defined in the catalog) is a ``map``, ``gap`` or ``vector`` (see there).

Besides the hand-written entries, :func:`get_spec` resolves ``timm/<name>`` (any timm model, see
:mod:`.timm_models`) and ``torchvision/<name>`` (any torchvision classification model, see
:mod:`.tv_models`) into specs built from the library's own metadata (cached per process)."""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import OptionError
from ..options import POOLINGS
from .catalog import ENTRIES, Cut, unknown_backbone

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


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
        nodes: extra cut points asked for as ``node:<name>`` (torchvision graph nodes), by name.
        tap: ``tap(model, layers) -> nn.Module`` whose forward returns ``{layer: raw output}``;
            used instead of forward hooks (timm's ``forward_intermediates``, torchvision's FX
            feature extraction). None for the hand-written entries.
        weights_source: resolves and fetches weights names for a library without a torchvision
            ``WeightsEnum`` (timm): ``.names(spec)``, ``.resolve(spec, name)``, ``.fetch(spec,
            resolved)``. None where ``weights`` is the enum.
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
    nodes: Mapping[str, Cut] = field(default_factory=dict)
    tap: Callable[[nn.Module, Sequence[str]], nn.Module] | None = None
    weights_source: Any = None

    def __post_init__(self) -> None:
        if self.default_layer not in self.layers:
            raise OptionError(f"{self.name}: default_layer must be one of its layers "
                              f"({', '.join(self.layers)}). Got {self.default_layer!r} instead.")

    @property
    def last_layers(self) -> list[str]:
        return [n for n, c in self.layers.items() if c.depth == "last"]

    @property
    def earlier_layers(self) -> list[str]:
        return [n for n, c in self.layers.items() if c.depth == "earlier"]

    def cut(self, layer: str) -> Cut:
        if layer in self.layers:
            return self.layers[layer]
        if self.nodes and layer.startswith("node:") and layer[5:] in self.nodes:
            return self.nodes[layer[5:]]
        if layer.startswith("node:") and layer[5:] in self.extra.get("uncut_nodes", {}):
            shape = "x".join(map(str, self.extra["uncut_nodes"][layer[5:]]))
            raise OptionError(f"node {layer[5:]} of {self.name} gives {shape} outputs, which "
                              "cannot be pooled (cuts take N x C x H x W maps, N x L x C tokens "
                              "and vectors); choose another node.")
        if self.nodes and layer.startswith("node:"):
            close = difflib.get_close_matches(layer[5:], list(self.nodes), n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join('node:' + c for c in close)}." if close else ""
            raise OptionError(f"layer {layer!r} is not a graph node of {self.name}.{hint} "
                              f"`cnncodes models {self.name} --nodes` lists them.")
        extra = (f" or node:<name> (`cnncodes models {self.name} --nodes`)" if self.nodes
                 else "")
        raise OptionError(
            f"layer must be one of {self.name}'s layers: {', '.join(self.layers)}{extra} (or "
            f"'auto'). Got {layer!r} instead."
        )

    def position(self, layer: str) -> int:
        """Where ``layer`` is in the network (for sorting requested layers)."""
        if self.nodes:
            order = {n: i for i, n in enumerate(self.nodes)}
            node = self.cut(layer).node
            if node in order:
                return order[node]
        return list(self.layers).index(layer) if layer in self.layers else len(self.layers)

    def weight_names(self) -> list[str]:
        if self.weights_source is not None:
            return list(self.weights_source.names(self))
        if self.weights is None:
            return []
        return ["DEFAULT"] + [w.name for w in self.weights]


_REGISTRY: dict[str, BackboneSpec] = {}
#: name prefix (``timm/``) -> function building the spec of the rest of the name (cached there)
_RESOLVERS: dict[str, Callable[[str], BackboneSpec]] = {}


_ENTRIES_LOADED = False

#: the modules that register the entries and the library resolvers when first imported
_ENTRY_MODULES = (".entries", ".timm_models", ".tv_models")


def ensure_entries() -> None:
    """Register the hand-written entries and the ``timm/``, ``torchvision/`` resolvers (once;
    imports torchvision). Every reader of the registry calls it first."""
    global _ENTRIES_LOADED
    if _ENTRIES_LOADED:
        return
    _ENTRIES_LOADED = True  # first: the entries' own register() calls must not come back here
    for module in _ENTRY_MODULES:
        importlib.import_module(module, __package__)


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (replacing an entry of the same name)."""
    ensure_entries()
    _REGISTRY[spec.name] = spec
    return spec


def register_resolver(prefix: str, resolve: Callable[[str], BackboneSpec]) -> None:
    """Let :func:`get_spec` resolve ``<prefix><model>`` with ``resolve(model)`` (a library
    adapter: :mod:`.timm_models`, :mod:`.tv_models`)."""
    _RESOLVERS[prefix] = resolve


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    ensure_entries()
    return list(_REGISTRY)


def default_layer(name: str) -> str:
    """The layer ``name`` takes when none is asked for; from the catalog (no torch import) for a
    registry entry that was not replaced by :func:`register`, else from :func:`get_spec`."""
    entry = ENTRIES.get(name)
    if entry is not None and not (_ENTRIES_LOADED and _REGISTRY.get(name) is not None
                                  and _REGISTRY[name].default_layer != entry.default_layer):
        return entry.default_layer
    return get_spec(name).default_layer


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or the spec of ``timm/<model>`` / ``torchvision/<model>``
    built from the library's metadata; an error naming close matches if unknown."""
    ensure_entries()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolve in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name[len(prefix):])
    raise unknown_backbone(name, _REGISTRY)


def resolve_layers(spec: BackboneSpec, layers: str | Sequence[str] | None) -> list[str]:
    """Normalise a layer request (``None``, ``"a,b"``, a list) to validated names in network order."""
    if layers is None or layers == "" or layers == ():
        return [spec.default_layer]
    if isinstance(layers, str):
        layers = [x.strip() for x in layers.split(",") if x.strip()]
    names = list(dict.fromkeys(layers))
    for n in names:
        spec.cut(n)
    return sorted(names, key=spec.position)


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`cnncodes.options.POOLINGS`, else an :class:`OptionError`."""
    if pooling not in POOLINGS:
        raise OptionError(f"pooling must be one of {', '.join(POOLINGS)}. Got {pooling!r} "
                          "instead.")
    return pooling
