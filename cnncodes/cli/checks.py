"""Checks of a command line's input paths and backbone names that run before any heavy import
(torch, scikit-learn, h5py), so that a mistyped path or name is refused in a fraction of a second
instead of after 5-20 s of imports. Each raises the same error as the library would later.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NotFoundError
from ..linear.options import MODEL_FILE


def require_store(path: str | os.PathLike | None) -> None:
    """Refuse a code store that does not exist (and that no first extraction is creating: then
    the reader says what it has journaled)."""
    if path is None:
        return
    p = Path(path)
    if p.is_file() or p.with_name(p.name + ".parts").is_dir():
        return
    raise NotFoundError(f"No code store at {p}.")


def require_model(path: str | os.PathLike) -> None:
    """Refuse a model file that does not exist (``cnncodes train`` or a fine-tuned model.pt)."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"No model file at {p}; train one with `cnncodes train CODES.h5 -o "
                            f"{MODEL_FILE}` (or pass a fine-tuned RUN/model.pt).")


def require_sources(*sources: str | os.PathLike | None) -> None:
    """Refuse an image source (folder, list file, .h5 store) that does not exist."""
    from ..sources.folders import check_source_exists

    for s in sources:
        if s is not None:
            check_source_exists(s)


def require_backbones(*names: str | None) -> None:
    """Refuse a backbone name that names nothing (not in the registry's catalog, not ``timm/...``
    or ``torchvision/...``); each of ``names`` may be a comma-separated list or None."""
    from ..backbones.catalog import check_backbone_name

    for n in names:
        for one in (n or "").split(","):
            if one.strip():
                check_backbone_name(one.strip())
