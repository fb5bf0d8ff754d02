"""Fine-tuning: the fall-through for when codes + a linear classifier are not enough.

This module owns the whole fine-tuning path:

* :class:`FinetuneConfig`: every option, validated, stored as plain data in each checkpoint.
* Head replacement: the backbone's final ``nn.Linear`` (``fc`` of ResNet, ``classifier.6`` of
  VGG/AlexNet, the last Linear of ``classifier`` for MobileNet/EfficientNet/DenseNet/ConvNeXt) is
  swapped for :class:`torch.nn.Identity` and a *new, renamed* layer ``head`` sized to the user's
  classes is put on top (:class:`FinetuneNet`); it is xavier-uniform initialised with zero bias and
  never receives the pretrained classifier's weights.
* Stages (:func:`backbone_stages`): a backbone is cut into stages at the registry's cut points
  (``layer1..layer4`` of ResNet, ``stage2..stage5`` + the layers before the pool elsewhere,
  ``pool5 / fc6 / fc7`` of VGG); ``freeze=k`` freezes stages ``1..k`` (``requires_grad=False``, no
  optimiser group, BatchNorm statistics frozen by keeping those modules in eval mode).
* Three states: ``predict`` (evaluate a fine-tuned model file, no training), ``head-only`` (whole
  backbone frozen and in eval mode) and ``full`` (everything after the frozen stages trains).
* Optimiser groups per stage with discriminative learning rates (head = base x ``head_lr_mult``,
  optional layer-wise decay), SGD + momentum or AdamW, warmup + cosine/step schedule per iteration,
  label smoothing, random-resized-crop + flip augmentation derived from the weights' preprocessing,
  deterministic evaluation transform, AMP (fp16 + GradScaler) on CUDA and fp32 on CPU,
  channels_last, gradient clipping, a NaN/inf loss guard.
* Run folder: ``checkpoint.pt`` (every epoch, atomic, ``weights_only``-loadable, exact resume),
  ``model.pt`` (best epoch; stock torchvision layout + metadata so it also serves as an extraction
  backbone), ``split.json``, ``curves.png``, ``report.json``.
* :func:`escalate`: linear probe on codes vs head-only vs full fine-tuning on one split.
* :func:`predict_images`: per-image predictions of a fine-tuned model file.

Augmentation randomness is drawn from per-image generators seeded by ``(seed, epoch, image)`` and
the batch order from ``(seed, epoch)``, so results do not depend on worker processes or on where a
run was interrupted; the global torch RNG (dropout) is forked for the call and saved in checkpoints.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel: gloo on
CPU, nccl on ``cuda:LOCAL_RANK``. Each epoch's order is cut into rank slices (``set_epoch`` per
epoch; the last ``-n % world`` positions are padded with repeats, as DistributedSampler does, so
every rank takes the same number of steps); validation and test sets are sharded into whole
batches without padding and their loss sums, counts and predictions are all-reduced, so the metrics
equal a single-process evaluation. ``sync_bn`` converts training BatchNorm layers to
SyncBatchNorm. Rank 0 alone writes the run folder and logs; barriers keep other ranks from reading
``model.pt`` before it is written. The per-rank dropout RNG states are gathered into each
checkpoint, so a resume with the same number of ranks continues exactly. The run folder must be on
a filesystem every rank sees (as for distributed extraction).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .._distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    env_info,
    process_group,
    shard_batches,
)
from .._distributed import (
    backend as dist_backend,
)
from .._runtime import command_line, default_workers, resolve_device, resolve_precision, versions
from ..atomic import atomic_path, atomic_write_text
from ..backbones.factory import build_model
from ..backbones.registry import BackboneSpec, get_spec
from ..backbones.weights import ResolvedWeights, load_weights, resolve_weights, weights_sha256
from ..errors import DecodeError, FinetuneDivergedError
from ..options import DEFAULT_MAX_PIXELS
from ..sources.data import ImageSource, collate, load_rgb, normalize_batch, open_source, preprocess_pil
from ..sources.preprocessing import Preprocessing

log = logging.getLogger(__name__)

STATES = ("predict", "head-only", "full")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
#: ``kind`` recorded in model files written by :func:`finetune`.
MODEL_KIND = "cnncodes-finetuned-model"
MODEL_FORMAT = 1
#: The module holding the final classifier per family (its last ``nn.Linear`` is replaced).
#: A registry entry can override it with ``extra={"head": "path.to.linear"}``.
HEAD_CONTAINERS = {
    "resnet": "fc", "vgg": "classifier", "alexnet": "classifier", "mobilenet": "classifier",
    "efficientnet": "classifier", "densenet": "classifier", "convnext": "classifier",
}
#: Name of the new classifier layer in :class:`FinetuneNet`.
HEAD_NAME = "head"
#: Files a run folder may hold (``overwrite`` removes exactly these).
RUN_FILES = ("checkpoint.pt", "model.pt", "split.json", "curves.png", "report.json",
             "config.json")
ESCALATION_FILES = ("escalation.json", "escalation.md", "escalation.png", "probe.json",
                    "split.json")


# --------------------------------------------------------------------------------------------
# Configuration


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
        schedule: ``cosine`` (to 0), ``step`` (x ``gamma`` every ``step_size`` epochs) or
            ``constant``; always after a linear warmup of ``warmup_epochs``.
        warmup_epochs: linear warmup length in epochs (fractions allowed; 0 = none).
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
        max_pixels: decompression-bomb limit per image.
        sync_bn: under torchrun on CUDA, BatchNorm layers that train use batch statistics over
            all ranks (:class:`torch.nn.SyncBatchNorm`); frozen stages keep theirs. No effect in
            one process; not available on CPU (gloo).
    """

    backbone: str = "mobilenet_v2"
    weights: str | None = "auto"
    input_size: int | None = None
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
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    num_workers: int | None = None
    threads: int | None = None
    deterministic: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
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
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"{name} must be {want}; got {getattr(self, name)!r}.")

        for name, choices in (("state", STATES), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise bad(name, "one of " + ", ".join(choices))
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise bad("precision", "one of auto, fp32, fp16, bf16")
        get_spec(self.backbone)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise bad("epochs", "an integer >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise bad("batch_size", "an integer >= 2 (BatchNorm needs two images per step)")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", "> 0 (or None for the optimiser's default)")
        if not self.head_lr_mult > 0:
            raise bad("head_lr_mult", "> 0 (10 is the usual choice)")
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
            raise ValueError(f"val_fraction + test_fraction must leave images to train on; got "
                             f"{self.val_fraction} + {self.test_fraction}.")
        if self.early_stopping is not None:
            if not isinstance(self.early_stopping, int) or self.early_stopping < 1:
                raise bad("early_stopping", "an integer >= 1 (patience in epochs) or None")
            if self.val_fraction == 0:
                raise ValueError("early_stopping needs a validation split; set val_fraction > 0 "
                                 "(e.g. 0.15) or drop early_stopping.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "> 0 (e.g. 1.0) or None")
        if self.input_size is not None and (not isinstance(self.input_size, int)
                                            or self.input_size < 16):
            raise bad("input_size", "an integer >= 16 pixels or None")
        if self.num_workers is not None and self.num_workers < 0:
            raise bad("num_workers", ">= 0")
        return self

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
        import difflib
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1))
                 else repr(k) for k in unknown]
        raise ValueError(f"Unknown fine-tuning option {', '.join(hints)}; options are "
                         f"{', '.join(known)}.")
    base = config if config is not None else FinetuneConfig()
    return dataclasses.replace(base, **options).validate()


# --------------------------------------------------------------------------------------------
# The split


@dataclass
class Split:
    """A seeded, stratified train/val/test split as lists of ``(path, class name)`` pairs.

    Paths are relative to ``root`` (``test_root`` for the test part), as in the source.
    """

    root: str
    test_root: str
    classes: list[str]
    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    seed: int
    val_fraction: float
    test_fraction: float
    test_source: str | None = None

    def source(self, part: str) -> ImageSource:
        """The ``train``/``val``/``test`` part as an :class:`ImageSource` (labels = class index)."""
        rows = getattr(self, part)
        root = Path(self.test_root if part == "test" else self.root)
        index = {c: i for i, c in enumerate(self.classes)}
        return ImageSource(root, [p for p, _ in rows],
                           np.array([index[c] for _, c in rows], np.int64), list(self.classes),
                           "list")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("train", "val", "test"):
            d[k] = [[p, c] for p, c in getattr(self, k)]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        kw = dict(d)
        for k in ("train", "val", "test"):
            kw[k] = [(str(p), str(c)) for p, c in d[k]]
        return cls(**kw)


