"""Fine-tuning options: :class:`FinetuneConfig` (every option, validated, stored as plain data in
each checkpoint and report) and :func:`make_config` (defaults + keyword overrides).

The backbone fields it shares with :mod:`cnncodes.options` (``backbone``, ``weights``,
``input_size``) take their names and defaults from :class:`~cnncodes.options.BackboneOptions`; how
the run computes is one :class:`~cnncodes.options.RuntimeOptions`, ``FinetuneConfig.runtime``,
passed along whole to the loaders, the trainer, state ``predict`` and the escalation's probe. Its
default batch size is fine-tuning's own (:data:`FINETUNE_BATCH_SIZE`: 32 images per step, not 64
per forward pass). Stored files keep the runtime fields training uses flat beside the others
(:meth:`FinetuneConfig.to_dict`), as before. No torch import at module level: the CLI reads the
choices here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError
from ..options import RUNTIME_FIELDS as ALL_RUNTIME_FIELDS
from ..options import TRAIN_PRECISIONS, BackboneOptions, RuntimeOptions, check_param

STATES = ("predict", "head-only", "full")
#: a run's ``report.json``: its ``kind`` and the ``schema_version`` it is written in (read back
#: through :class:`cnncodes.report.finetune_schema.FinetuneReport`; files without one are version 0)
REPORT_KIND = "cnncodes-finetune-report"
REPORT_SCHEMA_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
_BACKBONE = BackboneOptions()
#: images per step and process when no batch size is given (RuntimeOptions' 64 is per forward
#: pass of extraction)
FINETUNE_BATCH_SIZE = 32
#: the runtime fields training uses; stored flat in checkpoints, ``config.json`` and reports
STORED_RUNTIME = ("batch_size", "device", "precision", "num_workers", "threads", "max_pixels")
#: runtime fields training has no use for, and why (a RuntimeOptions shared with extraction may
#: carry them: they are ignored; as keywords they are refused); ``progress`` is used, not stored
NOT_TRAINING = {
    "decoder": "training decodes with PIL, whose images its augmentation crops",
    "engine": "training runs in torch",
    "jpeg_scaling": "training decodes images in full",
}
#: the keyword options fine-tuning takes that go into ``FinetuneConfig.runtime``
RUNTIME_OPTIONS = tuple(f for f in ALL_RUNTIME_FIELDS if f not in NOT_TRAINING)


def finetune_runtime(**changes: Any) -> RuntimeOptions:
    """Fine-tuning's default :class:`RuntimeOptions` (batch size :data:`FINETUNE_BATCH_SIZE`) with
    ``changes``."""
    return RuntimeOptions(batch_size=FINETUNE_BATCH_SIZE).replace(**changes)


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
        channels_last: NHWC memory format for model and inputs.
        deterministic: ``torch.use_deterministic_algorithms`` during the call (restored after).
        sync_bn: under torchrun on CUDA, BatchNorm layers that train use batch statistics over
            all ranks (:class:`torch.nn.SyncBatchNorm`); frozen stages keep theirs. No effect in
            one process; not available on CPU (gloo).
        runtime: how the run computes (:class:`~cnncodes.options.RuntimeOptions`, default
            :func:`finetune_runtime`): ``batch_size`` images per step and process (>= 2:
            BatchNorm needs two images in training mode; per rank, as in torch: under
            ``torchrun --nproc-per-node N`` the global batch is ``N * batch_size``, the learning
            rate is not rescaled for you); ``device``; ``precision`` (``auto``: fp16 autocast +
            GradScaler on CUDA, fp32 on CPU; ``fp16`` CUDA only; ``bf16``; not ``int8``);
            ``num_workers`` decoding processes (default from the core count; 0 = in-process);
            ``threads`` torch CPU threads during the call (restored afterwards); ``max_pixels``
            the decompression-bomb limit per image (0 or None = no limit); ``progress`` bars on
            stderr. ``decoder``, ``engine`` and ``jpeg_scaling`` are not used by training (see
            :data:`NOT_TRAINING`). ``make_config``/``finetune`` also take these fields as
            keywords (``batch_size=16``); a RuntimeOptions given whole is taken whole (its own
            default batch size is 64).
    """

    backbone: str = _BACKBONE.backbone
    weights: str | None = _BACKBONE.weights
    input_size: int | None = _BACKBONE.input_size
    state: str = "full"
    epochs: int = 15
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
    channels_last: bool = True
    deterministic: bool = False
    sync_bn: bool = False
    runtime: RuntimeOptions = field(default_factory=finetune_runtime)

    #: Options that may differ when a run is resumed (they do not change what is computed, or
    #: only extend it; ``progress`` is not stored at all).
    RUNTIME_FIELDS = frozenset({"device", "num_workers", "threads", "epochs", "early_stopping",
                                "max_pixels", "progress"})

    def __post_init__(self) -> None:
        if isinstance(self.crop_scale, list):
            self.crop_scale = tuple(self.crop_scale)
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
        rt = self.runtime
        if not isinstance(rt, RuntimeOptions):
            raise OptionError(f"runtime must be a cnncodes.RuntimeOptions; got {rt!r}.")

        def bad(name: str, want: str) -> OptionError:
            value = getattr(rt if name in ALL_RUNTIME_FIELDS else self, name)
            return OptionError(f"{name} must be {want}; got {value!r}.")

        for name, choices in (("state", STATES), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES), ("precision", TRAIN_PRECISIONS)):
            if getattr(rt if name == "precision" else self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        from ..backbones.registry import get_spec  # torchvision: only when validating

        get_spec(self.backbone)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise bad("epochs", "an integer >= 1")
        if rt.batch_size < 2:  # an int >= 1: RuntimeOptions checked it
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
        """Plain JSON/torch-safe dict: the fields, with the runtime fields training uses
        (:data:`STORED_RUNTIME`) flat beside them (the layout of every stored configuration)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name != "runtime"}
        d["crop_scale"] = [float(x) for x in self.crop_scale]
        for k in STORED_RUNTIME:
            v = getattr(self.runtime, k)
            d[k] = str(v) if k == "device" else v  # a torch.device is stored as its name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """The configuration :meth:`to_dict` stored (names it does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"runtime"}
        runtime = finetune_runtime(**{k: v for k, v in d.items() if k in STORED_RUNTIME})
        return cls(**{k: v for k, v in d.items() if k in known}, runtime=runtime)


#: every keyword option of :func:`make_config` (and of ``finetune``/``escalate``)
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(FinetuneConfig)
                     if f.name != "runtime") + RUNTIME_OPTIONS


