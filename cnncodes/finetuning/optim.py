"""Optimiser and schedule of fine-tuning: :func:`param_groups` (one group per trainable stage plus
the head: discriminative learning rates, optional layer-wise decay), :func:`build_optimizer` (SGD +
momentum or AdamW), :func:`lr_factor` (linear warmup, then cosine / step / constant, per optimiser
step) and :func:`build_scheduler`.

**Warmup rule.** The warmup lasts ``round(warmup_epochs x steps per epoch)`` optimiser steps, but
never more than half of the run's steps (``total // 2``; :func:`warmup_steps`): a warmup as long
as the run (``--warmup-epochs 5 --epochs 2``) would spend the whole run ramping up and report an
undertrained model. The clamp is logged by the trainer and recorded in ``report.json``
(``warmup``). No step trains at a learning rate of 0: the warmup starts at ``1 / (warmup + 1)``,
the cosine ends just above 0, and :func:`param_groups` refuses a group whose rate is 0 (an
underflowing ``lr x layer_decay^k`` or a ``step`` schedule that decays to 0 within the run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import OptionError
from .config import FinetuneConfig
from .net import HEAD_NAME, FinetuneNet


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
    _check_group_rates(groups, config)
    return groups


def _check_group_rates(groups: list[dict[str, Any]], config: FinetuneConfig) -> None:
    """Refuse a group that would train at a learning rate of 0 (at the start, or by the end of
    a ``step`` schedule)."""
    last = (config.epochs - 1) // config.step_size if config.schedule == "step" else 0
    for g in groups:
        lr = float(g["lr"])
        try:
            end = lr * config.gamma ** last if last else lr
        except OverflowError:  # gamma > 1 grows the rate (the loss guard stops a divergence)
            end = math.inf
        if not lr > 0:
            raise OptionError(
                f"The learning rate of {g['name']} must be > 0; got {lr!r} (lr {config.base_lr!r}"
                f", layer_decay {config.layer_decay!r}, head_lr_mult {config.head_lr_mult!r}: "
                "the product underflows). Raise --lr or --layer-decay, or --freeze that stage.")
        if not end > 0:
            raise OptionError(
                f"gamma must keep the learning rate above 0 for the whole run; got gamma="
                f"{config.gamma!r}, which after {last} step(s) of {config.step_size} epoch(s) "
                f"takes {g['name']} from {lr!r} to 0. Use a larger --gamma (e.g. 0.1) or "
                "--step-size, or --schedule cosine.")


def warmup_steps(config: FinetuneConfig, steps_per_epoch: int) -> tuple[int, int]:
    """``(warmup steps used, warmup steps asked)``: the asked ``round(warmup_epochs x steps per
    epoch)`` clamped to half of the run's steps (see the module docstring)."""
    total = max(1, config.epochs * steps_per_epoch)
    asked = int(round(config.warmup_epochs * steps_per_epoch))
    return min(asked, total // 2), asked


def build_optimizer(net: FinetuneNet, config: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over :func:`param_groups`."""
    groups = param_groups(net, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.base_lr, weight_decay=config.weight_decay)


def lr_factor(config: FinetuneConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of each group's lr at optimiser step ``t`` (warmup, then the schedule)."""
    total = max(1, config.epochs * steps_per_epoch)
    warm, _ = warmup_steps(config, steps_per_epoch)
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


def build_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps_per_epoch: int,
                    *, start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step :class:`~torch.optim.lr_scheduler.LambdaLR` of :func:`lr_factor`.

    ``start_step > 0`` starts it at that optimiser step (every group's lr set to its
    ``initial_lr`` x the factor there), for a resume whose steps per epoch changed.
    """
    factor = lr_factor(config, steps_per_epoch)
    if start_step <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)
