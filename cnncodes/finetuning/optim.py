"""Optimiser and schedule of fine-tuning: :func:`param_groups` (one group per trainable stage plus
the head: discriminative learning rates, optional layer-wise decay), :func:`build_optimizer` (SGD +
momentum or AdamW), :func:`lr_factor` (linear warmup, then cosine / step / constant, per optimiser
step) and :func:`build_scheduler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

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
    return groups


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
