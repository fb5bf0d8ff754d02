"""The one error boundary of ``cnncodes.cli.main``: what a user can cause and fix is one
``error:`` line with the fix (status 1; ``-v`` adds the traceback); a bug says "internal error",
shows the traceback and where to report it (status 70)."""

from __future__ import annotations

import errno
import importlib
import os

import pytest

from cnncodes.cli import main
from cnncodes.codes.journal import Journal
from cnncodes.errors import (
    AccessDeniedError,
    CnnCodesError,
    IncompleteStoreError,
    NotFoundError,
    OptionError,
    StaleRunError,
    StoreLockedError,
)

from ..conftest import write_tree

cli_main = importlib.import_module("cnncodes.cli.main")  # the module (cnncodes.cli.main is main())
EXTRACT = ("--weights", "random", "--input-size", "32", "--workers", "0", "--no-progress")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def failing(monkeypatch, exc: BaseException) -> None:
    """``cnncodes info`` raises ``exc`` (an injected fault)."""
    def cmd(args):
        raise exc
    monkeypatch.setitem(cli_main.COMMANDS, "info", (cli_main.COMMANDS["info"][0], cmd))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("cls, base", [
    (NotFoundError, FileNotFoundError), (StoreLockedError, RuntimeError),
    (AccessDeniedError, PermissionError), (StaleRunError, ValueError),
    (StaleRunError, OptionError), (IncompleteStoreError, ValueError)])
def test_error_classes_are_cnncodes_errors_and_what_they_were(cls, base):
    assert issubclass(cls, CnnCodesError) and issubclass(cls, base)


def test_missing_store_is_a_not_found_error_in_one_line(tmp_path, capsys):
    rc, _, err = run(capsys, "info", tmp_path / "none.h5")
    assert rc == 1 and "No code store at" in one_line(err)
    from cnncodes import FeatureStore
    with pytest.raises(NotFoundError):
        FeatureStore(tmp_path / "none.h5")
    rc, _, err = run(capsys, "-q", "extract", tmp_path / "missing", "-o", tmp_path / "c.h5",
                     *EXTRACT)
    assert rc == 1 and "does not exist" in one_line(err)
    rc, _, err = run(capsys, "evaluate", tmp_path / "m.joblib", tmp_path / "none.h5")
    assert rc == 1 and "No model file at" in one_line(err)


def test_a_lock_held_by_another_writer_is_one_line_naming_it(tmp_path, capsys):
    src = write_tree(tmp_path / "photos", per_class=2)
    out = tmp_path / "c.h5"
    held = Journal(out)
    held.lock()  # another open file description: flock refuses the second writer
    try:
        rc, _, err = run(capsys, "-q", "extract", src, "-o", out, *EXTRACT)
        line = one_line(err)
        assert rc == 1 and f"Another process is writing {out}" in line and "wait for it" in line
        rc, _, err = run(capsys, "-v", "extract", src, "-o", out, *EXTRACT)
        assert rc == 1 and "Traceback" in err and "StoreLockedError" in err  # -v: traceback
    finally:
        held.unlock()


def test_permission_denied_is_one_line_with_the_path_and_the_fix(tmp_path, monkeypatch, capsys):
    path = tmp_path / "codes.h5"
    failing(monkeypatch, PermissionError(errno.EACCES, "Permission denied", str(path)))
    rc, _, err = run(capsys, "info", path)
    line = one_line(err)
    assert rc == 1 and f"Permission denied: {path}" in line and "ls -l" in line
    failing(monkeypatch, OSError(errno.EROFS, "Read-only file system", str(path)))
    rc, _, err = run(capsys, "info", path)
    assert rc == 1 and "read-only" in one_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_a_store_without_read_permission_is_said_so(tmp_path, capsys):
    store = tmp_path / "c.h5"
    store.write_bytes(b"\x89HDF\r\n\x1a\n")
    store.chmod(0)
    try:
        rc, _, err = run(capsys, "info", store)
        assert rc == 1 and "permission denied" in one_line(err)
    finally:
        store.chmod(0o644)


def test_a_cnncodes_error_is_one_line_and_verbose_adds_the_traceback(monkeypatch, capsys):
    failing(monkeypatch, OptionError("batch_size must be > 0. Got 0 instead."))
    rc, _, err = run(capsys, "info", "x.h5")
    assert rc == 1 and one_line(err) == "error: batch_size must be > 0. Got 0 instead."
    rc, _, err = run(capsys, "-v", "info", "x.h5")
    assert rc == 1 and err.startswith("error: batch_size must be > 0") and "Traceback" in err


@pytest.mark.parametrize("exc", [KeyError("layer_info"), RuntimeError("EMD failed"),
                                 AssertionError(), TypeError("unsupported operand")])
def test_an_unexpected_exception_is_an_internal_error_with_traceback_and_where_to_report(
        monkeypatch, capsys, exc):
    failing(monkeypatch, exc)
    rc, out, err = run(capsys, "info", "x.h5")
    assert rc == cli_main.INTERNAL_ERROR == 70
    assert err.startswith("internal error:") and "Traceback" in err
    assert type(exc).__name__ in err
    assert "report it with the command line and this traceback" in err and "issue tracker" in err


def test_ctrl_c_is_130(monkeypatch, capsys):
    failing(monkeypatch, KeyboardInterrupt())
    rc, _, err = run(capsys, "info", "x.h5")
    assert rc == 130 and "interrupted" in err


def test_a_missing_source_is_refused_before_torch_is_imported(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from cnncodes.cli import main; "
            f"rc = main(['extract', {str(tmp_path / 'nope')!r}, '-o', "
            f"{str(tmp_path / 'c.h5')!r}]); "
            "assert rc == 1, rc; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "does not exist" in r.stderr and not (tmp_path / "c.h5").exists()
