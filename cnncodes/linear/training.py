"""Training on a code store: :func:`train` reads one layer's labelled rows, holds out a stratified
share (:func:`cnncodes.sources.splits.stratified_holdout`) or given paths, runs
:func:`~cnncodes.linear.selection.fit_codes` and binds the result to the store's provenance.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from .._version import __version__
from ..backbones.catalog import missing_layer_fix
from ..codes.store import FeatureStore
from ..sources.splits import stratified_holdout
from .array_api import _sklearn_version
from .model_file import _COPIED_FIELDS, TrainedModel, store_provenance
from .options import DEFAULT_MODEL, MODELS, ClassifierOptions, classifier_options
from .progress import ProgressArg
from .selection import fit_codes

log = logging.getLogger(__name__)


def _as_store(store: str | os.PathLike | FeatureStore) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def resolve_layer(store: FeatureStore, layer: str | None) -> str:
    """``layer`` checked against the store; None -> the only layer, else the default layer."""
    layers = store.layers
    if layer is None:
        if len(layers) == 1:
            return layers[0]
        default = store.provenance.get("default_layer")
        return default if default in layers else layers[-1]
    if "," in layer:
        raise ValueError(f"A classifier reads one layer; got {layer!r}. Pick one of "
                         f"{', '.join(layers)}.")
    if layer not in layers:
        fix = missing_layer_fix(store.provenance.get("backbone"), layer)
        raise ValueError(f"Layer {layer!r} is not in {store.path}; it holds {', '.join(layers)}: "
                         f"{fix}.")
    return layer


def choose_model(provenance: Mapping[str, Any], layer: str, model: str | None
                 ) -> tuple[str, str, str]:
    """The classifier to train on ``layer``: ``(model, source, reason)``.

    ``model`` named: that one (``source`` ``given``). Else the classifier the advisor chose for
    this layer when a ``--layers auto`` extraction recorded its advice in the store (``advice``),
    else :data:`~cnncodes.linear.options.DEFAULT_MODEL` (``default``).
    """
    if model is not None:
        return model, "given", f"{model} as named (--model)"
    advice = provenance.get("advice")
    advised = advice.get("classifier") if isinstance(advice, Mapping) else None
    if advised in MODELS:
        assert isinstance(advice, Mapping)
        if advice.get("layer") == layer:
            why = f" ({advice.get('quadrant')})" if advice.get("quadrant") else ""
            return str(advised), "advice", (
                f"{advised}: advised for {layer}{why} by the --layers auto advice recorded in "
                "the store (pass --model to choose another)")
        return DEFAULT_MODEL, "default", (
            f"{DEFAULT_MODEL}, the default: the advice recorded in the store ({advised}) is for "
            f"layer {advice.get('layer')}, not {layer} (pass --model to choose)")
    return DEFAULT_MODEL, "default", f"{DEFAULT_MODEL}, the default (pass --model to choose)"


def report_note(note: Mapping[str, Any]) -> dict[str, Any]:
    """What a report records of an incomplete store it read (:meth:`FeatureStore.incomplete`)."""
    return {k: note.get(k) for k in ("store", "rows", "missing", "command")}


def _abs_paths(store: FeatureStore) -> list[str]:
    return [os.path.normpath(os.fspath(p)) for p in store.abspaths()]


def train(store: str | os.PathLike | FeatureStore, *, layer: str | None = None,
          classifier: ClassifierOptions | None = None, holdout: float = 0.0, seed: int = 0,
          device: str = "auto", threads: int | None = None,
          holdout_paths: Collection[str] | None = None, allow_incomplete: bool = False,
          progress: ProgressArg = None,
          **options: Any) -> TrainedModel:
    """Fit a classifier on the labelled codes of one layer of a store.

    Args:
        store: a code store (path or :class:`FeatureStore`).
        layer: layer name (default the store's only/default layer).
        holdout: fraction of each class held out (seeded by ``seed``) and left out of training;
            :func:`evaluate` on the same store then scores exactly those rows. 0 = train on all.
        holdout_paths: hold out exactly the rows whose stored path (as in ``store.paths``) is
            in this collection instead (a split made on the source files before extraction, as
            :func:`baseline` does for ``layer="auto"``); ``holdout`` and ``seed`` are then only
            recorded.
        n_jobs: parallel CV fits through joblib (``None``: an active joblib backend, e.g. dask,
            decides; see the module docstring).
        device: ``auto`` (GPU through scikit-learn's array API when CUDA is present), ``cpu``
            (NumPy), ``cuda``/``cuda:N`` or ``cpu-torch``; LinearSVC always runs on the CPU.
        classifier: the model and its grid search (:class:`ClassifierOptions`); ``options``
            override single fields (``model=``, ``c_grid=``, ``cv=``, ``n_jobs=``...). With no
            ``model`` named, the classifier advised for this layer by a ``--layers auto``
            extraction (recorded in the store) is used, else logistic regression
            (:func:`choose_model`; ``selection["model_source"]``/``["model_reason"]`` say which
            and why).
        seed, threads, progress: see :func:`fit_codes` (``seed`` also seeds the hold-out
            split).
        allow_incomplete: train on a store whose extraction was stopped before it finished
            (refused by default); ``split["incomplete_store"]`` then records what was missing.

    Returns:
        A :class:`TrainedModel` (save it with :func:`save_model`).

    Raises:
        IncompleteStoreError: the store's extraction was stopped (without ``allow_incomplete``).
        ValueError: no labelled rows, a single class, a class too small for cross-validation.
    """
    st = _as_store(store)
    note = st.check_complete(allow_incomplete)
    name = resolve_layer(st, layer)
    X, y = st.load(name, allow_incomplete=True)
    paths = np.asarray(_abs_paths(st), dtype=object)
    labelled, classes, yl = _labelled(st, y)
    rows, split = _training_rows(st, labelled, yl, holdout=holdout, seed=seed,
                                 holdout_paths=holdout_paths)
    if note is not None:
        split["incomplete_store"] = report_note(note)
    keep = labelled[rows]
    # one copy of the training rows at most (none when every row trains); the full array goes
    if len(keep) == len(X) and np.array_equal(keep, np.arange(len(X))):
        Xtr = X
    else:
        Xtr = X[keep]
    del X
    ytr = yl[rows]
    copts, _ = classifier_options(classifier, options, where="train")
    model, source, reason = choose_model(st.provenance, name, copts.model)
    log.debug("classifier: %s", reason)  # printed with the report (model_reason)
    pipe, selection = fit_codes(Xtr, ytr, classes=classes, classifier=copts.replace(model=model),
                                seed=seed, threads=threads, device=device, progress=progress,
                                overwrite_X=True)  # Xtr is ours: no second copy
    selection.update(model_source=source, model_reason=reason)
    from .._runtime import versions  # imports torch: only once a model is trained

    return TrainedModel(
        pipeline=pipe, classes=classes, layer=name, provenance=_bound_provenance(st, name),
        split=split, selection=selection, train_paths=paths[labelled][rows].tolist(),
        train_labels=ytr.astype(np.int64), store=os.fspath(st.path),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # plain str: torch.__version__ is a TorchVersion, whose pickle would import torch
        versions={k: str(v) for k, v in {**versions(), "scikit-learn": _sklearn_version(),
                                          "cnncodes": __version__}.items()})


def _labelled(st: FeatureStore, y: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The labelled rows of ``y``: ``(their indices, the classes present, their labels
    renumbered 0..k-1 over those classes)``.

    Raises:
        ValueError: no labelled rows."""
    labelled = np.flatnonzero(y >= 0)
    if labelled.size == 0:
        raise ValueError(f"{st.path} has no labelled rows (it was extracted from a flat folder or "
                         "an unlabelled list); extract a folder of class folders to train.")
    if labelled.size < len(y):
        log.info("%s: ignoring %d unlabelled rows", st.path, len(y) - labelled.size)
    present = np.unique(y[labelled])
    store_classes = st.classes
    return labelled, [store_classes[i] for i in present], np.searchsorted(present, y[labelled])


def _training_rows(st: FeatureStore, labelled: np.ndarray, yl: np.ndarray, *, holdout: float,
                   seed: int, holdout_paths: Collection[str] | None
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The training rows (indices into the labelled rows) and the ``split`` record: all rows,
    all but the stored paths in ``holdout_paths``, or all but a stratified ``holdout`` share."""
    where = os.fspath(st.path)
    if holdout_paths is not None:
        held = set(holdout_paths)
        is_test = np.array([p in held for p in st.paths[labelled].tolist()], bool)
        tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        log.info("held out %d of %d rows for testing (split of the source files)", len(te),
                 len(yl))
        return tr, {"kind": "holdout", "store": where, "test_size": float(holdout),
                    "seed": int(seed), "n_train": int(len(tr)), "n_test": int(len(te)),
                    "made_on": "source files"}
    if holdout:
        tr, te = stratified_holdout(yl, test_size=holdout, seed=seed)
        log.info("held out %d of %d rows for testing (stratified, seed %d)", len(te), len(yl),
                 seed)
        return tr, {"kind": "holdout", "store": where, "test_size": float(holdout),
                    "seed": int(seed), "n_train": int(len(tr)), "n_test": int(len(te))}
    return np.arange(len(yl)), {"kind": "all", "store": where, "n_train": int(len(yl))}


def _bound_provenance(st: FeatureStore, layer: str) -> dict[str, Any]:
    """The store's provenance a model keeps: the copied fields, narrowed to ``layer``."""
    prov = store_provenance(st)
    bound = {k: prov[k] for k in _COPIED_FIELDS if k in prov}
    bound["layers"] = [layer]
    bound["layer_info"] = {layer: prov["layer_info"].get(layer, {})}
    bound["store_layers"] = list(prov.get("layers", []))
    return bound
