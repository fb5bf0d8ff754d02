"""Model selection through joblib backends: what a dask cluster plugs into
(``with joblib.parallel_config(backend="dask"): cnncodes.train(...)``), checked with local ones.

``train`` hands ``n_jobs`` to GridSearchCV, whose fits joblib dispatches to the active backend;
a counting backend proves the fits went through the caller's backend, and every backend gives
the same model as a sequential run.
"""

from __future__ import annotations

import threading

import joblib
import numpy as np
import pytest
from joblib._parallel_backends import ThreadingBackend

from cnncodes import train

from ..conftest import requires_scipy_array_api
from .digits import digits_data  # noqa: F401 - session fixture

KW = dict(layer="pool", c_grid="1e-3:1e-1:3", cv=3, device="cpu")


class CountingBackend(ThreadingBackend):
    """A threading backend that counts the batches of tasks it was handed."""

    batches = 0
    lock = threading.Lock()

    def submit(self, func, callback=None):
        with CountingBackend.lock:
            CountingBackend.batches += 1
        return super().submit(func, callback)

    # joblib < 1.5 calls apply_async
    def apply_async(self, func, callback=None):
        with CountingBackend.lock:
            CountingBackend.batches += 1
        return super().apply_async(func, callback)


joblib.register_parallel_backend("cnncodes-counting", CountingBackend)


@pytest.fixture(scope="module")
def sequential(digits_data):  # noqa: F811
    return train(digits_data.train_h5, n_jobs=1, **KW)


def same_model(a, b, X) -> None:
    assert a.selection["best_C"] == b.selection["best_C"]
    assert a.selection["cv_mean"] == pytest.approx(b.selection["cv_mean"], abs=1e-12)
    assert np.array_equal(a.pipeline.predict(X), b.pipeline.predict(X))
    assert np.allclose(a.pipeline.named_steps["clf"].coef_,
                       b.pipeline.named_steps["clf"].coef_, atol=1e-6)


def test_train_dispatches_its_fits_to_the_callers_backend(digits_data, sequential):  # noqa: F811
    from cnncodes import FeatureStore

    X, _ = FeatureStore(digits_data.test_h5).load("pool")
    CountingBackend.batches = 0
    with joblib.parallel_backend("cnncodes-counting", n_jobs=2):
        m = train(digits_data.train_h5, **KW)  # n_jobs=None: the backend decides
    assert CountingBackend.batches >= 1  # the 3 C x 3 folds went through our backend
    assert m.selection["n_jobs"] is None
    same_model(m, sequential, X)
    # n_jobs=1 opts out of any backend: the fits run in this thread
    CountingBackend.batches = 0
    with joblib.parallel_backend("cnncodes-counting", n_jobs=2):
        train(digits_data.train_h5, n_jobs=1, **KW)
    assert CountingBackend.batches == 0


@requires_scipy_array_api
def test_array_api_path_keeps_its_fits_in_process(digits_data):  # noqa: F811
    """Torch tensors are not shipped to a joblib backend: the array API path runs sequentially
    whatever backend is active."""
    CountingBackend.batches = 0
    with joblib.parallel_backend("cnncodes-counting", n_jobs=2):
        m = train(digits_data.train_h5, **{**KW, "device": "cpu-torch"})
    assert m.selection["compute"]["engine"] == "array-api"
    assert CountingBackend.batches == 0


def test_loky_processes_give_the_sequential_model(digits_data, sequential):  # noqa: F811
    from cnncodes import FeatureStore

    X, _ = FeatureStore(digits_data.test_h5).load("pool")
    with joblib.parallel_backend("loky", n_jobs=2):
        m = train(digits_data.train_h5, **KW)
    same_model(m, sequential, X)
    m2 = train(digits_data.train_h5, n_jobs=2, **KW)  # the default backend (loky) by n_jobs
    same_model(m2, sequential, X)
