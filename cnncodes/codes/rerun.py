"""Reruns that remember: the model options a store (or its unfinished first extraction) was made
with, as the command-line values that make the same codes, and the check of options given on a
rerun against them. Torch-free: ``extract`` runs it before any heavy import.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CnnCodesError, OptionError

#: model option (BackboneOptions field, plus the store's dtype) -> its command-line flag
MODEL_FLAGS = {"backbone": "--backbone", "weights": "--weights", "layers": "--layers",
               "pooling": "--pooling", "input_size": "--input-size", "dtype": "--dtype"}


def weights_option(recorded: Any) -> str:
    """The ``--weights`` value that resolves to a recorded weights id: ``random``; a checkpoint
    path for ``file:PATH``; the tag of ``timm/arch.tag``; the member of a torchvision enum
    (``MobileNet_V2_Weights.IMAGENET1K_V1`` -> ``IMAGENET1K_V1``)."""
    w = str(recorded or "random")
    if w.startswith("file:"):
        return w[len("file:"):]
    if w.startswith("timm/"):
        return w[len("timm/"):]
    m = re.fullmatch(r"\w+_Weights\.(\w+)", w)
    return m[1] if m else w


def recorded_options(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The model options the store at ``path`` was made with (``backbone``, ``weights`` as a
    ``--weights`` value, ``layers`` comma-joined, ``pooling``, ``input_size``, ``dtype``), from
    the store or, before its first fold, from its unfinished extraction's manifest; None when
    there is neither (or it is not a readable store: the extraction then says why)."""
    from .journal import Journal
    from .reader import FeatureStore

    p = Path(path)
    try:
        if p.is_file():
            prov: Mapping[str, Any] | None = FeatureStore(p).provenance
        else:
            j = Journal(p)
            prov = j.manifest() if j.part_files() else None
    except (CnnCodesError, OSError, KeyError, ValueError):
        return None
    if not prov or not prov.get("backbone") or not prov.get("layers"):
        return None
    size = prov.get("input_size") or (prov.get("preprocessing") or {}).get("crop")
    layers = prov["layers"]
    return {"backbone": str(prov["backbone"]), "weights": weights_option(prov.get("weights")),
            "layers": ",".join(map(str, [layers] if isinstance(layers, str) else layers)),
            "pooling": str(prov.get("pooling") or "avg"),
            "input_size": int(size) if size else None, "dtype": str(prov.get("dtype") or
                                                                    "float32")}


def _same(field: str, given: Any, recorded: Any) -> bool:
    """Whether a given option asks for the recorded value (None: cannot tell without loading
    the weights; the extraction's own check then decides)."""
    if field == "layers":
        if str(given).strip().lower() == "auto":
            return True  # the recorded choice is reused (choose_layer's reuse_from)
        return bool([s.strip() for s in str(given).split(",") if s.strip()]
                    == recorded.split(","))
    if field == "input_size":
        return recorded is None or int(given) == int(recorded)
    if field == "weights":
        return _same_weights(str(given), str(recorded))
    return str(given) == str(recorded)


def _same_weights(g: str, r: str) -> bool:
    """``auto``/``DEFAULT`` match any pretrained weights (the extraction's own check compares
    the resolved ids); ``random`` only random; a path the same file; a name the same name (a
    timm tag also ``arch.tag``)."""
    if g.lower() in ("random", "none") or r == "random":
        return g.lower() in ("random", "none") and r == "random"
    if g in ("auto", "DEFAULT"):
        return True
    if os.path.isfile(g) or os.path.isfile(r):
        return os.path.isfile(g) and os.path.isfile(r) and os.path.samefile(g, r)
    return g == r or r.endswith("." + g)


def check_rerun(output: str | os.PathLike[str], given: Mapping[str, Any],
                recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a rerun into ``output``: every option not given takes the recorded value.

    Raises:
        OptionError: a given option asks for other codes than the store holds; the message names
            the store's value and both ways forward (its value, or a new store with ``-o``).
    """
    bad = [f for f, v in given.items() if f in recorded and not _same(f, v, recorded[f])]
    if bad:
        out = os.fspath(output)
        asked = "; ".join(f"{MODEL_FLAGS[f]} {v} (the store has {MODEL_FLAGS[f]} "
                          f"{recorded[f]})" for f, v in given.items() if f in bad)
        same = " ".join(f"{MODEL_FLAGS[f]} {shlex.quote(str(recorded[f]))}" for f in bad)
        raise OptionError(
            f"{out} holds codes made with other options than asked: {asked}. Either continue "
            f"that store with its own options ({same}, or leave those options out: a rerun "
            f"then continues with the store's settings), or write a new store with -o "
            f"OTHER.h5 (or --overwrite to replace {out}).")
    return {**recorded, **given}
