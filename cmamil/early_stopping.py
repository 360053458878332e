"""Early stopping on a monitored validation metric, with patience and a minimum number of epochs."""

from __future__ import annotations

import math

__all__ = ["EarlyStopping"]

LOWER_IS_BETTER = ("loss",)


class EarlyStopping:
    """Track the best value of `monitor` ('loss' is minimised, anything else maximised).

    `update` says whether an epoch is the new best (the first finite value always is). Training should stop
    once `patience` epochs have passed without improvement and at least `min_epochs` epochs have run. A NaN
    value (e.g. AUC on a validation part lacking a class) never improves.
    """

    def __init__(self, monitor: str, patience: int, min_epochs: int = 0) -> None:
        if patience < 1 or min_epochs < 0:
            raise ValueError(f"patience must be >= 1 and min_epochs >= 0, got {patience}, {min_epochs}")
        self.monitor = monitor
        self.patience = patience
        self.min_epochs = min_epochs
        self.sign = -1.0 if monitor in LOWER_IS_BETTER else 1.0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.epochs_seen = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch` (0-based) with `value`; True when it is the new best."""
        self.epochs_seen = epoch + 1
        if value is None or math.isnan(value):
            return False
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best, self.best_epoch = float(value), epoch
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """Whether `patience` epochs passed without improvement, after at least `min_epochs` epochs."""
        since = self.epochs_seen - (self.best_epoch + 1 if self.best_epoch is not None else 0)
        return since >= self.patience and self.epochs_seen >= self.min_epochs
