"""What the codes say about the data: similar images, near-duplicates and train/test leaks,
likely label errors, outliers, class balance and a 2-D map (``cnncodes similar``/``audit``).

>>> from cnncodes.audit import audit, similar
>>> res = audit("train.h5", "test.h5")           # AuditResult
>>> res.frame("leaks")                            # a pandas DataFrame (cnncodes[audit])
>>> similar("train.h5", "query.jpg", k=5).rows()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr
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


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
