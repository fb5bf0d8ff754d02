"""Options shared by every path that computes codes, each with its one default.

:class:`BackboneOptions` says *which codes* (backbone, weights, layers, pooling, input size): two
runs with equal backbone options compute the same codes. :class:`RuntimeOptions` says *how they are
computed* (batch size, workers, device, precision, threads, decoder, pixel limit, progress): it
never changes the codes beyond float rounding. ``extract``, ``extract_arrays``, ``advise``,
``baseline``, ``predict``, the ``CNNCodes`` transformer and fine-tuning all take them, and the CLI
builds its ``--backbone``/``--batch-size``... flags from the same fields and defaults.

Library functions accept either the objects or the fields as keyword arguments (scikit-learn
style, ``extract(src, out, layers="pool", batch_size=32)``): :func:`split_options` sorts keyword
arguments into the two objects and rejects unknown names with the list of valid ones.

Nothing here imports torch: the module is cheap to import (the CLI's ``--help`` reads it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .errors import OptionError

#: PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), applied on purpose per image.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_BACKBONE = "mobilenet_v2"
POOLINGS = ("avg", "max", "avgmax", "none")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DECODERS = ("auto", "tensor", "pil")
#: large JPEGs: decoded DCT-scaled (``dct``, see cnncodes.sources.dct), in full (``off``), or
#: ``auto`` (dct, unless the store or model being continued was made with full decoding)
JPEG_SCALINGS = ("auto", "dct", "off")
#: inference engines: auto = onnxruntime on the CPU when its export checks out, torch otherwise
ENGINES = ("auto", "torch", "onnxruntime")
#: time budget of a stand-alone ``advise`` (sets its sample size)
ADVISE_BUDGET = "5min"
#: time budget of the layer choice inside ``extract/baseline --layers auto`` (a step of a larger run)
AUTO_LAYER_BUDGET = "2min"


def _one_of(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise OptionError unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}. Got {value!r} instead.")


@dataclass(frozen=True)
class BackboneOptions:
    """Which codes: equal options give the same codes (the store records them as provenance).

    Attributes:
        backbone: a registry name (``cnncodes models``).
        weights: ``auto`` (recommended; packaged offline for mobilenet_v2), a torchvision weights
            name (``DEFAULT``, ``IMAGENET1K_V1``...), a checkpoint path, or ``random``.
        layers: layer names (``"fc6,fc7"`` or a sequence); None = the backbone's default layer.
        pooling: how spatial maps become vectors: ``avg``, ``max``, ``avgmax`` or ``none``.
        input_size: crop size in pixels; None = the weights' own (e.g. 224).
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = "auto"
    layers: str | Sequence[str] | None = None
    pooling: str = "avg"
    input_size: int | None = None

    def __post_init__(self) -> None:
        _one_of("pooling", self.pooling, POOLINGS)
        if self.input_size is not None and int(self.input_size) < 16:
            raise OptionError(f"input_size must be at least 16 pixels. Got {self.input_size} "
                              "instead.")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))

    def replace(self, **changes: Any) -> BackboneOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RuntimeOptions:
    """How codes are computed (never which): speed, memory and feedback.

    Attributes:
        batch_size: images per forward pass.
        num_workers: decoding processes; None = from the core count and the number of images.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
        threads: torch CPU threads for the forward pass; None = torch's default.
        decoder: ``auto``, ``tensor`` (libjpeg-turbo / nvJPEG) or ``pil``.
        max_pixels: decompression-bomb limit per image, width x height (default PIL's own,
            89,478,485); ``0`` or None = no limit (PIL's own limit is lifted too while decoding).
        progress: show a progress bar (the library logs otherwise).
        engine: ``auto`` (ONNX Runtime on the CPU when its exported graph gives the torch codes,
            torch on CUDA), ``torch`` or ``onnxruntime``.
        jpeg_scaling: ``auto`` (``dct`` unless the store or model being continued was made with
            full decoding), ``dct`` (large JPEGs decoded at 1/2, 1/4 or 1/8 scale in the DCT
            domain, keeping twice the resize; recorded as decoding ``cpu-dct``) or ``off``.
    """

    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    decoder: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = False
    engine: str = "auto"
    jpeg_scaling: str = "auto"

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise OptionError(f"batch_size must be a positive integer. Got {self.batch_size} "
                              "instead.")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise OptionError(f"num_workers must be >= 0 or None (automatic). Got "
                              f"{self.num_workers} instead.")
        _one_of("precision", self.precision, PRECISIONS)
        if self.max_pixels is not None and int(self.max_pixels) < 0:
            raise OptionError(f"max_pixels must be a pixel count >= 0 (0 = no limit). Got "
                              f"{self.max_pixels} instead.")
        _one_of("decoder", self.decoder, DECODERS)
        _one_of("engine", self.engine, ENGINES)
        _one_of("jpeg_scaling", self.jpeg_scaling, JPEG_SCALINGS)

    def replace(self, **changes: Any) -> RuntimeOptions:
        return dataclasses.replace(self, **changes)


BACKBONE_FIELDS = tuple(f.name for f in fields(BackboneOptions))
RUNTIME_FIELDS = tuple(f.name for f in fields(RuntimeOptions))


def split_options(
    backbone: str | BackboneOptions | None,
    runtime: RuntimeOptions | None,
    options: Mapping[str, Any],
    *,
    where: str,
    allow: Sequence[str] = (),
) -> tuple[BackboneOptions, RuntimeOptions, dict[str, Any]]:
    """Sort keyword ``options`` into backbone and runtime options (overriding the given objects).

    Args:
        backbone: a registry name, a :class:`BackboneOptions`, or None (defaults).
        runtime: a :class:`RuntimeOptions` or None (defaults).
        options: keyword arguments; each must be a field of one of the two, or in ``allow``.
        where: the calling function's name, for the error message.
        allow: other names the caller accepts; they are returned in the third value.

    Raises:
        TypeError: an unknown option (the message lists the valid ones).
    """
    if isinstance(backbone, BackboneOptions):
        bopts = backbone
    else:
        bopts = BackboneOptions() if backbone is None else BackboneOptions(backbone=str(backbone))
    ropts = runtime if runtime is not None else RuntimeOptions()
    if not isinstance(ropts, RuntimeOptions):
        raise TypeError(f"{where}(): runtime must be a RuntimeOptions. Got "
                        f"{type(ropts).__name__} instead.")
    b_changes, r_changes, rest = {}, {}, {}
    for key, value in options.items():
        if key in BACKBONE_FIELDS and key != "backbone":
            b_changes[key] = value
        elif key in RUNTIME_FIELDS:
            r_changes[key] = value
        elif key in allow:
            rest[key] = value
        else:
            valid = sorted(set(BACKBONE_FIELDS[1:]) | set(RUNTIME_FIELDS) | set(allow))
            raise TypeError(f"{where}() got an unexpected option {key!r}; valid options are "
                            f"{', '.join(valid)}.")
    if b_changes:
        bopts = bopts.replace(**b_changes)
    if r_changes:
        ropts = ropts.replace(**r_changes)
    return bopts, ropts, rest
