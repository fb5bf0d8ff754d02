"""Prediction with a fine-tuned ``model.pt``: :func:`predict_images` gives per-image classes and
probabilities (:class:`ImagePredictions`) with the model's own network and preprocessing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runtime import loader_workers, num_threads, resolve_device
from ..errors import OptionError
from ..options import BackboneOptions, RuntimeOptions, split_options
from ..sources.folders import ImageSource, open_source
from ..sources.preprocessing import Preprocessing
from .data import SplitDataset, make_loader
from .evaluation import amp_dtype, evaluate
from .net import load_finetuned

log = logging.getLogger(__name__)


@dataclass
class ImagePredictions:
    """Per-image predictions of a fine-tuned model.

    Rows align with ``paths`` (relative to ``root``); ``index`` is each row's position in the
    source; images that could not be read are only in ``failures``.
    """

    root: Path
    paths: list[str]
    index: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    true: np.ndarray
    classes: list[str]
    failures: list[tuple[str, str]]
    meta: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        """Predicted class names."""
        return [self.classes[int(i)] for i in self.predicted]

    @property
    def accuracy(self) -> float | None:
        """Accuracy over rows with a known true class (None when the source is unlabelled)."""
        m = self.true >= 0
        return float((self.predicted[m] == self.true[m]).mean()) if m.any() else None

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per image: path, predicted class, probability, true class (if known)."""
        recs = []
        for r, p in enumerate(self.paths):
            c = int(self.predicted[r])
            recs.append({"path": p, "predicted": self.classes[c],
                         "probability": float(self.probabilities[r, c]),
                         "true": self.classes[int(self.true[r])] if self.true[r] >= 0 else None})
        return recs


def predict_images(
    model_path: str | os.PathLike,
    source: str | os.PathLike | Sequence[str] | ImageSource,
    *,
    runtime: RuntimeOptions | None = None,
    input_size: int | None = None,
    **options: Any,
) -> ImagePredictions:
    """Predict every image of ``source`` with a fine-tuned ``model.pt``.

    The model's recorded preprocessing is used (``input_size`` overrides the crop). Class folders in
    ``source`` whose names are model classes give the true labels (others count as unknown).
    Unreadable images are skipped and listed in ``failures``.

    Args:
        runtime: a :class:`~cnncodes.options.RuntimeOptions`; ``options`` override single fields
            (``batch_size``, ``num_workers``, ``device``, ``precision``, ``threads``,
            ``max_pixels``, ``progress``). Images are decoded with PIL whatever ``decoder`` says.

    Raises:
        OptionError: a backbone option other than ``input_size`` (the model file fixes them).
    """
    bopts, ropts, _ = split_options(None, runtime, options, where="predict_images")
    if bopts != BackboneOptions():
        raise OptionError("predict_images() takes the backbone from the model file; only "
                          f"input_size may change. Got {bopts} instead.")
    dev = resolve_device(ropts.device)
    net, meta = load_finetuned(model_path, device=dev)
    classes = list(meta["classes"])
    _, amp = amp_dtype(ropts.precision, dev)
    pp = Preprocessing.from_dict(meta["preprocessing"]).with_input_size(input_size)
    src = open_source(source)
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index.get(src.classes[int(lab)], -1) if lab >= 0 else -1
                     for lab in src.labels], np.int64)
    unknown = sorted({src.classes[int(lab)] for lab in src.labels
                      if lab >= 0 and src.classes[int(lab)] not in index})
    if unknown:
        log.warning("%s: class folders %s are not classes of the model (%s): their accuracy is "
                    "not counted", src.root, unknown[:5], ", ".join(classes[:10]))
    workers = loader_workers(dev, ropts.num_workers, len(src), ropts.batch_size)
    net.to(memory_format=torch.channels_last)
    with num_threads(ropts.threads):
        loader = make_loader(SplitDataset(src, pp, train=False, max_pixels=ropts.max_pixels),
                             batch_size=ropts.batch_size, workers=workers, seed=0,
                             pin=dev.type == "cuda")
        ev = evaluate(net, loader, true, pp, device=dev, amp=amp, channels_last=True,
                      n_classes=len(classes), progress="predict" if ropts.progress else None)
    ok = np.flatnonzero(ev.predicted >= 0)
    failures = [(src.paths[k], r) for k, r in ev.failures]
    for p, r in failures:
        log.warning("skipping %s: %s", p, r)
    meta = dict(meta)
    meta["input_size_used"] = pp.crop
    return ImagePredictions(src.root, [src.paths[i] for i in ok], ok, ev.predicted[ok],
                            ev.probabilities[ok], true[ok], classes, failures, meta)
