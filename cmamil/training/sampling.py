"""Training-order samplers shared by bag and patch training."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_balanced_sampler"]


def class_balanced_sampler(labels: Sequence[int], generator: torch.Generator) -> WeightedRandomSampler:
    """Draw len(labels) items with replacement, each class with equal probability."""
    labels = np.asarray(labels, dtype=int)
    weights = 1.0 / np.bincount(labels)[labels]
    return WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True, generator=generator)
