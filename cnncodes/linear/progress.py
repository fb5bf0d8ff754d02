"""Progress of long model-selection steps: fits done / total, ETA and the score per C so far, in
the log, and on a tqdm bar (``progress=True``) or through a callback.

A callback is called as ``callback(done, total, info)`` after each unit of work, where ``info``
holds ``stage`` (``"search"``, ``"refit"``, ``"pixels"``...), ``elapsed_s``, ``eta_s`` and,
for a fit, ``C`` and ``score`` (None when a fit is not scored, e.g. the refit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: ``progress=`` of the fitting functions: False/None (log only), True (a tqdm bar on stderr
#: as well) or a callable ``(done, total, info)``.
ProgressArg = bool | Callable[[int, int, dict[str, Any]], Any] | None


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class FitProgress:
    """Counts units of work (fits, images) towards ``total``; each :meth:`step` is logged with
    the ETA (at INFO when ``log_every`` units passed or a unit took more than a second) and
    reported to the bar or callback."""

    def __init__(self, total: int, *, desc: str, progress: ProgressArg = None,
                 unit: str = "fit", log_every: int = 1) -> None:
        self.total, self.desc, self.unit, self.log_every = int(total), desc, unit, log_every
        self.done = 0
        self.t0 = self._last = time.perf_counter()
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True and self.total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True,
                            smoothing=0.3)
        self.scores: dict[float, list[float]] = {}  # per C: the fold scores so far

    def shrink(self, n: int) -> None:
        """``n`` planned units will not run (a search stopped early): the total and ETA follow."""
        self.total = max(self.done, self.total - int(n))
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def step(self, n: int = 1, *, stage: str = "search", C: float | None = None,
             score: float | None = None) -> None:
        """``n`` more units done (a fit at ``C`` with its validation ``score``)."""
        self.done += n
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        info: dict[str, Any] = {"stage": stage, "elapsed_s": round(elapsed, 2),
                                "eta_s": round(eta, 2)}
        if C is not None:
            info["C"] = float(C)
        if score is not None:
            info["score"] = float(score)
            if C is not None:
                self.scores.setdefault(float(C), []).append(float(score))
        slow = now - self._last > 1.0
        self._last = now
        if slow or self.done % self.log_every == 0 or self.done == self.total:
            what = (f", C={C:.3g}" if C is not None else "") + (
                f" score {score:.4f}" if score is not None else "")
            means = {c: sum(v) / len(v) for c, v in self.scores.items()}
            top = max(means, key=means.__getitem__) if means else None
            best = (f"; best mean so far C={top:.3g} ({means[top]:.4f}, "
                    f"{len(self.scores[top])} fit{'s' if len(self.scores[top]) > 1 else ''})"
                    if top is not None else "")
            log.info("%s: %s %d/%d%s%s, %s elapsed, ETA %s", self.desc, self.unit, self.done,
                     self.total, what, best, _fmt_s(elapsed), _fmt_s(eta))
        if self.bar is not None:
            if score is not None and C is not None:
                self.bar.set_postfix_str(f"C={C:.3g} {score:.4f}", refresh=False)
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total, info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
