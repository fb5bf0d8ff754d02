"""The advisor's result: :class:`Advice`, everything one ``advise`` run measured and decided, with
its JSON report (:meth:`Advice.to_dict`) and the compact record a store keeps as provenance
(:meth:`Advice.summary`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..atomic import jsonable
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
            "size": self.size.to_dict(max_classes=50),
            "probe": self.probe.to_dict(compact=True), "imagenet_head": head, "batchnorm": bn,
            "thresholds": asdict(self.thresholds),
            "meta": {k: v for k, v in self.meta.items() if k != "versions"},
        })


#: The note beside a value that came out NaN or infinite.
NOT_FINITE_NOTE = "not a finite number (NaN or infinite): it could not be computed on this sample"


def finite_json(obj: Any) -> Any:
    """``obj`` as JSON types (:func:`cnncodes.atomic.jsonable`) where a NaN/inf value under a key
    becomes null with ``<key>_note`` beside it (in a list: just null)."""
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # NumPy arrays and scalars
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if hasattr(v, "tolist") and hasattr(v, "dtype"):
                v = v.tolist()
            if isinstance(v, float) and not math.isfinite(v):
                out[str(k)] = None
                out.setdefault(f"{k}_note", NOT_FINITE_NOTE)
            else:
                out[str(k)] = finite_json(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [finite_json(x) for x in obj]
    return jsonable(obj)
