"""JSON without NaN: :func:`finite_json` turns a report into JSON types where a value that came
out NaN or infinite is null with a ``<key>_note`` beside it saying so.

No imports beyond the standard library and :mod:`cnncodes.atomic`, so the report writers
(:mod:`cnncodes.report.files`) use it without loading the advisor's torch code. (Its natural home
is next to :func:`cnncodes.atomic.jsonable`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..atomic import jsonable

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
