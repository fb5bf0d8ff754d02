"""cnncodes: CNN codes from pretrained backbones, cached in HDF5, with linear classifiers on top."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# GPU model selection (cnncodes.classify, scikit-learn's array API dispatch on torch tensors) needs
# SciPy's own array API support, which SciPy reads from SCIPY_ARRAY_API once, when it is first
# imported: so it is switched on here, before anything below imports scipy. A value already set
# (e.g. SCIPY_ARRAY_API=0) is respected; when scipy was imported before cnncodes it is too late and
# training falls back to NumPy with a logged warning (see cnncodes.classify.array_api_status).
# Side effect for the rest of the process: SciPy functions then reject np.matrix and masked arrays.
SCIPY_PREIMPORTED = "scipy" in _sys.modules
if not SCIPY_PREIMPORTED:
    _os.environ.setdefault("SCIPY_ARRAY_API", "1")

from .backbones import (  # noqa: E402
    BackboneSpec,
    Cut,
    FeatureExtractor,
    create_backbone,
    get_spec,
    list_backbones,
    register,
)
from .data import ImageSource, load_rgb, open_source  # noqa: E402
from .extract import CodeExtractor, ExtractResult, extract  # noqa: E402
from .store import FeatureStore, StoreMismatchError  # noqa: E402
from .weights import Preprocessing, WeightsUnavailableError  # noqa: E402
from .classify import (  # noqa: E402
    ModelMismatchError,
    TrainedModel,
    baseline,
    build_pipeline,
    evaluate,
    fit_codes,
    load_model,
    parse_c_grid,
    predict,
    save_model,
    train,
)
from .transformer import CNNCodes  # noqa: E402
from .finetune import (  # noqa: E402
    EscalationResult,
    FinetuneConfig,
    FinetuneDivergedError,
    FinetuneResult,
    ImagePredictions,
    escalate,
    finetune,
    is_finetuned_model,
    load_finetuned,
    predict_images,
)
from .advise import Advice, Thresholds, advise, choose_layer, decide  # noqa: E402

__all__ = [
    "BackboneSpec", "CodeExtractor", "Cut", "ExtractResult", "FeatureExtractor", "FeatureStore",
    "ImageSource", "Preprocessing", "StoreMismatchError", "WeightsUnavailableError",
    "__version__", "create_backbone", "extract", "get_spec", "list_backbones", "load_rgb",
    "open_source", "register",
    # classifiers on codes (classify.py, transformer.py)
    "CNNCodes", "ModelMismatchError", "TrainedModel", "baseline", "build_pipeline", "evaluate",
    "fit_codes", "load_model", "parse_c_grid", "predict", "save_model", "train",
    # fine-tuning (finetune.py)
    "EscalationResult", "FinetuneConfig", "FinetuneDivergedError", "FinetuneResult",
    "ImagePredictions", "escalate", "finetune", "is_finetuned_model", "load_finetuned",
    "predict_images",
    # choosing the layer and the strategy (advise.py)
    "Advice", "Thresholds", "advise", "choose_layer", "decide",
]
