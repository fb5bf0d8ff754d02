"""The fine-tuned network: the backbone's final classifier found (:func:`find_head`) and replaced by
a new, renamed layer ``head`` (:func:`new_head`: xavier-uniform weights, zero bias, never the
pretrained classifier's weights), the backbone cut into :class:`Stage` s at the registry's cut
points (:func:`backbone_stages`; ``freeze=k`` freezes stages ``1..k``), :class:`FinetuneNet`, and
building it from a configuration (:func:`build_finetune_model`) or a model file
(:func:`load_finetuned`).

timm models drop their classifier with timm's ``reset_classifier``; ``torchvision/<name>`` models
name their last Linear (and the module of each cut) in the spec. Head containers per family:
``fc`` of ResNet, ``classifier.6`` of VGG/AlexNet, the last Linear of
``classifier`` for MobileNet/EfficientNet/DenseNet/ConvNeXt. Stages: ``layer1..layer4`` of ResNet,
``stage2..stage5`` + the layers before the pool elsewhere, ``pool5 / fc6 / fc7`` of VGG.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .._runtime import resolve_device
from ..backbones.factory import build_model
from ..backbones.registry import BackboneSpec, get_spec
from ..backbones.weights import ResolvedWeights, load_weights, resolve_weights
from ..errors import ModelMismatchError, OptionError
from ..sources.preprocessing import Preprocessing
from .config import FinetuneConfig
from .model_file import read_model_file

if TYPE_CHECKING:
    from ..backbones.timm_models import TimmModel

log = logging.getLogger(__name__)

#: The module holding the final classifier per family (its last ``nn.Linear`` is replaced).
#: A registry entry can override it with ``extra={"head": "path.to.linear"}``.
HEAD_CONTAINERS = {
    "resnet": "fc", "vgg": "classifier", "alexnet": "classifier", "mobilenet": "classifier",
    "efficientnet": "classifier", "densenet": "classifier", "convnext": "classifier",
}
#: Name of the new classifier layer in :class:`FinetuneNet`.
HEAD_NAME = "head"


def find_head(model: nn.Module, spec: BackboneSpec) -> str:
    """Dotted path of the final classifier ``nn.Linear`` of a torchvision model of ``spec``."""
    container = spec.extra.get("head") or HEAD_CONTAINERS.get(spec.family)
    if container is None:
        raise OptionError(f"Fine-tuning does not know where the classifier of family "
                         f"{spec.family!r} ({spec.name}) is; register the backbone with "
                         "extra={'head': 'path.to.final.Linear'}.")
    mod = model.get_submodule(container)
    if isinstance(mod, nn.Linear):
        return container
    linears = [n for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise OptionError(f"{spec.name}: no nn.Linear inside {container!r} to replace.")
    return f"{container}.{linears[-1]}"


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """A classifier layer for ``num_classes``: xavier-uniform weights, zero bias."""
    head = nn.Linear(in_features, num_classes)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@dataclass(frozen=True)
class Stage:
    """A contiguous block of the backbone (stem + first cut, ..., layers after the last cut).

    Attributes:
        index: 1-based position (``freeze=k`` freezes stages 1..k).
        params: parameter names (relative to the backbone).
        leaves: leaf module names (relative to the backbone) in this stage.
        span: ``first .. last`` module, for messages.
    """

    index: int
    params: tuple[str, ...]
    leaves: tuple[str, ...]
    span: str


def backbone_stages(backbone: nn.Module, spec: BackboneSpec) -> list[Stage]:
    """Cut ``backbone`` into stages at the registry's cut points (in module order).

    A module belongs to stage ``i`` when it comes after the end of cut ``i-1`` and not after the end
    of cut ``i``; modules after the last cut form a final stage. Stages without parameters are
    merged into their neighbour.
    """
    names = [n for n, _ in backbone.named_modules()]
    pos = {n: i for i, n in enumerate(names)}
    # a spec may name the module of each cut (torchvision graph nodes are not all modules)
    owners = spec.extra.get("modules", {})
    cut_modules = [owners.get(layer, cut.node) for layer, cut in spec.layers.items()]
    ends = sorted({max(pos[m] for m in names if m == node or m.startswith(node + "."))
                   for node in cut_modules if node and node in pos})
    modules = dict(backbone.named_modules())
    raw: dict[int, tuple[list[str], list[str]]] = {}
    for n in names:
        if n and not any(True for _ in modules[n].children()):
            raw.setdefault(bisect.bisect_left(ends, pos[n]), ([], []))[1].append(n)
    for pname, _ in backbone.named_parameters():
        owner = pname.rpartition(".")[0]
        raw.setdefault(bisect.bisect_left(ends, pos[owner]), ([], []))[0].append(pname)
    merged: list[tuple[list[str], list[str]]] = []
    pending_leaves: list[str] = []
    for k in sorted(raw):
        params, leaves = raw[k]
        if params:
            merged.append((params, pending_leaves + leaves))
            pending_leaves = []
        elif merged:
            merged[-1][1].extend(leaves)
        else:
            pending_leaves.extend(leaves)
    if pending_leaves and merged:
        merged[-1][1].extend(pending_leaves)

    def short(n: str) -> str:
        return ".".join(n.split(".")[:2])

    return [Stage(i + 1, tuple(p), tuple(lv), f"{short(p[0].rpartition('.')[0])} .. "
                  f"{short(p[-1].rpartition('.')[0])}")
            for i, (p, lv) in enumerate(merged)]


class FinetuneNet(nn.Module):
    """A backbone whose final classifier is replaced by a new layer named ``head``.

    ``forward(x)`` returns logits ``head(backbone(x))``; ``features(x)`` the pre-head code. Frozen
    stages keep their modules in eval mode whatever ``train()`` is called with, so BatchNorm
    statistics of frozen layers never move.
    """

    head_name = HEAD_NAME

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, spec: BackboneSpec,
                 head_path: str, classes: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec_name = spec.name
        self.head_path = head_path
        self.classes = list(classes)
        self.stages = backbone_stages(backbone, spec)
        self.frozen_stages = 0
        self.backbone_frozen = False
        self._eval_leaves: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's code (what the old classifier received), flattened to (N, D)."""
        return torch.flatten(self.backbone(x), 1)

    def freeze(self, k: int, *, backbone: bool = False) -> None:
        """Freeze stages ``1..k`` (or the whole backbone): no gradients, modules in eval mode."""
        if not 0 <= k <= len(self.stages):
            desc = "; ".join(f"{s.index}: {s.span}" for s in self.stages)
            raise OptionError(f"freeze={k} but {self.spec_name} has {len(self.stages)} stages "
                             f"({desc}); choose 0..{len(self.stages)} (or state head-only).")
        if backbone:
            k = len(self.stages)
        frozen = {p for s in self.stages[:k] for p in s.params}
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name not in frozen)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.frozen_stages = k
        self.backbone_frozen = backbone
        self._eval_leaves = [lv for s in self.stages[:k] for lv in s.leaves]
        self.train(self.training)

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        if mode:
            if self.backbone_frozen:
                self.backbone.eval()
            for name in self._eval_leaves:
                self.backbone.get_submodule(name).eval()
        return self

    def stock_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in the stock torchvision layout (head stored under the old classifier's
        name), so any loader of the plain architecture can read the fine-tuned backbone."""
        sd = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        sd[f"{self.head_path}.weight"] = self.head.weight.detach().clone()
        sd[f"{self.head_path}.bias"] = self.head.bias.detach().clone()
        return sd

    def load_stock_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`stock_state_dict` (strict)."""
        hw, hb = f"{self.head_path}.weight", f"{self.head_path}.bias"
        missing = [k for k in (hw, hb) if k not in sd]
        if missing:
            raise ModelMismatchError(f"State dict lacks the classifier {missing}.")
        self.backbone.load_state_dict({k: v for k, v in sd.items() if k not in (hw, hb)},
                                      strict=True)
        self.head.load_state_dict({"weight": sd[hw], "bias": sd[hb]}, strict=True)


