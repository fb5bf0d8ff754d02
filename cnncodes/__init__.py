"""cnncodes: CNN codes from pretrained backbones, cached in HDF5, with linear classifiers on top.

The package root only re-exports the public API, lazily (PEP 562): ``import cnncodes`` costs
milliseconds, imports neither torch nor scikit-learn, and changes no global state (environment
variables, thread counts, RNG). See README.md (Architecture) for the layout: sources -> backbones ->
codes -> linear / advisor / finetuning -> report -> workflows -> cli.
"""

from __future__ import annotations

from ._lazy import lazy_getattr
from ._version import __version__

_LAZY: dict[str, str] = {
    # ._version
    "__version__": "._version",
    # .advisor.advice
    "Advice": ".advisor.advice",
    # .advisor.rule
    "Thresholds": ".advisor.rule",
    "decide": ".advisor.rule",
    # .advisor.verdict
    "Verdict": ".advisor.verdict",
    # .backbones.cutting
    "FeatureExtractor": ".backbones.cutting",
    # .backbones.factory
    "create_backbone": ".backbones.factory",
    # .backbones.registry
    "BackboneSpec": ".backbones.registry",
    "Cut": ".backbones.registry",
    "get_spec": ".backbones.registry",
    "list_backbones": ".backbones.registry",
    "register": ".backbones.registry",
    # .codes.extraction
    "ExtractResult": ".codes.extraction",
    "extract": ".codes.extraction",
    "extract_arrays": ".codes.extraction",
    # .codes.extractor
    "CodeExtractor": ".codes.extractor",
    # .codes.options
    "StoreOptions": ".codes.options",
    # .codes.store
    "FeatureStore": ".codes.store",
    # .errors
    "CnnCodesError": ".errors",
    "DecodeError": ".errors",
    "FinetuneDivergedError": ".errors",
    "ModelFileError": ".errors",
    "ModelMismatchError": ".errors",
    "OptionError": ".errors",
    "StoreMismatchError": ".errors",
    "WeightsUnavailableError": ".errors",
    # .finetuning.config
    "FinetuneConfig": ".finetuning.config",
    # .finetuning.model_file
    "is_finetuned_model": ".finetuning.model_file",
    # .finetuning.net
    "load_finetuned": ".finetuning.net",
    # .finetuning.predict
    "ImagePredictions": ".finetuning.predict",
    "predict_images": ".finetuning.predict",
    # .finetuning.run
    "FinetuneResult": ".finetuning.run",
    "finetune": ".finetuning.run",
    # .linear.array_api_env
    "enable_array_api": ".linear.array_api_env",
    # .linear.evaluation
    "evaluate": ".linear.evaluation",
    # .linear.grids
    "parse_c_grid": ".linear.grids",
    # .linear.model_file
    "TrainedModel": ".linear.model_file",
    "load_model": ".linear.model_file",
    "save_model": ".linear.model_file",
    # .linear.options
    "ClassifierOptions": ".linear.options",
    # .linear.pipelines
    "build_pipeline": ".linear.pipelines",
    # .linear.selection
    "fit_codes": ".linear.selection",
    # .linear.training
    "train": ".linear.training",
    # .linear.transformer
    "CNNCodes": ".linear.transformer",
    # .options
    "BackboneOptions": ".options",
    "RuntimeOptions": ".options",
    # .sources.folders
    "ImageSource": ".sources.folders",
    "open_source": ".sources.folders",
    # .sources.images
    "load_rgb": ".sources.images",
    # .sources.preprocessing
    "Preprocessing": ".sources.preprocessing",
    # .workflows.advice
    "advise": ".workflows.advice",
    "choose_layer": ".workflows.advice",
    # .workflows.baseline
    "BaselineOptions": ".workflows.baseline",
    "baseline": ".workflows.baseline",
    # .workflows.compare
    "EscalationResult": ".workflows.compare",
    "escalate": ".workflows.compare",
    # .workflows.predict
    "predict": ".workflows.predict",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # errors
    "CnnCodesError", "DecodeError", "FinetuneDivergedError", "ModelFileError", "ModelMismatchError",
    "OptionError", "StoreMismatchError", "WeightsUnavailableError",
    # sources, backbones, codes
    "BackboneSpec", "CodeExtractor", "Cut", "ExtractResult", "FeatureExtractor", "FeatureStore",
    "ImageSource", "Preprocessing", "create_backbone", "extract", "extract_arrays", "get_spec",
    "list_backbones", "BackboneOptions", "RuntimeOptions", "StoreOptions",
    "load_rgb", "open_source", "register",
    # classifiers on codes
    "BaselineOptions", "CNNCodes", "ClassifierOptions", "TrainedModel", "baseline",
    "build_pipeline", "evaluate", "fit_codes",
    "load_model", "parse_c_grid", "predict", "save_model", "train",
    # fine-tuning
    "EscalationResult", "FinetuneConfig", "FinetuneResult", "ImagePredictions", "escalate",
    "finetune", "is_finetuned_model", "load_finetuned", "predict_images",
    # choosing the layer and the strategy
    "Advice", "Thresholds", "Verdict", "advise", "choose_layer", "decide",
    "enable_array_api",
]
