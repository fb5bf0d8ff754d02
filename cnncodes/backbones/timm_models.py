"""Any timm model as a backbone: ``timm/<name>`` (``timm/convnext_atto``,
``timm/vit_small_patch14_dinov2``, ``timm/convnext_atto.d2_in1k`` for one pretrained tag).

Everything comes from timm's own metadata, read from a model built on the meta device (no memory,
no init, no download): cut points ``stage1..N`` from ``feature_info`` (channels, reduction, module)
taken through ``forward_intermediates`` (always N x C x H x W, ViT tokens included), plus ``pool``,
the pre-logits pooled code (``forward_head(pre_logits=True)``); the preprocessing from the
pretrained config (``timm.data.resolve_data_config``); the classifier's module for fine-tuning.

Weights (:class:`TimmWeights`): ``random`` (seeded), a local checkpoint, a pretrained tag (``auto``
= timm's default tag) read from the Hugging Face hub cache when present, else downloaded; offline
without the file, a :class:`~cnncodes.errors.WeightsUnavailableError` names the cache folder.
timm is imported only when a ``timm/`` name is resolved.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..errors import OptionError, WeightsUnavailableError
from ..sources.preprocessing import INTERPOLATIONS, Preprocessing
from .registry import BackboneSpec, Cut, register_resolver

log = logging.getLogger(__name__)

PREFIX = "timm/"
#: checkpoint files a timm repository on the Hugging Face hub holds, in the order timm tries them
HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _timm() -> Any:
    import timm

    return timm


class TimmModel(Protocol):
    """The part of a timm model's API used here. timm's models are :class:`nn.Module` subclasses
    with these members; timm is imported lazily, so its classes are not named in annotations
    (and ``nn.Module.__getattr__`` would type them ``Tensor | Module``)."""

    feature_info: list[dict[str, Any]]
    pretrained_cfg: dict[str, Any]
    num_features: int

    def get_classifier(self) -> nn.Module: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def forward_intermediates(self, x: torch.Tensor, indices: list[int], *,
                              intermediates_only: bool = False, stop_early: bool = False) -> Any:
        """``(final, [maps])``, or ``[maps]`` alone with ``intermediates_only``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


def _api(model: nn.Module) -> TimmModel:
    """``model`` (a timm model) seen through :class:`TimmModel`."""
    return cast(TimmModel, model)


def preprocessing_from_config(cfg: dict[str, Any]) -> Preprocessing:
    """cnncodes' :class:`Preprocessing` of a timm data config (``resolve_data_config``'s dict):
    resize the shorter side to ``floor(size / crop_pct)``, centre crop ``size`` (as timm's eval
    transform does), mean/std, interpolation (one timm names but torchvision lacks: bilinear)."""
    _, h, w = cfg["input_size"]
    if h != w:
        log.warning("timm input size %sx%s is not square; using %d px squares", h, w, h)
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    mode = cfg.get("crop_mode", "center")
    if mode != "center":
        log.warning("timm crop_mode %r is not reproduced; using a centre crop", mode)
    interp = str(cfg.get("interpolation") or "bilinear")
    if interp not in INTERPOLATIONS:
        interp = "bilinear"
    return Preprocessing(resize=int(math.floor(h / crop_pct)), crop=int(h),
                         mean=_rgb(cfg["mean"]), std=_rgb(cfg["std"]),
                         interpolation=interp)


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    """timm's per-channel mean or std as floats (three: timm's models take RGB)."""
    return cast("tuple[float, float, float]", tuple(float(x) for x in values))


def _check_name(name: str) -> tuple[str, str]:
    """``(architecture, tag)`` of ``name``; an error with close matches when timm lacks it."""
    timm = _timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(PREFIX + c for c in close)}." if close else ""
        raise OptionError(f"backbone {PREFIX}{name} is not a timm model (timm "
                          f"{timm.__version__}).{hint} `cnncodes models timm PATTERN` lists them.")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        raise OptionError(f"{tag!r} is not a pretrained tag of timm model {arch}; choose one of "
                          f"{', '.join(_tags(arch)) or '(none)'}.")
    return arch, tag


def _tags(arch: str) -> list[str]:
    return [n.partition(".")[2] for n in _timm().list_pretrained(f"{arch}.*")]


def meta_model(name: str) -> nn.Module:
    """The timm model ``name`` built on the meta device (metadata only: no memory, no init)."""
    with torch.device("meta"):
        return _timm().create_model(name, pretrained=False)


def pool_dim(model: nn.Module) -> int:
    """Width of the pre-logits pooled code (what the classifier receives)."""
    clf = _api(model).get_classifier()
    if isinstance(clf, nn.Linear):
        return int(clf.in_features)
    return int(getattr(model, "head_hidden_size", None) or _api(model).num_features)


