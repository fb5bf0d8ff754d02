"""The one :class:`CodeExtractor` every path uses to turn uint8 image batches into codes
(cut backbone, BatchNorm folded and checked, then an engine: torch with channels_last/autocast, or
ONNX Runtime on the CPU, see :mod:`cnncodes.codes.engines`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .._runtime import resolve_device, resolve_precision, versions
from .._version import __version__
from ..backbones.cutting import FeatureExtractor
from ..backbones.factory import create_backbone, layer_dims
from ..backbones.registry import BackboneSpec, check_pooling, get_spec, resolve_layers
from ..backbones.weights import ResolvedWeights, resolve_weights, weights_sha256
from ..errors import OptionError
from ..options import DEFAULT_BACKBONE, BackboneOptions, RuntimeOptions, split_options
from ..sources.dct import dct_enabled
from ..sources.loader import normalize_batch
from ..sources.preprocessing import Preprocessing
from .engines import TorchEngine, select_engine
from .numerics import decoding, numerics, planned_decoder
from .ort_engine import OrtEngine

log = logging.getLogger(__name__)


def fold_batchnorm(extractor: FeatureExtractor, *, input_size: int = 64, tol: float = 1e-4) -> int:
    """Fold eval-mode BatchNorm into the convolution before it (inference only; same codes).

    Pairs are a Conv2d registered right before a BatchNorm2d in the same parent (how torchvision
    builds every conv-bn pair). The result is checked on a random batch against the unfolded
    network and undone if any layer's codes move by more than ``tol`` (relative), so an unusual
    architecture can only lose the speed-up, never correctness. Returns the number of pairs folded.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = extractor.model
    if model.training:
        return 0
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = extractor(x)
    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
                    and bn.running_mean is not None and not conv._forward_hooks
                    and not bn._forward_hooks and not conv._forward_pre_hooks):
                with torch.no_grad():
                    fused = fuse_conv_bn_eval(conv, bn)
                replaced += [(parent, a, conv), (parent, b, bn)]
                parent._modules[a] = fused
                parent._modules[b] = nn.Identity()
    if not replaced:
        return 0
    with torch.inference_mode():
        new = extractor(x)
    for k, v in ref.items():
        err = float((new[k] - v).abs().max()) / (float(v.abs().max()) + 1e-12)
        if not err <= tol:
            log.warning("BatchNorm folding changed %s codes by %.2e; keeping the unfolded net", k,
                        err)
            for parent, name, mod in replaced:
                parent._modules[name] = mod
            return 0
    return len(replaced) // 2


