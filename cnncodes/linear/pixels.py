"""The raw-pixel baseline: logistic regression, with the codes' model selection (C grid, folds,
scoring, class weights), on downscaled raw pixels of the same images (:func:`raw_pixels`,
:func:`pixel_baseline`).

The reference row is always :data:`RAW_BASELINE_MODEL` (logistic regression), whatever classifier
the codes row uses. LinearSVC (liblinear's dual solver) converges slowly on 3,072 correlated pixel
features: on 200 Animal-MNIST images at 32x32 RGB its 5-fold, 7-C search took 79.9 s of CPU against
10.6 s for logistic regression (2-core VM; the row was most of a ``baseline --layer auto`` run);
and one fixed reference keeps rows of different runs comparable.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..options import DEFAULT_MAX_PIXELS
from .evaluation import score_predictions
from .model_file import TrainedModel
from .options import DEFAULT_RAW_SIZE, ClassifierOptions, classifier_options
from .progress import FitProgress, ProgressArg
from .selection import fit_codes

log = logging.getLogger(__name__)


#: The raw-pixel row's classifier, whatever the codes row uses (cheap and comparable across runs).
RAW_BASELINE_MODEL = "logreg"
#: Above this many training values (rows x features) the raw-pixel baseline is not "cheap".
RAW_BASELINE_BUDGET = 60_000_000
#: Over the budget, the row is trained on a stratified subsample of this many values: logistic
#: regression on standardised pixels converges slowly (2,000 Fashion-MNIST images at 32x32 RGB:
#: 145 s for its 7-C search on the loaded 2-core VM), so the subsample is kept small.
RAW_SUBSAMPLE_VALUES = 10_000_000
#: Folds of the subsampled row's C search (at most): 3 instead of 5 halves its cost (22 fits
#: on 2/3 of the rows instead of 36 on 4/5; full Fashion-MNIST: 175 s of a 9-minute baseline).
RAW_SUBSAMPLE_FOLDS = 3


def raw_pixels(paths: Sequence[str | os.PathLike], *, size: int = 32, grey: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: ProgressArg = None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Downscaled raw pixels: shorter side resized to ``size``, centre-cropped, flattened, /255.
    ``progress``: images read / total with ETA (logged every 2,000 images; see
    :mod:`cnncodes.linear.progress`).

    Returns:
        ``(X (N, size*size*channels) float32, ok (N,) bool, failures)``; rows of unreadable
        images are zeros with ``ok`` False.
    """
    if int(size) < 2:
        raise ValueError(f"Raw-pixel size must be >= 2; got {size}.")
    ch = 1 if grey else 3
    X = np.zeros((len(paths), size * size * ch), np.float32)
    ok = np.zeros(len(paths), bool)
    failures: list[tuple[str, str]] = []
    bar = FitProgress(len(paths), desc=f"raw pixels {size}x{size}", progress=progress,
                      unit="img", log_every=2000)
    try:
        for i, p in enumerate(paths):
            _raw_one(X, ok, failures, i, p, size=size, grey=grey, max_pixels=max_pixels)
            bar.step(stage="pixels")
    finally:
        bar.close()
    return X, ok, failures


def _raw_one(X: np.ndarray, ok: np.ndarray, failures: list[tuple[str, str]], i: int,
             p: str | os.PathLike, *, size: int, grey: bool, max_pixels: int | None) -> bool:
    """Row ``i`` of :func:`raw_pixels`: False (and a failure recorded) when unreadable."""
    from PIL import Image

    from ..errors import DecodeError
    from ..sources.images import load_rgb
    from ..sources.preprocessing import Preprocessing, check_resize

    try:
        img = load_rgb(p, max_pixels=max_pixels)
        w, h = img.size  # the resize is bounded like the extraction's (1e6 x 1: a named failure)
        check_resize(w, h, Preprocessing(size, size, (0.0,) * 3, (1.0,) * 3, "bilinear"),
                     max_pixels)
    except DecodeError as e:
        failures.append((os.fspath(p), str(e)))
        return False
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    if grey:
        img = img.convert("L")
    X[i] = np.asarray(img, np.float32).reshape(-1) / 255.0
    ok[i] = True
    return True


@dataclass(frozen=True)
class RawPixelOptions:
    """Which raw pixels the reference row uses, and what it may cost.

    Attributes:
        size: side of the downscaled images (``--raw-size``).
        grey: one grey channel instead of RGB.
        budget: most training values (rows x features) the row may use; None = no limit.
        subsample: over ``budget``, train on a stratified subsample instead of skipping the row.
    """

    size: int = DEFAULT_RAW_SIZE
    grey: bool = False
    budget: int | None = RAW_BASELINE_BUDGET
    subsample: bool = False


