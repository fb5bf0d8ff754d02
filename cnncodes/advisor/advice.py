"""The advisor's result: :class:`Advice`, everything one ``advise`` run measured and decided, with
its JSON report (:meth:`Advice.to_dict`) and the compact record a store keeps as provenance
(:meth:`Advice.summary`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..atomic import finite_json
from .evidence import SizeInfo
from .probe import ProbeResult
from .rule import Decision, RunSetup, Thresholds


@dataclass
class Advice:
    """Everything ``advise`` measured and decided (``to_dict()`` is the JSON report)."""

    setup: RunSetup
    size: SizeInfo
    head: dict[str, Any]
    batchnorm: dict[str, Any]
    probe: ProbeResult
    decision: Decision
    thresholds: Thresholds
    meta: dict[str, Any]

    @property
    def layer(self) -> str:
        return self.decision.layer

    @property
    def explanation(self) -> str:
        return self.decision.explanation

    @property
    def warnings(self) -> list[str]:
        """The decision's caveats (a sample too small to compare layers comes first)."""
        return list(self.decision.warnings)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (JSON types only; a value that could not be computed is null with a
        ``<key>_note`` beside it)."""
        return finite_json({
            "version": 1, "layer": self.layer, "quadrant": self.decision.quadrant,
            "explanation": self.explanation, "next_command": self.decision.next_command,
            "layers_compared": self.decision.layers_compared, "warnings": self.warnings,
            "similarity_verdict": self.decision.similarity_evidence,
            "answers_agree": self.decision.agree,
            "setup": asdict(self.setup), "size": self.size.to_dict(),
            "similarity": {"imagenet_head": self.head, "batchnorm": self.batchnorm,
                           "probe": self.probe.to_dict()},
            "decision": self.decision.to_dict(), "thresholds": asdict(self.thresholds),
            "meta": self.meta,
        })

    def summary(self) -> dict[str, Any]:
        """A compact, JSON-able record for a store's provenance (``advice``)."""
        head = {k: v for k, v in self.head.items() if k not in ("top_categories",)}
        bn = {k: v for k, v in self.batchnorm.items() if k != "per_layer"}
        d = self.decision
        return finite_json({
            "version": 1, "layer": self.layer, "quadrant": d.quadrant,
            "similarity": d.similarity, "size_class": d.size_class, "classifier": d.classifier,
            "explanation": self.explanation, "next_command": d.next_command,
            "comparison": d.comparison, "warnings": d.warnings,
            "similarity_verdict": d.similarity_evidence, "answers_agree": d.agree,
            "size": self.size.to_dict(max_classes=50),
            "probe": self.probe.to_dict(compact=True), "imagenet_head": head, "batchnorm": bn,
            "thresholds": asdict(self.thresholds),
            "meta": {k: v for k, v in self.meta.items() if k != "versions"},
        })

