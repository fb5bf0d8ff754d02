"""Linear classifiers on cached CNN codes: pipelines, model selection, splits, the model file,
evaluation, prediction and the one-command small-dataset ``baseline``.

The classifier is a scikit-learn :class:`~sklearn.pipeline.Pipeline` (optional L2 normalisation ->
optional standardisation -> optional PCA -> ``LogisticRegression`` (lbfgs, multinomial) or
``LinearSVC``) whose ``C`` is chosen by ``GridSearchCV`` over a log-spaced grid with stratified
k-fold and refitted on all training rows.

A fitted model is a :class:`TrainedModel`; on disk it is a joblib file holding a plain dict: the
pipeline, the class names, the layer, the provenance of the codes it was trained on (backbone,
weights id + sha256, pooling, preprocessing...) and the split. Whatever reads codes for a model
(:func:`evaluate`, :func:`predict`) checks them against that provenance first and refuses codes from
another backbone/weights/layer/pooling/preprocessing with an error naming the differing field.

.. warning:: joblib (pickle) files execute code when loaded. Only load model files you made
   yourself or that come from a source you trust.

Where model selection runs (``device=``)
----------------------------------------
With a CUDA GPU, :func:`train` / :func:`fit_codes` run the whole ``GridSearchCV`` (every fold and
C, and the refit) through scikit-learn's array API support: the codes become torch tensors on the
GPU and ``sklearn.config_context(array_api_dispatch=True)`` makes ``Normalizer``,
``StandardScaler``, ``PCA`` and ``LogisticRegression(solver="lbfgs")`` compute with torch
(the L-BFGS iterations themselves stay in SciPy, on a small NumPy vector of coefficients).

* ``device="auto"`` (default): the GPU when one is present and the pipeline supports it, else NumPy.
* ``device="cpu"``: always NumPy (the reference path).
* ``device="cuda"`` / ``"cuda:1"``: the array API on that GPU (an error when CUDA is absent).
* ``device="cpu-torch"``: the array API on CPU torch tensors; the same code path as the GPU one,
  for checking it on machines without a GPU (it is not faster than NumPy on a CPU).

What cannot take the array API path falls back to NumPy on the CPU, says why in the log (a
warning when the array API was asked for explicitly or the environment prevents it) and records
it in ``selection["compute"]``:

* ``LinearSVC`` (liblinear) has no array API support in scikit-learn: it always runs on the CPU.
* The check is scikit-learn's own ``array_api_support`` tag of every pipeline step (supported in
  scikit-learn 1.9: ``Normalizer``, ``StandardScaler``, ``PCA`` with the ``full``,
  ``covariance_eigh`` or QR-normalised ``randomized`` solvers (``build_pipeline`` always sets
  ``power_iteration_normalizer="QR"`` so both paths use the same PCA), ``LogisticRegression``
  with ``lbfgs``; ``GridSearchCV`` and ``StratifiedKFold`` split torch tensors directly).
* SciPy must have been imported with ``SCIPY_ARRAY_API=1``. ``import cnncodes`` never sets it;
  the ``cnncodes`` command does, before anything imports SciPy. From Python, call
  :func:`cnncodes.enable_array_api` before importing scikit-learn or SciPy, or export
  ``SCIPY_ARRAY_API=1``; when SciPy came up without it, training warns and uses NumPy. (The
  variable makes SciPy reject ``np.matrix`` and masked arrays process-wide.)
* Any error during the array API fit (an unsupported ``scoring``, GPU out of memory...) is
  logged as a warning and the fit is redone with NumPy.

On the array API path the fits run one after the other in this process (``n_jobs`` is not used:
the GPU parallelises inside each fit), in the codes' dtype (float32 codes compute in float32 on
both paths). The fitted pipeline is converted back to NumPy arrays before it is returned, so a
model file never holds torch tensors and predicts from NumPy input on any machine. Both paths
give the same chosen C and predictions up to floating-point rounding (on float64 codes the same
predictions and coefficients within 1e-7; with float32 a near-tie in the CV curve can flip).

Model selection on a cluster (joblib + dask)
--------------------------------------------
The grid search's fits (C values x folds) are dispatched by joblib, so any joblib backend set by
the caller is used. To spread them over a dask cluster (``pip install "dask[distributed]"``;
cnncodes does not depend on dask)::

    import joblib
    from dask.distributed import Client
    import cnncodes

    client = Client("tcp://scheduler:8786")        # or Client() for a local test cluster
    with joblib.parallel_config(backend="dask"):   # joblib < 1.3: joblib.parallel_backend("dask")
        model = cnncodes.train("codes.h5", layer="pool", c_grid="full", cv=5, device="cpu")
    cnncodes.save_model(model, "model.joblib")

``n_jobs=None`` (the default) lets the backend decide how many fits run at once (dask: every
worker thread of the cluster); ``n_jobs=1`` keeps the fits in this process, outside any
backend. The codes are read on the client and sent to the workers once per
grid search (joblib's dask backend scatters large arguments); each task is a scikit-learn
pipeline fit, so the workers need the same scikit-learn, NumPy and SciPy versions, but not
cnncodes or torch. Use ``device="cpu"`` there: the array API path runs its fits sequentially in
the calling process and does not use the backend.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC

from .._version import __version__
from ..atomic import atomic_path
from ..codes.store import FeatureStore, canonical
from ..errors import ModelMismatchError, StoreMismatchError
from ..options import DEFAULT_MAX_PIXELS
from ..sources.folders import ImageSource
from .array_api_env import ENABLE_HINT

log = logging.getLogger(__name__)

#: Classifier names accepted by ``model=`` / ``--model``.
MODELS = ("logreg", "linearsvc")
#: The default C grid: 7 log-spaced values, one per decade (``--c-grid 1e-4:1e2:7``).
DEFAULT_C_GRID = "1e-4:1e2:7"
#: The published linear-probe protocol's grid: 45 log-spaced values in [1e-6, 1e5].
FULL_C_GRID = "1e-6:1e5:45"
MODEL_FORMAT = "cnncodes-model"
MODEL_FORMAT_VERSION = 1
#: Provenance fields copied from the store into the model file (the first four are checked).
BINDING_FIELDS = ("backbone", "weights", "pooling", "preprocessing")
_COPIED_FIELDS = BINDING_FIELDS + ("family", "weights_sha256", "input_size", "dtype", "root",
                                   "source_kind", "default_layer", "versions")
#: Above this many training values (rows x features) the raw-pixel baseline is not "cheap".
RAW_BASELINE_BUDGET = 60_000_000
TRUST_WARNING = ("joblib model files run code when loaded: load only files you made or that come "
                 "from a source you trust.")


# ------------------------------------------------------------------------------------------------
# Grids, pipelines, splits


def parse_c_grid(grid: str | float | Sequence[float] | None = None) -> np.ndarray:
    """Turn a C grid specification into a sorted array of unique positive floats.

    Accepts ``None``/``"default"`` (:data:`DEFAULT_C_GRID`), ``"full"`` (:data:`FULL_C_GRID`, the
    45-value [1e-6, 1e5] protocol grid), ``"start:stop:count"`` (``count`` log-spaced values from
    ``start`` to ``stop`` inclusive, e.g. ``1e-4:1e2:13``), a comma list ``"0.01,0.1,1"``, a number
    or a sequence of numbers.

    Raises:
        ValueError: malformed text or a non-positive value (the bad part is named).
    """
    if grid is None:
        grid = DEFAULT_C_GRID
    if isinstance(grid, str):
        text = grid.strip().lower()
        if text == "default":
            text = DEFAULT_C_GRID
        elif text == "full":
            text = FULL_C_GRID
        hint = ("use start:stop:count (e.g. 1e-4:1e2:13), a comma list (0.01,0.1,1), 'default' "
                "or 'full'")
        if ":" in text:
            parts = text.split(":")
            try:
                if len(parts) != 3:
                    raise ValueError
                start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise ValueError(f"Bad C grid {grid!r}; {hint}.") from None
            if start <= 0 or stop <= 0 or count < 1:
                raise ValueError(f"Bad C grid {grid!r}: start and stop must be > 0 and count "
                                 f">= 1; {hint}.")
            values = np.logspace(math.log10(start), math.log10(stop), count)
        else:
            try:
                values = np.array([float(x) for x in text.split(",") if x.strip()])
            except ValueError:
                raise ValueError(f"Bad C grid {grid!r}; {hint}.") from None
    else:
        values = np.atleast_1d(np.asarray(grid, dtype=float))
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"C grid {grid!r} must hold finite values > 0; got {values.tolist()}.")
    return np.unique(values)


def build_pipeline(*, model: str = "logreg", C: float = 1.0, l2: bool = False,
                   standardize: bool = True, pca: int | float | None = None,
                   class_weight: str | Mapping[int, float] | None = None, max_iter: int = 1000,
                   random_state: int | None = 0) -> Pipeline:
    """An unfitted ``[l2] -> [scale] -> [pca] -> clf`` pipeline (the C grid searches ``clf__C``).

    Args:
        model: ``logreg`` (LogisticRegression, lbfgs, multinomial) or ``linearsvc`` (LinearSVC).
        C: inverse regularisation strength.
        l2: L2-normalise each code first (``Normalizer``).
        standardize: zero mean, unit variance per feature (``StandardScaler``).
        pca: keep this many PCA components (int) or this fraction of the variance (0 < float < 1).
        class_weight: ``None`` or ``"balanced"`` (or an explicit {label: weight} mapping).
        max_iter: solver iterations.
    """
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    if class_weight not in (None, "balanced") and not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be None or 'balanced'; got {class_weight!r}.")
    steps: list[tuple[str, Any]] = []
    if l2:
        steps.append(("l2", Normalizer(norm="l2")))
    if standardize:
        steps.append(("scale", StandardScaler()))
    if pca is not None:
        from sklearn.decomposition import PCA

        if isinstance(pca, float) and not 0 < pca < 1 or not isinstance(pca, float) and pca < 1:
            raise ValueError(f"pca must be a component count >= 1 or a variance fraction in "
                             f"(0, 1); got {pca!r}.")
        # QR power iterations: the randomized solver that scikit-learn's "auto" may pick then
        # also runs under array API dispatch, so the NumPy and GPU paths fit the same PCA
        steps.append(("pca", PCA(n_components=pca, power_iteration_normalizer="QR",
                                 random_state=random_state)))
    if model == "logreg":
        clf: Any = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter,
                                      class_weight=class_weight, random_state=random_state)
    else:
        clf = LinearSVC(C=C, dual="auto", max_iter=max_iter, class_weight=class_weight,
                        random_state=random_state)
    steps.append(("clf", clf))
    return Pipeline(steps)


def resolve_cv(y: np.ndarray, cv: int, *, classes: Sequence[str] | None = None) -> int:
    """The number of stratified folds to use: ``cv``, reduced (with a warning) to the size of the
    smallest class when that class has fewer rows.

    Raises:
        ValueError: ``cv`` < 2, fewer than two classes, or a class with fewer than 2 rows (it is
            named with its count).
    """
    if int(cv) < 2:
        raise ValueError(f"cv must be >= 2 folds; got {cv}.")
    labels, counts = np.unique(y, return_counts=True)
    names = [classes[i] if classes is not None else str(i) for i in labels]
    if len(labels) < 2:
        raise ValueError(f"Training needs at least 2 classes; the training rows hold only "
                         f"{names}. Add images of other classes.")
    smallest = int(counts.min())
    if smallest < 2:
        tiny = [f"{n!r} ({c})" for n, c in zip(names, counts, strict=True) if c < 2]
        raise ValueError(f"Class {', '.join(tiny)} has fewer than 2 training images; stratified "
                         "cross-validation needs at least 2 per class. Add images to it or remove "
                         "that class folder.")
    if smallest < cv:
        small = names[int(np.argmin(counts))]
        log.warning("class %r has only %d training images: using %d folds instead of %d",
                    small, smallest, smallest, cv)
        return smallest
    return int(cv)


def stratified_holdout(y: np.ndarray, *, test_size: float = 0.2,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices into ``(train, test)`` (both sorted).

    Every class with at least 2 rows puts ``round(test_size * n)`` rows (at least 1, at most
    ``n - 1``) into the test part; a class with a single row stays in training.

    Raises:
        ValueError: ``test_size`` not in (0, 1).
    """
    if not 0 < float(test_size) < 1:
        raise ValueError(f"test_size (--holdout) must be a fraction in (0, 1); got {test_size}.")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(test_size * len(idx)))))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ------------------------------------------------------------------------------------------------
