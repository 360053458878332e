"""Early stopping on a validation metric, with a tie-break metric, and a state that survives resume."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EarlyStopping"]

MINIMISED = ("loss",)


@dataclass
class EarlyStopping:
    """Track the best epoch by `monitor` (ties broken by `tie_break`); stop after `patience` bad epochs."""

    monitor: str = "f1_macro"
    patience: int = 20
    min_epochs: int = 0
    tie_break: str | None = "accuracy"
    best_epoch: int = -1
    best: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")

    def step(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Record `epoch`'s metrics; True when it is the new best."""
        if self._better(metrics):
            self.best_epoch = epoch
            self.best = {key: float(metrics[key]) for key in self._keys() if key in metrics}
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, epoch: int) -> bool:
        """True when patience is spent and `epoch` (1-based: the count of epochs run) reached `min_epochs`."""
        return self.bad_epochs >= self.patience and epoch >= self.min_epochs

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for a checkpoint."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by `state_dict`."""
        for key, value in state.items():
            setattr(self, key, value)

    def _keys(self) -> tuple[str, ...]:
        return (self.monitor, self.tie_break) if self.tie_break else (self.monitor,)

    def _better(self, metrics: dict[str, Any]) -> bool:
        """Lexicographic comparison on (monitor, tie_break); NaN is never better."""
        if not self.best:
            return not _nan(metrics.get(self.monitor))
        for key in self._keys():
            new, old = _value(metrics.get(key), key), _value(self.best.get(key), key)
            if new != old:
                return new > old
        return False


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _value(value: Any, key: str) -> float:
    """A score where larger is better (minimised metrics are negated; NaN is the worst)."""
    if _nan(value):
        return -math.inf
    return -float(value) if key in MINIMISED else float(value)
