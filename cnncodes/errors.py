"""The package's exceptions: one base, :class:`CnnCodesError`, and the specific errors under it.

Each also derives from the built-in exception a caller would expect (``ValueError`` for bad input,
``RuntimeError`` for a failed run), so ``except ValueError`` keeps working. Messages follow the
"X must be Y. Got Z instead." style and name the fix.
"""

from __future__ import annotations


class CnnCodesError(Exception):
    """Base of every error cnncodes raises on purpose."""


class OptionError(CnnCodesError, ValueError):
    """An option has a value that cannot work (the message names the valid values)."""


class StoreMismatchError(CnnCodesError, ValueError):
    """A feature store was made with other settings than the ones asked for, or is not a store."""


class ModelMismatchError(StoreMismatchError):
    """A model file does not fit the codes or images it is applied to."""


class WeightsUnavailableError(CnnCodesError, RuntimeError):
    """Pretrained weights could not be found locally nor downloaded."""


class SourceError(CnnCodesError, ValueError):
    """An image source (folder or list file) cannot be read as given (the file and line are
    named)."""


class DiskFullError(CnnCodesError, OSError):
    """The disk filled up while writing; the message says what was kept and what to free."""


class DecodeError(CnnCodesError):
    """An image file could not be decoded (recorded as a per-file failure, never fatal)."""


class FinetuneDivergedError(CnnCodesError, RuntimeError):
    """Fine-tuning produced a non-finite loss (the message says what to change)."""


class OutputError(CnnCodesError, ValueError):
    """An output path cannot be written without losing something: it is one of the command's
    inputs, not a regular file (a device, FIFO, socket, or a folder where a file goes), or a file
    of another kind (pass ``--overwrite`` to replace that one)."""


class StoreDamagedError(CnnCodesError, OSError):
    """A store's files are not what its index records (a segment missing, truncated or changed):
    nothing is read from it (the message names the file and the fix)."""


class IncompleteStoreError(StoreMismatchError):
    """A store's extraction was stopped before it finished (the message names how many images
    are missing and the command that finishes it); ``allow_incomplete=True``
    (``--allow-incomplete``) reads it anyway."""


class NotFoundError(CnnCodesError, FileNotFoundError):
    """A file or folder the command reads does not exist (a code store, a model, a source)."""


class StoreLockedError(CnnCodesError, RuntimeError):
    """Another process holds a store's writer lock (the message names the process)."""


class AccessDeniedError(CnnCodesError, PermissionError):
    """The operating system refused to read or write a path (permissions, a read-only disk)."""


class StaleRunError(OptionError):
    """A run folder holds a run of other settings (a stale checkpoint): only this error lets a
    workflow that was asked to (``restart_stale``) start the run afresh."""


class ModelFileError(CnnCodesError, ValueError):
    """A model file cannot be loaded safely: damaged, truncated, of another kind, a pickle without
    ``trust_pickle=True``, or a model the safe format cannot hold (the message names what)."""


class ReportError(CnnCodesError, ValueError):
    """A report file (``report.json``) is not what its schema says: not JSON, another kind of
    report, a newer schema, or a field missing or of the wrong type (the message names the file
    and the field)."""


class FidelityError(OptionError):
    """A fast path's codes fall below their fidelity bound against the reference codes (the
    message names the layer, the measured cosine and the bound)."""
