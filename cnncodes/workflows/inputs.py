"""What a baseline reads: a predefined ``train/`` + ``test/`` split or one labelled tree
(:func:`find_split`), a hold-out split made on the source files (:func:`holdout_sources`, the one
seeded splitter of :mod:`cnncodes.sources.splits`), and codes extracted into a cache that is
reused when it already holds the layer (:func:`extract_cached`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..codes.options import STORE_FIELDS, StoreOptions, store_options
from ..codes.store import FeatureStore
from ..errors import OptionError, SourceError, StoreMismatchError
from ..options import DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions
from ..sources.folders import ImageSource, open_source
from ..sources.splits import stratified_holdout
from ..stats import plural

log = logging.getLogger(__name__)


SPLIT_NAMES = ("train", "test", "val")


def find_split(source: str | os.PathLike) -> dict[str, Path]:
    """``{"train": ..., "test": ...}`` when ``source`` holds exactly ``train/`` and ``test/`` (or
    ``val/``) sub-folders that are class trees (with both ``test/`` and ``val/``, ``test/`` is
    used);
    else ``{"all": source}``."""
    root = Path(source)
    if not root.is_dir():
        return {"all": root}
    subdirs = {e.name: Path(e.path) for e in os.scandir(root)
               if e.is_dir() and not e.name.startswith(".")}
    if "train" not in subdirs or not set(subdirs) <= set(SPLIT_NAMES) or len(subdirs) < 2:
        return {"all": root}

    def is_tree(d: Path) -> bool:
        return any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(d))

    if not all(is_tree(d) for d in subdirs.values()):
        return {"all": root}
    test = subdirs.get("test") or subdirs["val"]
    if "test" in subdirs and "val" in subdirs:
        log.info("%s: using train/ and test/; val/ is not used (C is chosen by cross-validation "
                 "on train/)", root)
    return {"train": subdirs["train"], "test": test}


def check_split(split: dict[str, Path]) -> None:
    """Refuse, before any extraction, a part of ``split`` that a classifier cannot be trained or
    scored on: a training part (``all`` or ``train``) with fewer than two labelled classes, or a
    folder that holds only ``train/`` (a split folder without its ``test/``).

    Raises:
        SourceError: naming the folder, the classes found and the fix.
    """
    for part, path in split.items():
        if part == "test" or not Path(path).is_dir():
            continue
        src = open_source(path)
        found = sorted({src.classes[int(i)] for i in np.unique(src.labels[src.labels >= 0])})
        if len(found) >= 2:
            continue
        if found and set(found) <= set(SPLIT_NAMES):
            raise SourceError(
                f"{path} holds only {found[0]}/ and no other split folder, so it would be read as "
                f"one class named '{found[0]}'. A predefined split needs train/ and test/ (or "
                f"val/), each holding class folders; add the missing one, or pass "
                f"{os.path.join(path, found[0])} to hold out part of it for testing.")
        raise SourceError(
            f"{path} has {len(found)} labelled class{'' if len(found) == 1 else 'es'}"
            f"{' (' + found[0] + ')' if found else ''}; training needs at least two. Pass a "
            "folder of class folders (one sub-folder per class) or a labelled list.")


def extract_cached(source: str | os.PathLike | ImageSource, cache: str | os.PathLike, *,
                   layer: str, backbone: str | BackboneOptions = DEFAULT_BACKBONE,
                   runtime: RuntimeOptions | None = None, store: StoreOptions | None = None,
                   **kwargs: Any) -> FeatureStore:
    """``extract`` into ``cache`` but reuse an existing cache that holds ``layer`` among others.

    ``kwargs``: other arguments of :func:`cnncodes.extract` (``command``,
    ``extra_provenance``...) or single backbone/runtime/store fields.
    """
    from ..codes.extraction import extract

    store, _ = store_options(store, {k: kwargs.pop(k) for k in list(kwargs) if k in STORE_FIELDS},
                             where="extract_cached")
    cache = Path(cache)
    layers: list[str] = [layer]
    if cache.is_file():
        try:
            existing = FeatureStore(cache).layers
        except (ValueError, OSError):
            existing = []
        if layer in existing:
            layers = existing
    bopts = backbone if isinstance(backbone, BackboneOptions) else BackboneOptions(backbone)
    bopts = bopts.replace(layers=tuple(layers))
    if store.overwrite and cache.is_file():
        # a cache: ``overwrite`` discards only codes made with other settings (the help says
        # so); codes that the run would make again are kept, not extracted a second time
        try:
            res = extract(source, cache, backbone=bopts, runtime=runtime,
                          store=store.replace(overwrite=False), **kwargs)
        except StoreMismatchError as e:
            log.warning("discarding the cached codes in %s (--overwrite): %s", cache, e)
            res = extract(source, cache, backbone=bopts, runtime=runtime, store=store, **kwargs)
    else:
        res = extract(source, cache, backbone=bopts, runtime=runtime, store=store, **kwargs)
    if res.failed:
        log.warning("%s of %s could not be read and %s left out",
                    plural(len(res.failed), "image"), getattr(source, "root", source),
                    "is" if len(res.failed) == 1 else "are")
    return FeatureStore(res.path)


def pick_layer(layer: str | Sequence[str] | None, *, default: str) -> str:
    """The one layer to classify on as asked: ``default`` for None, ``auto`` kept for the
    advisor.

    Raises:
        OptionError: more than one layer.
    """
    if layer is None:
        return default
    if not isinstance(layer, str):
        layer = ",".join(layer)
    if layer.strip().lower() == "auto":
        return "auto"
    if "," in layer:
        raise OptionError(f"baseline trains on one layer. Got {layer!r} instead; pass a single "
                          "layer (or auto).")
    return layer


def subset_source(src: ImageSource, rows: Sequence[int] | np.ndarray) -> ImageSource:
    """The rows ``rows`` of ``src`` as a new source (same root, paths and class list)."""
    idx = np.asarray(rows, np.int64)
    return ImageSource(src.root, [src.paths[int(i)] for i in idx], src.labels[idx].copy(),
                       list(src.classes), "list")


def holdout_sources(source: str | os.PathLike | ImageSource, *, holdout: float = 0.2,
                    seed: int = 0) -> tuple[ImageSource, ImageSource]:
    """``(train, test)`` sources of a single labelled tree, split on its files.

    The same seeded stratified split as :func:`train` with ``holdout`` makes of the store rows
    (:func:`stratified_holdout` over the labelled images in source order), but decided before
    any extraction: the two agree whenever every image decodes; with broken files a broken file
    may fall in either part (it has no codes and is left out there).
    """
    src = open_source(source)
    labelled = np.flatnonzero(src.labels >= 0)
    if labelled.size == 0:
        raise ValueError(f"{src.root} has no labelled images; baseline needs a folder of class "
                         "folders (or a labelled list).")
    tr, te = stratified_holdout(src.labels[labelled], test_size=holdout, seed=seed)
    return subset_source(src, labelled[tr]), subset_source(src, labelled[te])