def make_split(source: str | os.PathLike | ImageSource, *, val_fraction: float = 0.15,
               test_fraction: float = 0.2, seed: int = 0,
               test: str | os.PathLike | ImageSource | None = None) -> Split:
    """Split a labelled source per class (seeded): test, validation, and the rest for training.

    Args:
        source: a class-folder tree or labelled list file.
        val_fraction, test_fraction: shares of each class (at least one image each when the class
            has three or more and the share is > 0).
        seed: the shuffle seed.
        test: a separate labelled test source; then ``test_fraction`` is not used.

    Raises:
        ValueError: unlabelled source, fewer than two classes, or a class too small to split.
    """
    src = open_source(source)
    if src.kind == "flat" or (src.labels < 0).any() or len(src.classes) < 2:
        raise ValueError(f"Fine-tuning needs labelled images of at least two classes; {src.root} "
                         f"has {len(src.classes)} class(es). Pass a folder of class folders "
                         "(photos/cat/*.jpg, photos/dog/*.jpg) or a list file with labels.")
    test_src = open_source(test, classes=src.classes) if test is not None else None
    if test_src is not None and (test_src.labels < 0).any():
        raise ValueError(f"The test source {test_src.root} must be labelled like the training "
                         "source (class folders or a list with labels).")
    tf = 0.0 if test_src is not None else float(test_fraction)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(src.classes):
        idx = np.flatnonzero(src.labels == c)
        idx = idx[np.random.default_rng([int(seed), c]).permutation(len(idx))]
        n = len(idx)

        def share(f: float) -> int:
            k = int(round(f * n))
            return 1 if f > 0 and k == 0 and n >= 3 else k

        n_test, n_val = share(tf), share(val_fraction)
        if n - n_test - n_val < 1:
            raise ValueError(f"Class {name!r} has only {n} image(s): not enough for the "
                             f"validation ({val_fraction}) and test ({tf}) shares. Add images, "
                             "lower --val-fraction / --test-fraction, or pass --test.")
        parts["test"].extend(idx[:n_test].tolist())
        parts["val"].extend(idx[n_test:n_test + n_val].tolist())
        parts["train"].extend(idx[n_test + n_val:].tolist())

    def rows(ids: list[int], s: ImageSource) -> list[tuple[str, str]]:
        return [(s.paths[i], s.classes[int(s.labels[i])]) for i in sorted(ids)]

    test_rows = (rows(list(range(len(test_src))), test_src) if test_src is not None
                 else rows(parts["test"], src))
    return Split(root=os.fspath(src.root),
                 test_root=os.fspath(test_src.root if test_src is not None else src.root),
                 classes=list(src.classes), train=rows(parts["train"], src),
                 val=rows(parts["val"], src), test=test_rows, seed=int(seed),
                 val_fraction=float(val_fraction), test_fraction=tf,
                 test_source=os.fspath(test_src.root) if test_src is not None else None)


# --------------------------------------------------------------------------------------------
# The model: head replacement and stages


def find_head(model: nn.Module, spec: BackboneSpec) -> str:
    """Dotted path of the final classifier ``nn.Linear`` of a torchvision model of ``spec``."""
    container = spec.extra.get("head") or HEAD_CONTAINERS.get(spec.family)
    if container is None:
        raise ValueError(f"Fine-tuning does not know where the classifier of family "
                         f"{spec.family!r} ({spec.name}) is; register the backbone with "
                         "extra={'head': 'path.to.final.Linear'}.")
    mod = model.get_submodule(container)
    if isinstance(mod, nn.Linear):
        return container
    linears = [n for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{spec.name}: no nn.Linear inside {container!r} to replace.")
    return f"{container}.{linears[-1]}"


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """A classifier layer for ``num_classes``: xavier-uniform weights, zero bias."""
    head = nn.Linear(in_features, num_classes)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@dataclass(frozen=True)
class Stage:
    """A contiguous block of the backbone (stem + first cut, ..., layers after the last cut).

    Attributes:
        index: 1-based position (``freeze=k`` freezes stages 1..k).
        params: parameter names (relative to the backbone).
        leaves: leaf module names (relative to the backbone) in this stage.
        span: ``first .. last`` module, for messages.
    """

    index: int
    params: tuple[str, ...]
    leaves: tuple[str, ...]
    span: str


def backbone_stages(backbone: nn.Module, spec: BackboneSpec) -> list[Stage]:
    """Cut ``backbone`` into stages at the registry's cut points (in module order).

    A module belongs to stage ``i`` when it comes after the end of cut ``i-1`` and not after the end
    of cut ``i``; modules after the last cut form a final stage. Stages without parameters are
    merged into their neighbour.
    """
    names = [n for n, _ in backbone.named_modules()]
    pos = {n: i for i, n in enumerate(names)}
    ends = sorted({max(pos[m] for m in names if m == cut.node or m.startswith(cut.node + "."))
                   for cut in spec.layers.values() if cut.node in pos})
    modules = dict(backbone.named_modules())
    raw: dict[int, tuple[list[str], list[str]]] = {}
    for n in names:
        if n and not any(True for _ in modules[n].children()):
            raw.setdefault(bisect.bisect_left(ends, pos[n]), ([], []))[1].append(n)
    for pname, _ in backbone.named_parameters():
        owner = pname.rpartition(".")[0]
        raw.setdefault(bisect.bisect_left(ends, pos[owner]), ([], []))[0].append(pname)
    merged: list[tuple[list[str], list[str]]] = []
    pending_leaves: list[str] = []
    for k in sorted(raw):
        params, leaves = raw[k]
        if params:
            merged.append((params, pending_leaves + leaves))
            pending_leaves = []
        elif merged:
            merged[-1][1].extend(leaves)
        else:
            pending_leaves.extend(leaves)
    if pending_leaves and merged:
        merged[-1][1].extend(pending_leaves)

    def short(n: str) -> str:
        return ".".join(n.split(".")[:2])

    return [Stage(i + 1, tuple(p), tuple(lv), f"{short(p[0].rpartition('.')[0])} .. "
                  f"{short(p[-1].rpartition('.')[0])}")
            for i, (p, lv) in enumerate(merged)]


class FinetuneNet(nn.Module):
    """A backbone whose final classifier is replaced by a new layer named ``head``.

    ``forward(x)`` returns logits ``head(backbone(x))``; ``features(x)`` the pre-head code. Frozen
    stages keep their modules in eval mode whatever ``train()`` is called with, so BatchNorm
    statistics of frozen layers never move.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, spec: BackboneSpec,
                 head_path: str, classes: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec_name = spec.name
        self.head_path = head_path
        self.classes = list(classes)
        self.stages = backbone_stages(backbone, spec)
        self.frozen_stages = 0
        self.backbone_frozen = False
        self._eval_leaves: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's code (what the old classifier received), flattened to (N, D)."""
        return torch.flatten(self.backbone(x), 1)

    def freeze(self, k: int, *, backbone: bool = False) -> None:
        """Freeze stages ``1..k`` (or the whole backbone): no gradients, modules in eval mode."""
        if not 0 <= k <= len(self.stages):
            desc = "; ".join(f"{s.index}: {s.span}" for s in self.stages)
            raise ValueError(f"freeze={k} but {self.spec_name} has {len(self.stages)} stages "
                             f"({desc}); choose 0..{len(self.stages)} (or state head-only).")
        if backbone:
            k = len(self.stages)
        frozen = {p for s in self.stages[:k] for p in s.params}
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name not in frozen)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.frozen_stages = k
        self.backbone_frozen = backbone
        self._eval_leaves = [lv for s in self.stages[:k] for lv in s.leaves]
        self.train(self.training)

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        if mode:
            if self.backbone_frozen:
                self.backbone.eval()
            for name in self._eval_leaves:
                self.backbone.get_submodule(name).eval()
        return self

    def stock_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in the stock torchvision layout (head stored under the old classifier's
        name), so any loader of the plain architecture can read the fine-tuned backbone."""
        sd = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        sd[f"{self.head_path}.weight"] = self.head.weight.detach().clone()
        sd[f"{self.head_path}.bias"] = self.head.bias.detach().clone()
        return sd

    def load_stock_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`stock_state_dict` (strict)."""
        hw, hb = f"{self.head_path}.weight", f"{self.head_path}.bias"
        missing = [k for k in (hw, hb) if k not in sd]
        if missing:
            raise ValueError(f"State dict lacks the classifier {missing}.")
        self.backbone.load_state_dict({k: v for k, v in sd.items() if k not in (hw, hb)},
                                      strict=True)
        self.head.load_state_dict({"weight": sd[hw], "bias": sd[hb]}, strict=True)


