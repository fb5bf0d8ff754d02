"""The predict dispatch: which model predicts, from what.

* a linear model file (``cnncodes train``) or :class:`~cnncodes.TrainedModel`, on images or a code
  store: :func:`cnncodes.linear.prediction.linear_predict`;
* a fine-tuned ``RUN/model.pt`` (``cnncodes finetune``), on images:
  :func:`cnncodes.finetuning.predict.predict_images`, with the result in the same form.

:func:`predict` is ``cnncodes.predict``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ..codes.store import FeatureStore
from ..linear.model_file import TrainedModel
from ..linear.prediction import Predictions, is_store_source, linear_predict
from ..options import BackboneOptions, RuntimeOptions, split_options
from ..sources.folders import ImageSource
from ..stats import plural

log = logging.getLogger(__name__)

Source = str | os.PathLike | Sequence[str] | ImageSource | FeatureStore


def predict(model: TrainedModel | str | os.PathLike, source: Source, *,
            runtime: RuntimeOptions | None = None, trust_pickle: bool = False,
            **options: Any) -> Predictions:
    """Predict labels for images (or the rows of a code store) with a linear or fine-tuned model.

    Args:
        model: a model file of ``cnncodes train`` (or a :class:`TrainedModel`): the images' codes
            are extracted with the model's own backbone, weights, layer, pooling and
            preprocessing, or a code store (``.h5``) is checked against them and read. Or a
            fine-tuned ``RUN/model.pt`` of :func:`cnncodes.finetune`: the images go through that
            network (:func:`cnncodes.finetune.predict_images`), ``score_kind`` ``probability``.
        source: a folder, class-folder tree, list file, sequence of paths, a single image file
            (one row), or a code store.
        runtime: how codes are computed (:class:`RuntimeOptions`); ``options`` override single
            fields (``batch_size=``, ``num_workers=``, ``device=``...). The backbone options come
            from the model and cannot be given.
        trust_pickle: also load a linear model file of the old joblib (pickle) format, which
            runs code when loaded (see :func:`~cnncodes.load_model`).

    Returns:
        :class:`Predictions`; unreadable images are listed in ``failures`` (not fatal). Folder
        classes the model does not know are logged as a warning and left out of
        :meth:`Predictions.label_check`'s accuracy.

    Raises:
        ValueError: ``model`` is a fine-tuning ``checkpoint.pt`` (the message names the run's
            ``model.pt``) or not a model file (the message says what it is).
    """
    bopts, ropts, _ = split_options(None, runtime, options, where="predict")
    if bopts != BackboneOptions():
        raise TypeError("predict() takes the backbone options (backbone, weights, layers, "
                        "pooling, input_size) from the model. Got some of them instead; drop "
                        "them.")
    source = single_image(source)
    if is_linear_model_file(model):  # recognised by its first bytes: no torch.load attempt
        return linear_predict(model, source, runtime=ropts, trust_pickle=trust_pickle)
    if is_finetuned_file(model):
        return _predict_finetuned(model, source, runtime=ropts)
    refuse_checkpoint(model)
    if _is_torch_file(model):  # a .pt that is not a fine-tuned model: say why it is not
        from ..finetuning.model_file import read_model_file

        read_model_file(model)
    return linear_predict(model, source, runtime=ropts, trust_pickle=trust_pickle)


def single_image(source: Source) -> Source:
    """A path to one image file becomes a one-path list (a folder, list file or store is kept)."""
    from ..sources.base import IMAGE_EXTENSIONS

    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser()
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            return [os.fspath(p)]
    return source


def is_linear_model_file(model: Any) -> bool:
    """Whether ``model`` is a file whose first bytes are those of a linear model file (the safe
    format or an old joblib one)."""
    from ..outputs import sniff

    if not isinstance(model, (str, os.PathLike)) or not Path(model).is_file():
        return False
    try:
        return sniff(model)[0] in ("model", "pickle-model")
    except OSError:
        return False


def _is_torch_file(model: Any) -> TypeGuard[str | os.PathLike]:
    from ..outputs import sniff

    try:
        return isinstance(model, (str, os.PathLike)) and Path(model).is_file() and \
            sniff(model)[0] == "torch"
    except OSError:
        return False


def refuse_checkpoint(model: Any) -> None:
    """Raise a clear error for a fine-tuning ``checkpoint.pt`` (the resumable training state, not
    a model to predict with), naming the run's ``model.pt``."""
    if not isinstance(model, (str, os.PathLike)) or not zipfile.is_zipfile(model):
        return
    import torch

    from ..finetuning.checkpoint import CHECKPOINT_KIND

    path = Path(model)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a checkpoint: load_model says what it is
        return
    if not (isinstance(obj, dict) and obj.get("kind") == CHECKPOINT_KIND):
        return
    best = path.with_name("model.pt")
    if best.is_file():
        raise ValueError(f"{path} is a fine-tuning checkpoint (the state to resume training "
                         f"from), not a model to predict with. Pass the run's model: {best}.")
    raise ValueError(f"{path} is a fine-tuning checkpoint (the state to resume training from), "
                     f"not a model to predict with, and the run has no {best} yet. Finish it "
                     f"with `cnncodes finetune SOURCE -o {path.parent} --resume`, then pass "
                     f"{best}.")


