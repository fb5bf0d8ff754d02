"""What to say of an unfinished extraction: a store stopped before it finished (refused by
readers unless ``allow_incomplete``, see :meth:`~cnncodes.codes.reader.FeatureStore.incomplete`),
and a first extraction whose store does not exist yet but whose journal does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .journal import describe_holder


def first_run_text(progress: Mapping[str, Any] | None) -> str:
    """What to say of a store not created yet whose journal exists (:meth:`Journal.progress`):
    an extraction in progress (process, rows so far) or an unfinished one; '' when neither."""
    if not progress:
        return ""
    n, k, where = progress["rows"], progress["parts"], progress["dir"]
    failed = f" and {progress['failed']} failed files" if progress["failed"] else ""
    if progress["running"]:
        holder = describe_holder(progress["running"])
        return (f" A first extraction into it is in progress ({holder}"
                f"): {n} rows{failed} journaled so far in {k} batches in {where}; the store "
                "appears at its first commit point (--commit-every) or when the run ends.")
    if k:
        return (f" An unfinished extraction left {n} rows in {k} part files in {where}; rerun "
                "the same `cnncodes extract` command to finish it.")
    return ""


def missing_text(note: Mapping[str, Any]) -> str:
    """How many images an unfinished store still lacks, in words."""
    n = note.get("missing")
    return (f"{n} images not extracted yet" if n is not None
            else "an unrecorded number of images not extracted yet")


def incomplete_message(note: Mapping[str, Any]) -> str:
    """The one line refusing an unfinished store (:meth:`FeatureStore.incomplete`'s record)."""
    path, running, command = note["store"], note.get("running"), note.get("command")
    head = f"{path} is incomplete: it holds {note['rows']} rows, {missing_text(note)}"
    allow = ("or pass --allow-incomplete (allow_incomplete=True) to use the rows it has "
             "(the report then says so).")
    if running:
        return (f"{head}: an extraction is writing it now ({describe_holder(running)}). Wait "
                f"for it to finish, {allow}")
    if command and not str(command).startswith("python:"):
        how = f"finish it by running the command that made it again: {command}"
    else:
        how = ("finish it by calling cnncodes.extract again with the same source, store and "
               "options")
    return f"{head} (its extraction was stopped). {how[0].upper()}{how[1:]}; {allow}"
