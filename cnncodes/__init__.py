"""cnncodes: CNN codes from pretrained backbones, cached in HDF5, with linear classifiers on top.

The package root only re-exports the public API, lazily (PEP 562): ``import cnncodes`` costs
milliseconds, imports neither torch nor scikit-learn, and changes no global state (environment
variables, thread counts, RNG). See README.md (Architecture) for the layout: sources -> backbones ->
codes -> linear / advisor / finetuning -> workflows -> report -> cli.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_LAZY: dict[str, str] = {
    # ._version
    "__version__": "._version",
    # .advisor.advise
    "Advice": ".advisor.advise",
    "Thresholds": ".advisor.advise",
    "advise": ".advisor.advise",
    "choose_layer": ".advisor.advise",
    "decide": ".advisor.advise",
    # .backbones
    "BackboneSpec": ".backbones",
    "Cut": ".backbones",
    "FeatureExtractor": ".backbones",
    "create_backbone": ".backbones",
    "get_spec": ".backbones",
    "list_backbones": ".backbones",
    "register": ".backbones",
    # .codes.extraction
    "ExtractResult": ".codes.extraction",
    "extract": ".codes.extraction",
    # .codes.extractor
    "CodeExtractor": ".codes.extractor",
    # .codes.store
    "FeatureStore": ".codes.store",
    # .errors
    "CnnCodesError": ".errors",
    "DecodeError": ".errors",
    "FinetuneDivergedError": ".errors",
    "ModelMismatchError": ".errors",
    "OptionError": ".errors",
    "StoreMismatchError": ".errors",
    "WeightsUnavailableError": ".errors",
    # .finetuning.finetune
    "EscalationResult": ".finetuning.finetune",
    "FinetuneConfig": ".finetuning.finetune",
    "FinetuneResult": ".finetuning.finetune",
    "ImagePredictions": ".finetuning.finetune",
    "escalate": ".finetuning.finetune",
    "finetune": ".finetuning.finetune",
    "is_finetuned_model": ".finetuning.finetune",
    "load_finetuned": ".finetuning.finetune",
    "predict_images": ".finetuning.finetune",
    # .linear
    "ClassifierOptions": ".linear.options",
    "TrainedModel": ".linear.model_file",
    "build_pipeline": ".linear.pipelines",
    "evaluate": ".linear.evaluation",
    "fit_codes": ".linear.selection",
    "load_model": ".linear.model_file",
    "parse_c_grid": ".linear.grids",
    "save_model": ".linear.model_file",
    "train": ".linear.training",
    # .workflows
    "BaselineOptions": ".workflows.baseline",
    "baseline": ".workflows.baseline",
    "predict": ".workflows.predict",
    # .linear.transformer
    "CNNCodes": ".linear.transformer",
    # .sources.data
    "ImageSource": ".sources.data",
    "load_rgb": ".sources.data",
    "open_source": ".sources.data",
    # .sources.preprocessing
    "Preprocessing": ".sources.preprocessing",
    # .linear.array_api_env
    "enable_array_api": ".linear.array_api_env",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cnncodes' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # errors
    "CnnCodesError", "DecodeError", "FinetuneDivergedError", "ModelMismatchError", "OptionError",
    "StoreMismatchError", "WeightsUnavailableError",
    # sources, backbones, codes
    "BackboneSpec", "CodeExtractor", "Cut", "ExtractResult", "FeatureExtractor", "FeatureStore",
    "ImageSource", "Preprocessing", "create_backbone", "extract", "get_spec", "list_backbones",
    "load_rgb", "open_source", "register",
    # classifiers on codes
    "BaselineOptions", "CNNCodes", "ClassifierOptions", "TrainedModel", "baseline",
    "build_pipeline", "evaluate", "fit_codes",
    "load_model", "parse_c_grid", "predict", "save_model", "train",
    # fine-tuning
    "EscalationResult", "FinetuneConfig", "FinetuneResult", "ImagePredictions", "escalate",
    "finetune", "is_finetuned_model", "load_finetuned", "predict_images",
    # choosing the layer and the strategy
    "Advice", "Thresholds", "advise", "choose_layer", "decide",
    "enable_array_api",
]
