"""Model checkpoints: a state dict plus plain metadata, written atomically and read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmamil.atomic import atomic_path

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights (on CPU) and `meta` (str/int/float/bool/list/dict values) to `path` atomically."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": meta or {}}, tmp)
    return path


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only=True); load its weights into `model` when given."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if model is not None:
        model.load_state_dict(checkpoint["state_dict"])
    return checkpoint
