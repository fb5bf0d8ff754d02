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
import numbers
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .errors import OptionError

#: PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), applied on purpose per image.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_BACKBONE = "mobilenet_v2"
POOLINGS = ("avg", "max", "avgmax", "none")
#: ``int8``: extraction only, on the CPU (ONNX Runtime static quantisation calibrated on the
#: run's first images and checked for fidelity at start, see cnncodes.codes.quantise)
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
#: what training (fine-tuning) can run in
TRAIN_PRECISIONS = tuple(p for p in PRECISIONS if p != "int8")
DECODERS = ("auto", "tensor", "pil")
#: large JPEGs: decoded DCT-scaled (``dct``, see cnncodes.sources.dct), in full (``off``), or
#: ``auto`` (dct, unless the store or model being continued was made with full decoding)
JPEG_SCALINGS = ("auto", "dct", "off")
#: inference engines: auto = onnxruntime on the CPU when its export checks out, torch otherwise
ENGINES = ("auto", "torch", "onnxruntime")
#: time budget of a stand-alone ``advise`` (sets its sample size)
ADVISE_BUDGET = "5min"
#: time budget of the layer choice inside ``extract/baseline --layers auto`` (a step of a larger
#: run)
AUTO_LAYER_BUDGET = "2min"


# ----------------------------------------------------------------- constraints, declared once
# The pattern of scikit-learn's ``utils._param_validation``: each option lists the constraints a
# value may satisfy (any one is enough); a value that satisfies none is refused with "The 'NAME'
# parameter of WHERE must be X. Got Y instead." The options objects check every field when made
# (so every library entry point, which builds or receives them, checks at its boundary), and the
# CLI's flags parse with the same constraints (:func:`parse_flag`).


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``int``: integers only, bools refused) in ``[left, right]``."""

    kind: type
    left: float | None = None
    right: float | None = None

    def satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real):
            return False
        return ((self.left is None or value >= self.left)
                and (self.right is None or value <= self.right))

    def __str__(self) -> str:
        left = "-inf" if self.left is None else f"{self.left}"
        right = "inf" if self.right is None else f"{self.right}"
        what = "an int" if self.kind is int else "a float"
        return (f"{what} in the range [{left}, {right}{']' if self.right is not None else ')'}"
                .replace("[-inf", "(-inf"))


@dataclass(frozen=True)
class StrOptions:
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    def __str__(self) -> str:
        return f"a str among {{{', '.join(repr(c) for c in self.choices)}}}"


@dataclass(frozen=True)
class InstanceOf:
    """An instance of one of ``kinds`` (by type, or by ``module.Name`` for types not imported
    here, such as ``torch.device``); ``what`` is how the message names them."""

    kinds: tuple[type | str, ...]
    what: str

    def satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool) and bool not in self.kinds:
            return False
        for k in self.kinds:
            if isinstance(k, str):
                t = type(value)
                if f"{t.__module__}.{t.__name__}" == k:
                    return True
            elif isinstance(value, k):
                return True
        return False

    def __str__(self) -> str:
        return self.what


class _NoneConstraint:
    def satisfied_by(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


NONE = _NoneConstraint()
Constraint = Interval | StrOptions | InstanceOf | _NoneConstraint
STR = InstanceOf((str,), "a str")
STR_SEQUENCE = InstanceOf((str, tuple, list), "a str (comma-separated) or a sequence of str")

#: every shared option's constraints (any one is enough), declared once
CONSTRAINTS: dict[str, tuple[Constraint, ...]] = {
    # BackboneOptions
    "backbone": (STR,),
    "weights": (InstanceOf((str, os.PathLike), "a str or a path"), NONE),
    "layers": (STR_SEQUENCE, NONE),
    "pooling": (StrOptions(POOLINGS),),
    "input_size": (Interval(int, 16, None), NONE),
    # RuntimeOptions
    "batch_size": (Interval(int, 1, None),),
    "num_workers": (Interval(int, 0, None), NONE),
    "device": (InstanceOf((str, "torch.device"), "a str (auto, cpu, cuda, cuda:1...)"),),
    "precision": (StrOptions(PRECISIONS),),
    "threads": (Interval(int, 1, None), NONE),
    "decoder": (StrOptions(DECODERS),),
    "max_pixels": (Interval(int, 0, None), NONE),
    "progress": (InstanceOf((bool, "numpy.bool", "numpy.bool_"), "a bool"),),
    "engine": (StrOptions(ENGINES),),
    "jpeg_scaling": (StrOptions(JPEG_SCALINGS),),
}


def describe(constraints: Sequence[Constraint]) -> str:
    """``an int in the range [1, inf) or None``: what satisfies any of ``constraints``."""
    words = [str(c) for c in constraints]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def check_param(name: str, value: Any, where: str,
                constraints: Sequence[Constraint] | None = None) -> None:
    """Raise :class:`OptionError` unless ``value`` satisfies one of ``name``'s constraints
    (:data:`CONSTRAINTS` unless given); ``where`` names the class or function it was given to."""
    cons = CONSTRAINTS[name] if constraints is None else constraints
    if any(c.satisfied_by(value) for c in cons):
        if name == "layers" and isinstance(value, (tuple, list)):
            if not all(isinstance(v, str) for v in value):
                raise OptionError(f"The {name!r} parameter of {where} must be {describe(cons)}. "
                                  f"Got {value!r} instead.")
        return
    raise OptionError(f"The {name!r} parameter of {where} must be {describe(cons)}. Got "
                      f"{value!r} instead.")


def check_params(obj: Any, where: str) -> None:
    """Check every field of the options dataclass ``obj``."""
    for f in fields(obj):
        check_param(f.name, getattr(obj, f.name), where)


def _one_of(name: str, value: Any, choices: Sequence[str], where: str = "cnncodes") -> None:
    """Raise OptionError unless ``value`` is one of ``choices`` (the message lists them)."""
    check_param(name, value, where, (StrOptions(tuple(choices)),))


def parse_flag(name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for option ``name``: the text as an int when the option takes one
    (``none``/``auto`` = None where None is allowed), checked against the same constraints; a
    bad value is argparse's usage error naming the flag."""
    import argparse

    cons = CONSTRAINTS[name]
    takes_int = any(isinstance(c, Interval) and c.kind is int for c in cons)

    def parse(text: str) -> Any:
        value: Any = text
        if NONE in cons and text.strip().lower() in ("none", "auto", ""):
            value = None
        elif takes_int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {describe(cons)}. Got {text!r} "
                                                 "instead.") from None
        if not any(c.satisfied_by(value) for c in cons):
            raise argparse.ArgumentTypeError(f"must be {describe(cons)}. Got {text!r} instead.")
        return value

    parse.__name__ = name  # argparse names the type in its fallback message
    return parse


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
        check_params(self, "BackboneOptions")
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
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``, or
            ``int8`` (``extract`` on the CPU only: a quantised ONNX Runtime graph, refused
            when its codes fall below the fidelity bound; never the default).
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
        check_params(self, "RuntimeOptions")

    def replace(self, **changes: Any) -> RuntimeOptions:
        return dataclasses.replace(self, **changes)


