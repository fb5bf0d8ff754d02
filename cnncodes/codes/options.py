"""The store options of ``extract``, each with its one default: how the store is written and how
an existing one is treated (never which codes: that is :class:`~cnncodes.options.BackboneOptions`).

:class:`StoreOptions` is taken by :func:`~cnncodes.extract` (``store=``); the CLI's ``extract``
flags ``--dtype --compression --overwrite --retry-failed --repair --verify --add-source
--keep-missing --commit-every`` are its fields. ``extract`` also accepts the fields one by one as
keyword arguments (``extract(src, out, overwrite=True)``): :func:`store_options` sorts them, as
:func:`cnncodes.options.split_options` does for the backbone and runtime fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..options import (
    NONE,
    Constraint,
    InstanceOf,
    Interval,
    StrOptions,
    check_param,
    sort_keywords,
)
from .identity import VERIFY_MODES

#: Storage dtypes of a store's codes.
STORE_DTYPES = ("float32", "float16")
#: HDF5 compressions of a store's codes (None = ``none``).
COMPRESSIONS = ("none", "gzip", "lzf")

_BOOL = InstanceOf((bool, "numpy.bool", "numpy.bool_"), "a bool")

#: each store option's constraints (any one is enough), as :data:`cnncodes.options.CONSTRAINTS`
STORE_CONSTRAINTS: dict[str, tuple[Constraint, ...]] = {
    "dtype": (StrOptions(STORE_DTYPES),),
    "compression": (StrOptions(COMPRESSIONS), NONE),
    "overwrite": (_BOOL,),
    "retry_failed": (_BOOL,),
    "repair": (_BOOL,),
    "verify": (StrOptions(VERIFY_MODES), NONE),
    "add_source": (_BOOL,),
    "keep_missing": (_BOOL,),
    "commit_every": (Interval(float, 0, None), NONE),
}


@dataclass(frozen=True)
class StoreOptions:
    """How ``extract`` writes its store and treats an existing one.

    Attributes:
        dtype: storage dtype, ``float32`` or ``float16``.
        compression: HDF5 compression (``gzip``, ``lzf``, or ``none``/None).
        overwrite: delete an existing store and journal first.
        retry_failed: try again the files recorded as failures (a failed file that changed
            since is always tried again).
        repair: read every chunk of the store first and extract again the rows whose codes fail
            their checksum (bit rot), replacing them in place.
        verify: how a rerun recognises a changed file: ``stat`` (size + mtime_ns) or ``hash``
            (size + SHA-256 of the bytes; reads every file on every run); None: the mode the
            store was made with, else ``stat``.
        add_source: allow a store made from another source to take this one's images too.
        keep_missing: keep (flagged) the rows of files that are gone from the source, instead
            of dropping them.
        commit_every: seconds between commit points during a long run, where the journal is
            folded into the store so it is readable (marked incomplete) while extraction goes
            on; None = only at the end. Single-process runs only.
    """

    dtype: str = "float32"
    compression: str | None = None
    overwrite: bool = False
    retry_failed: bool = False
    repair: bool = False
    verify: str | None = None
    add_source: bool = False
    keep_missing: bool = False
    commit_every: float | None = 600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            check_param(f.name, getattr(self, f.name), "StoreOptions", STORE_CONSTRAINTS[f.name])

    def replace(self, **changes: Any) -> StoreOptions:
        return dataclasses.replace(self, **changes)


STORE_FIELDS = tuple(f.name for f in fields(StoreOptions))


def store_options(store: StoreOptions | None, options: Mapping[str, Any], *, where: str,
                  allow: Sequence[str] = ()) -> tuple[StoreOptions, dict[str, Any]]:
    """Sort keyword ``options`` into a :class:`StoreOptions` (overriding ``store``).

    Returns ``(options object, the remaining options named in allow)``.

    Raises:
        TypeError: an unknown option (the message lists the valid ones), or ``store`` of
            another type.
        OptionError: a bad value ("The 'NAME' parameter of WHERE() must be X. Got Y instead.").
    """
    sopts = store if store is not None else StoreOptions()
    if not isinstance(sopts, StoreOptions):
        raise TypeError(f"{where}(): store must be a StoreOptions. Got {type(sopts).__name__} "
                        "instead.")
    (changes,), rest = sort_keywords(
        options, [STORE_FIELDS], where=where, allow=allow,
        check=lambda key, value: check_param(key, value, f"{where}()", STORE_CONSTRAINTS[key]))
    return (sopts.replace(**changes) if changes else sopts), rest
