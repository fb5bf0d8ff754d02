"""``enable_array_api``: each of its four answers, in this process (no subprocess, no import of
SciPy: ``sys.modules`` and the environment are patched and restored by monkeypatch), and the
session's own SciPy set-up, which ``make test`` runs both ways (with ``SCIPY_ARRAY_API=1``, the
default of tests/conftest.py, and without it: ``CNNCODES_TESTS_WITHOUT_ARRAY_API=1``)."""

from __future__ import annotations

import logging
import os
import sys
import types

from cnncodes.linear.array_api import _scipy_array_api_flag, array_api_status
from cnncodes.linear.array_api_env import ENABLE_HINT, enable_array_api


def test_before_scipy_it_sets_the_variable(monkeypatch):
    monkeypatch.delenv("SCIPY_ARRAY_API", raising=False)
    monkeypatch.delitem(sys.modules, "scipy", raising=False)
    assert enable_array_api() is True
    assert os.environ["SCIPY_ARRAY_API"] == "1"


def test_a_value_the_user_set_is_respected(monkeypatch, caplog):
    monkeypatch.setenv("SCIPY_ARRAY_API", "0")
    monkeypatch.delitem(sys.modules, "scipy", raising=False)
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        assert enable_array_api() is False
    assert os.environ["SCIPY_ARRAY_API"] == "0" and caplog.records == []


def test_after_scipy_with_the_variable_it_is_already_on(monkeypatch, caplog):
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        assert enable_array_api() is True
    assert caplog.records == []


def test_after_scipy_without_the_variable_it_warns_and_leaves_it_unset(monkeypatch, caplog):
    """Too late: SciPy read the variable at its import. The warning says GPU model selection
    will use NumPy and how to fix it; the environment is not changed (setting it now would make
    scikit-learn believe SciPy has array API support)."""
    monkeypatch.delenv("SCIPY_ARRAY_API", raising=False)
    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        assert enable_array_api() is False
    assert "SCIPY_ARRAY_API" not in os.environ
    (rec,) = [r for r in caplog.records if r.name == "cnncodes.linear.array_api_env"]
    assert rec.levelno == logging.WARNING
    assert "already imported without array API support" in rec.getMessage()
    assert ENABLE_HINT in rec.getMessage()


def test_this_session_runs_scipy_as_configured():
    """The run ``make test`` adds without the variable really has SciPy without array API
    support (so the array API path is refused), and the default run really has it: a conftest
    that forced the variable in both runs would fail here. (The variable itself may be back by
    now: importing ``cnncodes.cli`` sets it, as the command does, too late for SciPy.)"""
    if os.environ.get("CNNCODES_TESTS_WITHOUT_ARRAY_API") == "1":
        assert not _scipy_array_api_flag()
        assert not array_api_status()[0]
    elif os.environ.get("SCIPY_ARRAY_API") == "1":  # the default; a value the user exported
        assert _scipy_array_api_flag()                # is kept, as cnncodes keeps it
