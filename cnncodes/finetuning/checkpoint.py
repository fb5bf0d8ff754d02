"""What a fine-tuning ``checkpoint.pt`` carries besides the tensors: :class:`TrainState` (epoch,
best metric, patience, history, failures), its :data:`CHECKPOINT_KIND`, and the precision check
that keeps a run from resuming in another precision than it trained in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import OptionError

CHECKPOINT_KIND = "cnncodes-finetune-checkpoint"


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint carries besides the model/optimiser tensors."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "best": {"accuracy": self.best_accuracy, "loss": self.best_loss,
                         "epoch": self.best_epoch},
                "bad_epochs": self.bad_epochs, "history": self.history,
                "failures": self.failures, "stopped": self.stopped}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        best = saved["best"]
        return cls(int(saved["epoch"]), float(best["accuracy"]), float(best["loss"]),
                   best["epoch"], int(saved["bad_epochs"]), list(saved["history"]),
                   dict(saved["failures"]), saved.get("stopped"))


def checkpoint_precision(saved: dict[str, Any]) -> str:
    """The precision a checkpoint was trained with: recorded since it is saved resolved; in older
    checkpoints the configured one, where ``auto`` meant fp16 exactly when the GradScaler ran
    (its state is empty otherwise)."""
    if saved.get("precision"):
        return str(saved["precision"])
    asked = str(saved.get("config", {}).get("precision", "auto"))
    if asked != "auto":
        return asked
    return "fp16" if saved.get("scaler") else "fp32"


def check_resume_precision(saved: dict[str, Any], precision: str, device: torch.device) -> None:
    """Refuse to resume a run in another precision than it was trained in (the weights, the
    optimiser's moments and the loss scale belong to it; ``auto`` resolves differently on CPU
    and CUDA)."""
    was = checkpoint_precision(saved)
    if was != precision:
        on = f" on {saved['device']}" if saved.get("device") else ""
        raise OptionError(f"this run was trained in {was}{on}; resuming it on {device} would "
                          f"train in {precision}. Resume with --precision {was} (and a device "
                          f"that supports it), or start a new run in another -o folder.")
