"""Fine-tuning options: :class:`FinetuneConfig` (every option, validated, stored as plain data in
each checkpoint and report) and :func:`make_config` (defaults + keyword overrides).

The backbone and runtime fields it shares with :mod:`cnncodes.options` (``backbone``, ``weights``,
``input_size``, ``device``, ``precision``, ``num_workers``, ``threads``, ``max_pixels``) take their
names and defaults from :class:`~cnncodes.options.BackboneOptions` and
:class:`~cnncodes.options.RuntimeOptions`; ``batch_size`` is fine-tuning's own (32 images per
step, not 64 per forward pass). No torch import at module level: the CLI reads the choices here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from ..options import TRAIN_PRECISIONS, BackboneOptions, RuntimeOptions

STATES = ("predict", "head-only", "full")
#: a run's ``report.json``: its ``kind`` and the ``schema_version`` it is written in (read back
#: through :class:`cnncodes.report.schema.FinetuneReport`; files without one are version 0)
REPORT_KIND = "cnncodes-finetune-report"
REPORT_SCHEMA_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
_BACKBONE = BackboneOptions()
_RUNTIME = RuntimeOptions()


@dataclass
class FinetuneConfig:
    """Every fine-tuning option (stored as plain data in checkpoints and reports).

    Attributes:
        backbone: registry name (see ``cnncodes models``).
        weights: ``auto``, a torchvision weights name, a checkpoint path (also a ``model.pt``
            written by a previous fine-tuning run), or ``random``.
        input_size: crop size in pixels (default: the weights' own, e.g. 224).
        state: ``full`` (train the backbone after the frozen stages and the head), ``head-only``
            (backbone frozen, BatchNorm in eval mode) or ``predict`` (no training: evaluate the
            fine-tuned model given as ``weights``).
        epochs: passes over the training split.
        batch_size: images per step and process (>= 2: BatchNorm needs two images in training
            mode). Per rank, as in torch: under ``torchrun --nproc-per-node N`` each of the N
            processes takes this many, so the global batch is ``N * batch_size`` (the learning
            rate is not rescaled for you).
        optimizer: ``sgd`` (momentum, the default) or ``adamw``.
        lr: base learning rate of the pretrained layers (default 0.001 for SGD, 1e-4 for
            AdamW; the head trains 10x faster).
        head_lr_mult: the new head trains at ``lr * head_lr_mult`` (10; the texts use 10-100).
        layer_decay: optional layer-wise decay: stage ``i`` of ``S`` trains at
            ``lr * layer_decay ** (S - i)`` (earlier stages slower).
        freeze: freeze the first ``freeze`` stages (0 = none).
        momentum: SGD momentum.
        weight_decay: L2 weight decay (SGD) or decoupled weight decay (AdamW).
        schedule: ``cosine`` (towards 0, never 0 at a step), ``step`` (x ``gamma`` every
            ``step_size`` epochs) or ``constant``; always after a linear warmup of
            ``warmup_epochs``.
        warmup_epochs: linear warmup length in epochs (fractions allowed; 0 = none). The warmup
            never takes more than half of the run's optimiser steps (``epochs x steps per
            epoch // 2``): a longer one is shortened to that, with a warning and
            ``report.json["warmup"]["clamped"]``, so at least half of every run trains at the
            full learning rate of the schedule.
        step_size, gamma: the ``step`` schedule.
        label_smoothing: cross-entropy label smoothing (0 = none).
        augment: random resized crop (+ horizontal flip) for training; off = the evaluation
            transform.
        crop_scale: area range of the random resized crop (gentler than ImageNet training's
            0.08-1 because fine-tuning sets are small).
        hflip: random horizontal flips when ``augment``.
        val_fraction: stratified validation share of the source, evaluated every epoch.
        test_fraction: stratified test share (ignored when a separate test source is given).
        early_stopping: stop after this many epochs without validation improvement (None = off).
        grad_clip: clip the gradient norm to this value (None = off).
        seed: seeds the split, the head init, the batch order, augmentation and dropout.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (fp16 autocast + GradScaler on CUDA, fp32 on CPU), ``fp32``,
            ``fp16`` (CUDA only) or ``bf16``.
        channels_last: NHWC memory format for model and inputs.
        num_workers: decoding processes (default from the core count; 0 = in-process).
        threads: torch CPU threads during the call (restored afterwards).
        deterministic: ``torch.use_deterministic_algorithms`` during the call (restored after).
        max_pixels: decompression-bomb limit per image (0 or None = no limit).
        sync_bn: under torchrun on CUDA, BatchNorm layers that train use batch statistics over
            all ranks (:class:`torch.nn.SyncBatchNorm`); frozen stages keep theirs. No effect in
            one process; not available on CPU (gloo).
    """

    backbone: str = _BACKBONE.backbone
    weights: str | None = _BACKBONE.weights
    input_size: int | None = _BACKBONE.input_size
    state: str = "full"
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float | None = None
    head_lr_mult: float = 10.0
    layer_decay: float | None = None
    freeze: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 5
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    hflip: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    early_stopping: int | None = None
    grad_clip: float | None = None
    seed: int = 0
    device: str = _RUNTIME.device
    precision: str = _RUNTIME.precision
    channels_last: bool = True
    num_workers: int | None = _RUNTIME.num_workers
    threads: int | None = _RUNTIME.threads
    deterministic: bool = False
    max_pixels: int | None = _RUNTIME.max_pixels
    sync_bn: bool = False

    #: Options that may differ when a run is resumed (they do not change what is computed, or
    #: only extend it).
    RUNTIME_FIELDS = frozenset({"device", "num_workers", "threads", "epochs", "early_stopping",
                                "max_pixels"})

    def __post_init__(self) -> None:
        if isinstance(self.crop_scale, list):
            self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        if self.weights is not None and not isinstance(self.weights, str):
            self.weights = os.fspath(self.weights)

    @property
    def base_lr(self) -> float:
        """The learning rate of the pretrained layers (``lr`` or the optimiser's default)."""
        if self.lr is not None:
            return float(self.lr)
        return 0.001 if self.optimizer == "sgd" else 1e-4

    def validate(self) -> FinetuneConfig:
        """Check every value; raises ValueError naming the bad value and the valid range."""
        def bad(name: str, want: str) -> OptionError:
            return OptionError(f"{name} must be {want}; got {getattr(self, name)!r}.")

        for name, choices in (("state", STATES), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        if self.precision not in TRAIN_PRECISIONS:
            raise bad("precision", "one of " + ", ".join(TRAIN_PRECISIONS))
        from ..backbones.registry import get_spec  # torchvision: only when validating

        get_spec(self.backbone)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise bad("epochs", "an integer >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise bad("batch_size", "an integer >= 2 (BatchNorm needs two images per step)")
        for name in ("lr", "head_lr_mult", "layer_decay", "momentum", "weight_decay",
                     "warmup_epochs", "gamma", "label_smoothing", "grad_clip", "val_fraction",
                     "test_fraction"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise bad(name, "a finite number")
        if self.state != "predict":  # a state that trains: a zero learning rate trains nothing
            self._check_learning_rates(bad)
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise bad("layer_decay", "in (0, 1] (e.g. 0.7), or None for no decay")
        if not isinstance(self.freeze, int) or self.freeze < 0:
            raise bad("freeze", "an integer >= 0 (number of leading stages to freeze)")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", ">= 0")
        if not self.warmup_epochs >= 0:
            raise bad("warmup_epochs", ">= 0")
        if not isinstance(self.step_size, int) or self.step_size < 1:
            raise bad("step_size", "an integer >= 1 (epochs)")
        if not self.gamma > 0:
            raise bad("gamma", "> 0")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "in [0, 1)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise bad("crop_scale", "two numbers 0 < min <= max <= 1")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "in [0, 1)")
        if not 0 <= self.test_fraction < 1:
            raise bad("test_fraction", "in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise OptionError(f"val_fraction + test_fraction must leave images to train on; got "
                             f"{self.val_fraction} + {self.test_fraction}.")
        if self.early_stopping is not None:
            if not isinstance(self.early_stopping, int) or self.early_stopping < 1:
                raise bad("early_stopping", "an integer >= 1 (patience in epochs) or None")
            if self.val_fraction == 0:
                raise OptionError("early_stopping needs a validation split; set val_fraction > 0 "
                                 "(e.g. 0.15) or drop early_stopping.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "> 0 (e.g. 1.0) or None")
        if self.input_size is not None and (not isinstance(self.input_size, int)
                                            or self.input_size < 16):
            raise bad("input_size", "an integer >= 16 pixels or None")
        if self.num_workers is not None and self.num_workers < 0:
            raise bad("num_workers", ">= 0")
        return self

    def _check_learning_rates(self, bad: Any) -> None:
        """Refuse a zero (or negative) learning rate for what trains: the head always, the
        backbone under ``full``."""
        fix = ("A learning rate of 0 trains nothing (the run would report the untrained model's "
               "accuracy): pass e.g. --lr 0.001 (SGD) or 1e-4 (AdamW), or leave --lr out for "
               "the optimiser's default; to evaluate a model without training use --state "
               "predict")
        if self.lr is not None and not self.lr > 0:
            raise OptionError(f"lr must be > 0 (or None for the optimiser's default); got "
                              f"{self.lr!r}. {fix}.")
        if not self.head_lr_mult > 0:
            raise OptionError(f"head_lr_mult must be > 0 (10 is the usual choice); got "
                              f"{self.head_lr_mult!r}: the head would train at lr x "
                              f"{self.head_lr_mult!r} = {self.base_lr * self.head_lr_mult!r}. "
                              "Pass --head-lr-mult 10 (or 1 for one rate everywhere).")
        if not self.base_lr * self.head_lr_mult > 0:
            raise OptionError(f"The head's learning rate lr x head_lr_mult must be > 0; got "
                              f"{self.base_lr!r} x {self.head_lr_mult!r} = 0 (the product "
                              "underflows). Raise --lr or --head-lr-mult.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/torch-safe dict."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = [float(x) for x in self.crop_scale]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def make_config(config: FinetuneConfig | None = None, **options: Any) -> FinetuneConfig:
    """``config`` (or the defaults) with ``options`` applied; unknown option names are named."""
    known = [f.name for f in dataclasses.fields(FinetuneConfig)]
    unknown = [k for k in options if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1))
                 else repr(k) for k in unknown]
        raise OptionError(f"Unknown fine-tuning option {', '.join(hints)}; options are "
                         f"{', '.join(known)}.")
    base = config if config is not None else FinetuneConfig()
    return dataclasses.replace(base, **options).validate()
