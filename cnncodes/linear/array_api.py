"""Where a grid search runs: NumPy on the CPU, or scikit-learn's array API on torch tensors
(:class:`Compute`, :func:`resolve_compute`, :func:`array_api_status`), and the one place estimators
are fitted (``_fit_search``). ``array_api_env`` holds the SciPy switch.

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
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from .._runtime import is_cuda
from .array_api_env import ENABLE_HINT

log = logging.getLogger(__name__)


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


#: ``auto`` sends a grid search to the GPU only from this much work per L-BFGS iteration:
#: rows x features x classes (one X @ W and one X.T @ G per iteration and fit). Below it the
#: fixed cost of the GPU (SciPy's L-BFGS steps on the host: a few host<->device round trips per
#: iteration, ~1 ms) exceeds NumPy's time for the products on a few cores (~2 * work / 2e10 s).
#: Estimated, not yet measured on a GPU: benchmarks/gpu_check.sh measures both sides and reports
#: the crossover to set it from.
AUTO_GPU_MIN_WORK = 10_000_000


def auto_uses_gpu(n_samples: int, n_features: int, n_classes: int,
                  min_work: int = AUTO_GPU_MIN_WORK) -> bool:
    """Whether ``auto`` runs a grid search of this size on the GPU (see
    :data:`AUTO_GPU_MIN_WORK`; a binary problem counts as one class)."""
    classes = 1 if n_classes <= 2 else n_classes
    return n_samples * n_features * classes >= min_work


def resolve_compute(device: str = "auto", *, pipeline: Pipeline | None = None,
                    shape: tuple[int, int, int] | None = None) -> Compute:
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
    if d == "auto" and not is_cuda("auto"):  # no NVIDIA driver: NumPy, without importing torch
        return Compute("numpy", "cpu", requested)
    import torch

    if d == "auto":
        if not torch.cuda.is_available():
            return Compute("numpy", "cpu", requested)
        if shape is not None and not auto_uses_gpu(*shape):
            log.info("model selection runs with NumPy: %d x %d codes, %d classes is below the "
                     "GPU size rule (rows x features x classes >= %d)", *shape,
                     AUTO_GPU_MIN_WORK)
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


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__
