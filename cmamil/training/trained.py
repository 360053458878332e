"""A trained model rebuilt from a fold's checkpoint.pt, whatever its kind, ready to predict new data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmamil.errors import InputError
from cmamil.training.checkpoint import load_checkpoint
from cmamil.training.run_folder import KINDS

__all__ = ["TrainedModel", "load_trained"]


@dataclass(frozen=True)
class TrainedModel:
    """The model in eval mode, its checkpoint metadata, and how its inputs are prepared.

    `prepare` is the feature scaler (or None) of a bag model, and the evaluation transform of a patch model.
    """

    kind: str
    model: nn.Module
    meta: dict[str, Any]
    prepare: Any

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])


def load_trained(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the model saved in a fold's checkpoint.pt (or a fold folder holding one) on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path)
    kind = state.get("kind")
    if kind not in KINDS:
        raise InputError(f"'{path}' is not a cmamil training checkpoint (kind {kind!r}); retrain with this cmamil")
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    if kind == "bags":
        from cmamil.training.bags import rebuild_aggregator

        model, prepare = rebuild_aggregator(meta)
    else:
        from cmamil.training.patches import rebuild_patch_model

        model, prepare = rebuild_patch_model(meta)
    model.load_state_dict(state["state_dict"])
    return TrainedModel(kind, model.to(device).eval(), meta, prepare)
