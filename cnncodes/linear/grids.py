"""C grids and the number of stratified folds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .options import DEFAULT_C_GRID, FULL_C_GRID

log = logging.getLogger(__name__)


def parse_c_grid(grid: str | float | Sequence[float] | None = None) -> np.ndarray:
    """Turn a C grid specification into a sorted array of unique positive floats.

    Accepts ``None``/``"default"`` (:data:`DEFAULT_C_GRID`), ``"full"`` (:data:`FULL_C_GRID`, the
    45-value [1e-6, 1e5] protocol grid), ``"start:stop:count"`` (``count`` log-spaced values from
    ``start`` to ``stop`` inclusive, e.g. ``1e-4:1e2:13``), a comma list ``"0.01,0.1,1"``, a number
    or a sequence of numbers.

    Raises:
        ValueError: malformed text or a non-positive value (the bad part is named).
    """
    if grid is None:
        grid = DEFAULT_C_GRID
    if isinstance(grid, str):
        text = grid.strip().lower()
        if text == "default":
            text = DEFAULT_C_GRID
        elif text == "full":
            text = FULL_C_GRID
        hint = ("use start:stop:count (e.g. 1e-4:1e2:13), a comma list (0.01,0.1,1), 'default' "
                "or 'full'")
        if ":" in text:
            parts = text.split(":")
            try:
                if len(parts) != 3:
                    raise ValueError
                start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise ValueError(f"Bad C grid {grid!r}; {hint}.") from None
            if start <= 0 or stop <= 0 or count < 1:
                raise ValueError(f"Bad C grid {grid!r}: start and stop must be > 0 and count "
                                 f">= 1; {hint}.")
            values = np.logspace(math.log10(start), math.log10(stop), count)
        else:
            try:
                values = np.array([float(x) for x in text.split(",") if x.strip()])
            except ValueError:
                raise ValueError(f"Bad C grid {grid!r}; {hint}.") from None
    else:
        values = np.atleast_1d(np.asarray(grid, dtype=float))
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"C grid {grid!r} must hold finite values > 0; got {values.tolist()}.")
    return np.unique(values)


def resolve_cv(y: np.ndarray, cv: int, *, classes: Sequence[str] | None = None) -> int:
    """The number of stratified folds to use: ``cv``, reduced (with a warning) to the size of the
    smallest class when that class has fewer rows.

    Raises:
        ValueError: ``cv`` < 2, fewer than two classes, or a class with fewer than 2 rows (it is
            named with its count).
    """
    if int(cv) < 2:
        raise ValueError(f"cv must be >= 2 folds; got {cv}.")
    labels, counts = np.unique(y, return_counts=True)
    names = [classes[i] if classes is not None else str(i) for i in labels]
    if len(labels) < 2:
        raise ValueError(f"Training needs at least 2 classes; the training rows hold only "
                         f"{names}. Add images of other classes.")
    smallest = int(counts.min())
    if smallest < 2:
        tiny = [f"{n!r} ({c})" for n, c in zip(names, counts, strict=True) if c < 2]
        raise ValueError(f"Class {', '.join(tiny)} has fewer than 2 training images; stratified "
                         "cross-validation needs at least 2 per class. Add images to it or remove "
                         "that class folder.")
    if smallest < cv:
        small = names[int(np.argmin(counts))]
        log.warning("class %r has only %d training images: using %d folds instead of %d",
                    small, smallest, smallest, cv)
        return smallest
    return int(cv)
