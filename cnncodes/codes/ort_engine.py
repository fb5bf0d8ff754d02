"""The ONNX Runtime CPU engine and the code comparison every check uses; torch-free, so the
torch-free extraction path (:mod:`cnncodes.codes.light`) and the torch path
(:mod:`cnncodes.codes.engines`) share them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .export_cache import INPUT_NAME

#: the exported graph must give these codes or better (cosine per row, every layer) on the probe
CHECK_COSINE = 0.99999
#: ONNX Runtime's intra-op spinning ("0": idle threads sleep instead of busy-waiting, leaving the
#: cores to the decoding workers; see benchmarks/bench_extract.py for the measurement)
ALLOW_SPINNING = "0"


def default_ort_threads() -> int:
    """Intra-op threads of ONNX Runtime when none are asked: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class OrtEngine:
    """An ONNX Runtime CPU session of the exported cut network (fp32, same codes as torch).

    Called with a normalised float NCHW batch (a NumPy array or a torch tensor); returns
    ``{layer: float32 (N, D) numpy}``."""

    name = "onnxruntime"
    channels_last = False

    def __init__(self, model: bytes, layers: Sequence[str], *, threads: int | None = None,
                 path: Path | None = None):
        import onnxruntime as ort

        self.layers = list(layers)
        self.version = ort.__version__
        self.threads = int(threads) if threads else default_ort_threads()
        self.path = path
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops: the decoding workers share these cores
        so.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model, sess_options=so,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        if not isinstance(x, np.ndarray):  # a torch tensor
            x = x.detach().to("cpu").float().numpy()
        arr = np.ascontiguousarray(x, dtype=np.float32)
        outs = self.session.run(self.layers, {INPUT_NAME: arr})
        return {k: np.asarray(v, np.float32) for k, v in zip(self.layers, outs, strict=True)}


def min_cosine(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """The smallest row cosine between ``a`` and ``b`` over every layer (1.0 for equal codes)."""
    worst = 1.0
    for k, va in a.items():
        x, y = np.asarray(va, np.float64), np.asarray(b[k], np.float64)
        if x.shape != y.shape:
            return -1.0
        num = (x * y).sum(1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos = np.where(den > 0, num / np.maximum(den, 1e-300),
                       np.where(np.abs(x - y).max(1) == 0, 1.0, -1.0))
        worst = min(worst, float(cos.min()))
    return worst