def describe_stages(model: nn.Module) -> list[dict[str, Any]]:
    """Per feature_info entry: ``{"layer": "stageK", "module", "dim", "stride"}``."""
    return [{"layer": f"stage{i + 1}", "module": str(f["module"]), "dim": int(f["num_chs"]),
             "stride": int(f["reduction"])} for i, f in enumerate(_api(model).feature_info)]


def _classifier_path(model: nn.Module) -> str:
    clf = _api(model).pretrained_cfg.get("classifier") or "head"
    return str(clf[0] if isinstance(clf, (list, tuple)) else clf)


class TimmTap(nn.Module):
    """A timm model cut at ``stageK`` / ``pool``: ``forward(x) -> {layer: raw output}``.

    Stages come from ``forward_intermediates`` (stopping after the deepest asked stage when
    ``pool`` is not asked); ``pool`` is ``forward_head(final, pre_logits=True)``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        super().__init__()
        self.model = model
        self.index = {n: int(n[len("stage"):]) - 1 for n in layers if n.startswith("stage")}
        self.with_pool = "pool" in layers

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        model = _api(self.model)
        idx = sorted(set(self.index.values()))
        final = None
        if idx and self.with_pool:
            final, inter = model.forward_intermediates(x, indices=idx)
        elif idx:
            inter = model.forward_intermediates(x, indices=idx, intermediates_only=True,
                                                stop_early=True)
        else:
            inter, final = [], model.forward_features(x)
        for layer, i in self.index.items():
            out[layer] = inter[idx.index(i)]
        if self.with_pool:
            assert final is not None  # both branches that run with the pool set it
            out["pool"] = model.forward_head(final, pre_logits=True)
        return out


def _build(name: str, kwargs: dict[str, Any], weights: Any = None) -> nn.Module:
    """The timm model with random weights (``weights`` must be None: loading is separate)."""
    assert weights is None
    return _timm().create_model(name, pretrained=False, **kwargs)


def build_kwargs(model: nn.Module) -> dict[str, Any]:
    """``dynamic_img_size=True`` for the models that take it (ViT, EVA, DeiT, Swin...): their
    position embeddings are resampled at other input sizes (same codes at the pretrained size)."""
    return {"dynamic_img_size": True} if takes_keyword(type(model), "dynamic_img_size") else {}


def takes_keyword(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` accepts keyword ``name``: its ``__init__`` names it, or passes
    ``**kwargs`` on to a base class whose ``__init__`` does (timm's distilled DeiT takes
    ``dynamic_img_size`` through ``**kwargs`` of ``VisionTransformerDistilled``)."""
    import inspect

    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return False
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


class TimmWeights:
    """Weights names of a timm spec: ``auto``/``DEFAULT`` (timm's default tag) or a tag."""

    @staticmethod
    def names(spec: BackboneSpec) -> list[str]:
        return ["DEFAULT"] + _tags(spec.extra["arch"])

    @staticmethod
    def resolve(spec: BackboneSpec, name: str) -> Any:
        from .weights import ResolvedWeights

        timm, arch = _timm(), spec.extra["arch"]
        tag = spec.default_weights if name in ("auto", "DEFAULT") else name
        tag = tag.removeprefix(arch + ".")
        tags = _tags(arch)
        if tag not in tags:
            raise OptionError(f"weights must be one of {', '.join(['DEFAULT'] + tags)}, 'auto', "
                              f"'random' or a checkpoint path for {spec.name}. Got {name!r} "
                              "instead.")
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}").to_dict()
        pp = preprocessing_from_config(timm.data.resolve_data_config(pretrained_cfg=cfg))
        path, url = None, cfg.get("url") or None
        hub_id = cfg.get("hf_hub_id")
        if hub_id:
            url = f"hf-hub:{hub_id}"
            path = _hub_cached(hub_id, cfg.get("hf_hub_filename"))
        elif url:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
            path = cached if cached.is_file() else None
        if url is None:
            raise OptionError(f"timm tag {arch}.{tag} has no downloadable weights; pass a local "
                              "checkpoint with --weights /path/to/file or --weights random.")
        return ResolvedWeights(f"{PREFIX}{arch}.{tag}", path, url, pp)

    @staticmethod
    def fetch(spec: BackboneSpec, resolved: Any) -> Any:
        """Download ``resolved`` into the hub cache (or the torch hub cache for a plain URL)."""
        from dataclasses import replace

        from .weights import _download

        if not resolved.url.startswith("hf-hub:"):
            return replace(resolved, path=_download(resolved.url, spec, resolved.id))
        from huggingface_hub import constants, hf_hub_download

        from .weights import PROBE_TIMEOUT_S, host_reachable

        hub_id, errors = resolved.url[len("hf-hub:"):], []
        if not constants.HF_HUB_OFFLINE and not host_reachable(constants.ENDPOINT):
            # fail in ~2 s, not after the hub client's retries (~93 s offline)
            errors.append(f"{constants.ENDPOINT} did not answer within {PROBE_TIMEOUT_S:g} s")
        for fname in HUB_FILES if not errors else ():
            try:
                return replace(resolved, path=Path(hf_hub_download(hub_id, fname)))
            except Exception as e:  # noqa: BLE001 - offline, missing file: try the next, then say
                errors.append(f"{fname}: {type(e).__name__}")
        raise WeightsUnavailableError(
            f"Cannot get {spec.name} weights {resolved.id}: they are not in the Hugging Face hub "
            f"cache ({constants.HF_HUB_CACHE}) and the download of {hub_id} failed "
            f"({'; '.join(errors)}); this machine looks offline (or HF_HUB_OFFLINE=1). Offline "
            f"alternatives: copy the hub cache folder models--{hub_id.replace('/', '--')} there "
            "(or set HF_HUB_CACHE); pass a local checkpoint with --weights /path/to/file."
            "safetensors; or --weights random for a random-init network.")


