"""``--precision int8``: ONNX Runtime static quantisation of the checked fp32 graph, calibrated on
the run's first images, cached, and checked for fidelity at every start (torch-free).

How (:func:`quantise_extractor`, called by ``extract`` once its dataset is made):

1. The first :data:`CALIBRATION_IMAGES` + :data:`CHECK_IMAGES` images of the source that decode
   (source order, so a rerun of the same source gets the same ones) are decoded and preprocessed
   exactly as the run does (PIL; the torch-free path's pixels) and normalised.
2. The int8 graph is ``onnxruntime.quantization.quantize_static`` of the fp32 graph the run
   already checked against torch: QDQ format, per-channel symmetric int8 weights, asymmetric
   uint8 activations, MinMax ranges from the first :data:`CALIBRATION_IMAGES` images; the first
   :data:`KEEP_FP32_CONVS` convolutions stay in fp32 (measured below). It is cached next to the
   fp32 graph (``onnx/<backbone>-int8-<key>.onnx``, sealed like it) under a key hashing the fp32
   graph's sha256, these settings and the calibration pixels' sha256: an int8 graph is never
   taken for an fp32 one, and the same run finds the same graph again.
3. Fidelity, at every start: the next :data:`CHECK_IMAGES` images (held out from the calibration;
   a source with fewer images is checked on its calibration images, and says so) go through both
   graphs; per requested layer the mean and the min row cosine of the int8 codes against the
   fp32 codes (which equal torch's, cosine >= 0.99999) must reach :data:`MIN_MEAN_COSINE` and
   :data:`MIN_MIN_COSINE`, or the run is refused (:class:`~cnncodes.errors.FidelityError` naming
   the layer, the measured cosine and the bound).

Measured on this 2-core VM, mobilenet_v2 (ImageNet weights), 224 px, Animal-MNIST images, 64
calibration images, 100 held-out: everything quantised, ``pool`` mean/min cosine 0.932/0.859;
first convolution kept in fp32 0.955/0.910; first 3 kept 0.978/0.961 (``stage4`` 0.996/0.993);
first 5 kept 0.980/0.973 at 16% more CPU time; percentile or entropy calibration: no better
than keeping the first convolutions, and 5-8x slower to calibrate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FidelityError, OptionError
from .cache_files import touch_entry
from .export_cache import INPUT_NAME, cache_path, read_cached, write_cached
from .ort_engine import OrtEngine

log = logging.getLogger(__name__)

#: images the activation ranges are calibrated on (the first that decode, in source order)
CALIBRATION_IMAGES = 64
#: images after them the int8 codes are checked on against the fp32 codes
CHECK_IMAGES = 32
#: convolutions (in graph order) left in fp32: the stem's, the most sensitive (module docstring)
KEEP_FP32_CONVS = 3
#: fidelity bounds per layer, int8 codes against fp32 codes (row cosine); chosen from the
#: measurements in the README ("Optional int8"): mobilenet_v2's pool layer reaches 0.978 mean /
#: 0.961 min at 224 px with test accuracy within one image of fp32
MIN_MEAN_COSINE = 0.97
MIN_MIN_COSINE = 0.90
#: bumped when the quantisation recipe changes (part of the cache key)
RECIPE = 1
_BATCH = 16


def settings() -> dict[str, Any]:
    """The quantisation recipe (recorded in the provenance and hashed into the cache key)."""
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "weights": "int8 per-channel symmetric", "activations": "uint8 asymmetric",
            "calibration": "MinMax", "keep_fp32_convs": KEEP_FP32_CONVS, "recipe": RECIPE}


def calibration_images(dataset: Any, n: int) -> tuple[np.ndarray, list[int]]:
    """The first ``n`` images of ``dataset`` (items ``(i, uint8 CHW | None, reason)``) that
    decode, as a uint8 NCHW array, and their indices."""
    arrays, idx = [], []
    for i in range(len(dataset)):
        _, a, _ = dataset[i]
        if a is None:
            continue
        arrays.append(np.asarray(a, np.uint8))
        idx.append(i)
        if len(arrays) >= n:
            break
    if not arrays:
        raise OptionError("--precision int8 calibrates on the source's images, and none of them "
                          "could be decoded; use --precision fp32.")
    return np.stack(arrays), idx


def _normalise(images: np.ndarray, pre: Any) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1) * 255
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)


def quantise_graph(fp32: bytes, calib: np.ndarray) -> bytes:
    """The int8 QDQ graph of ``fp32`` calibrated on the normalised batch ``calib`` (see the
    module docstring); needs the ``onnx`` package."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime ships no type hints, so its base class is Any to mypy
    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = iter(
                [{INPUT_NAME: calib[i:i + _BATCH]} for i in range(0, len(calib), _BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="cnncodes-int8-") as d:
        src, pre, out = Path(d, "fp32.onnx"), Path(d, "pre.onnx"), Path(d, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=convs[:KEEP_FP32_CONVS],
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return out.read_bytes()


def fidelity(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per layer, the mean and min row cosine of ``got`` against ``ref``."""
    out = {}
    for k, a in ref.items():
        x, y = np.asarray(a, np.float64), np.asarray(got[k], np.float64)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos = np.where(den > 0, (x * y).sum(1) / np.maximum(den, 1e-300), 1.0)
        out[k] = {"mean_cosine": round(float(cos.mean()), 6),
                  "min_cosine": round(float(cos.min()), 6)}
    return out


def check_fidelity(fid: dict[str, dict[str, float]], backbone: str, graph: Path) -> None:
    """Refuse (:class:`FidelityError`) a layer below :data:`MIN_MEAN_COSINE` /
    :data:`MIN_MIN_COSINE`, naming it, the cosine and the bound."""
    bad = [f"layer {k}: mean cosine {v['mean_cosine']:.4f} (bound {MIN_MEAN_COSINE}), min "
           f"cosine {v['min_cosine']:.4f} (bound {MIN_MIN_COSINE})" for k, v in fid.items()
           if not (v["mean_cosine"] >= MIN_MEAN_COSINE and v["min_cosine"] >= MIN_MIN_COSINE)]
    if bad:
        raise FidelityError(
            f"--precision int8 refused for {backbone}: its int8 codes are too far from the fp32 "
            f"codes on this run's check images ({'; '.join(bad)}). Use --precision fp32 (the "
            f"default), or another layer. The int8 graph is {graph}.")


def _key(fp32: bytes, calib_u8: np.ndarray) -> str:
    blob = json.dumps({"fp32_sha256": hashlib.sha256(fp32).hexdigest(),
                       "calibration_sha256": hashlib.sha256(calib_u8.tobytes()).hexdigest(),
                       "shape": list(calib_u8.shape), **settings()}, sort_keys=True)
    return "int8-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def quantise_extractor(ext: Any, dataset: Any, previous: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Swap ``ext``'s fp32 ONNX Runtime engine for its checked int8 graph (made or read from the
    cache) calibrated on ``dataset``'s first images; returns the provenance's ``quantisation``.
    ``previous``: the ``quantisation`` of the store this run continues: its graph is used again
    (codes of two int8 graphs never mix in a store), whatever the source's first images are now.

    Raises:
        OptionError: the run has no ONNX Runtime engine, no image decodes, or the store's int8
            graph is gone from the cache.
        FidelityError: a layer's int8 codes fall below the bounds.
    """
    eng = ext.engine
    if not isinstance(eng, OrtEngine) or eng.path is None:
        why = getattr(eng, "fallback", "") or f"the engine is {getattr(eng, 'name', eng)}"
        raise OptionError(f"--precision int8 quantises the ONNX Runtime graph, and this run has "
                          f"none ({why}). Use --engine auto on the CPU, or --precision fp32.")
    fp32 = read_cached(Path(eng.path))
    if fp32 is None:
        raise OptionError(f"--precision int8: the fp32 graph {eng.path} could not be read back; "
                          "run again (it is exported anew) or use --precision fp32.")
    images, idx = calibration_images(dataset, CALIBRATION_IMAGES + CHECK_IMAGES)
    n_cal = min(CALIBRATION_IMAGES, len(images))
    held_out = len(images) > n_cal
    calib_u8 = images[:n_cal]
    check = _normalise(images[n_cal:] if held_out else calib_u8, ext.preprocessing)
    path = cache_path(ext.spec.name, _key(fp32, calib_u8))
    if previous and previous.get("graph"):
        path = path.with_name(Path(previous["graph"]).name)
    data = read_cached(path)
    fresh = data is None
    if data is None and previous:
        raise OptionError(f"this store's codes come from the int8 graph {path.name}, which is no "
                          f"longer in the export cache ({path.parent}); new int8 codes would "
                          "not mix with them. Extract again with --overwrite --precision int8, "
                          "or restore the graph.")
    if data is None:
        log.info("%s: quantising to int8 (calibration on %d images)", ext.spec.name, n_cal)
        data = quantise_graph(fp32, _normalise(calib_u8, ext.preprocessing))
        try:
            write_cached(path, data)
        except OSError as e:  # a read-only cache only costs the quantisation next time
            log.warning("cannot write the int8 graph %s (%s)", path, e)
    touch_entry(path, ext.spec.name)  # listed and pruned by `cnncodes cache` like fp32 graphs
    int8 = OrtEngine(data, ext.layers, threads=eng.threads, path=path)
    (ref, t32), (got, t8) = _timed(eng, check), _timed(int8, check)
    fid = fidelity(ref, got)
    check_fidelity(fid, ext.spec.name, path)
    ext.engine = int8
    info = {**settings(), "calibration_images": n_cal,
            "calibration_paths": [str(dataset.source.paths[i]) for i in idx[:3]],
            "calibration_sha256": hashlib.sha256(calib_u8.tobytes()).hexdigest(),
            **{k: v for k, v in (previous or {}).items() if k.startswith("calibration")},
            "check_images": len(check), "check_held_out": held_out,
            "graph": path.name, "fidelity": fid,
            "check_forward_s": {"fp32": round(t32, 4), "int8": round(t8, 4)}}
    log.info("int8 graph %s (%s): fidelity against fp32 on %d %s images: %s; their forward "
             "%.2fx faster than fp32 (%.0f vs %.0f ms)", path.name,
             "quantised now" if fresh else "cached", len(check),
             "held-out" if held_out else "calibration",
             ", ".join(f"{k} mean cosine {v['mean_cosine']:.4f} min {v['min_cosine']:.4f}"
                       for k, v in fid.items()), t32 / max(t8, 1e-9), 1000 * t8, 1000 * t32)
    return info


def _timed(engine: OrtEngine, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """``engine(x)`` and its wall seconds, after a one-image warm-up (session set-up)."""
    engine(x[:1])
    t0 = time.perf_counter()
    out = engine(x)
    return out, time.perf_counter() - t0


def previous_quantisation(out: Path, journal: Any) -> dict[str, Any] | None:
    """The ``quantisation`` of the store at ``out`` (or of its unfinished run's manifest)."""
    from .reader import FeatureStore

    old = (FeatureStore(out).provenance if out.is_file() else journal.manifest()) or {}
    q = old.get("quantisation")
    return q if isinstance(q, dict) else None


def calibration_dataset(src: Any, ext: Any, max_pixels: int | None) -> Any:
    """The torch-free PIL dataset of ``src`` with ``ext``'s preprocessing and JPEG scaling (the
    pixels of the PIL path), which the calibration reads."""
    from ..sources.dct import draft_target
    from .light import LightDataset

    draft = (draft_target(ext.preprocessing.resize)
             if getattr(ext, "jpeg_scaling", "off") == "dct" else None)
    return LightDataset(src, ext.preprocessing, max_pixels=max_pixels, draft_to=draft)