def wrap_stock(stock: nn.Module, spec: BackboneSpec, classes: Sequence[str]) -> FinetuneNet:
    """``stock`` (a torchvision model of ``spec``) with its classifier replaced by a new head.

    A timm model drops its classifier with its own ``reset_classifier(0)`` (its forward then
    returns the pre-logits code, of the spec's ``pool`` width)."""
    if spec.extra.get("reset_classifier") and hasattr(stock, "reset_classifier"):
        cast("TimmModel", stock).reset_classifier(0)
        return FinetuneNet(stock, new_head(spec.layers["pool"].dim, len(classes)), spec=spec,
                           head_path=spec.extra["head"], classes=classes)
    path = find_head(stock, spec)
    old = stock.get_submodule(path)
    assert isinstance(old, nn.Linear)
    _set_submodule(stock, path, nn.Identity())
    return FinetuneNet(stock, new_head(old.in_features, len(classes)), spec=spec, head_path=path,
                       classes=classes)


def load_finetuned(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                   ) -> tuple[FinetuneNet, dict[str, Any]]:
    """Rebuild the fine-tuned network of a ``model.pt`` (eval mode, on ``device``).

    Returns:
        ``(net, the file's metadata)``.
    """
    sd, meta = read_model_file(path)
    spec = get_spec(meta["backbone"])
    net = wrap_stock(build_model(spec), spec, meta["classes"])
    net.load_stock_state_dict(sd)
    return net.eval().to(resolve_device(device)), meta


def build_finetune_model(config: FinetuneConfig, classes: Sequence[str]
                         ) -> tuple[FinetuneNet, ResolvedWeights, Preprocessing]:
    """The backbone of ``config`` with its weights and a new head for ``classes``.

    When ``config.weights`` is a model file of an earlier fine-tuning run with the same classes, its
    head is loaded too (to continue or evaluate it); otherwise the head is new. Uses the global
    torch RNG for the head init (seed it, or call inside :func:`finetune`).

    Returns:
        ``(net, resolved weights, preprocessing at config.input_size)``; ``net`` is on CPU with
        nothing frozen.
    """
    spec = get_spec(config.backbone)
    resolved = resolve_weights(spec, config.weights)
    stock = build_model(spec, resolved.id)
    resolved = load_weights(stock, spec, resolved)
    pp = resolved.preprocessing
    head_sd = None
    if resolved.path is not None and resolved.id.startswith("file:"):
        try:
            sd, meta = read_model_file(resolved.path)
        except ValueError:
            meta = None
        if meta is not None:
            if meta["backbone"] != spec.name:
                raise ModelMismatchError(
                    f"{resolved.path} is a fine-tuned {meta['backbone']}, not a {spec.name}; "
                    f"pass --backbone {meta['backbone']}.")
            pp = Preprocessing.from_dict(meta["preprocessing"])
            if list(meta["classes"]) == list(classes):
                hp = meta["head_path"]
                head_sd = {"weight": sd[f"{hp}.weight"], "bias": sd[f"{hp}.bias"]}
    net = wrap_stock(stock, spec, classes)
    if head_sd is not None:
        net.head.load_state_dict(head_sd)
        log.info("head loaded from %s (same %d classes)", resolved.path, len(classes))
    return net, resolved, pp.with_input_size(config.input_size)