def _hub_cached(hub_id: str, filename: str | None) -> Path | None:
    """The checkpoint of ``hub_id`` in the Hugging Face hub cache, without any network."""
    from huggingface_hub import try_to_load_from_cache

    for fname in ([filename] if filename else []) + list(HUB_FILES):
        got = try_to_load_from_cache(hub_id, fname)
        if isinstance(got, str) and os.path.isfile(got):
            return Path(got)
    return None


@functools.lru_cache(maxsize=64)
def timm_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of timm model ``name`` (``arch`` or ``arch.tag``), cached."""
    timm = _timm()
    arch, tag = _check_name(name)
    model = meta_model(name)
    stages = describe_stages(model) if hasattr(model, "forward_intermediates") else []
    layers = {s["layer"]: Cut(s["module"], s["dim"], "map",
                              depth="last" if i == len(stages) - 1 else "earlier")
              for i, s in enumerate(stages)}
    head = _classifier_path(model)
    kwargs = build_kwargs(model)
    layers["pool"] = Cut(head, pool_dim(model), "vector", depth="last")
    default_tag = tag or (_api(model).pretrained_cfg.get("tag") or "")
    pp = preprocessing_from_config(timm.data.resolve_model_data_config(model))
    return BackboneSpec(
        name=PREFIX + name, family=f"timm:{type(model).__module__.rsplit('.', 1)[-1]}",
        builder=functools.partial(_build, name, kwargs), weights=None, layers=layers,
        default_layer="pool", default_weights=default_tag or "DEFAULT",
        notes="stages from timm's feature_info via forward_intermediates; pool = pre-logits",
        extra={"arch": arch, "head": head, "reset_classifier": True, "preprocessing": pp,
               "create_kwargs": kwargs,
               "strides": {s["layer"]: s["stride"] for s in stages},
               "library": f"timm {timm.__version__}"},
        tap=TimmTap, weights_source=TimmWeights)


def list_timm(pattern: str | None = None, *, limit: int = 40) -> tuple[list[dict[str, Any]], int]:
    """timm models matching ``pattern`` (fnmatch; a bare word matches as ``*word*``) with their
    stages and dims for the first ``limit`` (each read from a meta-device model). Returns
    ``(rows, number of matches)``."""
    timm = _timm()
    pat = pattern or "*"
    if not any(c in pat for c in "*?["):
        pat = f"*{pat}*"
    names = [n for n in timm.list_models() if fnmatch.fnmatch(n, pat)]
    rows = []
    for n in names[:limit]:
        try:
            m = meta_model(n)
            stages = describe_stages(m)
            cfg = _api(m).pretrained_cfg
            rows.append({"backbone": PREFIX + n, "stages": stages, "pool": pool_dim(m),
                         "input_size": int(cfg.get("input_size", (3, 224))[1]),
                         "fixed_input_size": bool(cfg.get("fixed_input_size"))
                         and not build_kwargs(m),
                         "pretrained": _tags(n)})
        except Exception as e:  # noqa: BLE001 - a model that cannot build on meta: say so
            rows.append({"backbone": PREFIX + n, "error": f"{type(e).__name__}: {e}"})
    return rows, len(names)


register_resolver(PREFIX, timm_spec)
