"""Gated attention MIL (Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning", 2018).

    h'_i = Dropout(ReLU(W h_i)),  a = softmax_i(gated attention(h'_i)),  logits = W_c Σ_i a_i h'_i

Over one chosen magnification, or over the instances of every magnification stacked into one bag ("all").
Trained with cross-entropy. CLAM-style additions to Ilse et al.'s model (as CLAM's `Attn_Net_Gated` and `fc`
layers have them): the projection W with ReLU and dropout before attention, dropout after tanh and sigmoid in
the gated attention, and a C-way softmax classifier instead of a single sigmoid output.
"""

from __future__ import annotations

import torch
from torch import nn

from cmamil.aggregators import AggregatorOutput, Bag
from cmamil.models import small_variant
from cmamil.plugins._attention import GatedAttention
from cmamil.plugins._single_scale import resolve_magnifications, split_by_magnification, stack_instances

__all__ = ["ABMIL", "abmil"]


class ABMIL(nn.Module):
    """Gated-attention pooling of projected instances, then a linear bag classifier."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        magnifications: tuple[str, ...],
        *,
        magnification: str = "all",
        dim: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.magnifications = resolve_magnifications(magnifications, magnification)
        self.project = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(dim, attn_dim, dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
        """Bag logits (1, C) and softmax attention per magnification (over the stacked bag)."""
        h, sizes = stack_instances(bag, self.magnifications)
        h = self.project(h)
        attention = torch.softmax(self.attention(h), dim=0)
        logits = self.classifier(attention @ h)[None]
        return AggregatorOutput(logits=logits, attention=split_by_magnification(attention, self.magnifications, sizes))


@small_variant(dim=16, attn_dim=8)
def abmil(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options) -> ABMIL:
    """Gated ABMIL over one magnification or all of them stacked (magnification="all")."""
    return ABMIL(in_dim, num_classes, magnifications, **options)
