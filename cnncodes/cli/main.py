"""The ``cnncodes`` command line: parse -> call the library -> print. Nothing else lives here.

Each subcommand is a pair ``add_<name>(subparsers)`` / ``cmd_<name>(args) -> int`` (in the module of
its command group) registered in ``COMMANDS``; option names match the library's keyword arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from .._version import __version__
from ..errors import CnnCodesError
from .advise import add_advise, cmd_advise
from .audit import add_audit, add_similar, cmd_audit, cmd_similar
from .codes import (
    add_compact,
    add_extract,
    add_info,
    add_models,
    cmd_compact,
    cmd_extract,
    cmd_info,
    cmd_models,
)
from .common import cli_message, command_flags, option_names
from .export import add_cache, add_export, cmd_cache, cmd_export
from .finetune import add_finetune, cmd_finetune
from .linear import (
    add_baseline,
    add_evaluate,
    add_predict,
    add_train,
    cmd_baseline,
    cmd_evaluate,
    cmd_predict,
    cmd_train,
)

log = logging.getLogger("cnncodes")

#: subcommand -> (adds its parser, runs it); the order is the order of ``cnncodes --help``.
COMMANDS: dict[str, tuple[Callable[[Any], argparse.ArgumentParser],
                          Callable[[argparse.Namespace], int]]] = {
    "models": (add_models, cmd_models),
    "extract": (add_extract, cmd_extract),
    "info": (add_info, cmd_info),
    "compact": (add_compact, cmd_compact),
    "export": (add_export, cmd_export),
    "cache": (add_cache, cmd_cache),
    "train": (add_train, cmd_train),
    "evaluate": (add_evaluate, cmd_evaluate),
    "predict": (add_predict, cmd_predict),
    "baseline": (add_baseline, cmd_baseline),
    "finetune": (add_finetune, cmd_finetune),
    "advise": (add_advise, cmd_advise),
    "similar": (add_similar, cmd_similar),
    "audit": (add_audit, cmd_audit),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnncodes",
        description="CNN codes from pretrained backbones, cached in HDF5, with linear classifiers.")
    parser.add_argument("--version", action="version", version=f"cnncodes {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _cmd in COMMANDS.values():
        add(sub).set_defaults(_cmd=_cmd)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler writing to the current ``sys.stderr`` (not the one of the first call: tests and
    embedding applications swap it); the library's Python option names in a message are said as
    this command's CLI options (``names``, see :func:`cli_message`)."""

    names: dict[str, str] = {}
    #: set on the handler :func:`_setup_logging` installs (found again by it on the next call)
    _cnncodes: bool = False

    def format(self, record: logging.LogRecord) -> str:
        return cli_message(super().format(record), self.names)

    @property
    def stream(self) -> TextIO:  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool, names: dict[str, str] | None = None) -> None:
    """Log to stderr as ``cnncodes: ...``; ``names``: this command's ``{python_name: --option}``
    (warnings then name the options the user typed)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("cnncodes")
    root.setLevel(level)
    handler = next((h for h in root.handlers if getattr(h, "_cnncodes", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("cnncodes: %(message)s"))
        handler._cnncodes = True
        root.addHandler(handler)
        root.propagate = False
    if isinstance(handler, _StderrHandler):
        handler.names = dict(names or {})
    # a matplotlib font cache shared with another installation (e.g. the system's) can lack
    # fonts that matplotlib falls back from silently: not the user's concern, and it buried the
    # result table under 20 "findfont" lines
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


#: exit status of an unexpected exception (a bug); 1 is for errors the user can fix
INTERNAL_ERROR = 70  # EX_SOFTWARE
#: where bugs are reported
ISSUES = "the cnncodes project's issue tracker"

#: exit status when the reader of stdout closed the pipe (128 + SIGPIPE)
BROKEN_PIPE = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


@contextlib.contextmanager
def _names_as_bytes() -> Iterator[None]:
    """While a command runs, a file name holding bytes that are not UTF-8 (``os.fsdecode``'s
    surrogates) is printed as those bytes, as ``ls`` does, never as an encoding error; stdout's
    error handler is restored afterwards."""
    out = sys.stdout
    old = getattr(out, "errors", None)
    try:
        if old == "strict":
            # sys.stdout is typed TextIO, which lacks TextIOWrapper's reconfigure (the except
            # below covers a stream without it)
            out.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # not a text stream that can change
        old = None
    try:
        yield
    finally:
        if old == "strict":
            with contextlib.suppress(AttributeError, ValueError, OSError):
                out.reconfigure(errors=old)  # type: ignore[union-attr]  # (as above)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnncodes`` console script; returns the exit status.

    Errors the user can fix (every :class:`~cnncodes.errors.CnnCodesError`, a ``ValueError``
    of a bad value, an ``OSError`` such as permission denied or a missing file) print one
    ``error: ...`` line with the fix and return 1 (``-v`` adds the traceback). Any other
    exception is a bug: "internal error", the traceback and where to report it, status 70.
    Ctrl-C returns 130. A reader that stops early
    (``cnncodes models | head -1``) ends the command quietly with status 141 (128 + SIGPIPE, what
    the shell reports for any tool stopped by a closed pipe, so ``set -o pipefail`` still sees
    that the output was cut); nothing is printed.
    """
    try:
        with _names_as_bytes():
            rc = _main(argv)
            sys.stdout.flush()  # a closed pipe shows here, not at exit as an "Exception ignored"
        return rc
    except BrokenPipeError:  # also from --help
        _silence_stdout()
        return BROKEN_PIPE
    except SystemExit:  # argparse's --help/--version/usage error: flush its output here, too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        raise


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.command_flags = command_flags(parser)  # the advisor's next commands use these names
    _setup_logging(args.verbose, args.quiet, option_names(_subparser(parser, args.command)))
    try:
        return int(args._cmd(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except (CnnCodesError, ValueError, OSError) as e:  # what a user can cause and fix
        msg = user_message(e)
        if not isinstance(e, OSError):  # the library's keyword names -> this command's options
            msg = cli_message(msg, option_names(_subparser(parser, args.command)))
        print(f"error: {msg}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: say so, with what is needed to fix it
        if type(e).__name__ == "OutOfMemoryError":  # torch's: the batch does not fit the device
            print(f"error: out of memory on the device ({str(e).splitlines()[0]}); pass a "
                  "smaller --batch-size, or --device cpu.", file=sys.stderr)
            if args.verbose:
                traceback.print_exc(file=sys.stderr)
            return 1
        print("internal error: cnncodes failed unexpectedly (a bug, not something you did).",
              file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        print(f"Please report it with the command line and this traceback on {ISSUES} "
              f"(cnncodes {__version__}).", file=sys.stderr)
        return INTERNAL_ERROR


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The subcommand's parser (the top parser when not found)."""
    for a in parser._actions:  # noqa: SLF001
        if isinstance(a, argparse._SubParsersAction) and name in a.choices:  # noqa: SLF001
            return a.choices[name]
    return parser


def user_message(e: BaseException) -> str:
    """The one line for an error the user can fix: a :class:`CnnCodesError`'s own message; an
    operating-system error (permission denied, a read-only disk, a missing file) said with its
    path and the fix."""
    if isinstance(e, CnnCodesError) or not isinstance(e, OSError):
        return str(e)
    where = e.filename if e.filename is not None else ""
    what = e.strerror or str(e)
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return (f"{what}: {where}. cnncodes may not read or write there: check the owner and "
                "mode of that path (ls -l) or whether its disk is mounted read-only, or choose "
                "another path.")
    if isinstance(e, FileNotFoundError):
        return f"{what}: {where}. Check the path (it must exist and be spelt as on disk)."
    if e.errno == errno.ENOSPC:
        return f"{what}: {where}. Free some space on that disk, or write elsewhere, and rerun."
    return f"{what}{': ' + str(where) if where else ''}"


if __name__ == "__main__":
    sys.exit(main())
