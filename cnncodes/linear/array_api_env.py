"""Opting in to SciPy's array API support, which GPU model selection needs (no heavy imports here).

SciPy reads ``SCIPY_ARRAY_API`` once, when it is first imported, so the switch must be set before
anything imports SciPy or scikit-learn. The library never sets it on import; the ``cnncodes``
command does (it owns its process), and a Python user calls :func:`enable_array_api` first or
exports ``SCIPY_ARRAY_API=1``.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: What to tell a user whose SciPy came up without array API support.
ENABLE_HINT = ("call cnncodes.enable_array_api() before importing scipy or scikit-learn, or export "
               "SCIPY_ARRAY_API=1 before starting Python")


def enable_array_api() -> bool:
    """Set ``SCIPY_ARRAY_API=1`` for this process if SciPy is not imported yet.

    Returns True when SciPy will come up with array API support (or already did). A value the
    user set (e.g. ``SCIPY_ARRAY_API=0``) is respected. Side effect for the rest of the process:
    SciPy functions then reject ``np.matrix`` and masked arrays.
    """
    if os.environ.get("SCIPY_ARRAY_API") not in (None, "1"):
        return False
    if "scipy" in sys.modules:
        if os.environ.get("SCIPY_ARRAY_API") == "1":
            return True
        log.warning("scipy is already imported without array API support; GPU model selection "
                    "will use NumPy (%s)", ENABLE_HINT)
        return False
    os.environ["SCIPY_ARRAY_API"] = "1"
    return True