def pixel_baseline(train_paths: Sequence[str], y_train: np.ndarray, test_paths: Sequence[str],
                   y_test: np.ndarray, *, classes: Sequence[str],
                   raw: RawPixelOptions | None = None,
                   classifier: ClassifierOptions | None = None, seed: int = 0,
                   device: str = "auto", progress: ProgressArg = None,
                   **options: Any) -> dict[str, Any]:
    """Logistic regression with the codes' model selection on downscaled raw pixels of the same
    images (``raw``: their size and colour, and the row's budget: :class:`RawPixelOptions`).

    Returns a report row: ``name``, ``model`` (always :data:`RAW_BASELINE_MODEL`) with
    ``model_note``, CV record, test ``accuracy``/``balanced_accuracy``; or
    ``{"name": ..., "skipped": reason}`` when it would not be cheap (more than ``raw.budget``
    training values) or the image files are gone.

    ``classifier`` (or single fields in ``options``) as for :func:`~cnncodes.train`: its C grid,
    folds, scoring, class weights and iterations are used; its ``model`` is not (the row is
    always logistic regression, see the module docstring), and the pixels are always
    standardised, without L2 normalisation or PCA (settings tuned for codes).

    ``raw.subsample``: over ``raw.budget``, train on a stratified, seeded subsample of the training
    images (at most :data:`RAW_SUBSAMPLE_VALUES` values, C by at most
    :data:`RAW_SUBSAMPLE_FOLDS`-fold CV) (``row["subsample"]`` says how many of
    how many) instead of skipping;
    the test rows are all scored. ``progress``: images read and fits done, with ETA.
    """
    copts, _ = classifier_options(classifier, options, where="pixel_baseline")
    raw = raw if raw is not None else RawPixelOptions()
    size, grey, budget = raw.size, raw.grey, raw.budget
    asked = copts.model_name
    copts = copts.replace(model=RAW_BASELINE_MODEL, l2=False, standardize=True, pca=None)
    note = "always logistic regression, whatever the codes use" + (
        f" (here {asked}): LinearSVC on raw pixels is slow, and one fixed reference keeps rows "
        "comparable" if asked != RAW_BASELINE_MODEL else "")
    ch = 1 if grey else 3
    name = f"raw pixels {size}x{size} {'grey' if grey else 'rgb'}"
    dim = size * size * ch
    sub: dict[str, Any] | None = None
    if budget is not None and len(train_paths) * dim > budget:
        if not raw.subsample:
            return {"name": name, "skipped": f"{len(train_paths)} x {dim} values is over the "
                    f"raw-baseline budget of {budget}; use a smaller --raw-size"}
        n_sub = max(min(budget, RAW_SUBSAMPLE_VALUES) // dim, 2 * len(classes))
        keep = _stratified_rows(np.asarray(y_train), n_sub, seed)
        folds = min(copts.cv, RAW_SUBSAMPLE_FOLDS)
        copts = copts.replace(cv=folds)
        sub = {"n_train": int(len(keep)), "of": int(len(train_paths)), "cv": folds, "note": (
            f"trained on a stratified subsample of {len(keep):,} of the {len(train_paths):,} "
            f"training images ({len(train_paths):,} x {dim:,} values is over the raw-baseline "
            f"budget of {budget:,}), C by {folds}-fold CV; a cheap reference, not the best raw "
            "pixels can do")}
        log.info("raw-pixel row: %s", sub["note"])
        train_paths = [train_paths[i] for i in keep]
        y_train = np.asarray(y_train)[keep]
    missing = [p for p in list(train_paths)[:1] + list(test_paths)[:1] if not os.path.exists(p)]
    if missing:
        return {"name": name, "skipped": f"image files not found (e.g. {missing[0]})"}
    t0 = time.perf_counter()
    Xtr, oktr, _ = raw_pixels(train_paths, size=size, grey=grey, progress=progress)
    Xte, okte, _ = raw_pixels(test_paths, size=size, grey=grey, progress=progress)
    load_s = time.perf_counter() - t0
    ytr, yte = np.asarray(y_train)[oktr], np.asarray(y_test)[okte]
    pipe, sel = fit_codes(Xtr[oktr] if not oktr.all() else Xtr, ytr, classes=classes,
                          classifier=copts, seed=seed, device=device, progress=progress)
    del Xtr
    m = TrainedModel(pipe, list(classes), "pixels", {}, {}, sel)
    pred, _ = m.scores(Xte[okte])
    metrics = score_predictions(yte, pred, classes)
    return {"name": name, "model": RAW_BASELINE_MODEL, "model_note": note, "features": dim,
            "selection": sel, "load_time_s": round(load_s, 3),
            "n_test": int(okte.sum()), **({"subsample": sub} if sub else {}),
            **{k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}}


def _stratified_rows(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` row indices of ``y``, each class in proportion (at least 2 rows), sorted."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    out = []
    for c, k in zip(labels, counts, strict=True):
        take = min(int(k), max(2, int(round(n * k / len(y)))))
        out.append(rng.choice(np.flatnonzero(y == c), size=take, replace=False))
    return np.sort(np.concatenate(out))
