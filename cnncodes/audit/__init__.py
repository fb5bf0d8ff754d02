"""What the codes say about the data: similar images, near-duplicates and train/test leaks,
likely label errors, outliers, class balance and a 2-D map (``cnncodes similar``/``audit``).

>>> from cnncodes.audit import audit, similar
>>> res = audit("train.h5", "test.h5")           # AuditResult
>>> res.frame("leaks")                            # a pandas DataFrame (cnncodes[audit])
>>> similar("train.h5", "query.jpg", k=5).rows()
"""

from .findings import DUPLICATE_THRESHOLD
from .neighbours import Neighbours, normalize, top_k
from .run import AuditResult, audit, audit_arrays
from .similar import SimilarResult, similar

__all__ = ["DUPLICATE_THRESHOLD", "AuditResult", "Neighbours", "SimilarResult", "audit",
           "audit_arrays", "normalize", "similar", "top_k"]
