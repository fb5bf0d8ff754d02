"""``baseline --layer auto``: the layer (and classifier) chosen by the advisor on the training rows
only, its evidence reused when recorded in the cache for the same rows, and recorded into the stores
through :func:`cnncodes.codes.store.update_provenance`; and advise's size rule for the fall-through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codes.store import update_provenance
from ..linear.options import MODELS, ClassifierOptions
from ..options import BackboneOptions, RuntimeOptions
from ..sources.folders import ImageSource, open_source
from .inputs import holdout_sources

log = logging.getLogger(__name__)


@dataclass
class LayerChoice:
    """The layer a baseline classifies on, and how it was chosen.

    Attributes:
        layer: the layer name.
        model: the classifier to train (the advised one when none was named).
        advice: the advisor's evidence (None unless ``layer="auto"``).
        use: how the advice was used (``report["advice_use"]``), None without advice.
        holdout_paths: the test files of a hold-out split made before extraction (the advisor
            must not see them); None when the split is made on the store rows.
    """

    layer: str
    model: str
    advice: dict[str, Any] | None = None
    use: dict[str, Any] | None = None
    holdout_paths: set[str] | None = field(default=None, repr=False)


def _rows_key(src: ImageSource, split: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies the training rows an advice was measured on (for reusing it)."""
    h = hashlib.sha256()
    for p, y in zip(src.paths, src.labels.tolist(), strict=True):
        if y >= 0:
            h.update(f"{p}\t{src.classes[y]}\n".encode())
    return {"n": int((src.labels >= 0).sum()), "sha256": h.hexdigest()[:16], **split}


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                     default=str)


def advise_layer(train_source: str | os.PathLike | ImageSource, *,
                 backbone: BackboneOptions, runtime: RuntimeOptions | None = None,
                 budget: str | float | None = None, seed: int = 0, thresholds: Any = None,
                 train_key: Mapping[str, Any] | None = None,
                 reuse_from: str | os.PathLike | None = None,
                 **advise_options: Any) -> tuple[str, dict[str, Any], bool]:
    """``(layer, evidence, reused)``: :func:`.advice.choose_layer` on the training rows.

    The advice recorded in ``reuse_from`` (a code store) by an earlier run is reused when it was
    measured on the same training rows (``train_key``) with the same thresholds; otherwise the
    advisor runs again (``reuse_from`` is never handed to ``choose_layer``, whose own reuse does
    not know which rows the advice saw). ``evidence`` gets ``train_rows`` = ``train_key``.
    ``budget`` None: no time budget; ``advise_options`` go to :func:`~.advice.advise`.
    """
    # read from the module at call time: tests may monkeypatch its choose_layer
    from ..advisor.rule import Thresholds
    from ..advisor.run import recorded_advice
    from .advice import choose_layer

    b, r = backbone, runtime or RuntimeOptions()
    th = thresholds if thresholds is not None else Thresholds()
    if reuse_from is not None and train_key is not None:
        prior = recorded_advice(reuse_from, backbone=b.backbone, pooling=b.pooling)
        if (prior is not None and _same_json(prior.get("train_rows"), dict(train_key))
                and _same_json(prior.get("thresholds"), asdict(th))):
            log.info("--layer auto: reusing %s, chosen on the same training rows and recorded "
                     "in %s", prior["layer"], reuse_from)
            return str(prior["layer"]), dict(prior), True
    run = {"batch_size": r.batch_size, "num_workers": r.num_workers, "device": r.device,
           "precision": r.precision, "threads": r.threads,
           "max_pixels": r.max_pixels, "progress": r.progress}
    layer, evidence = choose_layer(train_source, backbone=b.backbone, weights=b.weights,
                                   pooling=b.pooling, input_size=b.input_size, budget=budget,
                                   reuse_from=None, seed=seed, thresholds=th,
                                   **{**run, **advise_options})
    evidence = dict(evidence)
    if train_key is not None:
        evidence["train_rows"] = dict(train_key)
    return str(layer), evidence, False