@contextlib.contextmanager
def stderr_to_debug(what: str) -> Iterator[None]:
    """What the code inside prints to stderr goes to this module's debug log instead (torch.fx's
    traced modules print their generated code and a traceback before re-raising an error)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            log.debug("%s printed:\n%s", what, text)


def failure_reason(e: BaseException) -> str:
    """What went wrong, in one line: the message, or for a bare ``assert`` in a model (timm's
    fixed-size attention models) the failing line and where it is."""
    text = " ".join(str(e).split())
    if text:
        return text
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return type(e).__name__
    own = [f for f in frames if f"{os.sep}torch{os.sep}" not in f.filename]  # torch._assert's
    last = (own or frames)[-1]
    return (f"{type(e).__name__} at {os.path.basename(last.filename)}:{last.lineno}: "
            f"{(last.line or '').strip()}")


class CodeExtractor:
    """A cut backbone ready to turn uint8 image batches into codes on one device.

    Shared by ``extract``, ``predict`` and the sklearn transformer so every path computes codes the
    same way. ``runtime.engine`` picks how the forward runs (``engine_name`` says which ran).
    """

    def __init__(self, backbone: str | BackboneOptions = DEFAULT_BACKBONE, *,
                 runtime: RuntimeOptions | None = None, channels_last: bool = True,
                 fuse_bn: bool = True, **options: Any):
        """``backbone``: a registry name or :class:`BackboneOptions`; ``options``: single backbone
        fields (``weights=``, ``layers=``...) or the runtime's ``device``/``precision``."""
        bopts, ropts, _ = split_options(backbone, runtime, options, where="CodeExtractor")
        self.options: BackboneOptions = bopts
        backbone, weights, layers = bopts.backbone, bopts.weights, bopts.layers
        pooling, input_size = bopts.pooling, bopts.input_size
        device, precision = ropts.device, ropts.precision
        if precision == "int8" and str(device) == "auto":
            device = "cpu"  # int8 is an ONNX Runtime CPU graph
        self.spec: BackboneSpec = get_spec(backbone)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        self.decoder_option = ropts.decoder
        #: ``dct`` or ``off``: large JPEGs decoded DCT-scaled (``auto`` is ``dct`` unless this
        #: Pillow build fails the start-up check, :func:`cnncodes.sources.dct.dct_enabled`);
        #: ``extract`` may set it to a store's own before making the dataset
        self.jpeg_scaling = "dct" if dct_enabled(ropts.jpeg_scaling) else "off"
        self._dims: dict[str, int] | None = None
        #: ``--precision int8``: what :func:`cnncodes.codes.quantise.quantise_extractor` did
        #: (None until then: an int8 extractor refuses to compute codes before it)
        self.quantisation: dict[str, Any] | None = None
        module, resolved = create_backbone(backbone, weights=weights, layers=layers,
                                           pooling=pooling)
        self.module: FeatureExtractor = module
        self.resolved: ResolvedWeights = resolved
        self.preprocessing: Preprocessing = resolved.preprocessing.with_input_size(input_size)
        self.layers = list(module.layers)
        self.pooling = pooling
        # a library model (timm/, torchvision/) may only run at its own sizes: check it there
        fold_size = self.preprocessing.crop if self.spec.tap else min(self.preprocessing.crop, 64)
        try:
            with stderr_to_debug(self.spec.name):  # torch.fx prints a traced model's error
                self.bn_folded = (fold_batchnorm(self.module, input_size=fold_size) if fuse_bn
                                  else 0)
        except (RuntimeError, AssertionError) as e:
            if not (self.spec.tap or "too small" in str(e)
                    or "greater than actual input" in str(e)):
                raise
            raise OptionError(self._size_message(e)) from e
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.module.to(self.device)
        self.engine: TorchEngine | OrtEngine = select_engine(
            ropts.engine, module=self.module, layers=self.layers,
            input_size=self.preprocessing.crop,
            device=self.device, precision=self.precision, channels_last=channels_last,
            backbone=self.spec.name, fields=self._export_fields, threads=ropts.threads)
        if isinstance(self.engine, OrtEngine) and self.device.type == "cpu":
            from .light import write_manifest  # the next run of these options can skip torch

            write_manifest(self, self.engine)

    def _size_message(self, e: BaseException) -> str:
        """Why this input size does not run, and the sizes that do (tried on the meta device)."""
        from ..backbones.factory import describe_sizes, working_sizes

        crop, own = self.preprocessing.crop, self.resolved.preprocessing.crop
        if not self.spec.tap:
            return (f"input size {crop} px is too small for {self.spec.name} "
                    f"({failure_reason(e)}). Use a larger --input-size (its pretrained weights "
                    f"use {own} px).")
        sizes = working_sizes(self.spec, self.resolved.id, also=(own,))
        pick = own if not sizes or own in sizes else sizes[0]
        return (f"input size {crop} px does not fit {self.spec.name} ({failure_reason(e)}). "
                f"Sizes that work with weights {self.resolved.id}: {describe_sizes(sizes)}; use "
                f"--input-size {pick} (its weights' own size is {own} px).")

    def _export_fields(self) -> dict[str, Any]:
        """What the exported graph depends on (its cache key; called only when exporting)."""
        import onnxruntime

        from ..backbones.factory import RANDOM_INIT_SEED

        lib = self.spec.extra.get("library")  # timm/torchvision version of an adapted model
        return {"backbone": self.spec.name, "weights": self.resolved.id,
                **({"library": lib} if lib else {}),
                "weights_sha256": weights_sha256(self.resolved) or "",
                "random_seed": RANDOM_INIT_SEED if self.resolved.is_random else None,
                "layers": self.layers, "pooling": self.pooling,
                "input_size": self.preprocessing.crop, "bn_folded": self.bn_folded,
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "cnncodes": __version__}

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def dims(self) -> dict[str, int]:
        """Each layer's code dimension at this input size (one dry forward pass, cached): what a
        store's datasets are sized by even when no image decoded."""
        if self._dims is None:
            self._dims = layer_dims(self.module, self.preprocessing.crop, device=self.device)
        return dict(self._dims)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 NCHW batch (any device) -> ``{layer: float32 (N, D) numpy}``."""
        if self.precision == "int8" and self.quantisation is None:
            from .numerics import int8_refusal

            raise int8_refusal(f"this {self.spec.name} extractor")
        if images.shape[0] == 0:
            return {k: np.zeros((0, 0), np.float32) for k in self.layers}
        x = images.to(self.device, non_blocking=True)
        x = normalize_batch(x, self.preprocessing, channels_last=self.engine.channels_last)
        return self.engine(x)

    def provenance(self) -> dict[str, Any]:
        """Everything a store or a model file must record to be checked later."""
        return {**_provenance(self.spec, self.resolved, self.preprocessing, self.layers,
                              self.pooling, self.precision, self.device, self.decoder_option,
                              self.jpeg_scaling),
                "engine": {"name": self.engine.name, "version": self.engine.version,
                           "threads": self.engine.threads,
                           **({"fallback": fb} if (fb := getattr(self.engine, "fallback", ""))
                              else {})},
                **({"quantisation": self.quantisation} if self.quantisation else {})}


def _provenance(spec: BackboneSpec, resolved: ResolvedWeights, preprocessing: Preprocessing,
                layers: list[str], pooling: str, precision: str, device: torch.device,
                decoder_option: str, jpeg_scaling: str = "off") -> dict[str, Any]:
    """The provenance of codes of this configuration, without the engine (which needs a build)."""
    layer_info = {}
    for name in layers:
        cut = spec.cut(name)
        layer_info[name] = {"node": cut.node, "kind": cut.kind, "depth": cut.depth,
                            "pooling": cut.effective_pooling(pooling)}
    return {
        "backbone": spec.name,
        "family": spec.family,
        "weights": resolved.id,
        "weights_sha256": weights_sha256(resolved) or "",
        "layers": list(layers),
        "default_layer": spec.default_layer if spec.default_layer in layers else layers[-1],
        "pooling": pooling,
        "layer_info": layer_info,
        "preprocessing": preprocessing.to_dict(),
        "input_size": preprocessing.crop,
        "versions": versions(),
        # compatibility fields (see cnncodes.codes.numerics); extract records the decoder
        # that ran, this is the one a folder source would get
        "precision": precision, "numerics": numerics(precision, device), "tf32": False,
        "decoding": decoding(planned_decoder(decoder_option, device,
                                             preprocessing.interpolation,
                                             dct=jpeg_scaling == "dct")),
    }


def describe_codes(backbone: BackboneOptions, runtime: RuntimeOptions) -> dict[str, Any] | None:
    """The provenance ``CodeExtractor(backbone, runtime=runtime).provenance()`` would give, less
    its ``engine``, plus ``dims`` (each layer's code dimension), without building the network: the
    weights are resolved, not loaded. None when that cannot be known without a build (weights not
    on this machine yet, or ``pooling="none"`` maps whose size needs a forward pass)."""
    spec = get_spec(backbone.backbone)
    layers = resolve_layers(spec, backbone.layers)
    pooling = check_pooling(backbone.pooling)
    resolved = resolve_weights(spec, backbone.weights)
    if not resolved.is_random and resolved.path is None:
        return None
    dims = {}
    for name in layers:
        cut = spec.cut(name)
        if cut.kind == "map" and pooling == "none":
            return None
        dims[name] = int(cut.out_dim(pooling))
    device = resolve_device(runtime.device)
    precision = resolve_precision(runtime.precision, device)
    pre = resolved.preprocessing.with_input_size(backbone.input_size)
    scaling = "dct" if dct_enabled(runtime.jpeg_scaling) else "off"
    prov = _provenance(spec, resolved, pre, layers, pooling, precision, device, runtime.decoder,
                       scaling)
    return {**prov, "dims": dims}
