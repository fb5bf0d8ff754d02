"""What a run into an existing store must do: the store (and an unfinished journal) compared with
the source's files now.

Per file of the source: a row whose file is unchanged (same identity, same label) is done; a row
whose file changed is extracted again and replaced in place; a recorded failure is tried again when
its file changed (or with ``retry_failed``); a path the store does not know is added. Rows of this
source whose file is no longer in it are dropped (``keep_missing``: kept and flagged). Journal
parts left by a killed run are checked the same way: a part holding any stale row is deleted and
its files extracted again, so the journal never holds two versions of a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreMismatchError
from .identity import (
    UNSTATABLE,
    FileIdentity,
    changed,
    file_ids,
    from_columns,
    same_source,
    source_label,
)
from .journal import Journal
from .reader import FeatureStore

log = logging.getLogger(__name__)


@dataclass
class Sync:
    """The plan of one run: source indices to extract (with the identity of each file, taken
    before it is read), rows to drop, missing flags to set, and the counts the summary reports."""

    pending: list[int] = field(default_factory=list)
    ids: dict[int, FileIdentity] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)
    flags: dict[str, bool] = field(default_factory=dict)
    done: int = 0          # rows of the store (and journal) that stay as they are
    added: int = 0         # files new to the store
    changed: int = 0       # rows whose file (or label) changed: extracted again
    retried: int = 0       # recorded failures tried again (changed file or retry_failed)
    removed: int = 0       # rows dropped: file gone from the source
    missing: int = 0       # rows kept and flagged: file gone (keep_missing)
    unverified: int = 0    # rows without a recorded identity (format-1 stores): not checked
    stale_parts: int = 0   # journal parts deleted because a file changed since


def resolve_sources(existing: Sequence[dict[str, Any]], desc: dict[str, Any], store: Path, *,
                    add_source: bool) -> tuple[list[dict[str, Any]], int, bool]:
    """The store's sources after this run, this run's index in them, and whether the list grew.

    Raises:
        StoreMismatchError: another source than the store's, without ``add_source``.
    """
    sources = [dict(s) for s in existing]
    for k, s in enumerate(sources):
        if same_source(s, desc):
            return sources, k, False
    if not sources:
        return [desc], 0, True
    if not add_source:
        have = "; ".join(source_label(s) for s in sources)
        raise StoreMismatchError(
            f"{store} holds the codes of {have}, not of {source_label(desc)}. Extracting another "
            "source into it would mix the two. Use --add-source (add_source=True) to add this "
            "source's images to the store, another -o file for a store of its own, or "
            "--overwrite to replace the store with this source's codes.")
    return sources + [desc], len(sources), True


def stored_paths(src_root: Path, paths: Sequence[str], store_root: Path) -> list[str]:
    """The source's paths as the store records them: relative to the store's root (its first
    source's root) where possible, else absolute."""
    if Path(src_root) == Path(store_root):
        return list(paths)
    out = []
    for p in paths:
        a = Path(p) if os.path.isabs(p) else Path(src_root) / p
        try:
            out.append(a.relative_to(store_root).as_posix())
        except ValueError:
            out.append(a.as_posix())
    return out


def _refuse_relabel(store: Path, rows: dict[str, tuple[FileIdentity, int, str, bool]],
                    index: dict[str, int], labels: Sequence[str], source: int) -> None:
    """Refuse a source (added with ``add_source``) that holds files the store already has from
    another source under another label: extracting would silently flip their labels.

    Raises:
        StoreMismatchError: naming the files (first five), both labels and the ways forward.
    """
    clash = [(p, lab, labels[index[p]]) for p, (_fid, s, lab, _m) in rows.items()
             if s != source and p in index and labels[index[p]] != lab]
    if not clash:
        return
    shown = "; ".join(f"{p} ({was!r} in the store, {now!r} in this source)"
                      for p, was, now in clash[:5])
    raise StoreMismatchError(
        f"{store}: {len(clash)} file(s) of this source are already in the store from another "
        f"source with another label: {shown}{'; ...' if len(clash) > 5 else ''}. Adding them "
        "would change their labels. Give them the same label in both sources, leave them out of "
        "this one, or write this source to its own store (another -o file).")


def plan_sync(store: Path, journal: Journal, *, stored: Sequence[str], abspaths: Sequence[Path],
              labels: Sequence[str], source: int, append_only: bool, verify: str,
              retry_failed: bool, keep_missing: bool,
              ids: Sequence[FileIdentity | None] | None = None,
              redo: frozenset[str] | set[str] = frozenset()) -> Sync:
    """Compare the store and journal with the files now (see the module docstring).

    Args:
        stored: each source file's path as the store records it; ``abspaths``: where it is now;
            ``labels``: its class name ('' unlabelled).
        source: this run's index in the store's sources; ``append_only``: a path list (never
            drops rows); ``ids``: each file's identity now when the source knows it (tar
            members), else every file is stat'ed (and hashed in the hash mode).
        redo: stored paths whose rows are extracted again whatever their file (``--repair``:
            rows whose codes failed their checksum).
    """
    now = list(ids) if ids is not None else file_ids(list(abspaths), hashed=verify == "hash")
    index = {p: i for i, p in enumerate(stored)}
    rows, fails = _store_rows(store)
    _refuse_relabel(store, rows, index, labels, source)
    sync = Sync()

    def stale(p: str, fid: FileIdentity, label: str | None) -> bool:
        i = index.get(p)
        return i is not None and (changed(fid, now[i], verify)
                                  or (label is not None and label != labels[i]))

    jrows, jfails = _journal_rows(journal, stale, sync)
    for i, p in enumerate(stored):
        if p in jrows:
            sync.done += 1
        elif p in rows:
            fid, _, y, miss = rows[p]
            if p in redo or changed(fid, now[i], verify) or y != labels[i]:
                sync.pending.append(i)
                sync.changed += 1
            else:
                sync.done += 1
                sync.unverified += not fid.known
                if miss:
                    sync.flags[p] = False
        elif p in jfails or p in fails:
            fid = (jfails.get(p) or fails[p])[0]
            if retry_failed or changed(fid, now[i], verify):
                sync.pending.append(i)
                sync.retried += 1
        else:
            sync.pending.append(i)
            sync.added += 1
    if not append_only:
        _gone(sync, source, index, rows, jrows, fails, jfails, keep_missing)
    sync.done += sum(1 for p in rows if p not in index and p not in sync.drop)
    sync.ids = {i: now[i] or UNSTATABLE for i in sync.pending}
    return sync


def _store_rows(store: Path) -> tuple[dict[str, tuple[FileIdentity, int, str, bool]],
                                      dict[str, tuple[FileIdentity, int]]]:
    """The store's rows (path: identity, source, label, missing flag) and failures (path:
    identity, source); both empty when there is no store file yet."""
    rows: dict[str, tuple[FileIdentity, int, str, bool]] = {}
    fails: dict[str, tuple[FileIdentity, int]] = {}
    if store.is_file():
        st = FeatureStore(store)
        t, cls, lab = st.file_table(), st.classes, st.labels
        for p, fid, s, y, m in zip(st.paths.tolist(), from_columns(t), t["source"].tolist(),
                                   lab.tolist(), t["missing"].tolist(), strict=True):
            rows[p] = (fid, int(s), cls[y] if y >= 0 else "", bool(m))
        ft = st.failure_table()
        for p, fid, s in zip(ft["paths"].tolist(), from_columns(ft), ft["source"].tolist(),
                             strict=True):
            fails[p] = (fid, int(s))
    return rows, fails


def _journal_rows(journal: Journal, stale: Callable[[str, FileIdentity, str | None], bool],
                  sync: Sync) -> tuple[dict[str, tuple[FileIdentity, int]],
                                       dict[str, tuple[FileIdentity, int]]]:
    """The journal's rows and failures (path: identity, source); a part holding a file that
    changed since (``stale``) is deleted instead (counted in ``sync.stale_parts``) so its files
    are extracted again."""
    jrows: dict[str, tuple[FileIdentity, int]] = {}
    jfails: dict[str, tuple[FileIdentity, int]] = {}
    for part in journal.read_parts(codes=False):
        r_ids, f_ids = part.ids(), part.fail_ids()
        if (any(stale(p, fid, y) for p, fid, y in zip(part.paths.tolist(), r_ids,
                                                       part.labels.tolist(), strict=True))
                or any(stale(p, fid, None) for p, fid in zip(part.fail_paths.tolist(), f_ids,
                                                             strict=True))):
            log.info("journal part %s holds files that changed since; extracting them again",
                     part.file.name if part.file else "?")
            if part.file is not None:
                part.file.unlink(missing_ok=True)
            sync.stale_parts += 1
            continue
        jrows.update((p, (fid, part.source)) for p, fid in zip(part.paths.tolist(), r_ids,
                                                                 strict=True))
        jfails.update((p, (fid, part.source)) for p, fid in zip(part.fail_paths.tolist(), f_ids,
                                                                  strict=True))
    return jrows, jfails


def _gone(sync: Sync, source: int, listed: dict[str, int],
          rows: dict[str, tuple[FileIdentity, int, str, bool]],
          jrows: dict[str, tuple[FileIdentity, int]],
          fails: dict[str, tuple[FileIdentity, int]], jfails: dict[str, tuple[FileIdentity, int]],
          keep_missing: bool) -> None:
    """Rows and failures of this source whose file is no longer in it: dropped or flagged."""
    for p, entry in list(rows.items()) + [(p, (e[0], e[1], "", False)) for p, e in jrows.items()
                                          if p not in rows]:
        if entry[1] != source or p in listed:
            continue
        if keep_missing:
            if not entry[3]:
                sync.flags[p] = True
            sync.missing += 1
        else:
            sync.drop.add(p)
            sync.removed += p in rows
    for p, (_, s) in list(fails.items()) + list(jfails.items()):
        if s == source and p not in listed:
            sync.drop.add(p)
