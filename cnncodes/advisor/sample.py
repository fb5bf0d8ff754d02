"""How many images the advisor probes, and which: the time budget and the stratified sample.

* :func:`parse_budget`: ``"5min"``, ``"90s"``, ``300``... -> seconds;
* :func:`budgeted_size`: the sample size a budget buys at the measured extraction speed, rounded
  down to a round number (:func:`round_down_nice`) so that small speed differences do not change
  it;
* :func:`select_sample`: a prefix of :func:`cnncodes.sources.splits.stratified_order` (every prefix
  is a proportional stratified sample), topped up so each class can fill the CV folds.

Pure NumPy: no torch import.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import OptionError

#: Share of the time budget given to extracting codes, per probe (the rest is for the probe fits).
EXTRACT_SHARE = {"ridge": 0.7, "logreg": 0.5}


def parse_budget(budget: str | float | None) -> float | None:
    """``"5min"``, ``"90s"``, ``"1.5h"``, ``"2m30s"``, ``300`` -> seconds; None/``"none"`` -> None.

    Raises:
        OptionError: unparseable or non-positive budget (the message shows valid forms).
    """
    if budget is None:
        return None
    if isinstance(budget, (int, float)):
        value = float(budget)
    else:
        s = budget.strip().lower().replace(" ", "")
        if s in ("none", "inf", "unlimited", ""):
            return None
        units = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
                 "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600,
                 "hours": 3600}
        parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]*)", s)
        if not parts or "".join(a + b for a, b in parts) != s or any(
                u and u not in units for _, u in parts):
            raise OptionError(f"Cannot read the time budget {budget!r}: it must be a duration. "
                              "Write it like 300, 90s, 5min, 2m30s or 1h (or none).")
        value = sum(float(a) * units[u or "s"] for a, u in parts)
    if not value > 0:
        raise OptionError(f"The time budget must be positive. Got {budget!r} instead.")
    return value


def select_sample(order: np.ndarray, labels: np.ndarray, n: int, *,
                  min_per_class: int = 0) -> np.ndarray:
    """The first ``n`` rows of ``order``, topped up so every class has ``min_per_class`` rows
    where it can; returned in ``order``'s order."""
    n = max(0, min(int(n), order.size))
    take = np.zeros(order.size, bool)
    take[:n] = True
    if min_per_class > 0:
        lab = labels[order]
        for c in np.unique(lab):
            pos = np.flatnonzero(lab == c)
            have = int(take[pos].sum())
            if have < min_per_class:
                take[pos[:min_per_class]] = True
    return order[take]


def round_down_nice(n: int) -> int:
    """Largest of 1, 1.5, 2, 3, 5, 7.5 x 10^k not above ``n`` (keeps budgeted sizes stable)."""
    if n < 10:
        return max(int(n), 0)
    mag = 10 ** math.floor(math.log10(n))
    for m in (7.5, 5, 3, 2, 1.5, 1):
        if m * mag <= n:
            return int(m * mag)
    return int(mag)


def budgeted_size(rate: float, budget_s: float | None, *, probe: str, cap: int,
                  floor: int = 0) -> int:
    """Images to probe: what ``budget_s`` seconds extract at ``rate`` images/s in the budget's
    extraction share (:data:`EXTRACT_SHARE`), rounded down nicely, within ``[floor, cap]``.

    ``budget_s=None`` (no budget) gives ``cap``; ``floor`` is what was already extracted to
    measure the speed (never thrown away).
    """
    if budget_s is None:
        return int(cap)
    if not math.isfinite(rate):
        return int(cap)
    fit = int(rate * EXTRACT_SHARE[probe] * budget_s)
    return int(min(cap, max(floor, round_down_nice(fit))))
