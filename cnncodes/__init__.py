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
    # .advisor
    "Advice": ".advisor.advice",
    "Thresholds": ".advisor.rule",
    "advise": ".advisor.run",
    "choose_layer": ".advisor.run",
    "decide": ".advisor.rule",
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
    "extract_arrays": ".codes.extraction",
    # .codes.extractor
    "CodeExtractor": ".codes.extractor",
    # .codes.store
    "FeatureStore": ".codes.store",
    # .options
    "BackboneOptions": ".options",
    "RuntimeOptions": ".options",
    # .errors
    "CnnCodesError": ".errors",
    "DecodeError": ".errors",
    "FinetuneDivergedError": ".errors",
    "ModelMismatchError": ".errors",
    "OptionError": ".errors",
    "StoreMismatchError": ".errors",
    "WeightsUnavailableError": ".errors",
    # .finetuning
    "FinetuneConfig": ".finetuning.config",
    "FinetuneResult": ".finetuning.run",
    "ImagePredictions": ".finetuning.predict",
    "finetune": ".finetuning.run",
    "is_finetuned_model": ".finetuning.model_file",
    "load_finetuned": ".finetuning.net",
    "predict_images": ".finetuning.predict",
    # .linear.classify
    "TrainedModel": ".linear.classify",
    "baseline": ".linear.classify",
    "build_pipeline": ".linear.classify",
    "evaluate": ".linear.classify",
    "fit_codes": ".linear.classify",
    "load_model": ".linear.classify",
    "parse_c_grid": ".linear.classify",
    "predict": ".linear.classify",
    "save_model": ".linear.classify",
    "train": ".linear.classify",
    # .linear.transformer
    "CNNCodes": ".linear.transformer",
    # .sources.folders, .sources.images
    "ImageSource": ".sources.folders",
    "open_source": ".sources.folders",
    "load_rgb": ".sources.images",
    # .sources.preprocessing
    "Preprocessing": ".sources.preprocessing",
    # .workflows.compare
    "EscalationResult": ".workflows.compare",
    "escalate": ".workflows.compare",
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
    "ImageSource", "Preprocessing", "create_backbone", "extract", "extract_arrays", "get_spec",
    "list_backbones", "BackboneOptions", "RuntimeOptions",
    "load_rgb", "open_source", "register",
    # classifiers on codes
    "CNNCodes", "TrainedModel", "baseline", "build_pipeline", "evaluate", "fit_codes",
    "load_model", "parse_c_grid", "predict", "save_model", "train",
    # fine-tuning
    "EscalationResult", "FinetuneConfig", "FinetuneResult", "ImagePredictions", "escalate",
    "finetune", "is_finetuned_model", "load_finetuned", "predict_images",
    # choosing the layer and the strategy
    "Advice", "Thresholds", "advise", "choose_layer", "decide",
    "enable_array_api",
]
