"""The optimiser and the learning-rate schedule of every training run.

Parameter groups: a model's own `param_groups(lr, weight_decay)` when it defines one (e.g. S4D's SSM
parameters), else timm's split that exempts norms, biases and the model's `no_weight_decay()` names from
weight decay. The schedule is set per optimiser step: `constant`, or `cosine` (linear warm-up over
`warmup_epochs`, then cosine decay to zero at the last step), or `plateau`: after the warm-up, torch's
ReduceLROnPlateau multiplies every group's lr by `plateau_factor` once the validation `monitor` has not improved
for more than `plateau_patience` epochs (stepped once per epoch, on the value early stopping watches).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cmamil.training.config import TrainConfig
from cmamil.training.early_stopping import MINIMISED

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
    """Sets each group's lr from its `base_lr` at every optimiser step, and steps the plateau rule per epoch
    (see the module docstring)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, optimizer: torch.optim.Optimizer) -> None:
        self.kind = config.scheduler
        self.warmup_epochs = config.warmup_epochs
        self.warmup = config.warmup_epochs * steps_per_epoch
        self.total = config.epochs * steps_per_epoch
        self.plateau = None
        if self.kind == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min" if config.monitor in MINIMISED else "max", factor=config.plateau_factor,
                patience=config.plateau_patience)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at optimiser step `step` (0-based), before any plateau cut."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind in ("constant", "plateau"):
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(self.total - self.warmup, 1)))

    def set(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Apply the schedule for `step` (after the warm-up, a plateau schedule leaves the lr to its rule)."""
        if self.plateau is not None and step > self.warmup:  # at step == warmup the lr is set to its base
            return
        factor = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def end_epoch(self, epoch: int, value: float) -> None:
        """Give the plateau rule the validation value of `epoch` (1-based); warm-up epochs are not counted."""
        if self.plateau is not None and epoch > self.warmup_epochs:
            self.plateau.step(value)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the plateau rule (empty for the per-step schedules)."""
        return {} if self.plateau is None else self.plateau.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.plateau is not None and state:
            self.plateau.load_state_dict(state)