def _wrap(stock: nn.Module, spec: BackboneSpec, classes: Sequence[str]) -> FinetuneNet:
    path = find_head(stock, spec)
    old = stock.get_submodule(path)
    assert isinstance(old, nn.Linear)
    _set_submodule(stock, path, nn.Identity())
    return FinetuneNet(stock, new_head(old.in_features, len(classes)), spec=spec, head_path=path,
                       classes=classes)


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a ``model.pt`` written by :func:`finetune`: ``(stock-layout state dict, metadata)``.

    Raises:
        ValueError: the file is not a cnncodes fine-tuned model (the message says what it is).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Model file {os.fspath(path)!r} does not exist; pass the "
                                "model.pt written by `cnncodes finetune -o RUN` (RUN/model.pt).")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"Cannot load {p}: {type(e).__name__}: {e}") from e
    meta = obj.get("cnncodes") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != MODEL_KIND:
        raise ValueError(f"{p} is not a fine-tuned model written by cnncodes finetune (no "
                         f"'{MODEL_KIND}' metadata); pass RUN/model.pt of a fine-tuning run.")
    return obj["state_dict"], meta


def is_finetuned_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a ``model.pt`` written by :func:`finetune` (for command dispatch)."""
    try:
        read_model_file(path)
    except (ValueError, FileNotFoundError, IsADirectoryError):
        return False
    return True


def load_finetuned(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                   ) -> tuple[FinetuneNet, dict[str, Any]]:
    """Rebuild the fine-tuned network of a ``model.pt`` (eval mode, on ``device``)."""
    sd, meta = read_model_file(path)
    spec = get_spec(meta["backbone"])
    net = _wrap(build_model(spec), spec, meta["classes"])
    net.load_stock_state_dict(sd)
    return net.eval().to(resolve_device(device)), meta


def build_finetune_model(config: FinetuneConfig, classes: Sequence[str]
                         ) -> tuple[FinetuneNet, ResolvedWeights, Preprocessing]:
    """The backbone of ``config`` with its weights and a new head for ``classes``.

    When ``config.weights`` is a model file of an earlier fine-tuning run with the same classes, its
    head is loaded too (to continue or evaluate it); otherwise the head is new. Uses the global
    torch RNG for the head init (seed it, or call inside :func:`finetune`).

    Returns:
        ``(net, resolved weights, preprocessing at config.input_size)``; ``net`` is on CPU with
        nothing frozen.
    """
    spec = get_spec(config.backbone)
    resolved = resolve_weights(spec, config.weights)
    stock = build_model(spec)
    resolved = load_weights(stock, spec, resolved)
    pp = resolved.preprocessing
    head_sd = None
    if resolved.path is not None and resolved.id.startswith("file:"):
        try:
            sd, meta = read_model_file(resolved.path)
        except ValueError:
            meta = None
        if meta is not None:
            if meta["backbone"] != spec.name:
                raise ValueError(f"{resolved.path} is a fine-tuned {meta['backbone']}, not a "
                                 f"{spec.name}; pass --backbone {meta['backbone']}.")
            pp = Preprocessing.from_dict(meta["preprocessing"])
            if list(meta["classes"]) == list(classes):
                hp = meta["head_path"]
                head_sd = {"weight": sd[f"{hp}.weight"], "bias": sd[f"{hp}.bias"]}
    net = _wrap(stock, spec, classes)
    if head_sd is not None:
        net.head.load_state_dict(head_sd)
        log.info("head loaded from %s (same %d classes)", resolved.path, len(classes))
    return net, resolved, pp.with_input_size(config.input_size)


# --------------------------------------------------------------------------------------------
# Optimiser and schedule


def param_groups(net: FinetuneNet, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimiser groups: one per trainable stage (``stage<i>``) and ``head``.

    Stage ``i`` of ``S`` gets ``lr * layer_decay ** (S - i)`` (just ``lr`` without decay), the head
    ``lr * head_lr_mult``; frozen stages get no group.
    """
    base = config.base_lr
    n = len(net.stages)
    named = dict(net.backbone.named_parameters())
    groups = []
    for s in net.stages:
        params = [named[p] for p in s.params if named[p].requires_grad]
        if not params:
            continue
        decay = config.layer_decay ** (n - s.index) if config.layer_decay else 1.0
        groups.append({"name": f"stage{s.index}", "params": params, "lr": base * decay})
    groups.append({"name": HEAD_NAME, "params": list(net.head.parameters()),
                   "lr": base * config.head_lr_mult})
    return groups


