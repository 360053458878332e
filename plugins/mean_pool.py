"""Mean pooling: the attention-free baseline. Instances are projected, averaged per magnification, and the
per-magnification means are concatenated for a linear classifier:

    logits = W_c [mean_i ReLU(W h_i^(s)) for each magnification s]
"""

from __future__ import annotations

import torch
from torch import nn

from cmamil.aggregators import AggregatorOutput, Bag
from cmamil.models import small_variant
from cmamil.plugins._single_scale import resolve_magnifications, stack_instances

__all__ = ["MeanPool", "mean_pool"]


class MeanPool(nn.Module):
    """Per-magnification mean of projected instances, concatenated, then a linear classifier."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        magnifications: tuple[str, ...],
        *,
        magnification: str = "all",
        dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.magnifications = resolve_magnifications(magnifications, magnification)
        self.project = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(dim * len(self.magnifications), num_classes)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
        """Bag logits (1, C); the attention of each magnification is uniform (1/N)."""
        pooled, attention = [], {}
        for mag in self.magnifications:
            h, _ = stack_instances(bag, (mag,))
            pooled.append(self.project(h).mean(0))
            attention[mag] = h.new_full((h.shape[0],), 1.0 / h.shape[0])
        return AggregatorOutput(logits=self.classifier(torch.cat(pooled))[None], attention=attention)


@small_variant(dim=16)
def mean_pool(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options) -> MeanPool:
    """Mean pooling per magnification (or over one chosen magnification)."""
    return MeanPool(in_dim, num_classes, magnifications, **options)
