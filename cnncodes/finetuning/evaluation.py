"""Evaluation of a fine-tuned network over a loader: loss, accuracy, predictions and
probabilities (:func:`evaluate`, reduced over ranks under DDP), the autocast set-up
(:func:`amp_dtype`, :func:`autocast`), confusion matrix and per-class accuracy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._distributed import all_gather_objects, all_reduce, all_reduce_sum
from .._runtime import progress_bar, resolve_precision
from ..errors import OptionError
from ..sources.loader import normalize_batch
from ..sources.preprocessing import Preprocessing
from .net import FinetuneNet


def amp_dtype(precision: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """``(resolved precision, autocast dtype or None for fp32)``; fp16 needs CUDA."""
    prec = resolve_precision(precision, device)
    if prec == "fp16" and device.type != "cuda":
        raise OptionError(f"precision fp16 needs CUDA (device is {device}); use fp32 (the CPU "
                         "default) or bf16.")
    return prec, {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)


@dataclass
class Evaluation:
    """Loss, accuracy and per-row predictions of one evaluation pass."""

    loss: float
    accuracy: float
    predicted: np.ndarray  # -1 where the image could not be read
    probabilities: np.ndarray
    failures: list[tuple[int, str]]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None \
        else contextlib.nullcontext()


def evaluate(net: FinetuneNet, loader: DataLoader, labels: np.ndarray, pp: Preprocessing, *,
              device: torch.device, amp: torch.dtype | None, channels_last: bool,
              n_classes: int, progress: str | None = None, reduce: bool = False) -> Evaluation:
    """Loss, accuracy and predictions of ``net`` over ``loader``'s images of ``labels``.

    With ``reduce`` (under DDP, every rank's loader holding its shard of the rows), the loss sums,
    counts, predictions and failures are combined over ranks, so every rank gets the metrics of
    the whole set, as one process would; ``probabilities`` stay this rank's rows only.
    """
    was = net.training
    net.eval()
    n = len(labels)
    pred = np.full(n, -1, np.int64)
    probs = np.zeros((n, n_classes), np.float32)
    count: float = 0  # rows with a loss (a float once summed over ranks)
    loss_sum, failures = 0.0, []
    bar = progress_bar(len(loader.sampler), progress or "",  # type: ignore[arg-type]
                       enabled=bool(progress), leave=False)
    try:
        with torch.inference_mode():
            for batch in loader:
                failures.extend(batch.failures)
                if bar is not None:
                    bar.update(len(batch.indices) + len(batch.failures))
                if not batch.indices:
                    continue
                x = normalize_batch(batch.images.to(device, non_blocking=True), pp,
                                    channels_last=channels_last)
                with autocast(device, amp):
                    logits = net(x)
                logits = logits.float()
                idx = np.asarray(batch.indices)
                if (labels[idx] >= 0).all():
                    y = torch.as_tensor(labels[idx], device=device)
                    loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                    count += len(idx)
                p = torch.softmax(logits, 1).cpu().numpy()
                probs[idx] = p
                pred[idx] = p.argmax(1)
    finally:
        if bar is not None:
            bar.close()
        net.train(was)
    if reduce:  # rows are disjoint between ranks: -1 (not mine / unreadable) loses to a class
        pred = all_reduce(torch.from_numpy(pred), "max").numpy()
        loss_sum, count = all_reduce_sum([loss_sum, count])
        failures = sorted(f for part in all_gather_objects(failures) for f in part)
    ok = (pred >= 0) & (labels >= 0)
    acc = float((pred[ok] == labels[ok]).mean()) if ok.any() else float("nan")
    return Evaluation(loss_sum / count if count else float("nan"), acc, pred, probs, failures)


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    ok = (true >= 0) & (pred >= 0)
    np.add.at(m, (true[ok], pred[ok]), 1)
    return m.tolist()


def per_class(true: np.ndarray, pred: np.ndarray,
              classes: Sequence[str]) -> dict[str, float | None]:
    """Accuracy per class name; None for a class without a scored image (see
    :func:`per_class_note`)."""
    out: dict[str, float | None] = {}
    for c, name in enumerate(classes):
        m = (true == c) & (pred >= 0)
        out[name] = float((pred[m] == c).mean()) if m.any() else None
    return out


def per_class_note(true: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                   part: str = "test") -> str | None:
    """Why :func:`per_class` holds None for some classes (None when it holds none)."""
    why = []
    for c, name in enumerate(classes):
        n = int((true == c).sum())
        if not ((true == c) & (pred >= 0)).any():
            why.append(f"{name} (no {part} image of that class)" if n == 0 else
                       f"{name} (its {n} {part} image(s) could not be read)")
    if not why:
        return None
    return ("null for " + ", ".join(why) + ": an accuracy needs at least one scored image; a "
            "class needs 3+ images to get one in each of the validation and test parts")


def finite(v: float | None) -> float | None:
    """``v``, or None when it is None, NaN or infinite (JSON has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


def set_metric(rep: dict, key: str, value: float | None, why: str) -> None:
    """``rep[key] = value``; when it is missing or not finite, None and ``rep[key + "_note"] =
    why`` (every null metric says why it is null)."""
    rep[key] = finite(value)
    if rep[key] is None:
        rep[f"{key}_note"] = why


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
