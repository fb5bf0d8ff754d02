"""The one way cnncodes states the uncertainty of an accuracy: a 95% Wilson score interval.

Every test accuracy printed or shown (terminal, ``report.html``) and recorded (``report.json``)
carries the interval of :func:`wilson_interval`, rendered by :func:`format_accuracy`, e.g.
``0.894 (95% CI 0.873-0.912, n=500)``; JSON records ``accuracy_ci95: [low, high]`` (and ``n``)
from :func:`ci_record`. The Wilson interval (Wilson 1927; recommended over the normal "Wald"
interval by Brown, Cai & DasGupta 2001) stays inside [0, 1] and behaves at 0 or n correct:
50/100 -> 0.404-0.596, 0/10 -> 0.000-0.278, 10/10 -> 0.722-1.000.

Also here: :func:`codes_vs_pixels`, the one rule saying whether codes beat the raw-pixel row,
:func:`plural` for "1 image" / "2 images" and :func:`format_lr` for learning rates (``1e-04``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054


def wilson_interval(correct: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (default 95%).

    ``correct`` may be fractional (an accuracy times ``n``). Returns ``(low, high)`` within
    [0, 1]; ``(0.0, 1.0)`` when ``n`` is 0 (nothing is known).

    Raises:
        ValueError: ``n`` negative or ``correct`` outside [0, n].
    """
    if n < 0 or correct < 0 or correct > n + 1e-9:
        raise ValueError(f"wilson_interval needs 0 <= correct <= n. Got correct={correct}, "
                         f"n={n} instead.")
    if n == 0:
        return 0.0, 1.0
    p = min(correct / n, 1.0)
    z2 = z * z
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if p <= 0.0 else max(0.0, centre - half)
    return lo, 1.0 if p >= 1.0 else min(1.0, centre + half)


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """:func:`wilson_interval` of an accuracy measured on ``n`` images."""
    return wilson_interval(float(accuracy) * n, int(n))


def ci_record(accuracy: Any, n: Any) -> dict[str, Any]:
    """``{"accuracy_ci95": [low, high], "ci_method": "wilson"}`` for a report (empty when the
    accuracy or ``n`` is unknown)."""
    if not _number(accuracy) or not _number(n) or int(n) <= 0:
        return {}
    lo, hi = accuracy_interval(float(accuracy), int(n))
    return {"accuracy_ci95": [round(lo, 4), round(hi, 4)], "ci_method": "wilson"}


def format_accuracy(accuracy: Any, n: Any, *, digits: int = 3) -> str:
    """``0.894 (95% CI 0.873-0.912, n=500)``; ``n/a`` without an accuracy, the bare value
    without a positive ``n``."""
    if not _number(accuracy):
        return "n/a"
    acc = float(accuracy)
    if not _number(n) or int(n) <= 0:
        return f"{acc:.{digits}f}"
    lo, hi = accuracy_interval(acc, int(n))
    return f"{acc:.{digits}f} (95% CI {lo:.{digits}f}-{hi:.{digits}f}, n={int(n)})"


def _number(v: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: how :func:`codes_vs_pixels` decides (recorded with its verdict)
CODES_VS_PIXELS_RULE = ("codes beat raw pixels when their test accuracy is higher and their 95% "
                        "Wilson intervals do not overlap (the codes' lower bound above the raw "
                        "pixels' upper bound); higher but overlapping is 'not clearly better'")


def codes_vs_pixels(codes: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether the codes row beats the raw-pixel row on the test images (None when either has
    no accuracy or test size).

    Returns ``{"verdict": "better" | "not_clearly_better" | "not_better", "codes": [acc, lo,
    hi, n], "raw_pixels": [...], "rule": CODES_VS_PIXELS_RULE}``:
    ``not_better`` when the codes' accuracy is at most the raw pixels'; ``not_clearly_better``
    when it is higher but the two Wilson intervals overlap.
    """
    def one(r: Mapping[str, Any]) -> list[float] | None:
        acc, n = r.get("accuracy"), r.get("n_test")
        if not _number(acc) or not _number(n) or int(n) <= 0:
            return None
        lo, hi = accuracy_interval(float(acc), int(n))
        return [float(acc), lo, hi, int(n)]

    c, p = one(codes), one(raw)
    if c is None or p is None:
        return None
    if c[0] <= p[0]:
        verdict = "not_better"
    elif c[1] <= p[2]:
        verdict = "not_clearly_better"
    else:
        verdict = "better"
    return {"verdict": verdict, "codes": [round(x, 4) for x in c],
            "raw_pixels": [round(x, 4) for x in p], "rule": CODES_VS_PIXELS_RULE}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 images`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def format_lr(v: Any) -> str:
    """A learning rate in scientific notation, ``1e-04``, ``2.5e-03`` (``0`` only when it is
    exactly 0, e.g. the first step of a warmup or the last of a cosine schedule)."""
    if not _number(v):
        return "n/a"
    if v == 0:
        return "0"
    mant, _, exp = f"{float(v):.2e}".partition("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{exp}"
