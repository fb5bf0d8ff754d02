"""A sweep over library models: does each give codes, or one clear reason?

For each backbone name (``torchvision/<builder>``, ``timm/<model>``): its spec and parameter bytes
from a build on the meta device (metadata only), the input sizes that work (meta-device forward
passes), then, where its parameters are small enough for this machine, a real forward with random
weights at the smallest size that works, whose codes must have the dimension the spec reports.
Each model ends in one status: ``codes`` (real codes of the reported dimension), ``built``
(metadata only: too large for a real forward here), ``refused`` (a :class:`CnnCodesError` with its
reason) or ``failed`` (anything else: a bug to fix). ``benchmarks/sweep_models.py`` runs it over
every torchvision classification builder and one timm model per family (``make sweep``).
"""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..backbones.factory import meta_model, working_sizes
from ..backbones.registry import get_spec
from ..errors import CnnCodesError
from .engines import parameter_bytes
from .extractor import CodeExtractor, failure_reason

log = logging.getLogger(__name__)

STATUSES = ("codes", "built", "refused", "failed")
_BIG = re.compile(r"giant|gigantic|huge|large|xlarge|enormous|_e_|_g_|_h_|_l_|448|512|1k_|_xl")
_SMALL = re.compile(r"atto|femto|pico|nano|tiny|xxs|xs|small|mini|micro|_t$|_s$|18|26|050|_b0|b0")


def timm_family(name: str) -> str:
    """A timm model's family: its name before the first ``_`` or digit (``resnet`` for
    ``resnet50d``, ``convnext`` for ``convnext_atto``)."""
    return re.split(r"[_\d]", name, maxsplit=1)[0]


def timm_family_models() -> list[str]:
    """One timm model per family (:func:`timm_family`), preferring a small variant by its name."""
    import timm

    fams: dict[str, list[str]] = {}
    for n in timm.list_models():
        fams.setdefault(timm_family(n), []).append(n)
    pick = [min(ns, key=lambda n: (bool(_BIG.search(n)), not _SMALL.search(n), len(n), n))
            for ns in fams.values()]
    return sorted(f"timm/{n}" for n in pick)


def torchvision_models() -> list[str]:
    from ..backbones.tv_models import classification_models

    return [f"torchvision/{n}" for n in classification_models()]


def sweep_one(name: str, *, forward: bool = True, max_forward_bytes: int = 256 << 20,
              batch: int = 2) -> dict[str, Any]:
    """The sweep's row for one backbone (see the module docstring); never raises."""
    row: dict[str, Any] = {"backbone": name, "status": "failed", "reason": ""}
    t0 = time.perf_counter()
    try:
        spec = get_spec(name)
        nbytes = parameter_bytes(meta_model(spec))
        layer = spec.default_layer
        dim = spec.cut(layer).out_dim("avg")
        sizes = working_sizes(spec, first=True)
        row.update(layer=layer, dim=int(dim), params_mib=round(nbytes / 2**20, 1),
                   status="built")
        from ..backbones.weights import resolve_weights

        size = min(sizes) if sizes else resolve_weights(spec, "random").preprocessing.crop
        row["size"] = int(size)
        if not forward:
            return row
        if nbytes > max_forward_bytes:
            row["reason"] = (f"{nbytes / 2**30:.2f} GiB of parameters: no real forward on this "
                             "machine (metadata only)")
            return row
        ext = CodeExtractor(name, weights="random", input_size=size, engine="torch")
        imgs = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(0))
        codes = ext(imgs)[layer]
        if codes.shape != (batch, dim):
            row.update(status="failed", reason=f"codes of shape {codes.shape}, the spec reports "
                                                f"{dim}")
        elif not np.isfinite(codes).all():
            row.update(status="failed", reason="non-finite codes")
        else:
            row["status"] = "codes"
    except CnnCodesError as e:
        row.update(status="refused", reason=" ".join(str(e).split()))
    except Exception as e:  # noqa: BLE001 - the sweep records every failure as a row
        log.debug("%s failed", name, exc_info=True)
        row.update(status="failed", reason=f"{type(e).__name__}: {failure_reason(e)}")
    finally:
        gc.collect()
        row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts per library (``torchvision``/``timm``) and status."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        lib = r["backbone"].split("/", 1)[0]
        out.setdefault(lib, dict.fromkeys(STATUSES, 0))[r["status"]] += 1
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The counts as a Markdown table, then every row that is not ``codes`` with its reason."""
    counts = summarize(rows)
    lines = ["| library | models | codes | built (meta only) | refused | failed |",
             "|---|---:|---:|---:|---:|---:|"]
    for lib, c in counts.items():
        lines.append(f"| {lib} | {sum(c.values())} | " + " | ".join(str(c[s]) for s in STATUSES)
                     + " |")
    other = [r for r in rows if r["status"] != "codes"]
    if other:
        lines += ["", "| backbone | status | reason |", "|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['status']} | {r['reason'][:200]} |" for r in other]
    return "\n".join(lines)