def is_finetuned_file(model: Any) -> TypeGuard[str | os.PathLike]:
    """Whether ``model`` is a ``model.pt`` of :func:`cnncodes.finetune` (a torch zip archive), not
    a linear model file."""
    if not isinstance(model, (str, os.PathLike)) or not zipfile.is_zipfile(model):
        return False
    from ..finetuning.model_file import is_finetuned_model

    return is_finetuned_model(model)


def _predict_finetuned(model: str | os.PathLike, source: Source, *,
                       runtime: RuntimeOptions | None) -> Predictions:
    """:func:`predict` for a fine-tuned ``model.pt``: its own network and preprocessing."""
    from ..finetuning.predict import predict_images
    from ..sources.folders import open_source

    if isinstance(source, FeatureStore) or is_store_source(source):  # (isinstance: for mypy)
        raise ValueError(f"{os.fspath(model)} is a fine-tuned network: it predicts from images, "
                         "not from a code store. Pass the images (a folder or a list file).")
    src = open_source(source)
    r = runtime or RuntimeOptions()
    # the fine-tuning module's own keyword fields (its preprocessing is the model's)
    res = predict_images(model, src, batch_size=r.batch_size, device=r.device,
                         precision=r.precision, num_workers=r.num_workers, threads=r.threads,
                         max_pixels=r.max_pixels, progress=r.progress)
    root = Path(res.root)
    paths = [os.path.normpath(os.fspath(root / p)) for p in res.paths]
    failures = [(os.path.normpath(os.fspath(root / p)), r) for p, r in res.failures]
    probs = np.asarray(res.probabilities, np.float64).reshape(len(paths), len(res.classes))
    idx = np.asarray(res.predicted, np.int64)
    best = probs[np.arange(len(idx)), idx] if len(idx) else np.zeros(0)
    true = None
    if len(src.labels) and (np.asarray(src.labels) >= 0).any():
        # the folder's class name, as for linear models (also for classes the model lacks)
        true = [src.classes[int(i)] if i >= 0 else "" for i in np.asarray(src.labels)[res.index]]
    meta = res.meta
    desc = (f"fine-tuned {meta.get('backbone')} ({meta.get('state')}, {len(res.classes)} "
            f"classes, {meta.get('input_size_used')} px) from {os.fspath(model)}")
    if failures:
        n_bad = len(failures)
        log.warning("%s could not be read and %s no prediction (listed first in the CSV)",
                    plural(n_bad, "image"), "has" if n_bad == 1 else "have")
    pred = Predictions(paths, res.labels, best, "probability", probs, list(res.classes),
                       failures, true, model=desc)
    pred.warn_unknown_classes()
    return pred
