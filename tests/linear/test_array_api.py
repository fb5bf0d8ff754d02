"""Model selection through scikit-learn's array API (torch tensors): the same chosen C and
predictions as the NumPy path, a model file free of torch, clear fallbacks.

The array-API path runs here on CPU torch tensors (``device="cpu-torch"``): the code path of the
GPU one, minus the device. The CUDA comparison is marked ``gpu``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from cnncodes import FeatureStore, evaluate, load_model, save_model, train
from cnncodes.linear.array_api import Compute, array_api_status, resolve_compute
from cnncodes.linear.pipelines import build_pipeline
from cnncodes.linear.selection import fit_codes
from cnncodes.sources.splits import stratified_holdout

from ..conftest import requires_scipy_array_api
from .digits import digits_data  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parents[2]
GRID = "1e-3:1:4"


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    tr, te = stratified_holdout(d.target, test_size=0.4, seed=0)
    return d.data, d.target.astype(np.int64), tr, te


def torch_tensors(obj, path="model", seen=None) -> list[str]:
    """Where inside ``obj`` (estimators, dicts, lists) torch tensors are left."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [path]
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += torch_tensors(v, f"{path}[{k!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += torch_tensors(v, f"{path}[{i}]", seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            found += torch_tensors(v, f"{path}.{k}", seen)
    return found


def both_paths(X, y, **kw):
    np_pipe, np_sel = fit_codes(X, y, device="cpu", **kw)
    xp_pipe, xp_sel = fit_codes(X, y, device="cpu-torch", **kw)
    assert np_sel["compute"]["engine"] == "numpy"
    assert xp_sel["compute"] == {"engine": "array-api", "device": "cpu",
                                 "requested": "cpu-torch", "dtype": str(X.dtype)}
    return np_pipe, np_sel, xp_pipe, xp_sel


# --------------------------------------------------------------- same results as the NumPy path


@requires_scipy_array_api
@pytest.mark.parametrize("options", [
    {},
    {"l2": True, "pca": 20, "class_weight": "balanced"},
    {"pca": 0.9, "scoring": "balanced_accuracy"},
], ids=["scale", "l2-pca20-balanced", "pca0.9-balanced_accuracy"])
def test_array_api_training_on_cpu_torch_matches_numpy(digits, options):
    """float64 codes: every pipeline variant gives the same C, CV curve, coefficients and
    predictions on held-out rows through torch tensors as through NumPy."""
    X, y, tr, te = digits
    np_pipe, np_sel, xp_pipe, xp_sel = both_paths(X[tr], y[tr], c_grid=GRID, cv=3, **options)
    assert xp_sel["best_C"] == np_sel["best_C"]
    assert xp_sel["cv_mean"] == pytest.approx(np_sel["cv_mean"], abs=1e-6)
    assert np.array_equal(xp_pipe.predict(X[te]), np_pipe.predict(X[te]))
    assert np.allclose(xp_pipe.predict_proba(X[te]), np_pipe.predict_proba(X[te]), atol=1e-8)
    assert np.allclose(xp_pipe.named_steps["clf"].coef_, np_pipe.named_steps["clf"].coef_,
                       atol=1e-7)
    assert float((xp_pipe.predict(X[te]) == y[te]).mean()) > 0.9  # a real classifier
    if "pca" in options:
        assert xp_pipe.named_steps["pca"].n_components_ == np_pipe.named_steps["pca"].n_components_
    # what comes back is plain NumPy (it was fitted on tensors)
    assert torch_tensors(xp_pipe) == []
    assert isinstance(xp_pipe.named_steps["clf"].coef_, np.ndarray)


@requires_scipy_array_api
def test_array_api_training_on_float32_codes(digits):
    """Codes are stored as float32 and both paths compute in float32: the chosen C and the
    predictions agree; only float32 rounding separates the coefficients."""
    X, y, tr, te = digits
    X = X.astype(np.float32)
    np_pipe, np_sel, xp_pipe, xp_sel = both_paths(X[tr], y[tr], c_grid=GRID, cv=3)
    assert xp_sel["compute"]["dtype"] == "float32"
    assert xp_pipe.named_steps["clf"].coef_.dtype == np.float32
    assert xp_sel["best_C"] == np_sel["best_C"]
    assert xp_sel["cv_mean"] == pytest.approx(np_sel["cv_mean"], abs=2e-3)
    assert np.mean(xp_pipe.predict(X[te]) == np_pipe.predict(X[te])) >= 0.995
    assert np.allclose(xp_pipe.named_steps["clf"].coef_, np_pipe.named_steps["clf"].coef_,
                       atol=1e-3)


@requires_scipy_array_api
def test_array_api_model_file_holds_numpy_and_predicts_without_torch(
        digits_data, tmp_path):  # noqa: F811
    """train(device="cpu-torch") on a code store: same C and test predictions as the NumPy path,
    the compute path is recorded, and the saved file predicts in a process without torch."""
    kw = dict(layer="pool", c_grid="1e-3:1e-1:3", cv=3)
    m_np = train(digits_data.train_h5, device="cpu", **kw)
    m_xp = train(digits_data.train_h5, device="cpu-torch", **kw)
    assert m_xp.selection["compute"]["engine"] == "array-api"
    assert m_np.selection["compute"]["engine"] == "numpy"
    assert m_xp.selection["best_C"] == m_np.selection["best_C"]
    ev_np, ev_xp = evaluate(m_np, digits_data.test_h5), evaluate(m_xp, digits_data.test_h5)
    assert np.mean(ev_np.y_pred == ev_xp.y_pred) >= 0.98 and ev_xp.accuracy > 0.5
    assert torch_tensors(m_xp.to_dict()) == []

    path = save_model(m_xp, tmp_path / "m.npz")
    assert load_model(path).selection["compute"]["engine"] == "array-api"  # recorded in the file
    X, _ = FeatureStore(digits_data.test_h5).load("pool")
    np.save(tmp_path / "X.npy", X)
    script = (
        "import sys, numpy as np\n"
        "from cnncodes.linear.model_file import load_model\n"
        f"m = load_model({str(path)!r})\n"
        f"X = np.load({str(tmp_path / 'X.npy')!r})\n"
        "p = m.pipeline.predict(X)\n"
        "assert 'torch' not in sys.modules, 'loading the model imported torch'\n"
        "print(','.join(map(str, p.tolist())))\n")
    env = {k: v for k, v in os.environ.items() if k != "SCIPY_ARRAY_API"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    pred = np.array([int(v) for v in out.stdout.strip().split(",")])
    assert np.array_equal(pred, m_xp.pipeline.predict(X))
    assert np.array_equal(pred, ev_xp.y_pred)


@requires_scipy_array_api
@pytest.mark.gpu
def test_cuda_training_matches_numpy(digits):
    X, y, tr, te = digits
    X = X.astype(np.float32)
    np_pipe, np_sel = fit_codes(X[tr], y[tr], c_grid=GRID, cv=3, device="cpu")
    xp_pipe, xp_sel = fit_codes(X[tr], y[tr], c_grid=GRID, cv=3, device="cuda")
    assert xp_sel["compute"]["engine"] == "array-api"
    assert xp_sel["compute"]["device"].startswith("cuda")
    assert xp_sel["best_C"] == np_sel["best_C"]
    assert np.mean(xp_pipe.predict(X[te]) == np_pipe.predict(X[te])) >= 0.995
    assert torch_tensors(xp_pipe) == []
    _, auto_sel = fit_codes(X[tr], y[tr], c_grid=[0.1], cv=3)  # digits: below the size rule
    assert auto_sel["compute"]["engine"] == "numpy"
    big = np.tile(X[tr], (1, 20))  # ~1,200 x 1,280 x 10 classes: above it, auto picks the GPU
    _, auto_sel = fit_codes(big, y[tr], c_grid=[0.1], cv=3)
    assert auto_sel["compute"]["engine"] == "array-api"


# ------------------------------------------------------------------------ choices and fallbacks


@requires_scipy_array_api
def test_resolve_compute_choices():
    assert resolve_compute("cpu") == Compute("numpy", "cpu", "cpu")
    assert resolve_compute("cpu-torch", pipeline=build_pipeline()) == \
        Compute("array-api", "cpu", "cpu-torch")
    auto = resolve_compute("auto", pipeline=build_pipeline())
    if torch.cuda.is_available():
        assert auto.engine == "array-api" and auto.device.startswith("cuda")
    else:
        assert auto == Compute("numpy", "cpu", "auto")  # no GPU: NumPy, nothing to explain
    with pytest.raises(ValueError, match="Unknown training device 'gpu'.*cpu-torch"):
        resolve_compute("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_compute("cuda")


@requires_scipy_array_api
def test_linearsvc_stays_on_cpu_and_says_why(digits, caplog, monkeypatch):
    X, y, tr, _ = digits
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        _, sel = fit_codes(X[tr][:400], y[tr][:400], model="linearsvc", c_grid=[0.01], cv=3,
                           device="cpu-torch")
    assert sel["compute"]["engine"] == "numpy"
    assert "LinearSVC has no array API support" in sel["compute"]["reason"]
    assert "LinearSVC has no array API support" in caplog.text  # asked for: a warning
    # with a GPU and device="auto" the same fallback is routine: logged at info, not a warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnncodes"):
        c = resolve_compute("auto", pipeline=build_pipeline(model="linearsvc"))
    assert c.engine == "numpy" and "LinearSVC" in c.reason
    assert [r.levelno for r in caplog.records if "LinearSVC" in r.getMessage()] == [logging.INFO]
    assert resolve_compute("auto", pipeline=build_pipeline()).engine == "array-api"


def test_scipy_array_api_switched_off_falls_back(digits, monkeypatch, caplog):
    X, y, tr, _ = digits
    monkeypatch.setenv("SCIPY_ARRAY_API", "0")
    ok, reason = array_api_status()
    assert not ok and "SCIPY_ARRAY_API is set to '0'" in reason
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        _, sel = fit_codes(X[tr][:300], y[tr][:300], c_grid=[0.1], cv=3, device="cpu-torch")
    assert sel["compute"]["engine"] == "numpy" and "SCIPY_ARRAY_API" in sel["compute"]["reason"]
    assert "not the array API" in caplog.text


@requires_scipy_array_api
def test_a_failing_array_api_fit_is_redone_with_numpy(digits, caplog):
    """A scorer that only takes NumPy arrays fails on tensors: warning, NumPy refit, same
    result as asking for the CPU, and the reason recorded."""
    X, y, tr, _ = digits

    def numpy_only_accuracy(est, X, y):
        if not isinstance(X, np.ndarray):
            raise TypeError("numpy_only_accuracy takes NumPy arrays")
        return float(np.mean(est.predict(X) == y))

    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        pipe, sel = fit_codes(X[tr], y[tr], c_grid=GRID, cv=3, device="cpu-torch",
                              scoring=numpy_only_accuracy)
    assert sel["compute"]["engine"] == "numpy"
    assert sel["compute"]["reason"] == ("array API fit failed: TypeError: numpy_only_accuracy "
                                        "takes NumPy arrays")
    assert "training again with NumPy" in caplog.text
    ref, ref_sel = fit_codes(X[tr], y[tr], c_grid=GRID, cv=3, device="cpu",
                             scoring=numpy_only_accuracy)
    assert sel["best_C"] == ref_sel["best_C"] and sel["cv_mean"] == ref_sel["cv_mean"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "SCIPY_ARRAY_API"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**base, **env}, timeout=180)


@pytest.mark.slow
def test_scipy_array_api_is_opt_in_and_too_late_after_scipy():
    """``import cnncodes`` leaves the environment alone; ``cnncodes.enable_array_api()`` switches
    SciPy's array API on when it is in time; after ``import scipy`` it is too late: training warns
    and uses NumPy, with the fix in the message."""
    untouched = _python("import os, cnncodes, cnncodes.cli\n"
                        "print(os.environ.get('SCIPY_ARRAY_API'))")
    assert untouched.returncode == 0, untouched.stderr
    assert untouched.stdout.split()[-1] == "1"  # the command's module set it for its process
    plain = _python("import os, cnncodes\nprint(os.environ.get('SCIPY_ARRAY_API'))")
    assert plain.stdout.split()[-1] == "None"
    probe = ("import os, json, numpy as np\n"
             "{first}\n"
             "from cnncodes.linear.array_api import array_api_status\n"
             "from cnncodes.linear.selection import fit_codes\n"
             "X = np.random.default_rng(0).normal(size=(60, 4)); y = np.arange(60) % 2\n"
             "_, sel = fit_codes(X, y, c_grid=[1.0], cv=2, device='cpu-torch')\n"
             "print(json.dumps([os.environ.get('SCIPY_ARRAY_API'), array_api_status(),"
             " sel['compute']]))\n")
    good = _python(probe.format(first="import cnncodes; cnncodes.enable_array_api(); import scipy"))
    assert good.returncode == 0, good.stderr
    env_value, (ok, _), compute = json.loads(good.stdout.splitlines()[-1])
    assert env_value == "1" and ok and compute["engine"] == "array-api"

    late = _python(probe.format(
        first="import scipy, sklearn, cnncodes; cnncodes.enable_array_api()"))
    assert late.returncode == 0, late.stderr
    _, (ok, reason), compute = json.loads(late.stdout.splitlines()[-1])
    assert not ok and compute["engine"] == "numpy"
    assert "scipy was imported before SCIPY_ARRAY_API=1 was set" in reason
    assert compute["reason"] == reason
    assert "not the array API" in late.stderr and "enable_array_api" in late.stderr  # warned
