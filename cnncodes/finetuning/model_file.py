"""The fine-tuned model file ``model.pt``: a stock torchvision state dict (the new head stored under
the old classifier's name, so the file also serves as an extraction backbone) plus ``cnncodes``
metadata. :func:`read_model_file` / :func:`is_finetuned_model` read and recognise it,
:func:`save_model_file` writes it; :func:`atomic_torch_save` writes it and every checkpoint
(``weights_only``-loadable plain types, atomically).
"""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runtime import versions
from ..atomic import atomic_path
from ..errors import ModelMismatchError, NotFoundError

#: ``kind`` recorded in model files written by :func:`cnncodes.finetune`.
MODEL_KIND = "cnncodes-finetuned-model"
MODEL_FORMAT = 1


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a ``model.pt`` written by :func:`finetune`: ``(stock-layout state dict, metadata)``.

    Raises:
        ValueError: the file is not a cnncodes fine-tuned model (the message says what it is).
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"Model file {os.fspath(path)!r} does not exist; pass the "
                            "model.pt written by `cnncodes finetune -o RUN` (RUN/model.pt).")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: nothing was run
        raise ModelMismatchError(
            f"Cannot load {p}: it holds objects that only code could rebuild ({_unpickle_reason(e)}"
            "); cnncodes loads .pt files with torch.load(weights_only=True) and never runs code "
            "from them: pass the model.pt written by `cnncodes finetune`.") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelMismatchError(f"Cannot load {p}: {type(e).__name__}: {first}") from e
    meta = obj.get("cnncodes") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != MODEL_KIND:
        raise ModelMismatchError(f"{p} is not a fine-tuned model written by cnncodes finetune (no "
                         f"'{MODEL_KIND}' metadata); pass RUN/model.pt of a fine-tuning run.")
    return obj["state_dict"], meta


def _unpickle_reason(e: Exception) -> str:
    """The one sentence of torch's weights-only refusal that names the refused global."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error: (.*?\.)(?: Please|\n|$)", text)
    return m.group(1) if m else (text.strip().splitlines() or ["refused"])[0]


def is_finetuned_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a ``model.pt`` written by :func:`finetune` (for command dispatch)."""
    try:
        read_model_file(path)
    except (ValueError, FileNotFoundError, IsADirectoryError):
        return False
    return True


def _plain(obj: Any) -> Any:
    """Deep copy of ``obj`` with only tensors and builtin types (str subclasses such as torch's
    ``TorchVersion`` and numpy scalars would make ``torch.load(weights_only=True)`` refuse it)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (list, tuple) else \
            [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a weights_only checkpoint")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of :func:`_plain` ``(obj)`` through the atomic writer."""
    with atomic_path(path) as tmp:
        torch.save(_plain(obj), tmp)


def save_model_file(net: Any, path: str | os.PathLike, *, config: dict[str, Any],
                    family: str, base_weights: str, base_weights_sha256: str,
                    preprocessing: dict[str, Any], epoch: int, val_accuracy: float | None,
                    command: str, world: int = 1) -> None:
    """Write ``model.pt``: ``net``'s stock-layout state dict (a :class:`FinetuneNet`) and the
    metadata :func:`read_model_file` checks (classes, head path, preprocessing, base weights,
    the configuration ``config`` as a dict, versions, command line)."""
    meta = {
        "kind": MODEL_KIND, "format": MODEL_FORMAT, "backbone": config["backbone"],
        "family": family, "classes": list(net.classes),
        "head_path": net.head_path, "head_name": net.head_name,
        "preprocessing": preprocessing, "input_size": preprocessing["crop"],
        "base_weights": base_weights, "base_weights_sha256": base_weights_sha256,
        "state": config["state"],
        "freeze": net.frozen_stages, "epoch": epoch, "world_size": int(world),
        "val_accuracy": None if val_accuracy is None else float(val_accuracy),
        "config": config, "command": command, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_torch_save({"state_dict": net.stock_state_dict(), "cnncodes": meta}, path)
