"""Instance-level supervision shared by CLAM-SB and CMA-MIL: pseudo-labelled top-k / bottom-k instances.

For the bag label y, the k highest-ranked instances under class y get pseudo-label 1 and the k lowest get 0,
scored by class y's own two-way instance classifier; with `subtyping`, the k highest-ranked instances under
every other class c get 0 under classifier c. The aggregators differ in how instances are ranked and weighted.
"""

from __future__ import annotations

import torch
from torch import nn

from cmamil.aggregators import AggregatorOutput
from cmamil.losses import LOSSES, create_loss

__all__ = ["InstanceSupervised", "instance_loss"]


def instance_loss(
    h: torch.Tensor,
    ranking: torch.Tensor,
    classifiers: nn.ModuleList,
    label: int,
    k_sample: int,
    loss_fn: nn.Module,
    subtyping: bool,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over classes of the pseudo-label losses for (N, D) instances `h` ranked by (N, C) `ranking`.

    k' = min(k_sample, N), so small bags work (their top and bottom sets may overlap). `weights` (N,)
    multiplies each instance's two logits before the loss (CMA-MIL's attribute weighting).
    """
    k = min(k_sample, h.shape[0])
    total = h.new_zeros(())
    for c, classifier in enumerate(classifiers):
        if c == label:
            index = torch.cat([ranking[:, c].topk(k).indices, (-ranking[:, c]).topk(k).indices])
            targets = torch.cat([h.new_ones(k), h.new_zeros(k)]).long()
        elif subtyping:
            index = ranking[:, c].topk(k).indices
            targets = h.new_zeros(k).long()
        else:
            continue
        logits = classifier(h[index])
        if weights is not None:
            logits = logits * weights[index, None]
        total = total + loss_fn(logits, targets)
    return total


class InstanceSupervised(nn.Module):
    """Base of aggregators trained with bag_weight·L_bag + (1 − bag_weight)·L_inst; owns both loss choices."""

    def __init__(
        self,
        num_classes: int,
        bag_loss: str,
        inst_loss: str,
        bag_weight: float,
        k_sample: int,
        subtyping: bool,
    ) -> None:
        super().__init__()
        if bag_loss not in LOSSES or inst_loss not in LOSSES:
            raise ValueError(f"bag_loss and inst_loss must be one of {', '.join(LOSSES)}")
        if not 0.0 <= bag_weight <= 1.0:
            raise ValueError(f"bag_weight must lie in [0, 1], got {bag_weight}")
        if k_sample < 1:
            raise ValueError(f"k_sample must be >= 1, got {k_sample}")
        self.num_classes = num_classes
        self.bag_weight = bag_weight
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.bag_loss_fn = create_loss(bag_loss, num_classes)
        self.inst_loss_fn = create_loss(inst_loss, 2)

    def loss(self, output: AggregatorOutput, label: torch.Tensor) -> torch.Tensor:
        """bag_weight·L_bag + (1 − bag_weight)·L_inst; the bag loss alone when no instance loss was computed."""
        bag = self.bag_loss_fn(output.logits, label.reshape(1).long())
        if output.aux_loss is None:
            return bag
        return self.bag_weight * bag + (1.0 - self.bag_weight) * output.aux_loss
