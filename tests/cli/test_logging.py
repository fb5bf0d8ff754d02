"""The CLI's log handler writes to the current sys.stderr, not the one of its first call."""

from __future__ import annotations

import io
import logging
import sys

from cnncodes.cli.main import _setup_logging


def test_log_handler_follows_sys_stderr(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _setup_logging(0, False)
    logging.getLogger("cnncodes.test").info("one")
    first.close()  # e.g. pytest's capture of an earlier test
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    _setup_logging(0, False)
    logging.getLogger("cnncodes.test").info("two")
    assert second.getvalue() == "cnncodes: two\n"
