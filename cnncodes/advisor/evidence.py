"""The advisor's evidence: how big the data set is, and how it looks to the pretrained network.

* :class:`SizeInfo` / :func:`measure_size`: images, classes, images per class, image sizes and
  modes read from a sample of headers;
* :class:`~cnncodes.advisor.meter.PretrainedMeter` (in :mod:`cnncodes.advisor.meter`, which needs
  torch): the complete network's own view of a sample, (a) the ImageNet head's confidence and
  entropy (meaningful only with ImageNet weights) and (b) how far the data's BatchNorm-input
  statistics are from the running statistics learnt in pretraining (Gaussian KL per channel).
  Both are side evidence: the linear probe (:mod:`cnncodes.advisor.probe`) decides.

This module imports no torch, so the advisor's rule and a baseline on cached codes load without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import OptionError
from ..sources.folders import ImageSource
from ..sources.images import open_regular
from ..sources.splits import stratified_order


class SizeThresholds(Protocol):
    """The size half of :class:`cnncodes.advisor.rule.Thresholds` (read-only: it is frozen)."""

    @property
    def small_per_class(self) -> int: ...

    @property
    def large_per_class(self) -> int: ...

    @property
    def large_total(self) -> int: ...


@dataclass
class SizeInfo:
    """How big the data set is.

    Attributes:
        n_images: labelled images in the source.
        per_class: images per class name.
        image_sizes: summary of a sample of image headers (widths, heights, modes).
    """

    n_images: int
    per_class: dict[str, int]
    image_sizes: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.per_class)

    @property
    def median_per_class(self) -> float:
        return float(np.median(list(self.per_class.values()))) if self.per_class else 0.0

    def size_class(self, th: SizeThresholds) -> str:
        """``small``, ``medium`` or ``large`` under ``th`` (step 1 of
        :mod:`cnncodes.advisor.rule`)."""
        med = self.median_per_class
        if med >= th.large_per_class and self.n_images >= th.large_total:
            return "large"
        if med < th.small_per_class:
            return "small"
        return "medium"

    def to_dict(self, *, max_classes: int | None = None) -> dict[str, Any]:
        """JSON-able counts; ``per_class`` left out beyond ``max_classes`` classes."""
        counts = list(self.per_class.values())
        d: dict[str, Any] = {
            "n_images": self.n_images, "n_classes": self.n_classes,
            "per_class_min": int(min(counts)) if counts else 0,
            "per_class_median": self.median_per_class,
            "per_class_max": int(max(counts)) if counts else 0,
            "image_sizes": self.image_sizes,
        }
        if max_classes is None or self.n_classes <= max_classes:
            d["per_class"] = dict(self.per_class)
        return d


def measure_size(source: ImageSource, *, sample: int = 200, seed: int = 0) -> SizeInfo:
    """Counts per class, plus image sizes and modes read from ``sample`` image headers.

    Raises:
        OptionError: the source has no labels, or fewer than two classes.
    """
    _check_labelled(source)
    counts = np.bincount(source.labels[source.labels >= 0], minlength=len(source.classes))
    per_class = {c: int(n) for c, n in zip(source.classes, counts, strict=True) if n > 0}
    order = stratified_order(source.labels, seed=seed)[:sample]
    from PIL import Image

    ws: list[int] = []
    hs: list[int] = []
    modes: dict[str, int] = {}
    bad = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in order:
            try:
                with open_regular(source.abspath(int(i))) as f, Image.open(f) as im:
                    ws.append(im.size[0])
                    hs.append(im.size[1])
                    modes[im.mode] = modes.get(im.mode, 0) + 1
            except Exception:  # noqa: BLE001 - an unreadable header is only counted here
                bad += 1
    sizes: dict[str, Any] = {"sampled": int(order.size), "unreadable": bad, "modes": modes}
    if ws:
        for name, v in (("width", ws), ("height", hs)):
            sizes[name] = {"min": int(np.min(v)), "median": float(np.median(v)),
                           "max": int(np.max(v))}
    return SizeInfo(n_images=int(counts.sum()), per_class=per_class, image_sizes=sizes)


def _check_labelled(source: ImageSource) -> None:
    n_lab = int((source.labels >= 0).sum())
    n_cls = len(np.unique(source.labels[source.labels >= 0]))
    if n_lab == 0:
        raise OptionError(f"advise needs labelled images. Got {source.root}, a {source.kind} "
                          "source without labels, instead; pass a folder of class folders, or a "
                          ".txt/.csv list with a label per image.")
    if n_cls < 2:
        raise OptionError(f"advise needs at least two classes to compare layers. Got "
                          f"{source.root} with a single class ({', '.join(source.classes)}) "
                          "instead; add a folder per class.")