# Model selection


#: Up to this many values (rows x features) a fit runs BLAS/OpenMP on one thread by default:
#: multi-threaded BLAS on small matrices measured 10-50x slower on a busy 2-core machine.
SMALL_FIT_VALUES = 20_000_000


#: ``device=`` values of :func:`fit_codes` / :func:`train` (``cuda:N`` picks a GPU).
TRAIN_DEVICES = ("auto", "cpu", "cpu-torch", "cuda")


@dataclass(frozen=True)
class Compute:
    """Where a model selection runs.

    Attributes:
        engine: ``numpy`` or ``array-api`` (scikit-learn's array API dispatch on torch tensors).
        device: ``cpu``, ``cuda:0``... (always ``cpu`` for ``numpy``).
        requested: the ``device=`` value asked for.
        reason: why the NumPy path is used although the array API was asked for or possible.
    """

    engine: str
    device: str
    requested: str
    reason: str = ""

    @property
    def array_api(self) -> bool:
        return self.engine == "array-api"

    def describe(self) -> str:
        where = (f"scikit-learn array API on torch {self.device}" if self.array_api
                 else "NumPy on CPU")
        return where + (f" ({self.reason})" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        d = {"engine": self.engine, "device": self.device, "requested": self.requested}
        if self.reason:
            d["reason"] = self.reason
        return d


def _scipy_array_api_flag() -> bool:
    """Whether SciPy itself was initialised with array API support (read once at its import)."""
    import scipy  # noqa: F401  (import it now if nobody did)

    try:
        from scipy._lib._array_api import SCIPY_ARRAY_API as flag
    except ImportError:  # another SciPy layout: trust the variable
        return os.environ.get("SCIPY_ARRAY_API") == "1"
    return str(flag).strip().lower() not in ("", "0", "false", "none")


def array_api_status() -> tuple[bool, str]:
    """``(usable, reason)``: can scikit-learn's array API dispatch run here at all?

    Needs scikit-learn >= 1.8 (with its vendored ``array_api_compat``), torch, and SciPy imported
    with ``SCIPY_ARRAY_API=1`` (see the module docstring). ``reason`` says what is missing.
    """
    try:
        import sklearn.utils._array_api as sk_xp
        from sklearn.utils._array_api import move_estimator_to  # noqa: F401  (>= 1.8)
    except ImportError:
        return False, (f"scikit-learn {_sklearn_version()} has no array API estimator conversion; "
                       "install scikit-learn >= 1.8")
    if getattr(sk_xp, "array_api_compat", None) is None:
        return False, "array-api-compat is missing (pip install array-api-compat)"
    env = os.environ.get("SCIPY_ARRAY_API")
    if env not in (None, "1"):
        return False, (f"SCIPY_ARRAY_API is set to {env!r}, not '1'; unset it or export "
                       "SCIPY_ARRAY_API=1 before starting Python")
    if not _scipy_array_api_flag():
        return False, f"scipy was imported before SCIPY_ARRAY_API=1 was set ({ENABLE_HINT})"
    if env is None:  # SciPy has it, but scikit-learn checks the variable itself
        return False, ("SCIPY_ARRAY_API was removed from the environment after scipy was "
                       "imported with it; set it to '1' again")
    return True, ""


def _pipeline_blocker(pipe: Pipeline) -> str:
    """Why ``pipe`` cannot run under array API dispatch ('' when every step supports it)."""
    from sklearn.utils import get_tags

    bad = [f"{type(est).__name__} ({name})" for name, est in pipe.steps
           if est not in ("passthrough", None) and not get_tags(est).array_api_support]
    if not bad:
        return ""
    if isinstance(pipe.steps[-1][1], LinearSVC):
        return "LinearSVC has no array API support in scikit-learn and always runs on the CPU"
    return f"{', '.join(bad)} has no array API support in scikit-learn"


def resolve_compute(device: str = "auto", *, pipeline: Pipeline | None = None) -> Compute:
    """Decide where a grid search runs (see the module docstring).

    ``auto`` uses the array API on the GPU when CUDA is available and ``pipeline`` supports it;
    ``cpu`` is NumPy; ``cuda``/``cuda:N`` and ``cpu-torch`` ask for the array API on that device.
    What cannot run there falls back to NumPy with the reason logged (a warning when the array
    API was asked for, or when only the environment prevents it) and returned.

    Raises:
        ValueError: an unknown device, or ``cuda`` without a usable CUDA device.
    """
    requested = str(device)
    d = requested.strip().lower()
    if d in ("cpu", "numpy"):
        return Compute("numpy", "cpu", requested)
    import torch

    if d == "auto":
        if not torch.cuda.is_available():
            return Compute("numpy", "cpu", requested)
        target = "cuda"
    elif d == "cpu-torch":
        target = "cpu"
    elif d == "cuda" or d.startswith("cuda:"):
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise ValueError(f"Bad device {device!r}; use cuda or cuda:N.") from None
        if not torch.cuda.is_available():
            raise ValueError(f"device={requested!r} but CUDA is not available here; use "
                             "--device cpu (NumPy) or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={requested!r} but there are only "
                             f"{torch.cuda.device_count()} CUDA devices.")
        target = d
    else:
        raise ValueError(f"Unknown training device {device!r}; choose one of "
                         f"{', '.join(TRAIN_DEVICES)} or cuda:N.")
    usable, reason = array_api_status()
    env_problem = not usable
    if usable and pipeline is not None:
        reason = _pipeline_blocker(pipeline)
    if reason:
        explicit = d != "auto"
        (log.warning if explicit or env_problem else log.info)(
            "model selection runs with NumPy on the CPU, not the array API on %s: %s",
            target, reason)
        return Compute("numpy", "cpu", requested, reason)
    return Compute("array-api", str(torch.device(target)), requested)


def _fit_numpy(search: GridSearchCV, X: np.ndarray, y: np.ndarray, limit: int | None) -> None:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        search.fit(X, y)


def _fit_array_api(search: GridSearchCV, X: np.ndarray, y: np.ndarray, device: str,
                   limit: int | None) -> None:
    """Fit ``search`` on torch tensors under array API dispatch; leaves NumPy estimators."""
    import sklearn
    import torch
    from sklearn.utils._array_api import move_estimator_to
    from threadpoolctl import threadpool_limits

    dev = torch.device(device)
    old_threads = torch.get_num_threads()
    try:
        if dev.type == "cpu" and limit:
            torch.set_num_threads(limit)
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(dev)
        yt = torch.from_numpy(np.ascontiguousarray(y)).to(dev)
        # n_jobs=1: the tensors stay in this process, whatever joblib backend is active
        search.set_params(n_jobs=1)
        with threadpool_limits(limits=limit), sklearn.config_context(array_api_dispatch=True):
            search.fit(Xt, yt)
        # a model file must not hold torch (or CUDA) tensors: every fitted array -> NumPy
        search.best_estimator_ = move_estimator_to(search.best_estimator_, np, "cpu")
    finally:
        torch.set_num_threads(old_threads)


def _fit_search(search: GridSearchCV, X: np.ndarray, y: np.ndarray, *,
                threads: int | None = None, compute: Compute | None = None) -> Compute:
    """The one place where estimators are fitted: NumPy, or the array API on torch tensors.

    ``threads`` limits BLAS/OpenMP (and torch CPU) threads for the duration of the fit (restored
    afterwards). Returns the :class:`Compute` actually used (an array API fit that fails is
    redone with NumPy, with the reason recorded).
    """
    compute = compute or Compute("numpy", "cpu", "cpu")
    limit = threads if threads is not None else (1 if X.size <= SMALL_FIT_VALUES else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if compute.array_api:
            n_jobs = search.n_jobs
            try:
                _fit_array_api(search, X, y, compute.device, limit)
            except Exception as e:  # noqa: BLE001 - any failure: the NumPy path is the reference
                import torch

                if isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                    why = f"the codes do not fit in {compute.device} memory"
                else:
                    why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
                log.warning("array API training on %s failed (%s); training again with NumPy "
                            "on the CPU", compute.device, why)
                compute = Compute("numpy", "cpu", compute.requested,
                                  f"array API fit failed: {why}")
                search.set_params(n_jobs=n_jobs)
                caught.clear()
                _fit_numpy(search, X, y, limit)
            finally:
                search.set_params(n_jobs=n_jobs)
        else:
            _fit_numpy(search, X, y, limit)
    n_conv = 0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            n_conv += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if n_conv:
        log.warning("%d fits stopped at max_iter before converging (usually at the largest C "
                    "values); raise --max-iter if the chosen C is among them", n_conv)
    return compute


def fit_codes(X: np.ndarray, y: np.ndarray, *, classes: Sequence[str] | None = None,
              model: str = "logreg", c_grid: str | Sequence[float] | None = None, cv: int = 5,
              n_jobs: int | None = None, class_weight: str | None = None, l2: bool = False,
              standardize: bool = True, pca: int | float | None = None,
              scoring: str = "accuracy", max_iter: int = 1000, seed: int = 0,
              threads: int | None = None, device: str = "auto"
              ) -> tuple[Pipeline, dict[str, Any]]:
    """Choose C by stratified k-fold grid search and refit on all of ``X, y``.

    Args:
        X: (N, D) float codes.  y: (N,) int labels (class indices).
        classes: class names (only for messages).
        n_jobs: parallel fits, through joblib: ``None`` lets an active joblib backend (e.g.
            ``joblib.parallel_config(backend="dask")``) decide, else runs them one by one.
        threads: BLAS/OpenMP threads during the fit (restored afterwards); None = 1 for small
            problems (up to :data:`SMALL_FIT_VALUES` values), else the library default.
        device: where the search runs: ``auto`` (the GPU through scikit-learn's array API when
            CUDA is present, else NumPy), ``cpu`` (NumPy), ``cuda``/``cuda:N``, or ``cpu-torch``
            (the array API path on CPU torch tensors). LinearSVC always runs with NumPy. See the
            module docstring; ``selection["compute"]`` records what was used.
        Other arguments: see :func:`build_pipeline` and :func:`parse_c_grid`; ``cv`` folds are
        reduced automatically for small classes (see :func:`resolve_cv`).

    Returns:
        ``(fitted pipeline, selection)`` where ``selection`` records the grid, the mean/std CV
        score per C, the chosen C, fold count and timings (JSON-serialisable).
    """
    X = np.asarray(X)
    if X.dtype == np.float16:  # float16 stores: compute in float32 on both paths (lossless)
        X = X.astype(np.float32)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (N, D) with N = len(y); got X {X.shape}, y {y.shape}.")
    if not np.all(np.isfinite(X)):
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise ValueError(f"{bad} rows of the codes hold NaN or inf values; re-extract them "
                         "(fp16 overflow? try --precision fp32).")
    grid = parse_c_grid(c_grid)
    folds = resolve_cv(y, cv, classes=classes)
    if pca is not None and not isinstance(pca, float):
        limit = min(X.shape[1], X.shape[0] - X.shape[0] // folds)
        if pca > limit:
            raise ValueError(f"pca={pca} components is more than a training fold allows "
                             f"(min(features, rows per fold) = {limit}); use --pca {limit} or "
                             "less, or a variance fraction such as 0.95.")
    pipe = build_pipeline(model=model, l2=l2, standardize=standardize, pca=pca,
                          class_weight=class_weight, max_iter=max_iter, random_state=seed)
    compute = resolve_compute(device, pipeline=pipe)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(pipe, {"clf__C": grid.tolist()}, scoring=scoring, cv=splitter,
                          n_jobs=n_jobs, refit=True, error_score="raise")
    t0 = time.perf_counter()
    compute = _fit_search(search, X, y, threads=threads, compute=compute)
    seconds = time.perf_counter() - t0
    res = search.cv_results_
    Cs = [float(c) for c in res["param_clf__C"]]
    order = np.argsort(Cs)
    selection = {
        "model": model, "scoring": scoring, "cv": folds, "cv_requested": int(cv), "seed": seed,
        "c_grid": [Cs[i] for i in order],
        "cv_mean": [float(res["mean_test_score"][i]) for i in order],
        "cv_std": [float(res["std_test_score"][i]) for i in order],
        "best_C": float(search.best_params_["clf__C"]), "best_cv_score": float(search.best_score_),
        "class_weight": class_weight, "l2": l2, "standardize": standardize, "pca": pca,
        "max_iter": max_iter, "n_jobs": n_jobs, "steps": [n for n, _ in pipe.steps],
        "n_train": int(X.shape[0]), "n_features": int(X.shape[1]),
        "compute": {**compute.to_dict(), "dtype": str(X.dtype)},
        "train_time_s": round(seconds, 3), "refit_time_s": round(float(search.refit_time_), 3),
    }
    if len(grid) > 2 and selection["best_C"] in (grid[0], grid[-1]):
        side = "smallest" if selection["best_C"] == grid[0] else "largest"
        selection["c_at_grid_edge"] = side
        log.warning("the chosen C (%.3g) is the %s value of the grid; the best C may lie beyond "
                    "it: widen the grid (e.g. --c-grid full)", selection["best_C"], side)
    log.info("%s on %d x %d: best C %.3g, CV %s %.4f (%d folds, %d C values, %.1f s, %s)",
             model, X.shape[0], X.shape[1], selection["best_C"], scoring,
             selection["best_cv_score"], folds, len(grid), seconds, compute.describe())
    return search.best_estimator_, selection


# ------------------------------------------------------------------------------------------------
# The model file


@dataclass
class TrainedModel:
    """A fitted pipeline bound to the provenance of the codes it was trained on.

    Attributes:
        pipeline: the fitted sklearn pipeline (predicts class indices into ``classes``).
        classes: class names.
        layer: the layer whose codes it reads.
        provenance: backbone, weights id + sha256, pooling, preprocessing, input size, layer info
            of the training codes (checked by :meth:`check_compatible`).
        split: how training rows were chosen (``{"kind": "all"|"holdout", ...}``).
        selection: the model-selection record (see :func:`fit_codes`).
        train_paths: absolute paths of the training images (never evaluated on).
        train_labels: their class indices (lets a raw-pixel baseline be trained on the same rows).
    """

    pipeline: Pipeline
    classes: list[str]
    layer: str
    provenance: dict[str, Any]
    split: dict[str, Any]
    selection: dict[str, Any]
    train_paths: list[str] = field(default_factory=list, repr=False)
    train_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    store: str = ""
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.selection["n_features"])

    @property
    def kind(self) -> str:
        return str(self.selection["model"])

    @property
    def score_kind(self) -> str:
        """``probability`` (logistic regression) or ``score`` (LinearSVC decision value)."""
        return "probability" if hasattr(self.pipeline, "predict_proba") and \
            self.kind == "logreg" else "score"

    def describe(self) -> str:
        p = self.provenance
        return (f"{self.kind} on {p.get('backbone')}/{self.layer} codes ({p.get('weights')}, "
                f"{p.get('input_size')} px, {len(self.classes)} classes)")

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted class index (N,), score matrix (N, C))``: probabilities for logreg,
        decision values for LinearSVC; columns follow ``classes``."""
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"Codes have shape {X.shape}; the model expects (N, "
                             f"{self.n_features}) {self.layer} codes.")
        est_classes = np.asarray(self.pipeline.classes_)
        if self.score_kind == "probability":
            s = self.pipeline.predict_proba(X)
        else:
            s = self.pipeline.decision_function(X)
            if s.ndim == 1:
                s = np.stack([-s, s], axis=1)
        full = np.full((X.shape[0], len(self.classes)), -np.inf if self.score_kind == "score"
                       else 0.0)
        full[:, est_classes] = s
        return est_classes[np.argmax(s, axis=1)], full

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names for codes ``X`` (N, D)."""
        idx, _ = self.scores(X)
        return np.asarray(self.classes, dtype=object)[idx]

    # --- compatibility -------------------------------------------------------------------------

    def binding(self) -> dict[str, Any]:
        """The fields a source of codes must share with the training codes."""
        p = self.provenance
        return {"backbone": p.get("backbone"), "weights": _weights_identity(p),
                "layer": self.layer, "pooling": _layer_pooling(p, self.layer),
                "preprocessing": p.get("preprocessing")}

    def check_compatible(self, provenance: Mapping[str, Any], *,
                         layers: Sequence[str] | None = None, dim: int | None = None,
                         what: str = "these codes") -> None:
        """Raise :class:`ModelMismatchError` naming every field where ``provenance`` (of a store
        or a :class:`~cnncodes.CodeExtractor`) differs from the training codes."""
        mine = self.binding()
        layers = list(layers if layers is not None else provenance.get("layers", []))
        diffs = []
        for f, want in mine.items():
            if f == "layer":
                if self.layer not in layers:
                    diffs.append(f"layer: model reads {self.layer!r}, {what} hold "
                                 f"{', '.join(map(repr, layers)) or 'none'}")
                continue
            have = (_weights_identity(provenance) if f == "weights"
                    else _layer_pooling(provenance, self.layer) if f == "pooling"
                    else provenance.get(f))
            if canonical(have) != canonical(want):
                diffs.append(f"{f}: model has {_show(want)}, {what} have {_show(have)}")
        if not diffs and dim is not None and dim != self.n_features:
            diffs.append(f"dimension: model expects {self.n_features}-d {self.layer} codes, "
                         f"{what} have {dim}-d")
        if diffs:
            raise ModelMismatchError(
                f"{what} do not match the model ({self.describe()}): " + "; ".join(diffs)
                + f". Extract the images with the model's settings ({self.extract_hint()}) or "
                "use `cnncodes predict MODEL IMAGES`, which does that for you.")

    def extract_hint(self) -> str:
        p = self.provenance
        return (f"cnncodes extract IMAGES -o NEW.h5 --backbone {p.get('backbone')} --weights "
                f"{weights_argument(p)} --layers {self.layer} --pooling {p.get('pooling')} "
                f"--input-size {p.get('input_size')}")

    # --- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "pipeline": self.pipeline, "classes": list(self.classes), "layer": self.layer,
            "provenance": dict(self.provenance), "split": dict(self.split),
            "selection": dict(self.selection), "train_paths": list(self.train_paths),
            "train_labels": np.asarray(self.train_labels, np.int64), "store": self.store,
            "created": self.created, "versions": {k: str(v) for k, v in self.versions.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "model") -> TrainedModel:
        if not isinstance(d, Mapping) or d.get("format") != MODEL_FORMAT:
            raise ValueError(f"{source} is not a cnncodes model file (no 'format': "
                             f"'{MODEL_FORMAT}' entry); make one with `cnncodes train`.")
        if int(d.get("format_version", -1)) > MODEL_FORMAT_VERSION:
            raise ValueError(f"{source} has model format {d.get('format_version')}, newer than "
                             f"this cnncodes ({MODEL_FORMAT_VERSION}); upgrade cnncodes.")
        keys = ("pipeline", "classes", "layer", "provenance", "split", "selection", "train_paths",
                "train_labels", "store", "created", "versions")
        return cls(**{k: d[k] for k in keys if k in d})


def save_model(model: TrainedModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as a joblib file holding a plain dict (see :meth:`TrainedModel.to_dict`).

    The file is written to a temporary name and moved into place atomically.
    """
    import joblib

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Model path {path} is a folder; pass a file name such as "
                         f"{path / 'model.joblib'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        joblib.dump(model.to_dict(), tmp)
    return path


def load_model(path: str | os.PathLike | TrainedModel) -> TrainedModel:
    """Load a model file written by :func:`save_model`.

    .. warning:: joblib/pickle files execute code while loading. Load only model files you made
       or that come from a trusted source.

    Raises:
        FileNotFoundError, ValueError: missing file, or not a cnncodes model file.
    """
    if isinstance(path, TrainedModel):
        return path
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}; train one with `cnncodes train "
                                "CODES.h5 -o model.joblib`.")
    try:
        obj = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"Cannot read model file {path}: {type(e).__name__}: {e}") from e
    return TrainedModel.from_dict(obj, source=os.fspath(path))


def store_provenance(store: FeatureStore) -> dict[str, Any]:
    """A store's provenance with ``layer_info`` (node, kind, pooling per layer) filled in from
    the per-layer dataset attributes."""
    info = store.info()
    prov = dict(info["provenance"])
    prov["layer_info"] = {k: {a: v[a] for a in ("node", "kind", "depth", "pooling") if a in v}
                          for k, v in info["layers"].items()}
    prov["dims"] = {k: int(v["dim"]) for k, v in info["layers"].items()}
    return prov


def _weights_identity(prov: Mapping[str, Any]) -> str:
    """The checksum when known (a file moved elsewhere is the same weights), else the id."""
    sha = prov.get("weights_sha256") or ""
    return f"sha256:{sha}" if sha else str(prov.get("weights"))


def _layer_pooling(prov: Mapping[str, Any], layer: str) -> Any:
    info = (prov.get("layer_info") or {}).get(layer) or {}
    return info.get("pooling", prov.get("pooling"))


def _show(v: Any) -> str:
    import json

    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) < 160 else s[:157] + "..."


def weights_argument(prov: Mapping[str, Any]) -> str:
    """The ``weights=`` value that reproduces ``prov["weights"]`` (``IMAGENET1K_V1``, a path...)."""
    wid = str(prov.get("weights", "auto"))
    if wid.startswith("file:"):
        return wid[len("file:"):]
    if wid == "random":
        return "random"
    return wid.split(".", 1)[1] if "." in wid else wid


# ------------------------------------------------------------------------------------------------
# Training and evaluation on stores


def _as_store(store: str | os.PathLike | FeatureStore) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def resolve_layer(store: FeatureStore, layer: str | None) -> str:
    """``layer`` checked against the store; None -> the only layer, else the default layer."""
    layers = store.layers
    if layer is None:
        if len(layers) == 1:
            return layers[0]
        default = store.provenance.get("default_layer")
        return default if default in layers else layers[-1]
    if "," in layer:
        raise ValueError(f"A classifier reads one layer; got {layer!r}. Pick one of "
                         f"{', '.join(layers)}.")
    if layer not in layers:
        raise ValueError(f"Layer {layer!r} is not in {store.path}; it holds {', '.join(layers)}. "
                         f"Extract it with --layers {layer}.")
    return layer


def _abs_paths(store: FeatureStore) -> list[str]:
    return [os.path.normpath(os.fspath(p)) for p in store.abspaths()]


def train(store: str | os.PathLike | FeatureStore, *, layer: str | None = None,
          model: str = "logreg", c_grid: str | Sequence[float] | None = None, cv: int = 5,
          n_jobs: int | None = None, class_weight: str | None = None, l2: bool = False,
          standardize: bool = True, pca: int | float | None = None, scoring: str = "accuracy",
          max_iter: int = 1000, holdout: float = 0.0, seed: int = 0,
          device: str = "auto", threads: int | None = None,
          holdout_paths: Collection[str] | None = None) -> TrainedModel:
    """Fit a classifier on the labelled codes of one layer of a store.

    Args:
        store: a code store (path or :class:`FeatureStore`).
        layer: layer name (default the store's only/default layer).
        holdout: fraction of each class held out (seeded by ``seed``) and left out of training;
            :func:`evaluate` on the same store then scores exactly those rows. 0 = train on all.
        holdout_paths: hold out exactly the rows whose stored path (as in ``store.paths``) is
            in this collection instead (a split made on the source files before extraction, as
            :func:`baseline` does for ``layer="auto"``); ``holdout`` and ``seed`` are then only
            recorded.
        n_jobs: parallel CV fits through joblib (``None``: an active joblib backend, e.g. dask,
            decides; see the module docstring).
        device: ``auto`` (GPU through scikit-learn's array API when CUDA is present), ``cpu``
            (NumPy), ``cuda``/``cuda:N`` or ``cpu-torch``; LinearSVC always runs on the CPU.
        Other arguments: see :func:`fit_codes`.

    Returns:
        A :class:`TrainedModel` (save it with :func:`save_model`).

    Raises:
        ValueError: no labelled rows, a single class, a class too small for cross-validation.
    """
    st = _as_store(store)
    name = resolve_layer(st, layer)
    X, y = st.load(name)
    paths = np.asarray(_abs_paths(st), dtype=object)
    store_classes = st.classes
    labelled = np.flatnonzero(y >= 0)
    if labelled.size == 0:
        raise ValueError(f"{st.path} has no labelled rows (it was extracted from a flat folder or "
                         "an unlabelled list); extract a folder of class folders to train.")
    if labelled.size < len(y):
        log.info("%s: ignoring %d unlabelled rows", st.path, len(y) - labelled.size)
    present = np.unique(y[labelled])
    classes = [store_classes[i] for i in present]
    yl = np.searchsorted(present, y[labelled])
    split: dict[str, Any] = {"kind": "all", "store": os.fspath(st.path), "n_train": int(len(yl))}
    rows = np.arange(len(yl))
    if holdout_paths is not None:
        held = set(holdout_paths)
        is_test = np.array([p in held for p in st.paths[labelled].tolist()], bool)
        tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        rows = tr
        split = {"kind": "holdout", "store": os.fspath(st.path), "test_size": float(holdout),
                 "seed": int(seed), "n_train": int(len(tr)), "n_test": int(len(te)),
                 "made_on": "source files"}
        log.info("held out %d of %d rows for testing (split of the source files)", len(te),
                 len(yl))
    elif holdout:
        tr, te = stratified_holdout(yl, test_size=holdout, seed=seed)
        rows = tr
        split = {"kind": "holdout", "store": os.fspath(st.path), "test_size": float(holdout),
                 "seed": int(seed), "n_train": int(len(tr)), "n_test": int(len(te))}
        log.info("held out %d of %d rows for testing (stratified, seed %d)", len(te), len(yl),
                 seed)
    Xtr, ytr = X[labelled][rows], yl[rows]
    pipe, selection = fit_codes(Xtr, ytr, classes=classes, model=model, c_grid=c_grid, cv=cv,
                                n_jobs=n_jobs, class_weight=class_weight, l2=l2,
                                standardize=standardize, pca=pca, scoring=scoring,
                                max_iter=max_iter, seed=seed, threads=threads, device=device)
    prov = store_provenance(st)
    bound = {k: prov[k] for k in _COPIED_FIELDS if k in prov}
    bound["layers"] = [name]
    bound["layer_info"] = {name: prov["layer_info"].get(name, {})}
    bound["store_layers"] = list(prov.get("layers", []))
    from .._runtime import versions

    return TrainedModel(
        pipeline=pipe, classes=classes, layer=name, provenance=bound, split=split,
        selection=selection, train_paths=paths[labelled][rows].tolist(),
        train_labels=ytr.astype(np.int64), store=os.fspath(st.path),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # plain str: torch.__version__ is a TorchVersion, whose pickle would import torch
        versions={k: str(v) for k, v in {**versions(), "scikit-learn": _sklearn_version(),
                                          "cnncodes": __version__}.items()})


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


@dataclass
class Evaluation:
    """Scores of a model on labelled codes it was not trained on."""

    source: str
    layer: str
    classes: list[str]
    paths: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, Any]
    excluded_training_rows: int = 0
    unlabelled_rows: int = 0

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def balanced_accuracy(self) -> float:
        return float(self.metrics["balanced_accuracy"])

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "layer": self.layer, "n": int(len(self.y_true)),
                "excluded_training_rows": self.excluded_training_rows,
                "unlabelled_rows": self.unlabelled_rows, **self.metrics}


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray,
                      classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix."""
    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = np.isin(labels, y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes absent from y_true
        bal = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(bal),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes) if present[i] or s[i]],
        "macro_f1": float(np.mean(f[present])) if present.any() else 0.0,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def _map_labels(y: np.ndarray, source_classes: Sequence[str], model_classes: Sequence[str],
                what: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(model_classes)}
    used = {source_classes[i] for i in np.unique(y) if i >= 0}
    unknown = sorted(used - set(index))
    if unknown:
        raise ValueError(f"{what} has labels the model was not trained on: {unknown[:10]}; the "
                         f"model knows {list(model_classes)[:20]}. Use `cnncodes predict` for "
                         "images of unknown classes.")
    lut = np.array([index.get(c, -1) for c in source_classes] + [-1], np.int64)
    return lut[y]  # -1 (unlabelled) indexes the trailing -1


def evaluate(model: TrainedModel | str | os.PathLike, store: str | os.PathLike | FeatureStore,
             *, layer: str | None = None) -> Evaluation:
    """Score ``model`` on the labelled rows of ``store`` that it was not trained on.

    Rows whose image path was used for training (e.g. the same store after ``train(...,
    holdout=0.2)``: what remains is the held-out part) are excluded and counted.

    Raises:
        ModelMismatchError: the store's codes come from another backbone/weights/layer/pooling/
            preprocessing (the field is named).
        ValueError: no labelled rows left to evaluate, or labels the model does not know.
    """
    m = load_model(model)
    st = _as_store(store)
    sp = store_provenance(st)
    m.check_compatible(sp, dim=sp["dims"].get(m.layer), what=f"the codes in {st.path}")
    name = layer or m.layer
    if name != m.layer:
        raise ValueError(f"The model reads layer {m.layer!r}; got layer={layer!r}.")
    X, y = st.load(name)
    paths = np.asarray(_abs_paths(st), dtype=object)
    y = _map_labels(y, st.classes, m.classes, os.fspath(st.path))
    labelled = y >= 0
    trained = set(m.train_paths)
    seen = np.array([p in trained for p in paths], bool) if trained else np.zeros(len(y), bool)
    keep = labelled & ~seen
    n_seen = int((labelled & seen).sum())
    own_holdout = (m.split.get("kind") == "holdout"
                   and os.path.abspath(m.split.get("store", "")) == os.path.abspath(st.path))
    if n_seen:
        (log.info if own_holdout else log.warning)(
            "%s: %d rows were used to train the model and are not evaluated", st.path, n_seen)
    if not keep.any():
        raise ValueError(f"{st.path} has no labelled rows the model was not trained on "
                         f"({int(labelled.sum())} labelled, {n_seen} used in training); evaluate "
                         "on a separate test store, or train with --holdout.")
    pred, _ = m.scores(X[keep])
    metrics = score_predictions(y[keep], pred, m.classes)
    log.info("%s: accuracy %.4f, balanced accuracy %.4f on %d rows", st.path,
             metrics["accuracy"], metrics["balanced_accuracy"], int(keep.sum()))
    return Evaluation(os.fspath(st.path), name, list(m.classes), paths[keep].tolist(), y[keep],
                      pred, metrics, excluded_training_rows=n_seen,
                      unlabelled_rows=int((~labelled).sum()))


# ------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Predictions:
    """Predicted labels for a set of images (or store rows); failures are listed, not fatal."""

    paths: list[str]
    labels: list[str]
    scores: np.ndarray  # score of the predicted label: probability or decision value
    score_kind: str
    all_scores: np.ndarray  # (N, C) per class
    classes: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    true_labels: list[str] | None = None
    model: str = ""  # what predicted: TrainedModel.describe() or the fine-tuned network

    def to_csv(self, path: str | os.PathLike) -> Path:
        """``path,label,<probability|score>,error`` rows; unreadable images have an error and no
        label. A ``true_label`` column is added when the source was labelled."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = ["path", "label", self.score_kind, "error"]
        if self.true_labels is not None:
            header.insert(2, "true_label")
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, p in enumerate(self.paths):
                row = [p, self.labels[i], f"{self.scores[i]:.6g}", ""]
                if self.true_labels is not None:
                    row.insert(2, self.true_labels[i])
                w.writerow(row)
            for p, reason in self.failures:
                row = [p, "", "", reason]
                if self.true_labels is not None:
                    row.insert(2, "")
                w.writerow(row)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.paths), "failures": len(self.failures),
                "counts": {c: self.labels.count(c) for c in self.classes}}


def model_extractor(model: TrainedModel, *, device: str = "auto", precision: str = "auto") -> Any:
    """A :class:`~cnncodes.CodeExtractor` configured exactly like the model's training codes.

    Raises:
        ModelMismatchError: the weights file changed (checksum) or the preprocessing of the
            rebuilt extractor differs from the recorded one.
    """
    from ..codes.extractor import CodeExtractor

    p = model.provenance
    ext = CodeExtractor(p["backbone"], weights=weights_argument(p), layers=[model.layer],
                        pooling=p.get("pooling", "avg"), input_size=p.get("input_size"),
                        device=device, precision=precision)
    model.check_compatible(ext.provenance(), layers=ext.layers,
                           what=f"the codes of the rebuilt {p['backbone']} extractor")
    return ext


def predict(model: TrainedModel | str | os.PathLike,
            source: str | os.PathLike | Sequence[str] | ImageSource | FeatureStore, *,
            batch_size: int = 64, num_workers: int | None = None, device: str = "auto",
            precision: str = "auto", threads: int | None = None,
            max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = False) -> Predictions:
    """Predict labels for images, extracting their codes with the model's own backbone, weights,
    layer, pooling and preprocessing (the extraction code path of ``extract``).

    ``source`` may also be a code store (``.h5``), which is checked against the model's
    provenance and read instead of extracting. Unreadable images are listed in
    ``Predictions.failures``; they do not stop the run.

    ``model`` may also be a fine-tuned ``RUN/model.pt`` written by :func:`cnncodes.finetune`: the
    images then go through that network (:func:`cnncodes.finetune.predict_images`) and the result
    has the same form (``score_kind`` ``probability``).
    """
    if _is_finetuned_file(model):
        return _predict_finetuned(model, source, batch_size=batch_size,  # type: ignore[arg-type]
                                  num_workers=num_workers, device=device, precision=precision,
                                  threads=threads, max_pixels=max_pixels, progress=progress)
    m = load_model(model)
    true: list[str] | None = None
    if _is_store_source(source):
        st = _as_store(source)  # type: ignore[arg-type]
        sp = store_provenance(st)
        m.check_compatible(sp, dim=sp["dims"].get(m.layer), what=f"the codes in {st.path}")
        X, y = st.load(m.layer)
        paths = _abs_paths(st)
        failures = [(os.path.normpath(os.fspath(st.root / p)), r) for p, r in st.failures]
        if (y >= 0).any():
            cls = st.classes
            true = [cls[i] if i >= 0 else "" for i in y]
    else:
        from ..codes.extraction import extract_arrays

        ext = model_extractor(m, device=device, precision=precision)
        codes = extract_arrays(source, extractor=ext, batch_size=batch_size,
                               num_workers=num_workers, threads=threads, max_pixels=max_pixels,
                               progress=progress)
        X = codes.codes[m.layer]
        root = Path(codes.provenance.get("root", "."))
        paths = [os.path.normpath(os.fspath(root / p)) for p in codes.paths]
        failures = [(os.path.normpath(os.fspath(root / p)), r) for p, r in codes.failures]
        if len(codes.labels) and (codes.labels >= 0).any():
            true = [codes.classes[i] if i >= 0 else "" for i in codes.labels]
    if len(paths):
        idx, scores = m.scores(X)
    else:
        idx, scores = np.zeros(0, np.int64), np.zeros((0, len(m.classes)))
    labels = [m.classes[i] for i in idx]
    best = scores[np.arange(len(idx)), idx] if len(idx) else np.zeros(0)
    if failures:
        log.warning("%d images could not be read and have no prediction", len(failures))
    return Predictions(paths, labels, best, m.score_kind, scores, list(m.classes), failures,
                       true, model=m.describe())


def _is_finetuned_file(model: Any) -> bool:
    """A ``model.pt`` of :func:`cnncodes.finetune` (a torch zip archive), not a joblib model."""
    import zipfile

    if not isinstance(model, (str, os.PathLike)) or not zipfile.is_zipfile(model):
        return False
    from ..finetuning.model_file import is_finetuned_model

    return is_finetuned_model(model)


def _is_store_source(source: Any) -> bool:
    return isinstance(source, FeatureStore) or (
        isinstance(source, (str, os.PathLike)) and Path(source).is_file()
        and Path(source).suffix.lower() in (".h5", ".hdf5"))


def _predict_finetuned(model: str | os.PathLike,
                       source: str | os.PathLike | Sequence[str] | ImageSource | FeatureStore, *,
                       batch_size: int, num_workers: int | None, device: str, precision: str,
                       threads: int | None, max_pixels: int | None,
                       progress: bool) -> Predictions:
    """:func:`predict` for a fine-tuned ``model.pt``: its own network and preprocessing."""
    from ..finetuning.predict import predict_images
    from ..sources.folders import open_source

    if _is_store_source(source):
        raise ValueError(f"{os.fspath(model)} is a fine-tuned network: it predicts from images, "
                         "not from a code store. Pass the images (a folder or a list file).")
    src = open_source(source)  # type: ignore[arg-type]
    res = predict_images(model, src, batch_size=batch_size, device=device, precision=precision,
                         num_workers=num_workers, threads=threads, max_pixels=max_pixels,
                         progress=progress)
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
        log.warning("%d images could not be read and have no prediction", len(failures))
    return Predictions(paths, res.labels, best, "probability", probs, list(res.classes),
                       failures, true, model=desc)


# ------------------------------------------------------------------------------------------------
# Raw-pixel baseline


def raw_pixels(paths: Sequence[str | os.PathLike], *, size: int = 32, grey: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Downscaled raw pixels: shorter side resized to ``size``, centre-cropped, flattened, /255.

    Returns:
        ``(X (N, size*size*channels) float32, ok (N,) bool, failures)``; rows of unreadable
        images are zeros with ``ok`` False.
    """
    from PIL import Image

    from ..errors import DecodeError
    from ..sources.images import load_rgb

    if int(size) < 2:
        raise ValueError(f"Raw-pixel size must be >= 2; got {size}.")
    ch = 1 if grey else 3
    X = np.zeros((len(paths), size * size * ch), np.float32)
    ok = np.zeros(len(paths), bool)
    failures = []
    for i, p in enumerate(paths):
        try:
            img = load_rgb(p, max_pixels=max_pixels)
        except DecodeError as e:
            failures.append((os.fspath(p), str(e)))
            continue
        w, h = img.size
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
    return X, ok, failures


def pixel_baseline(train_paths: Sequence[str], y_train: np.ndarray, test_paths: Sequence[str],
                   y_test: np.ndarray, *, classes: Sequence[str], size: int = 32,
                   grey: bool = False, model: str = "logreg",
                   c_grid: str | Sequence[float] | None = None, cv: int = 5,
                   n_jobs: int | None = None, class_weight: str | None = None,
                   scoring: str = "accuracy", max_iter: int = 1000, seed: int = 0,
                   budget: int | None = RAW_BASELINE_BUDGET,
                   device: str = "auto") -> dict[str, Any]:
    """The same classifier and model selection on downscaled raw pixels of the same images.

    Returns a report row: ``name``, CV record, test ``accuracy``/``balanced_accuracy``; or
    ``{"name": ..., "skipped": reason}`` when it would not be cheap (more than ``budget``
    training values) or the image files are gone.
    """
    ch = 1 if grey else 3
    name = f"raw pixels {size}x{size} {'grey' if grey else 'rgb'}"
    dim = size * size * ch
    if budget is not None and len(train_paths) * dim > budget:
        return {"name": name, "skipped": f"{len(train_paths)} x {dim} values is over the "
                f"raw-baseline budget of {budget}; use a smaller --raw-size"}
    missing = [p for p in list(train_paths)[:1] + list(test_paths)[:1] if not os.path.exists(p)]
    if missing:
        return {"name": name, "skipped": f"image files not found (e.g. {missing[0]})"}
    t0 = time.perf_counter()
    Xtr, oktr, _ = raw_pixels(train_paths, size=size, grey=grey)
    Xte, okte, _ = raw_pixels(test_paths, size=size, grey=grey)
    load_s = time.perf_counter() - t0
    ytr, yte = np.asarray(y_train)[oktr], np.asarray(y_test)[okte]
    pipe, sel = fit_codes(Xtr[oktr], ytr, classes=classes, model=model, c_grid=c_grid, cv=cv,
                          n_jobs=n_jobs, class_weight=class_weight, standardize=True,
                          scoring=scoring, max_iter=max_iter, seed=seed, device=device)
    m = TrainedModel(pipe, list(classes), "pixels", {}, {}, sel)
    pred, _ = m.scores(Xte[okte])
    metrics = score_predictions(yte, pred, classes)
    return {"name": name, "features": dim, "selection": sel, "load_time_s": round(load_s, 3),
            "n_test": int(okte.sum()), **{k: metrics[k] for k in
                                          ("accuracy", "balanced_accuracy", "macro_f1")}}


# ------------------------------------------------------------------------------------------------
# baseline: extract (cached) + train with CV + held-out evaluation + raw-pixel row + report


@dataclass
class BaselineResult:
    """What :func:`baseline` did; ``report`` is the JSON-able report (also written to disk).

    ``advice`` is the evidence of ``layer="auto"`` (else None); ``finetune`` the
    :class:`~cnncodes.finetune.FinetuneResult` of the ``fall_through`` run when it ran.
    """

    model: TrainedModel
    evaluation: Evaluation
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    files: dict[str, Path]
    stores: dict[str, Path]
    failures: list[tuple[str, str]]
    advice: dict[str, Any] | None = None
    finetune: Any = None


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


def extract_cached(source: str | os.PathLike | ImageSource, cache: str | os.PathLike, *,
                   layer: str, backbone: str, **kwargs: Any) -> FeatureStore:
    """``extract`` into ``cache`` but reuse an existing cache that holds ``layer`` among others."""
    from ..codes.extraction import extract

    cache = Path(cache)
    layers: list[str] = [layer]
    if cache.is_file():
        try:
            existing = FeatureStore(cache).layers
        except (ValueError, OSError):
            existing = []
        if layer in existing:
            layers = existing
    res = extract(source, cache, backbone=backbone, layers=layers, **kwargs)
    if res.failed:
        log.warning("%d images of %s could not be read and are left out", len(res.failed),
                    getattr(source, "root", source))
    return FeatureStore(res.path)


def _pick_layer(layer: str | None, *, default: str) -> str:
    """The layer to classify on as asked: ``default`` for None, ``auto`` kept for the advisor."""
    if layer is None:
        return default
    if layer.strip().lower() == "auto":
        return "auto"
    if "," in layer:
        raise ValueError(f"baseline trains on one layer; got {layer!r}. Pass a single layer.")
    return layer


# --- the training rows, for the layer advisor and the fine-tuning fall-through ----------------


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
    from ..sources.folders import open_source

    src = open_source(source)
    labelled = np.flatnonzero(src.labels >= 0)
    if labelled.size == 0:
        raise ValueError(f"{src.root} has no labelled images; baseline needs a folder of class "
                         "folders (or a labelled list).")
    tr, te = stratified_holdout(src.labels[labelled], test_size=holdout, seed=seed)
    return subset_source(src, labelled[tr]), subset_source(src, labelled[te])


def _rows_key(src: ImageSource, split: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the training rows an advice was measured on (for reusing it)."""
    import hashlib

    h = hashlib.sha256()
    for p, y in zip(src.paths, src.labels.tolist(), strict=True):
        if y >= 0:
            h.update(f"{p}\t{src.classes[y]}\n".encode())
    return {"n": int((src.labels >= 0).sum()), "sha256": h.hexdigest()[:16], **split}


def _same_json(a: Any, b: Any) -> bool:
    import json

    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                     default=str)


def advise_layer(train_source: str | os.PathLike | ImageSource, *, backbone: str,
                 weights: str | None, pooling: str, input_size: int | None,
                 budget: str | float | None = "2min", seed: int = 0,
                 thresholds: Any = None, train_key: Mapping[str, Any] | None = None,
                 reuse_from: str | os.PathLike | None = None,
                 **advise_options: Any) -> tuple[str, dict[str, Any], bool]:
    """``(layer, evidence, reused)``: :func:`cnncodes.advise.choose_layer` on the training rows.

    The advice recorded in ``reuse_from`` (a code store) by an earlier run is reused when it was
    measured on the same training rows (``train_key``) with the same thresholds; otherwise the
    advisor runs again (``reuse_from`` is never handed to ``choose_layer``, whose own reuse does
    not know which rows the advice saw). ``evidence`` gets ``train_rows`` = ``train_key``.
    """
    from dataclasses import asdict

    # names read from the module at call time (``cnncodes.advise`` the package attribute is
    # the function; tests may monkeypatch ``cnncodes.advise.choose_layer``)
    from ..advisor.rule import Thresholds
    from ..advisor.run import choose_layer, recorded_advice

    th = thresholds if thresholds is not None else Thresholds()
    if reuse_from is not None and train_key is not None:
        prior = recorded_advice(reuse_from, backbone=backbone, pooling=pooling)
        if (prior is not None and _same_json(prior.get("train_rows"), dict(train_key))
                and _same_json(prior.get("thresholds"), asdict(th))):
            log.info("--layer auto: reusing %s, chosen on the same training rows and recorded "
                     "in %s", prior["layer"], reuse_from)
            return str(prior["layer"]), dict(prior), True
    layer, evidence = choose_layer(train_source, backbone=backbone, weights=weights,
                                       pooling=pooling, input_size=input_size, budget=budget,
                                       reuse_from=None, seed=seed, thresholds=th,
                                       **advise_options)
    evidence = dict(evidence)
    if train_key is not None:
        evidence["train_rows"] = dict(train_key)
    return str(layer), evidence, False


def _record_advice(path: str | os.PathLike, evidence: Mapping[str, Any]) -> bool:
    """Make sure ``path``'s provenance holds ``evidence`` as ``advice``.

    ``extract(..., extra_provenance=...)`` records it whenever it writes the store; a store that
    was already complete (codes cached by an earlier run) is not rewritten by ``extract``, so the
    attribute is set here (the store's ``<name>_json`` attribute convention). Returns whether
    the file was changed.
    """
    from ..codes.store import update_provenance

    return update_provenance(path, {"advice": dict(evidence)})


def size_check(train_source: ImageSource, thresholds: Any = None) -> dict[str, Any]:
    """Is the training part large enough to fine-tune, by advise's size rule?

    Uses :class:`cnncodes.advise.SizeInfo` ``.size_class`` with ``thresholds``
    (:class:`cnncodes.advise.Thresholds`): ``large`` needs a median of ``large_per_class``
    images per class **and** ``large_total`` images.
    """
    from dataclasses import asdict

    from ..advisor.evidence import SizeInfo
    from ..advisor.rule import Thresholds

    th = thresholds if thresholds is not None else Thresholds()
    lab = train_source.labels[train_source.labels >= 0]
    counts = np.bincount(lab, minlength=len(train_source.classes))
    size = SizeInfo(n_images=int(counts.sum()),
                    per_class={c: int(n) for c, n in zip(train_source.classes, counts,
                                                         strict=True) if n > 0})
    cls = size.size_class(th)
    short = []
    if size.median_per_class < th.large_per_class:
        short.append(f"median < {th.large_per_class} per class")
    if size.n_images < th.large_total:
        short.append(f"images < {th.large_total}")
    return {"size_class": cls, "large": cls == "large", "n_images": size.n_images,
            "n_classes": size.n_classes, "median_per_class": size.median_per_class,
            "short_by": short, "thresholds": asdict(th)}


def _finetune_command(parts: Sequence[str], *, backbone: str, weights: str | None,
                      input_size: int | None, out: Path,
                      options: Mapping[str, Any]) -> str:
    import shlex

    from ..advisor.rule import RunSetup

    args = ["cnncodes", "finetune", *parts,
            *RunSetup(backbone=backbone, weights=str(weights) if weights is not None else "auto",
                      input_size=input_size).backbone_args(pooling=False), "-o", os.fspath(out)]
    for k in ("epochs", "head_lr_mult", "freeze"):
        if k in options:
            v = options[k]
            args += [f"--{k.replace('_', '-')}", str(int(v) if float(v).is_integer() else v)]
    return shlex.join(args)


def _ft_balanced_accuracy(rep: Mapping[str, Any]) -> float | None:
    cm = rep.get("confusion_matrix")
    if not cm:
        return None
    cm = np.asarray(cm, float)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else None


def _fall_through_verdict(probe: Mapping[str, Any], ft: Mapping[str, Any]) -> str:
    a, b = probe.get("accuracy"), ft.get("accuracy")
    if b is None:
        return "fine-tuning produced no test accuracy; keep the codes + linear classifier."
    ratio = (ft.get("wall_time_s") or 0.0) / max(probe.get("wall_time_s") or 0.0, 1e-9)
    gain = 100.0 * (b - a)
    if gain > 0:
        return (f"fine-tuning is better by {gain:.1f} points ({b:.4f} vs {a:.4f}) at "
                f"{ratio:.1f}x the linear probe's wall time.")
    return (f"the linear probe is as good or better ({a:.4f} vs {b:.4f}; fine-tuning took "
            f"{ratio:.1f}x its wall time): keep the codes + linear classifier.")


def run_fall_through(train_source: ImageSource, test_source: ImageSource, output: Path, *,
                     backbone: str, weights: str | None, input_size: int | None, seed: int,
                     device: str, precision: str, num_workers: int | None,
                     threads: int | None, max_pixels: int | None, progress: bool,
                     overwrite: bool, command: str | None,
                     options: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Full fine-tuning on exactly the linear probe's rows: its training rows (a seeded
    validation share of them for model selection by epoch) and its test rows.

    Returns ``(row, FinetuneResult or None)``; the run folder is ``output``: an earlier run there
    is continued (an interrupted one resumes exactly) when its options and split are the same,
    else, or with ``overwrite``, started over.
    """
    from ..errors import FinetuneDivergedError
    from ..finetuning.config import make_config
    from ..finetuning.run import finetune
    from ..finetuning.split import make_split

    cfg = make_config(None, backbone=backbone, weights=weights, input_size=input_size,
                      state="full", seed=seed, device=device, precision=precision,
                      num_workers=num_workers, threads=threads, max_pixels=max_pixels,
                      **dict(options))
    split = make_split(train_source, val_fraction=cfg.val_fraction, test_fraction=0.0,
                       seed=cfg.seed, test=test_source)
    had_run = (output / "checkpoint.pt").is_file() and not overwrite
    log.info("fall-through: full fine-tuning of %s on %d train / %d validation / %d test images "
             "(%d epochs) in %s", backbone, len(split.train), len(split.val), len(split.test),
             cfg.epochs, output)
    t0 = time.perf_counter()
    res = None

    def run(fresh: bool) -> Any:
        return finetune(None, output, config=cfg, split=split, resume=not fresh,
                        overwrite=fresh, progress=progress, command=command)

    try:
        try:
            res = run(overwrite)
        except ValueError as e:
            if not had_run:
                raise
            # the folder is this report's: a run made with other options or on another split
            # (another seed or hold-out) does not belong to it any more
            log.warning("%s held a fine-tuning run that cannot be continued here (%s); starting "
                        "it over", output, e)
            res = run(True)
        rep = res.report
        status = res.status
    except FinetuneDivergedError as e:
        import json

        rep = json.loads((output / "report.json").read_text())
        status = "diverged"
        log.warning("%s", e)
    wall = time.perf_counter() - t0
    row = {
        "name": f"fine-tuned {backbone} (full, {rep.get('epochs_run')} "
                f"epoch{'' if rep.get('epochs_run') == 1 else 's'}, {rep.get('input_size')} px)",
        "kind": "finetune", "status": status, "method": "full fine-tuning",
        "accuracy": rep.get("test_accuracy"), "balanced_accuracy": _ft_balanced_accuracy(rep),
        "val_accuracy": rep.get("val_accuracy"), "n_test": (rep.get("split") or {}).get("test"),
        "n_train": len(split.train), "n_val": len(split.val), "epochs": rep.get("epochs_run"),
        "best_epoch": rep.get("best_epoch"), "trainable_params": rep.get("trainable_params"),
        # the run's own time (every epoch, also of an earlier session, + setup and test)
        "wall_time_s": round(float(rep.get("seconds") or wall), 2),
        "this_call_s": round(wall, 2), "run": os.fspath(output),
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k in ("epochs", "batch_size", "optimizer", "lr", "head_lr_mult", "freeze",
                            "val_fraction", "seed")},
    }
    if status == "diverged":
        row["message"] = rep.get("message")
    return row, res


def format_fall_through(report: Mapping[str, Any]) -> str:
    """The ``fall_through`` part of a baseline report as text (empty when there is none)."""
    ft = report.get("fall_through")
    if not ft:
        return ""
    size = ft.get("size", {})
    lines = [f"fall-through: {size.get('n_images')} training images, median "
             f"{size.get('median_per_class', 0):g} per class -> {size.get('size_class')} "
             "(advise's size rule)"]
    if ft.get("status") == "skipped":
        lines.append(f"  {ft['message']}")
        return "\n".join(lines)
    probe, row = ft.get("linear_probe") or {}, ft.get("finetune") or {}
    if ft.get("forced"):
        lines[0] += "; fine-tuning forced"
    names = [str(probe.get("name", "linear probe")), str(row.get("name", "fine-tuning"))]
    w = max(30, *(len(n) for n in names))
    lines.append(f"  {'method':<{w}}  {'test acc':>8}  {'bal acc':>8}  {'wall s':>8}")

    def f(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    for n, r in zip(names, (probe, row), strict=True):
        lines.append(f"  {n:<{w}}  {f(r.get('accuracy')):>8}  "
                     f"{f(r.get('balanced_accuracy')):>8}  {f(r.get('wall_time_s'), '.1f'):>8}")
    lines.append(f"  same split: {row.get('n_train')} train + {row.get('n_val')} validation "
                 f"(fine-tuning) / {probe.get('n_test')} test images; fine-tuning run in "
                 f"{row.get('run')}")
    if row.get("status") == "diverged":
        lines.append(f"  fine-tuning diverged: {row.get('message')}")
    lines.append(f"  verdict: {ft.get('verdict')}")
    return "\n".join(lines)


def _codes_seconds(stores: Mapping[str, FeatureStore]) -> float:
    """Extraction time recorded in the stores' run records (also for codes cached earlier)."""
    total = 0.0
    for st in stores.values():
        for r in st.provenance.get("runs", []) or []:
            total += float(r.get("seconds") or 0.0)
    return total


def baseline(source: str | os.PathLike, *, report: str | os.PathLike | None = "out/baseline",
             cache: str | os.PathLike | None = None, backbone: str = "mobilenet_v2",
             weights: str | None = "auto", layer: str | None = None, pooling: str = "avg",
             input_size: int | None = None, batch_size: int = 64,
             num_workers: int | None = None, device: str = "auto", precision: str = "auto",
             threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             overwrite: bool = False, progress: bool = False, model: str | None = None,
             c_grid: str | Sequence[float] | None = None, cv: int = 5,
             n_jobs: int | None = None, class_weight: str | None = None, l2: bool = False,
             standardize: bool = True, pca: int | float | None = None,
             scoring: str = "accuracy", max_iter: int = 1000, holdout: float = 0.2,
             seed: int = 0, raw_baseline: bool | None = None, raw_size: int = 32,
             raw_grey: bool = False, command: str | None = None,
             budget: str | float | None = "2min", thresholds: Any = None,
             advise_options: Mapping[str, Any] | None = None, fall_through: bool = False,
             force_finetune: bool = False,
             finetune_options: Mapping[str, Any] | None = None) -> BaselineResult:
    """The small-dataset quick baseline in one call.

    1. codes of ``source`` are extracted (cached in ``cache`` or ``report/cache``; existing codes
       are reused), 2. a classifier is chosen by stratified CV on the training rows, 3. it is
       evaluated on held-out rows (a seeded stratified ``holdout`` fraction, or the ``test/``/
       ``val/`` folder when ``source`` holds ``train/`` + ``test/`` class trees), 4. the same
       protocol on raw pixels gives a baseline row (``raw_baseline``: None = when cheap),
       5. the model, ``report.json`` and PNGs are written to ``report``.

    ``device`` applies to the extraction and to the grid search (``auto``: the GPU for both when
    present; ``cpu``: NumPy for the classifier; see :func:`fit_codes`).

    ``layer="auto"``: the layer is chosen by :func:`cnncodes.advise.choose_layer` on the
    training rows only (``train/``, or the training part of the hold-out split, which is then
    made on the source files before extraction: see :func:`holdout_sources`), within ``budget``
    (``advise_options`` go to :func:`cnncodes.advise.advise`, e.g. ``max_images``). Its evidence
    is ``report["advice"]`` and the stores' provenance ``advice``; an advice recorded in the
    cache for the same training rows and thresholds is reused. When ``model`` is None the
    advised classifier is used (``logreg`` without advice).

    ``fall_through=True``: after the linear probe, when the training rows are ``large`` by
    advise's size rule (``thresholds``, a :class:`cnncodes.advise.Thresholds`; or always with
    ``force_finetune``), the backbone is fine-tuned end to end (state ``full``) on the same rows
    and tested on the same test rows, in ``report/finetune`` (``finetune_options`` are
    :class:`cnncodes.finetune.FinetuneConfig` fields, e.g. ``epochs``; with advice, its
    ``head_lr_mult``/``freeze`` policy is the default). ``report["fall_through"]`` compares
    accuracy and wall time; when the data is not large, it says why and gives the command.

    Raises:
        ValueError, StoreMismatchError: bad options, a cache made with other settings (pass
            ``overwrite=True`` or another ``cache``), classes too small to split.
    """
    from ..backbones.registry import get_spec
    from ..report.files import build_report, write_report
    from ..sources.folders import open_source

    t0 = time.perf_counter()
    if report is None and cache is None:
        raise ValueError("baseline needs a report folder or a cache folder for the codes.")
    if fall_through and report is None:
        raise ValueError("fall_through needs a report folder (the fine-tuning run goes into "
                         "REPORT/finetune).")
    if model is not None and model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    split = find_split(source)
    cache_dir = Path(cache) if cache is not None else Path(report or ".") / "cache"
    name = _pick_layer(layer, default=get_spec(backbone).default_layer)
    single = "all" in split
    holdout_paths: set[str] | None = None
    advice: dict[str, Any] | None = None
    advice_use: dict[str, Any] | None = None
    if name == "auto":
        t_adv = time.perf_counter()
        if single and holdout:
            adv_src, held = holdout_sources(split["all"], holdout=holdout, seed=seed)
            holdout_paths = set(held.paths)
            rows_split = {"split": "holdout", "test_size": float(holdout), "seed": int(seed)}
            adv_arg: str | os.PathLike | ImageSource = adv_src
        else:
            adv_arg = split["all"] if single else split["train"]
            adv_src = open_source(adv_arg)
            rows_split = {"split": "all" if single else "train/"}
        key = _rows_key(adv_src, rows_split)
        reuse = None if overwrite else cache_dir / ("codes.h5" if single else "train.h5")
        name, advice, reused = advise_layer(
            adv_arg, backbone=backbone, weights=weights, pooling=pooling, input_size=input_size,
            budget=budget, seed=seed, thresholds=thresholds, train_key=key, reuse_from=reuse,
            **{"batch_size": batch_size, "num_workers": num_workers, "device": device,
               "precision": precision, "threads": threads,
               "max_pixels": max_pixels or DEFAULT_MAX_PIXELS, "progress": progress,
               **dict(advise_options or {})})
        advice_use = {"layer": name, "reused_from_cache": reused, "train_rows": int(key["n"]),
                      "seconds": round(time.perf_counter() - t_adv, 2)}
        log.info("--layer auto -> %s: %s", name, advice.get("explanation"))
    model_name = model or "logreg"
    if advice is not None and advice_use is not None:
        advised = advice.get("classifier")
        if model is None and advised in MODELS:
            model_name = advised
        advice_use.update(model=model_name, model_source="advice" if model is None and
                          advised in MODELS else ("given" if model else "default"))
    ex_kw = dict(weights=weights, pooling=pooling, input_size=input_size,
                 batch_size=batch_size, num_workers=num_workers, device=device,
                 precision=precision, threads=threads, overwrite=overwrite,
                 max_pixels=max_pixels, progress=progress, command=command)
    if advice is not None:
        ex_kw["extra_provenance"] = {"advice": advice}
    t_codes = time.perf_counter()
    try:
        stores = {k: extract_cached(src, cache_dir / f"{'codes' if k == 'all' else k}.h5",
                                    layer=name, backbone=backbone, **ex_kw)
                  for k, src in split.items()}
    except StoreMismatchError as e:
        if advice is None:
            raise
        raise StoreMismatchError(f"--layer auto chose {name}, but the cached codes cannot take "
                                 f"it: {e}") from e
    if advice is not None:
        for st in stores.values():
            _record_advice(st.path, advice)
    failures = [(os.path.normpath(os.fspath(st.root / f)), r) for st in stores.values()
                for f, r in st.failures]
    train_store = stores.get("train", stores.get("all"))
    test_store = stores.get("test", train_store)
    assert train_store is not None and test_store is not None
    extract_now = time.perf_counter() - t_codes
    # the same device for the grid search: cpu keeps everything on the CPU, auto/cuda use the GPU
    fit_kw = dict(model=model_name, c_grid=c_grid, cv=cv, n_jobs=n_jobs,
                  class_weight=class_weight, scoring=scoring, max_iter=max_iter, seed=seed,
                  device=device)
    t_fit = time.perf_counter()
    trained = train(train_store, layer=name, l2=l2, standardize=standardize, pca=pca,
                    holdout=holdout if single else 0.0, holdout_paths=holdout_paths, **fit_kw)
    if not single:
        trained.split.update({"kind": "predefined", "train": os.fspath(split["train"]),
                              "test": os.fspath(split["test"])})
    evaluation = evaluate(trained, test_store)
    fit_s = time.perf_counter() - t_fit
    trained.split["n_test"] = int(len(evaluation.y_true))
    p = trained.provenance
    codes_s = max(_codes_seconds(stores), 0.0)
    rows = [{"name": f"{p['backbone']} {name} codes ({p.get('input_size')} px)",
             "features": trained.n_features, "selection": trained.selection,
             "n_test": len(evaluation.y_true),
             **{k: evaluation.metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
             # codes (extraction time recorded in the stores, also when cached) + CV + test
             "wall_time_s": round(codes_s + fit_s, 2), "extract_s": round(codes_s, 2),
             "extract_this_run_s": round(extract_now, 2), "fit_and_test_s": round(fit_s, 2)}]
    n_raw = len(trained.train_paths) * raw_size * raw_size * (1 if raw_grey else 3)
    if raw_baseline or (raw_baseline is None and n_raw <= RAW_BASELINE_BUDGET):
        rows.append(pixel_baseline(trained.train_paths, trained.train_labels, evaluation.paths,
                                   evaluation.y_true, classes=trained.classes, size=raw_size,
                                   grey=raw_grey, budget=None, **fit_kw))
    elif raw_baseline is None:
        rows.append({"name": f"raw pixels {raw_size}x{raw_size}",
                     "skipped": f"not cheap: {n_raw} training values"})
    extra: dict[str, Any] = {"command": command, "source": os.fspath(source),
                             "stores": {k: os.fspath(v.path) for k, v in stores.items()},
                             "failures": [{"path": a, "reason": b} for a, b in failures]}
    if advice is not None:
        extra["advice"] = advice
        extra["advice_use"] = advice_use
    files: dict[str, Path] = {}
    out = Path(report) if report is not None else None

    def write(rep: dict[str, Any]) -> None:
        if out is not None:
            files["model"] = out / "model.joblib"
            rep["files"] = {"model": "model.joblib"}
            files.update(write_report(rep, out, evaluation=evaluation))

    if out is not None:
        save_model(trained, out / "model.joblib")
    ft_result = None
    if fall_through:
        assert out is not None
        ft_train = ImageSource(Path(os.sep), [Path(x).as_posix() for x in trained.train_paths],
                               np.asarray(trained.train_labels, np.int64), list(trained.classes),
                               "list")
        ft_test = ImageSource(Path(os.sep), [Path(x).as_posix() for x in evaluation.paths],
                              np.asarray(evaluation.y_true, np.int64), list(trained.classes),
                              "list")
        size = size_check(ft_train, thresholds)
        opts: dict[str, Any] = {}
        if advice is not None and advice.get("similarity"):
            from ..advisor.rule import FINETUNE_POLICY

            pol = FINETUNE_POLICY.get(str(advice["similarity"]))
            if pol:  # advise's fine-tuning policy for this similarity
                opts.update(head_lr_mult=float(pol["head_lr_mult"]), freeze=int(pol["freeze"]))
        opts.update(dict(finetune_options or {}))
        ft_out = out / "finetune"
        probe_row = {k: rows[0].get(k) for k in ("name", "accuracy", "balanced_accuracy",
                                                 "n_test", "wall_time_s")}
        probe_row["name"] = f"linear probe: {trained.kind} on {name} codes"
        ft_rec: dict[str, Any] = {"size": size, "forced": bool(force_finetune),
                                  "linear_probe": probe_row, "options": opts,
                                  "output": os.fspath(ft_out)}
        if size["large"] or force_finetune:
            ft_rec["status"] = "running"
            write(build_report(model=trained, evaluation=evaluation, rows=rows,
                               extra={**extra, "fall_through": ft_rec,
                                      "wall_time_s": round(time.perf_counter() - t0, 2)}))
            ft_row, ft_result = run_fall_through(
                ft_train, ft_test, ft_out, backbone=backbone,
                weights=weights, input_size=input_size, seed=seed, device=device,
                precision=precision, num_workers=num_workers, threads=threads,
                max_pixels=max_pixels, progress=progress, overwrite=overwrite,
                command=command, options=opts)
            ft_rec.update(status="ran", finetune=ft_row,
                          verdict=_fall_through_verdict(probe_row, ft_row))
            rows.append(ft_row)
        else:
            parts = ([os.fspath(split["train"]), "--test", os.fspath(split["test"])]
                     if not single else [os.fspath(source), "--test-fraction", f"{holdout:g}",
                                         "--seed", str(seed)])
            cmd = _finetune_command(parts, backbone=backbone, weights=weights,
                                    input_size=input_size, out=ft_out, options=opts)
            ft_rec.update(status="skipped", command=cmd, message=(
                f"not large enough: {size['n_images']} images, median "
                f"{size['median_per_class']:g} per class ({' and '.join(size['short_by'])}; "
                f"advise's size rule -> {size['size_class']}); fine-tuning skipped, run "
                f"`{cmd}` to try anyway (or add --force-finetune to fine-tune on this exact "
                "split)"))
            rows.append({"name": "fine-tuning (fall-through)",
                         "skipped": f"not large enough ({size['size_class']})"})
            log.info("fall-through: %s", ft_rec["message"])
        extra["fall_through"] = ft_rec
    extra["wall_time_s"] = round(time.perf_counter() - t0, 2)
    rep = build_report(model=trained, evaluation=evaluation, rows=rows, extra=extra)
    write(rep)
    return BaselineResult(trained, evaluation, rows, rep, files,
                          {k: v.path for k, v in stores.items()}, failures, advice, ft_result)
