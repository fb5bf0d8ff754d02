"""``cnncodes train`` and ``cnncodes evaluate`` as library calls: a model (trained and saved, or
loaded), its evaluation and the report dict (model, split, selection, test metrics, rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..codes.store import FeatureStore
from ..errors import OptionError
from ..linear.evaluation import Evaluation, evaluate
from ..linear.model_file import TrainedModel, load_model, save_model
from ..linear.options import DEFAULT_RAW_SIZE, ClassifierOptions
from ..linear.pixels import RawPixelOptions, pixel_baseline
from ..linear.training import train
from ..outputs import check_output
from ..report.files import build_report


@dataclass
class LinearRun:
    """A model, its evaluation (None when there was no test data) and the report dict."""

    model: TrainedModel
    evaluation: Evaluation | None
    report: dict[str, Any]
    model_file: Path | None = None


def train_report(store: str | os.PathLike | FeatureStore, output: str | os.PathLike, *,
                 test: str | os.PathLike | FeatureStore | None = None, layer: str | None = None,
                 classifier: ClassifierOptions | None = None, holdout: float = 0.0,
                 seed: int = 0, device: str = "auto", overwrite: bool = False,
                 allow_incomplete: bool = False, **options: Any) -> LinearRun:
    """Train on ``store`` (see :func:`cnncodes.train`), save the model to ``output``, evaluate on
    ``test`` or on the held-out rows, and build the report. ``allow_incomplete``: read stores
    whose extraction was stopped (refused by default); the report says so.

    ``output`` is checked before training (:func:`cnncodes.outputs.check_output`): an input, a
    folder or special file is refused, another kind of file unless ``overwrite``.

    Raises:
        OptionError: both ``test`` and ``holdout``.  OutputError: ``output`` cannot be written.
    """
    if test is not None and holdout:
        raise OptionError("pass either --test STORE or --holdout FRACTION, not both. Got both; "
                          "drop one.")
    check_output(output, inputs=(store, test), expect="model", overwrite=overwrite, option="-o")
    model = train(store, layer=layer, classifier=classifier, holdout=holdout, seed=seed,
                  device=device, allow_incomplete=allow_incomplete, **options)
    path = save_model(model, output, overwrite=overwrite, inputs=(store, test))
    evaluation = evaluate(model, test if test is not None else store,
                          allow_incomplete=allow_incomplete) \
        if test is not None or holdout else None
    rep = build_report(model=model, task="train", evaluation=evaluation,
                       extra={"model_file": str(path)})
    return LinearRun(model, evaluation, rep, path)


def evaluate_report(model: TrainedModel | str | os.PathLike,
                    store: str | os.PathLike | FeatureStore, *, raw_baseline: bool = False,
                    raw_size: int = DEFAULT_RAW_SIZE, raw_grey: bool = False,
                    allow_incomplete: bool = False, trust_pickle: bool = False) -> LinearRun:
    """Evaluate ``model`` on ``store`` (see :func:`cnncodes.evaluate`) and build the report;
    ``raw_baseline``: add the codes row and the raw-pixel row: logistic regression with the
    model's own C grid, folds and seed on raw pixels of the same images
    (:func:`~cnncodes.linear.pixels.pixel_baseline`); ``allow_incomplete``: evaluate on a store
    whose extraction was stopped (refused by default; the report says so); ``trust_pickle``: see
    :func:`~cnncodes.load_model`."""
    m = load_model(model, trust_pickle=trust_pickle)
    evaluation = evaluate(m, store, allow_incomplete=allow_incomplete)
    rows = None
    if raw_baseline:
        sel, p = m.selection, m.provenance
        rows = [{"name": f"{p.get('backbone')} {m.layer} codes ({p.get('input_size')} px)",
                 "model": sel.get("model"), "features": m.n_features, "selection": sel,
                 **{k: evaluation.metrics[k] for k in ("accuracy", "balanced_accuracy",
                                                       "macro_f1")}},
                pixel_baseline(m.train_paths, m.train_labels, evaluation.paths,
                               evaluation.y_true, classes=m.classes,
                               raw=RawPixelOptions(size=raw_size, grey=raw_grey),
                               classifier=ClassifierOptions.from_selection(sel),
                               seed=sel.get("seed", 0))]
    source = os.fspath(model) if not isinstance(model, TrainedModel) else m.store
    rep = build_report(model=m, task="evaluate", evaluation=evaluation, rows=rows,
                       extra={"model_file": source})
    return LinearRun(m, evaluation, rep)