BACKBONE_FIELDS = tuple(f.name for f in fields(BackboneOptions))
RUNTIME_FIELDS = tuple(f.name for f in fields(RuntimeOptions))


def sort_keywords(options: Mapping[str, Any], groups: Sequence[Collection[str]], *, where: str,
                  allow: Collection[str] = (),
                  check: Callable[[str, Any], None] | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sort keyword ``options`` into one dict per field group (the first group naming a key
    takes it; ``check(key, value)`` first) and the rest named in ``allow``; any other key is a
    TypeError listing the valid names. The one loop behind every ``*_options`` splitter."""
    found: list[dict[str, Any]] = [{} for _ in groups]
    rest: dict[str, Any] = {}
    for key, value in options.items():
        group = next((g for g, names in enumerate(groups) if key in names), None)
        if group is not None:
            if check is not None:
                check(key, value)
            found[group][key] = value
        elif key in allow:
            rest[key] = value
        else:
            valid = sorted(set().union(*groups) | set(allow))
            raise TypeError(f"{where}() got an unexpected option {key!r}; valid options are "
                            f"{', '.join(valid)}.")
    return found, rest


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
    elif backbone is None:
        bopts = BackboneOptions()
    else:
        check_param("backbone", backbone, f"{where}()")
        bopts = BackboneOptions(backbone=backbone)
    ropts = runtime if runtime is not None else RuntimeOptions()
    if not isinstance(ropts, RuntimeOptions):
        raise TypeError(f"{where}(): runtime must be a RuntimeOptions. Got "
                        f"{type(ropts).__name__} instead.")
    (b_changes, r_changes), rest = sort_keywords(
        options, [BACKBONE_FIELDS[1:], RUNTIME_FIELDS], where=where, allow=allow,
        check=lambda key, value: check_param(key, value, f"{where}()"))
    if b_changes:
        bopts = bopts.replace(**b_changes)
    if r_changes:
        ropts = ropts.replace(**r_changes)
    return bopts, ropts, rest