def make_config(config: FinetuneConfig | None = None, *, runtime: RuntimeOptions | None = None,
                **options: Any) -> FinetuneConfig:
    """``config`` (or the defaults) with ``runtime`` (taken whole) and ``options`` applied.

    ``options`` are FinetuneConfig fields and the RuntimeOptions fields training uses (they change
    ``runtime``); unknown names are named, with the closest valid one.
    """
    unknown = [k for k in options if k not in OPTION_NAMES]
    if unknown:
        hints = [f"{k!r} ({NOT_TRAINING[k]})" if k in NOT_TRAINING
                 else f"{k!r} (did you mean {m[0]!r}?)"
                 if (m := difflib.get_close_matches(k, OPTION_NAMES, 1)) else repr(k)
                 for k in unknown]
        raise OptionError(f"Unknown fine-tuning option {', '.join(hints)}; options are "
                          f"{', '.join(OPTION_NAMES)}.")
    base = config if config is not None else FinetuneConfig()
    rt = runtime if runtime is not None else base.runtime
    if not isinstance(rt, RuntimeOptions):
        raise OptionError(f"runtime must be a cnncodes.RuntimeOptions; got {rt!r}.")
    changes = {k: options.pop(k) for k in list(options) if k in RUNTIME_OPTIONS}
    for k, v in changes.items():
        check_param(k, v, "finetune()")
    return dataclasses.replace(base, runtime=rt.replace(**changes), **options).validate()