def choose_training_layer(split: Mapping[str, Path], layer: str, *, backbone: BackboneOptions,
                          runtime: RuntimeOptions, classifier: ClassifierOptions,
                          cache: Path | None, holdout: float, seed: int,
                          budget: str | float | None, thresholds: Any = None,
                          advise_options: Mapping[str, Any] | None = None) -> LayerChoice:
    """The layer and classifier of a baseline on ``split`` (see :func:`find_split`).

    ``layer`` other than ``auto`` is used as given. ``auto``: :func:`advise_layer` on the training
    rows only (``train/``, or the training part of a hold-out split, then made on the source
    files before extraction: :func:`holdout_sources`); the advice recorded in ``cache`` (the
    cache folder, None = do not reuse) for the same rows is reused. With no ``model`` named, the
    advised classifier is used.
    """
    if layer != "auto":
        return LayerChoice(layer, classifier.model_name)
    t0 = time.perf_counter()
    single = "all" in split
    holdout_paths = None
    if single and holdout:
        train_src, held = holdout_sources(split["all"], holdout=holdout, seed=seed)
        holdout_paths = set(held.paths)
        rows_split: dict[str, Any] = {"split": "holdout", "test_size": float(holdout),
                                      "seed": int(seed)}
        adv_arg: str | os.PathLike | ImageSource = train_src
    else:
        adv_arg = split["all"] if single else split["train"]
        train_src = open_source(adv_arg)
        rows_split = {"split": "all" if single else "train/"}
    key = _rows_key(train_src, rows_split)
    reuse = None if cache is None else cache / ("codes.h5" if single else "train.h5")
    name, advice, reused = advise_layer(adv_arg, backbone=backbone, runtime=runtime,
                                        budget=budget, seed=seed, thresholds=thresholds,
                                        train_key=key, reuse_from=reuse,
                                        **dict(advise_options or {}))
    log.info("--layer auto -> %s: %s", name, advice.get("explanation"))
    advised = advice.get("classifier")
    use_advised = classifier.model is None and advised in MODELS
    model = str(advised) if use_advised else classifier.model_name
    use = {"layer": name, "reused_from_cache": reused, "train_rows": int(key["n"]),
           "seconds": round(time.perf_counter() - t0, 2), "model": model,
           "model_source": "advice" if use_advised else
           ("given" if classifier.model else "default")}
    return LayerChoice(name, model, advice, use, holdout_paths)


def record_advice(path: str | os.PathLike, evidence: Mapping[str, Any]) -> bool:
    """Make sure ``path``'s provenance holds ``evidence`` as ``advice``.

    ``extract(..., extra_provenance=...)`` records it whenever it writes the store; a store that
    was already complete (codes cached by an earlier run) is not rewritten by ``extract``, so the
    attribute is set here (the store's ``<name>_json`` attribute convention). Returns whether
    the file was changed.
    """
    return update_provenance(path, {"advice": dict(evidence)})


def size_check(train_source: ImageSource, thresholds: Any = None) -> dict[str, Any]:
    """Is the training part large enough to fine-tune, by advise's size rule?

    Uses :class:`cnncodes.advise.SizeInfo` ``.size_class`` with ``thresholds``
    (:class:`cnncodes.advise.Thresholds`): ``large`` needs a median of ``large_per_class``
    images per class **and** ``large_total`` images.
    """
    from ..advisor.evidence import SizeInfo
    from ..advisor.rule import Thresholds

    th = thresholds if thresholds is not None else Thresholds()
    lab = train_source.labels[train_source.labels >= 0]
    counts = np.bincount(lab, minlength=len(train_source.classes))
    size = SizeInfo(n_images=int(counts.sum()),
                    per_class={c: int(n) for c, n in zip(train_source.classes, counts,
                                                         strict=True) if n > 0})
    cls = size.size_class(th)
    short = []
    if size.median_per_class < th.large_per_class:
        short.append(f"median < {th.large_per_class} per class")
    if size.n_images < th.large_total:
        short.append(f"images < {th.large_total}")
    return {"size_class": cls, "large": cls == "large", "n_images": size.n_images,
            "n_classes": size.n_classes, "median_per_class": size.median_per_class,
            "short_by": short, "thresholds": asdict(th)}
