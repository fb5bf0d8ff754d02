"""What the codes say about the data: similar images, near-duplicates and train/test leaks,
likely label errors, outliers, class balance and a 2-D map (``cnncodes similar``/``audit``).

>>> from cnncodes.audit import audit, similar
>>> res = audit("train.h5", "test.h5")           # AuditResult
>>> res.frame("leaks")                            # a pandas DataFrame (cnncodes[audit])
>>> similar("train.h5", "query.jpg", k=5).rows()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .defaults import DUPLICATE_THRESHOLD, AuditSettings

if TYPE_CHECKING:
    from .neighbours import Neighbours, normalize, top_k
    from .run import AuditResult, audit, audit_arrays
    from .similar import SimilarResult, similar

#: loaded on first use (PEP 562): ``cnncodes.audit.defaults`` stays free of NumPy for the CLI
_LAZY = {"Neighbours": ".neighbours", "normalize": ".neighbours", "top_k": ".neighbours",
         "AuditResult": ".run", "audit": ".run", "audit_arrays": ".run",
         "SimilarResult": ".similar", "similar": ".similar"}

__all__ = ["DUPLICATE_THRESHOLD", "AuditResult", "AuditSettings", "Neighbours", "SimilarResult",
           "audit", "audit_arrays", "normalize", "similar", "top_k"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
