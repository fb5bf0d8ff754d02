"""The advisor's result: :class:`Advice`, everything one ``advise`` run measured and decided.

Data only: its JSON report and the compact record a store keeps as provenance, which carry the
verdict in words as well, are made by :func:`cnncodes.report.advice.advice_json` and
:func:`~cnncodes.report.advice.advice_summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .evidence import SizeInfo
from .probe import ProbeResult
from .rule import RunSetup, Thresholds
from .verdict import Verdict


@dataclass
class Advice:
    """Everything ``advise`` measured and decided."""

    setup: RunSetup
    size: SizeInfo
    head: dict[str, Any]
    batchnorm: dict[str, Any]
    probe: ProbeResult
    verdict: Verdict
    thresholds: Thresholds
    meta: dict[str, Any]

    @property
    def layer(self) -> str:
        return self.verdict.layer