def build_optimizer(net: FinetuneNet, config: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over :func:`param_groups`."""
    groups = param_groups(net, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.base_lr, weight_decay=config.weight_decay)


def lr_factor(config: FinetuneConfig, steps_per_epoch: int) -> Any:
    """The multiplier of each group's lr at optimiser step ``t`` (warmup, then the schedule)."""
    total = max(1, config.epochs * steps_per_epoch)
    warm = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    schedule, gamma, step_size = config.schedule, config.gamma, config.step_size

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / (warm + 1)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - warm) / max(1, total - warm))))
        if schedule == "step":
            return gamma ** ((t // steps_per_epoch) // step_size)
        return 1.0

    return factor


# --------------------------------------------------------------------------------------------
# Data


_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS}


def _crop_params(w: int, h: int, scale: tuple[float, float], rng: np.random.Generator,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameters, drawn from ``rng`` (top, left, height, width)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class SplitDataset(Dataset):
    """Items ``(k, uint8 CHW | None, failure | None)`` of one split part.

    Training items are keyed ``(epoch, k)``: the random resized crop and flip come from a generator
    seeded by ``(seed, epoch, k)``, so augmentation is the same with any number of workers and after
    a resume. Evaluation items (key ``k``) use the deterministic resize + centre crop.
    """

    def __init__(self, source: ImageSource, pp: Preprocessing, *, train: bool, augment: bool = True,
                 crop_scale: tuple[float, float] = (0.35, 1.0), hflip: bool = True,
                 seed: int = 0, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.source, self.pp, self.train = source, pp, train
        self.augment, self.crop_scale, self.hflip = augment, tuple(crop_scale), hflip
        self.seed, self.max_pixels = seed, max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def transform(self, img: Image.Image, epoch: int, k: int) -> torch.Tensor:
        if not (self.train and self.augment):
            return preprocess_pil(img, self.pp)
        rng = np.random.default_rng([self.seed, 2, epoch, k])
        top, left, h, w = _crop_params(img.width, img.height, self.crop_scale, rng)
        img = TF.resized_crop(img, top, left, h, w, [self.pp.crop, self.pp.crop],
                              interpolation=_INTERP.get(self.pp.interpolation,
                                                        InterpolationMode.BILINEAR),
                              antialias=True)
        if self.hflip and rng.random() < 0.5:
            img = TF.hflip(img)
        return TF.pil_to_tensor(img)

    def __getitem__(self, key: int | tuple[int, int]
                    ) -> tuple[int, torch.Tensor | None, str | None]:
        epoch, k = key if isinstance(key, tuple) else (0, key)
        try:
            img = load_rgb(self.source.abspath(k), max_pixels=self.max_pixels)
            return k, self.transform(img, epoch, k), None
        except DecodeError as e:
            return k, None, str(e)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop training
            return k, None, f"preprocessing error: {type(e).__name__}: {e}"


class EpochSampler(Sampler):
    """Yields ``(epoch, k)`` in an order seeded by ``(seed, epoch)``; call :meth:`set_epoch` first.

    With ``world > 1`` (DistributedDataParallel) rank ``r`` takes positions ``r, r + world, ...``
    of the epoch's order, which is first padded by repeating its first ``-n % world`` entries (as
    :class:`torch.utils.data.DistributedSampler` does), so every rank gets ``ceil(n / world)``
    items and takes the same number of steps. ``world=1`` is the plain seeded order.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}); got {rank}.")
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def padding(self) -> int:
        """Repeated items per epoch over all ranks (0 without DDP)."""
        return -self.n % self.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, 1, self.epoch]).permutation(self.n)
        if self.world > 1:
            order = np.resize(order, self.n + self.padding)[self.rank::self.world]
        return iter([(self.epoch, int(k)) for k in order])

    def __len__(self) -> int:
        return -(-self.n // self.world)


def _loader(dataset: SplitDataset, *, batch_size: int, workers: int, seed: int,
            sampler: Sampler | None = None, drop_last: bool = False, pin: bool = False
            ) -> DataLoader:
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    # a private generator: DataLoader draws worker base seeds from it, not from the global RNG
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, collate_fn=collate, drop_last=drop_last,
                      pin_memory=pin, generator=torch.Generator().manual_seed(seed), **kw)


# --------------------------------------------------------------------------------------------
# Run context: leave the caller's global state as found


@contextlib.contextmanager
def _run_context(config: FinetuneConfig, device: torch.device, *,
                 threads: int | None = None) -> Iterator[None]:
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = threads or config.threads
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        try:
            if threads:
                torch.set_num_threads(threads)
            if config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            yield
        finally:
            torch.set_num_threads(old_threads)
            if config.deterministic:
                torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


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


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(_plain(obj), tmp)


def _write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class _Eval:
    loss: float
    accuracy: float
    predicted: np.ndarray  # -1 where the image could not be read
    probabilities: np.ndarray
    failures: list[tuple[int, str]]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None \
        else contextlib.nullcontext()


def _evaluate(net: FinetuneNet, loader: DataLoader, labels: np.ndarray, pp: Preprocessing, *,
              device: torch.device, amp: torch.dtype | None, channels_last: bool,
              n_classes: int, progress: str | None = None, reduce: bool = False) -> _Eval:
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
    loss_sum, count, failures = 0.0, 0, []
    bar = _bar(len(loader.sampler), progress)  # type: ignore[arg-type]
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
                with _autocast(device, amp):
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
    return _Eval(loss_sum / count if count else float("nan"), acc, pred, probs, failures)


def _bar(total: int, desc: str | None) -> Any:
    if not desc:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, leave=False)


def _confusion(true: np.ndarray, pred: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    ok = (true >= 0) & (pred >= 0)
    np.add.at(m, (true[ok], pred[ok]), 1)
    return m.tolist()


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot, no global backend change)


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                title: str = "") -> Path:
    """Learning curves (loss and accuracy per epoch, train vs validation) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    for ax, key, label in ((ax1, "loss", "loss"), (ax2, "acc", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        val = [h.get(f"val_{key}") for h in history]
        if any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in val):
            ax.plot(ep, [np.nan if v is None else v for v in val], "s-", label="validation")
        if key == "loss":
            vals = [v for h in history for v in (h.get("train_loss"), h.get("val_loss"))
                    if v is not None and math.isfinite(v) and v > 0]
            if vals and max(vals) / min(vals) > 100:
                ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    with atomic_path(p, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return p


# --------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class FinetuneResult:
    """What :func:`finetune` did (also written to ``report.json``)."""

    output: Path
    state: str
    status: str
    model_path: Path | None
    report_path: Path
    curves_path: Path | None
    classes: list[str]
    epochs_run: int
    best_epoch: int | None
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


class _Diverged(Exception):
    pass


def finetune(
    source: str | os.PathLike | ImageSource | None,
    output: str | os.PathLike,
    *,
    config: FinetuneConfig | None = None,
    test: str | os.PathLike | ImageSource | None = None,
    split: Split | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    command: str | None = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune ``config.backbone`` on a labelled image source into the run folder ``output``.

    Args:
        source: class-folder tree or labelled list (split into train/val/test per
            ``val_fraction``/``test_fraction``, seeded and stratified). May be None with ``split``.
        output: the run folder (``checkpoint.pt``, ``model.pt``, ``split.json``, ``curves.png``,
            ``report.json``).
        config: a :class:`FinetuneConfig`; ``options`` override single fields
            (``finetune(src, "run", backbone="resnet50", epochs=15, freeze=2)``).
        test: a separate labelled test source (instead of ``test_fraction``).
        split: use this split (e.g. shared by the escalation's runs) instead of making one.
        resume: continue the run in ``output`` from its last checkpoint (exactly: same batches,
            augmentation, dropout and optimiser state); on resume the saved configuration is used
            and ``options`` may only change runtime fields (device, workers, threads, epochs,
            early_stopping). Without a checkpoint a new run starts.
        overwrite: delete a previous run's files in ``output`` first.
        progress: tqdm bars on stderr (rank 0 only under torchrun).
        command: command line recorded in the report.

    Under ``torchrun`` every rank calls this with the same arguments: the model trains with
    DistributedDataParallel (``batch_size`` per rank), rank 0 writes the run folder, and every
    rank returns the same result (metrics reduced over ranks).

    Returns:
        a :class:`FinetuneResult`; ``status`` is ``completed``, ``early-stopped`` or ``evaluated``.

    Raises:
        FinetuneDivergedError: the loss became NaN/inf (the report and the best model are kept).
        ValueError: bad options, an existing run without ``resume``/``overwrite``, a resume whose
            options differ from the saved run.
    """
    out = Path(output)
    ckpt_path = out / "checkpoint.pt"
    if out.exists() and not out.is_dir():
        raise ValueError(f"Output {out} is a file; pass a folder for the run (e.g. run/).")
    saved: dict[str, Any] | None = None
    # Reading before joining the process group is safe: without overwrite no rank writes the
    # folder before every rank has taken part in the first collective, after its read.
    if not overwrite and ckpt_path.is_file():
        if not resume:
            raise ValueError(f"{out} already holds a fine-tuning run ({ckpt_path.name}); pass "
                             "--resume (resume=True) to continue it, --overwrite to start over, "
                             "or another -o folder.")
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    # the device decides the backend (gloo / nccl); resolved as the configuration will be
    device_opt = options.get("device", config.device if config is not None else
                             saved["config"].get("device", "auto") if saved else "auto")
    with _quiet_unless_main(env_info()), process_group(resolve_device(device_opt).type) as di:
        if overwrite and di.is_main:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        barrier()  # no rank looks at the folder before rank 0 has cleared it
        if saved is not None:
            cfg = _resume_config(FinetuneConfig.from_dict(saved["config"]), config, options)
            saved_split = Split.from_dict(saved["split"])
            if split is not None and split.to_dict() != saved_split.to_dict():
                raise ValueError(f"The split given differs from the one {out} was trained on; "
                                 "resume without a split, or use another -o folder.")
            split = saved_split
        else:
            cfg = make_config(config, **options)
            if resume:
                log.info("%s has no checkpoint yet: starting a new run", out)
        if cfg.state == "predict":
            if di.enabled:
                raise ValueError("State 'predict' evaluates a model in one process; run it "
                                 "without torchrun (or use `cnncodes predict`).")
            return _evaluate_only(source, out, cfg, test=test, progress=progress,
                                  command=command)
        if split is None:
            if source is None:
                raise ValueError("Pass a source (or a split) to fine-tune on.")
            split = make_split(source, val_fraction=cfg.val_fraction,
                               test_fraction=cfg.test_fraction, seed=cfg.seed, test=test)
        device = _rank_device(cfg, di)
        if cfg.sync_bn and di.enabled and device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on "
                             "CPU / gloo); drop --sync-bn for CPU runs.")
        out.mkdir(parents=True, exist_ok=True)
        threads = cfg.threads
        if di.enabled and device.type == "cpu" and threads is None:
            threads = max(1, (os.cpu_count() or 1) // _local_world())
        with _run_context(cfg, device, threads=threads):
            return _train(split, out, cfg, device, di=di, saved=saved, progress=progress,
                          command=command or command_line())


def _resume_config(saved: FinetuneConfig, config: FinetuneConfig | None,
                   options: dict[str, Any]) -> FinetuneConfig:
    """The saved configuration with the allowed runtime changes; other differences are errors."""
    wanted = {**(config.to_dict() if config is not None else {}), **options}
    make_config(None, **wanted)  # validates names and values
    cur = saved.to_dict()
    diff = [f"{k}: run has {cur[k]!r}, asked {v!r}" for k, v in wanted.items()
            if k not in FinetuneConfig.RUNTIME_FIELDS
            and (list(v) if isinstance(v, tuple) else v) != cur[k]]
    if diff:
        raise ValueError("Cannot resume with different training options (" + "; ".join(diff)
                         + "). Resume with the run's own options (or none), or start a new run "
                         "in another -o folder.")
    runtime = {k: v for k, v in wanted.items() if k in FinetuneConfig.RUNTIME_FIELDS}
    if "epochs" in runtime and runtime["epochs"] != saved.epochs:
        log.warning("resuming with epochs=%d instead of %d: the learning-rate schedule is "
                    "stretched from here on (not an exact continuation)", runtime["epochs"],
                    saved.epochs)
    return dataclasses.replace(saved, **runtime).validate()


def _amp(cfg: FinetuneConfig, device: torch.device) -> tuple[str, torch.dtype | None]:
    prec = resolve_precision(cfg.precision, device)
    if prec == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs CUDA (device is {device}); use fp32 (the CPU "
                         "default) or bf16.")
    return prec, {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)


def _local_world() -> int:
    """Processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", env_info().world)))


def _workers(cfg: FinetuneConfig, device: torch.device, n: int) -> int:
    """Decoding processes for a loader of ``n`` images (the default is shared between the ranks
    of one machine)."""
    if cfg.num_workers is not None:
        return int(cfg.num_workers)
    return 0 if n < 2 * cfg.batch_size else max(1, default_workers(device) // _local_world())


def _eval_loader(src: ImageSource, pp: Preprocessing, cfg: FinetuneConfig, device: torch.device,
                 di: DistInfo) -> DataLoader:
    """Deterministic evaluation loader; under DDP over this rank's whole batches (no padding, cut on
    the single-process batch grid, so every batch is the same as in one process)."""
    rows = list(range(len(src)))
    mine = shard_batches(rows, cfg.batch_size, di.rank, di.world) if di.enabled else rows
    return _loader(SplitDataset(src, pp, train=False, max_pixels=cfg.max_pixels),
                   batch_size=cfg.batch_size, workers=_workers(cfg, device, len(mine)),
                   seed=cfg.seed, sampler=mine, pin=device.type == "cuda")


def _rank_device(cfg: FinetuneConfig, di: DistInfo) -> torch.device:
    """``cfg.device``; under torchrun ``auto``/``cuda`` become ``cuda:LOCAL_RANK``."""
    dev = resolve_device(cfg.device)
    if di.enabled and dev.type == "cuda":
        if str(cfg.device) in ("auto", "cuda"):
            return torch.device("cuda", di.local_rank)
        if dev.index != di.local_rank:
            raise ValueError(f"Under torchrun rank {di.rank} uses cuda:{di.local_rank} (its "
                             f"LOCAL_RANK); --device {cfg.device} would put several ranks on one "
                             "GPU. Pass --device cuda (or auto), or run without torchrun.")
    return dev


def _rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The global torch RNG seed (dropout) of ``rank`` from ``epoch`` on, under DDP."""
    return int(np.random.SeedSequence([int(seed), 5, int(rank), int(epoch)]).generate_state(1)[0])


def convert_sync_bn(net: FinetuneNet) -> FinetuneNet:
    """``net`` with every BatchNorm as :class:`torch.nn.SyncBatchNorm` (same parameters, buffers
    and state-dict keys). Frozen stages stay frozen: their parameters keep ``requires_grad=False``
    and their modules stay in eval mode, where SyncBatchNorm neither syncs nor updates statistics.
    """
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(net, FinetuneNet)
    net.train(net.training)  # re-applies eval mode to the (new) modules of frozen stages
    return net


@contextlib.contextmanager
def _quiet_unless_main(di: DistInfo) -> Iterator[None]:
    """Ranks other than 0 log errors only (rank 0 reports for the job)."""
    if di.is_main:
        yield
        return
    root = logging.getLogger("cnncodes")
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)


def _train(split: Split, out: Path, cfg: FinetuneConfig, device: torch.device, *,
           di: DistInfo, saved: dict[str, Any] | None, progress: bool,
           command: str) -> FinetuneResult:
    t_start = time.perf_counter()
    classes = split.classes
    world = di.world
    train_src, val_src = split.source("train"), split.source("val")
    n_train = len(train_src)
    per_rank = -(-n_train // world)
    if per_rank < 2:
        raise ValueError(f"{n_train} training images cannot be shared by {world} processes "
                         "(BatchNorm needs two images per step): use fewer processes.")
    sync_bn = cfg.sync_bn and di.enabled  # CPU + DDP was refused by finetune()
    if cfg.sync_bn and not di.enabled:
        log.info("sync_bn has no effect in one process (BatchNorm already sees the whole batch)")
    # the same head init on every rank (seeded by cfg.seed; DDP also broadcasts rank 0's weights)
    net, resolved, pp = build_finetune_model(cfg, classes)
    net.freeze(cfg.freeze, backbone=cfg.state == "head-only")
    if sync_bn:
        net = convert_sync_bn(net)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    net.to(device)
    if di.enabled:  # each rank its own dropout stream (one process keeps the plain seed)
        torch.manual_seed(_rank_seed(cfg.seed, di.rank, 0))
    prec, amp = _amp(cfg, device)
    optimizer = build_optimizer(net, cfg)
    drop_last = per_rank % cfg.batch_size == 1
    steps = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
    factor = lr_factor(cfg, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler(device.type, enabled=prec == "fp16" and device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    start_epoch, best_acc, best_loss, best_epoch, bad_epochs = 0, -1.0, math.inf, None, 0
    stopped = None
    resumed_from = None
    if saved is not None:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        start_epoch = int(saved["epoch"])
        saved_world = int(saved.get("world_size", 1))
        if saved_world != world:
            log.warning("resuming a run trained by %d process(es) with %d: the batches differ from "
                        "here on and the schedule continues from epoch %d at %d steps per epoch "
                        "(not an exact continuation)", saved_world, world, start_epoch, steps)
            scheduler.last_epoch = start_epoch * steps
            for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
                g["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # noqa: SLF001
        rng = saved["rng"]
        per = rng.get("per_rank")
        mine = (per[di.rank] if per is not None and len(per) == world
                else {"torch": rng["torch"], "cuda": rng.get("cuda")} if world == 1 else None)
        if mine is not None:  # exact: this rank's dropout stream where it stopped
            torch.set_rng_state(mine["torch"])
            if device.type == "cuda" and mine.get("cuda"):
                torch.cuda.set_rng_state(mine["cuda"][0], device)
        else:  # another number of ranks: fresh per-rank streams, seeded by the epoch
            torch.manual_seed(_rank_seed(cfg.seed, di.rank, start_epoch))
        best_acc, best_loss = float(saved["best"]["accuracy"]), float(saved["best"]["loss"])
        best_epoch = saved["best"]["epoch"]
        bad_epochs = int(saved["bad_epochs"])
        history = list(saved["history"])
        failures = dict(saved["failures"])
        stopped = saved.get("stopped")
        resumed_from = start_epoch
        log.info("resuming %s from epoch %d/%d", out, start_epoch, cfg.epochs)
    if di.is_main:
        _write_json(split.to_dict(), out / "split.json")
        _write_json({**cfg.to_dict(), "world_size": world}, out / "config.json")
    model: nn.Module = net
    if di.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    groups_desc = [{"name": g["name"], "lr": g.get("initial_lr", g["lr"]),
                    "params": int(sum(p.numel() for p in g["params"]))}
                   for g in optimizer.param_groups]
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in net.parameters())
    log.info("%s %s on %s (%s%s): %d classes, %d train / %d val / %d test images at %d px; "
             "%s of %s parameters train (%s)", cfg.state, cfg.backbone, device, prec,
             f", DDP over {world} processes ({dist_backend()}), batch {cfg.batch_size} per "
             f"process = {cfg.batch_size * world}{', SyncBatchNorm' if sync_bn else ''}"
             if di.enabled else "",
             len(classes), n_train, len(val_src), len(split.test), pp.crop, f"{trainable:,}",
             f"{total_params:,}", ", ".join(f"{g['name']} lr {g['lr']:.3g}" for g in groups_desc))

    pin = device.type == "cuda"
    sampler = EpochSampler(n_train, cfg.seed, di.rank, world)
    train_loader = _loader(SplitDataset(train_src, pp, train=True, augment=cfg.augment,
                                        crop_scale=cfg.crop_scale, hflip=cfg.hflip,
                                        seed=cfg.seed, max_pixels=cfg.max_pixels),
                           batch_size=cfg.batch_size, workers=_workers(cfg, device, per_rank),
                           seed=cfg.seed, sampler=sampler, drop_last=drop_last, pin=pin)
    val_labels = val_src.labels
    val_loader = _eval_loader(val_src, pp, cfg, device, di) if len(val_src) else None
    train_labels = torch.as_tensor(train_src.labels)
    trainable_params = [p for p in net.parameters() if p.requires_grad]
    diverged_msg = None
    new_failures: list[tuple[str, str]] = []

    def merge_failures(new: list[tuple[str, str]]) -> None:
        """Every rank's unreadable training images of the epoch, logged once (by rank 0)."""
        for path, r in sorted(f for part in all_gather_objects(new) for f in part):
            if path not in failures:
                log.warning("skipping %s: %s", path, r)
                failures[path] = r
        new.clear()

    def checkpoint(epoch: int) -> None:
        mine = {"torch": torch.get_rng_state(),
                "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}
        per_rank_rng = all_gather_objects(mine)  # collective: every rank, before rank 0 saves
        if not di.is_main:
            return
        _atomic_save({
            "format": 1, "kind": "cnncodes-finetune-checkpoint", "epoch": epoch,
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"torch": mine["torch"], "cuda": mine["cuda"], "per_rank": per_rank_rng},
            "world_size": world,
            "best": {"accuracy": best_acc, "loss": best_loss, "epoch": best_epoch},
            "bad_epochs": bad_epochs, "history": history, "failures": failures,
            "stopped": stopped, "config": cfg.to_dict(), "split": split.to_dict(),
        }, out / "checkpoint.pt")

    n_hist0 = len(history)
    epoch = start_epoch
    try:
        while epoch < cfg.epochs and stopped is None:
            t0 = time.perf_counter()
            model.train()
            sampler.set_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
            bar = _bar(per_rank, f"epoch {epoch + 1}/{cfg.epochs}" if progress and di.is_main
                       else None)
            for step, batch in enumerate(train_loader):
                new_failures.extend((os.fspath(train_src.abspath(k)), r) for k, r in batch.failures)
                if bar is not None:
                    bar.update(len(batch.indices) + len(batch.failures))
                usable = len(batch.indices) >= 2
                if di.enabled:  # DDP needs every rank in every step: all step, or none does
                    usable = all_reduce_sum([not usable])[0] == 0
                if usable:
                    x = normalize_batch(batch.images.to(device, non_blocking=True), pp,
                                        channels_last=cfg.channels_last)
                    y = train_labels[batch.indices].to(device, non_blocking=True)
                    with _autocast(device, amp):
                        logits = model(x)
                        loss = criterion(logits.float(), y)
                    # the ranks' mean loss: NaN/inf on any rank stops every rank at this step
                    loss_value = float(loss.detach())
                    if di.enabled:
                        loss_value = all_reduce_sum([loss_value])[0] / world
                    if not math.isfinite(loss_value):
                        lrs = ", ".join(f"{g['name']} {g['lr']:.3g}"
                                        for g in optimizer.param_groups)
                        raise _Diverged(f"the training loss became {loss_value} at epoch "
                                        f"{epoch + 1}, step {step + 1} (learning rates {lrs})")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(trainable_params, cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    loss_sum += float(loss.detach()) * len(batch.indices)
                    correct += int((logits.detach().argmax(1) == y).sum())
                    seen += len(batch.indices)
                scheduler.step()
            if bar is not None:
                bar.close()
            merge_failures(new_failures)
            if di.enabled:
                # whole-job training figures (padding repeats included), and rank 0's BatchNorm
                # statistics everywhere: what the checkpoint holds and validation must use
                loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen])
                broadcast_buffers(net)
            rec: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                "train_acc": correct / max(1, seen), "val_loss": None, "val_acc": None,
                "lr": lrs, "world_size": world}
            improved = True
            if val_loader is not None:
                ev = _evaluate(net, val_loader, val_labels, pp, device=device, amp=amp,
                               channels_last=cfg.channels_last, n_classes=len(classes),
                               reduce=di.enabled)
                rec["val_loss"], rec["val_acc"] = ev.loss, ev.accuracy
                for k, r in ev.failures:
                    failures.setdefault(os.fspath(val_src.abspath(k)), r)
                improved = ev.accuracy > best_acc or (ev.accuracy == best_acc
                                                      and ev.loss < best_loss)
            rec["seconds"] = time.perf_counter() - t0
            rec["images_per_s"] = seen / rec["seconds"] if rec["seconds"] > 0 else 0.0
            history.append(rec)
            epoch += 1
            if improved:
                best_epoch, bad_epochs = epoch, 0
                if val_loader is not None:
                    best_acc, best_loss = float(rec["val_acc"]), float(rec["val_loss"])
                if di.is_main:
                    _save_model(net, out / "model.pt", cfg=cfg, resolved=resolved, pp=pp,
                                epoch=epoch, val_accuracy=rec["val_acc"], command=command,
                                world=world)
            else:
                bad_epochs += 1
                if cfg.early_stopping is not None and bad_epochs >= cfg.early_stopping:
                    stopped = "early-stopped"
                    log.info("early stopping: no validation improvement for %d epochs (best "
                             "epoch %d)", bad_epochs, best_epoch)
            checkpoint(epoch)
            log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %s acc %s  %s  %.1fs "
                     "(%.0f img/s)%s", epoch, cfg.epochs, rec["train_loss"], rec["train_acc"],
                     _fmt(rec["val_loss"], ".4f"), _fmt(rec["val_acc"], ".3f"),
                     f"lr {optimizer.param_groups[0]['lr']:.3g}", rec["seconds"],
                     rec["images_per_s"], "  *best" if improved else "")
            if di.is_main:
                plot_curves(history, out / "curves.png",
                            title=f"{cfg.backbone} {cfg.state} ({pp.crop} px)")
    except _Diverged as e:  # raised on every rank at the same step (the loss is all-reduced)
        diverged_msg = str(e)
        merge_failures(new_failures)
    finally:
        del train_loader, val_loader

    status = "diverged" if diverged_msg else (stopped or "completed")
    model_path = out / "model.pt"
    test_ev = None
    test_src = split.source("test")
    barrier()  # rank 0 has written model.pt before any rank looks for it
    if model_path.is_file() and len(test_src):
        sd, _ = read_model_file(model_path)
        net.load_stock_state_dict(sd)
        test_loader = _eval_loader(test_src, pp, cfg, device, di)
        test_ev = _evaluate(net, test_loader, test_src.labels, pp, device=device, amp=amp,
                            channels_last=cfg.channels_last, n_classes=len(classes),
                            progress="test" if progress and di.is_main else None,
                            reduce=di.enabled)
        for k, r in test_ev.failures:
            failures.setdefault(os.fspath(test_src.abspath(k)), r)
        del test_loader
    train_seconds = float(sum(h["seconds"] for h in history))
    best_rec = next((h for h in history if h["epoch"] == best_epoch), None)
    report = {
        "kind": "cnncodes-finetune-report", "status": status, "state": cfg.state,
        "message": diverged_msg, "backbone": cfg.backbone, "weights": resolved.id,
        "weights_sha256": weights_sha256(resolved) or "", "classes": classes,
        "input_size": pp.crop, "preprocessing": pp.to_dict(), "device": str(device),
        "precision": prec, "world_size": world,
        "distributed": {"world_size": world, "backend": dist_backend() if di.enabled else None,
                        "batch_size_per_process": cfg.batch_size,
                        "global_batch_size": cfg.batch_size * world, "sync_bn": sync_bn,
                        "train_padding_per_epoch": sampler.padding},
        "split": {**split.sizes(), "seed": split.seed,
                                     "val_fraction": split.val_fraction,
                                     "test_fraction": split.test_fraction,
                                     "test_source": split.test_source},
        "stages": [{"index": s.index, "span": s.span, "params": len(s.params),
                    "frozen": s.index <= net.frozen_stages} for s in net.stages],
        "param_groups": groups_desc, "trainable_params": trainable, "total_params": total_params,
        "epochs_run": len(history), "best_epoch": best_epoch,
        "val_accuracy": best_rec["val_acc"] if best_rec else None,
        "test_accuracy": test_ev.accuracy if test_ev else None,
        "test_loss": test_ev.loss if test_ev else None,
        "per_class_test_accuracy": _per_class(test_src.labels, test_ev.predicted, classes)
        if test_ev else None,
        "confusion_matrix": _confusion(test_src.labels, test_ev.predicted, len(classes))
        if test_ev else None,
        "train_seconds": train_seconds,
        # every epoch's time (also from sessions before a resume) + this session's setup and test
        "seconds": train_seconds + max(0.0, time.perf_counter() - t_start
                                       - sum(h["seconds"] for h in history[n_hist0:])),
        "history": history, "resumed_from": resumed_from,
        "failures": sorted(failures.items()), "config": cfg.to_dict(),
        "files": {"model": "model.pt" if model_path.is_file() else None,
                  "checkpoint": "checkpoint.pt", "curves": "curves.png", "split": "split.json"},
        "command": command, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if di.is_main:
        _write_json(report, out / "report.json")
        if history:
            plot_curves(history, out / "curves.png",
                        title=f"{cfg.backbone} {cfg.state} ({pp.crop} px)")
    barrier()  # the run folder is complete when any rank returns
    result = FinetuneResult(
        output=out, state=cfg.state, status=status,
        model_path=model_path if model_path.is_file() else None, report_path=out / "report.json",
        curves_path=out / "curves.png" if history else None, classes=classes,
        epochs_run=len(history), best_epoch=best_epoch, val_accuracy=report["val_accuracy"],
        test_accuracy=report["test_accuracy"], seconds=report["seconds"], history=history,
        resumed_from=resumed_from, failures=sorted(failures.items()), report=report)
    if diverged_msg:
        kept = (f"The best checkpoint (epoch {best_epoch}, validation accuracy "
                f"{_fmt(report['val_accuracy'], '.3f')}) is kept in {model_path}"
                if model_path.is_file() else "No epoch finished, so no model was saved")
        raise FinetuneDivergedError(
            f"Training stopped: {diverged_msg}. {kept}; the report is {out / 'report.json'}. "
            "Start a new run with a lower --lr, --grad-clip 1.0, or --precision fp32.")
    if test_ev is not None:
        log.info("%s: best epoch %s (val acc %s), test accuracy %.4f on %d images", out,
                 best_epoch, _fmt(report["val_accuracy"], ".3f"), test_ev.accuracy,
                 len(test_src))
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _per_class(true: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    out = {}
    for c, name in enumerate(classes):
        m = (true == c) & (pred >= 0)
        out[name] = float((pred[m] == c).mean()) if m.any() else float("nan")
    return out


def _save_model(net: FinetuneNet, path: Path, *, cfg: FinetuneConfig, resolved: ResolvedWeights,
                pp: Preprocessing, epoch: int, val_accuracy: float | None, command: str,
                world: int = 1) -> None:
    meta = {
        "kind": MODEL_KIND, "format": MODEL_FORMAT, "backbone": cfg.backbone,
        "family": get_spec(cfg.backbone).family, "classes": list(net.classes),
        "head_path": net.head_path, "head_name": HEAD_NAME,
        "preprocessing": pp.to_dict(), "input_size": pp.crop, "base_weights": resolved.id,
        "base_weights_sha256": weights_sha256(resolved) or "", "state": cfg.state,
        "freeze": net.frozen_stages, "epoch": epoch, "world_size": int(world),
        "val_accuracy": None if val_accuracy is None else float(val_accuracy),
        "config": cfg.to_dict(), "command": command, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_save({"state_dict": net.stock_state_dict(), "cnncodes": meta}, path)


def _evaluate_only(source: str | os.PathLike | ImageSource | None, out: Path,
                   cfg: FinetuneConfig, *, test: Any, progress: bool,
                   command: str | None) -> FinetuneResult:
    """State ``predict``: evaluate the fine-tuned model ``cfg.weights`` on all of ``test or
    source`` (nothing is trained, so no split is needed)."""
    t0 = time.perf_counter()
    w = cfg.weights
    if w is None or not is_finetuned_model(w):
        raise ValueError(f"state 'predict' evaluates a fine-tuned model without training: pass "
                         f"--weights RUN/model.pt (written by cnncodes finetune); got weights="
                         f"{w!r}, which has no head for your classes.")
    pred = predict_images(w, test if test is not None else source, batch_size=cfg.batch_size,
                          device=cfg.device, precision=cfg.precision,
                          num_workers=cfg.num_workers, threads=cfg.threads,
                          max_pixels=cfg.max_pixels, progress=progress,
                          input_size=cfg.input_size)
    out.mkdir(parents=True, exist_ok=True)
    acc = pred.accuracy
    report = {
        "kind": "cnncodes-finetune-report", "status": "evaluated", "state": "predict",
        "message": None, "backbone": pred.meta["backbone"], "weights": f"file:{Path(w).resolve()}",
        "classes": pred.classes, "input_size": pred.meta["input_size_used"],
        "split": {"train": 0, "val": 0, "test": len(pred.paths)}, "epochs_run": 0,
        "best_epoch": None, "val_accuracy": None, "test_accuracy": acc,
        "per_class_test_accuracy": _per_class(pred.true, pred.predicted, pred.classes),
        "confusion_matrix": _confusion(pred.true, pred.predicted, len(pred.classes)),
        "seconds": time.perf_counter() - t0, "failures": pred.failures,
        "config": cfg.to_dict(), "command": command or command_line(), "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(report, out / "report.json")
    return FinetuneResult(out, "predict", "evaluated", Path(w), out / "report.json", None,
                          pred.classes, 0, None, None, acc, report["seconds"],
                          failures=list(pred.failures), report=report)


# --------------------------------------------------------------------------------------------
# Prediction with a fine-tuned model


@dataclass
class ImagePredictions:
    """Per-image predictions of a fine-tuned model.

    Rows align with ``paths`` (relative to ``root``); ``index`` is each row's position in the
    source; images that could not be read are only in ``failures``.
    """

    root: Path
    paths: list[str]
    index: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    true: np.ndarray
    classes: list[str]
    failures: list[tuple[str, str]]
    meta: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        """Predicted class names."""
        return [self.classes[int(i)] for i in self.predicted]

    @property
    def accuracy(self) -> float | None:
        """Accuracy over rows with a known true class (None when the source is unlabelled)."""
        m = self.true >= 0
        return float((self.predicted[m] == self.true[m]).mean()) if m.any() else None

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per image: path, predicted class, probability, true class (if known)."""
        recs = []
        for r, p in enumerate(self.paths):
            c = int(self.predicted[r])
            recs.append({"path": p, "predicted": self.classes[c],
                         "probability": float(self.probabilities[r, c]),
                         "true": self.classes[int(self.true[r])] if self.true[r] >= 0 else None})
        return recs


def predict_images(
    model_path: str | os.PathLike,
    source: str | os.PathLike | Sequence[str] | ImageSource,
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    num_workers: int | None = None,
    threads: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    input_size: int | None = None,
    progress: bool = False,
) -> ImagePredictions:
    """Predict every image of ``source`` with a fine-tuned ``model.pt``.

    The model's recorded preprocessing is used (``input_size`` overrides the crop). Class folders in
    ``source`` whose names are model classes give the true labels (others count as unknown).
    Unreadable images are skipped and listed in ``failures``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    dev = resolve_device(device)
    net, meta = load_finetuned(model_path, device=dev)
    classes = list(meta["classes"])
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(resolve_precision(precision, dev))
    pp = Preprocessing.from_dict(meta["preprocessing"]).with_input_size(input_size)
    src = open_source(source)
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index.get(src.classes[int(lab)], -1) if lab >= 0 else -1
                     for lab in src.labels], np.int64)
    unknown = sorted({src.classes[int(lab)] for lab in src.labels
                      if lab >= 0 and src.classes[int(lab)] not in index})
    if unknown:
        log.warning("%s: class folders %s are not classes of the model (%s): their accuracy is "
                    "not counted", src.root, unknown[:5], ", ".join(classes[:10]))
    workers = default_workers(dev) if num_workers is None else int(num_workers)
    if num_workers is None and len(src) < 2 * batch_size:
        workers = 0
    net.to(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        loader = _loader(SplitDataset(src, pp, train=False, max_pixels=max_pixels),
                         batch_size=batch_size, workers=workers, seed=0,
                         pin=dev.type == "cuda")
        ev = _evaluate(net, loader, true, pp, device=dev, amp=amp, channels_last=True,
                       n_classes=len(classes), progress="predict" if progress else None)
    finally:
        torch.set_num_threads(old)
    ok = np.flatnonzero(ev.predicted >= 0)
    failures = [(src.paths[k], r) for k, r in ev.failures]
    for p, r in failures:
        log.warning("skipping %s: %s", p, r)
    meta = dict(meta)
    meta["input_size_used"] = pp.crop
    return ImagePredictions(src.root, [src.paths[i] for i in ok], ok, ev.predicted[ok],
                            ev.probabilities[ok], true[ok], classes, failures, meta)


# --------------------------------------------------------------------------------------------
# Escalation: linear probe vs head-only vs full fine-tuning on one split


def linear_probe(split: Split, *, backbone: str = "mobilenet_v2", weights: str | None = "auto",
                 input_size: int | None = None, device: str = "auto", precision: str = "auto",
                 batch_size: int = 64, num_workers: int | None = None,
                 threads: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 c_grid: str | Sequence[float] | None = None, cv: int = 5,
                 seed: int = 0) -> dict[str, Any]:
    """The classifier issue's linear probe (:func:`cnncodes.classify.fit_codes`: standardised
    codes, logistic regression, C by stratified CV) on ``split``.

    Codes of the backbone's default layer are computed with the deterministic evaluation transform;
    the probe is fitted on the training part (C chosen by CV inside it) and scored on the
    validation and test parts. Wall time covers extraction and fitting.
    """
    from ..codes.extraction import extract_arrays
    from ..codes.extractor import CodeExtractor
    from ..linear.selection import fit_codes

    t0 = time.perf_counter()
    ext = CodeExtractor(backbone, weights=weights, input_size=input_size, device=device,
                        precision=precision)
    layer = ext.layers[0]
    parts = {}
    for part in ("train", "val", "test"):
        src = split.source(part)
        if len(src) == 0:
            parts[part] = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
            continue
        a = extract_arrays(src, extractor=ext, batch_size=batch_size, num_workers=num_workers,
                           threads=threads, max_pixels=max_pixels)
        parts[part] = (a.codes[layer], a.labels)
    t_codes = time.perf_counter() - t0
    (xtr, ytr), (xva, yva), (xte, yte) = parts["train"], parts["val"], parts["test"]
    clf, selection = fit_codes(xtr, ytr, classes=split.classes, c_grid=c_grid, cv=cv, seed=seed)
    val_acc = float(clf.score(xva, yva)) if len(yva) else None
    test_acc = float(clf.score(xte, yte)) if len(yte) else None
    return {"method": "linear probe", "backbone": backbone, "weights": ext.resolved.id,
            "layer": layer, "dim": int(xtr.shape[1]), "input_size": ext.preprocessing.crop,
            "C": selection["best_C"], "cv": selection["cv"],
            "cv_score": selection["best_cv_score"], "val_accuracy": val_acc,
            "test_accuracy": test_acc,
            "trainable_params": int(xtr.shape[1] * len(split.classes) + len(split.classes)),
            "seconds": time.perf_counter() - t0, "codes_seconds": t_codes,
            "status": "completed"}


@dataclass
class EscalationResult:
    """The escalation report: one row per method (linear probe, head-only, full)."""

    output: Path
    rows: list[dict[str, Any]]
    verdict: str
    json_path: Path
    markdown_path: Path
    png_path: Path

    def table(self) -> str:
        """The comparison as a Markdown table."""
        return _escalation_table(self.rows)


def _escalation_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| method | trainable params | epochs | val acc | test acc | wall time (s) | status |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r.get('trainable_params', 0):,} | "
                     f"{r.get('epochs', '-')} | {_fmt(r.get('val_accuracy'), '.4f')} | "
                     f"{_fmt(r.get('test_accuracy'), '.4f')} | {r['seconds']:.1f} | "
                     f"{r['status']} |")
    return "\n".join(lines)


def _verdict(rows: Sequence[dict[str, Any]]) -> str:
    ok = [r for r in rows if r.get("test_accuracy") is not None]
    if not ok:
        return "no method produced a test accuracy"
    probe = next((r for r in ok if r["method"] == "linear probe"), None)
    best = max(ok, key=lambda r: r["test_accuracy"])
    if probe is None or best is probe:
        return (f"{best['method']} is best ({best['test_accuracy']:.4f}); fine-tuning did not pay "
                "off on this data: keep the codes + linear classifier.")
    gain = 100 * (best["test_accuracy"] - probe["test_accuracy"])
    ratio = best["seconds"] / max(probe["seconds"], 1e-9)
    return (f"{best['method']} is best ({best['test_accuracy']:.4f}, +{gain:.1f} points over the "
            f"linear probe's {probe['test_accuracy']:.4f}) at {ratio:.1f}x its wall time.")


def _plot_escalation(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = [r["method"] for r in rows]
    accs = [r.get("test_accuracy") or 0.0 for r in rows]
    bars = ax.bar(names, accs, color=["#888888", "#4c72b0", "#dd8452"][:len(rows)])
    for b, r in zip(bars, rows):
        ax.annotate(f"{_fmt(r.get('test_accuracy'), '.3f')}\n{r['seconds']:.0f} s",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=9)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)


def escalate(
    source: str | os.PathLike | ImageSource,
    output: str | os.PathLike,
    *,
    config: FinetuneConfig | None = None,
    test: str | os.PathLike | ImageSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    command: str | None = None,
    **options: Any,
) -> EscalationResult:
    """Linear probe on codes vs head-only vs full fine-tuning, on one split, into ``output``.

    Writes ``split.json``, ``probe.json``, ``head-only/`` and ``full/`` run folders, and
    ``escalation.json`` / ``escalation.md`` / ``escalation.png`` (accuracy and wall time per
    method). ``config.freeze`` applies to the full run; ``config.state`` is not used.

    Raises:
        ValueError: state ``predict``, or an existing escalation without ``resume``/``overwrite``.
    """
    if env_info().enabled:
        raise ValueError("The escalation report runs in one process (its linear probe and the "
                         "wall-time comparison are single-process); run --escalation without "
                         "torchrun, or fine-tune under torchrun with --state head-only / full.")
    cfg = make_config(config, **options)
    if cfg.state == "predict":
        raise ValueError("The escalation report trains head-only and full models; state "
                         "'predict' does not apply (drop --state or --escalation).")
    out = Path(output)
    if overwrite:
        for name in ESCALATION_FILES:
            (out / name).unlink(missing_ok=True)
    elif (out / "split.json").is_file() and not resume:
        raise ValueError(f"{out} already holds an escalation report; pass --resume to continue "
                         "it, --overwrite to start over, or another -o folder.")
    out.mkdir(parents=True, exist_ok=True)
    command = command or command_line()
    if (out / "split.json").is_file():
        split = Split.from_dict(json.loads((out / "split.json").read_text()))
    else:
        split = make_split(source, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                           seed=cfg.seed, test=test)
        _write_json(split.to_dict(), out / "split.json")
    rows: list[dict[str, Any]] = []
    probe = None
    if resume and (out / "probe.json").is_file():
        probe = json.loads((out / "probe.json").read_text())
        same = (probe.get("backbone") == cfg.backbone
                and probe.get("config_weights") == cfg.weights
                and probe.get("config_input_size") == cfg.input_size)
        probe = probe if same else None
    if probe is None:
        log.info("escalation 1/3: linear probe on %s codes", cfg.backbone)
        probe = linear_probe(split, backbone=cfg.backbone, weights=cfg.weights,
                             input_size=cfg.input_size, device=cfg.device,
                             precision=cfg.precision, batch_size=max(cfg.batch_size, 64),
                             num_workers=cfg.num_workers, threads=cfg.threads,
                             max_pixels=cfg.max_pixels, seed=cfg.seed)
        probe.update(config_weights=cfg.weights, config_input_size=cfg.input_size)
        _write_json(probe, out / "probe.json")
    rows.append({**probe, "epochs": "-"})
    for i, state in enumerate(("head-only", "full"), 2):
        log.info("escalation %d/3: %s fine-tuning", i, state)
        sub = dataclasses.replace(cfg, state=state, freeze=0 if state == "head-only"
                                  else cfg.freeze)
        try:
            r = finetune(None, out / state, config=sub, split=split, resume=resume,
                         overwrite=overwrite, progress=progress, command=command)
            row = {"method": f"{state} fine-tuning", "status": r.status,
                   "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
                   "seconds": r.seconds, "epochs": r.epochs_run, "best_epoch": r.best_epoch,
                   "trainable_params": r.report["trainable_params"], "run": state}
        except FinetuneDivergedError as e:
            rep = json.loads((out / state / "report.json").read_text())
            row = {"method": f"{state} fine-tuning", "status": "diverged", "message": str(e),
                   "val_accuracy": rep.get("val_accuracy"),
                   "test_accuracy": rep.get("test_accuracy"), "seconds": rep.get("seconds", 0.0),
                   "epochs": rep.get("epochs_run"), "trainable_params":
                   rep.get("trainable_params", 0), "run": state}
        rows.append(row)
    verdict = _verdict(rows)
    pp_size = probe["input_size"]
    report = {"kind": "cnncodes-escalation-report", "backbone": cfg.backbone,
              "weights": probe["weights"], "input_size": pp_size, "classes": split.classes,
              "split": {**split.sizes(), "seed": split.seed}, "rows": rows, "verdict": verdict,
              "config": cfg.to_dict(), "command": command, "versions": versions(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_json(report, out / "escalation.json")
    sizes = split.sizes()
    md = (f"# Escalation report: {cfg.backbone} ({probe['weights']}), {pp_size} px\n\n"
          f"Same split for every method: {sizes['train']} train / {sizes['val']} validation / "
          f"{sizes['test']} test images, {len(split.classes)} classes (seed {split.seed}); "
          f"{cfg.epochs} epochs of fine-tuning, batch {cfg.batch_size}, {cfg.optimizer} lr "
          f"{cfg.base_lr:g} (head x{cfg.head_lr_mult:g}), freeze {cfg.freeze} for full.\n\n"
          + _escalation_table(rows) + f"\n\n{verdict}\n")
    atomic_write_text(out / "escalation.md", md)
    _plot_escalation(rows, out / "escalation.png",
                     f"{cfg.backbone}, {pp_size} px, {sizes['train']} train images")
    log.info("escalation: %s", verdict)
    return EscalationResult(out, rows, verdict, out / "escalation.json", out / "escalation.md",
                            out / "escalation.png")
