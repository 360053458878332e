"""The optimiser and the learning-rate schedule of every training run.

Parameter groups: a model's own `param_groups(lr, weight_decay)` when it defines one (e.g. S4D's SSM
parameters), else timm's split that exempts norms, biases and the model's `no_weight_decay()` names from
weight decay. The schedule is set per optimiser step: `constant`, or `cosine` (linear warm-up over
`warmup_epochs`, then cosine decay to zero at the last step).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmamil.training.config import TrainConfig

__all__ = ["LRSchedule", "build_optimizer"]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by `config.optimizer` over the model's weight-decay parameter groups."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(config.lr, config.weight_decay)
    else:
        from timm.optim import param_groups_weight_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_weight_decay(model, config.weight_decay, no_weight_decay_list=skip)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True,
                                    weight_decay=config.weight_decay)
    else:
        kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        # the fused kernel updates all parameters at once: several times faster than the per-tensor loop on CPU
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
        optimizer = kind(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


class LRSchedule:
    """Sets each group's lr from its `base_lr` at every optimiser step (see the module docstring)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.kind = config.scheduler
        self.warmup = config.warmup_epochs * steps_per_epoch
        self.total = config.epochs * steps_per_epoch

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at optimiser step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(self.total - self.warmup, 1)))

    def set(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Apply the schedule for `step`."""
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
