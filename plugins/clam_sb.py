"""CLAM-SB (Lu et al., "Data-efficient and weakly supervised computational pathology on whole-slide images",
Nature Biomedical Engineering 2021): single-branch gated attention with instance-level clustering.

    h' = Dropout(ReLU(W h)),  A = softmax(gated attention(h')),  logits = W_c (A h')
    L = bag_weight·L_bag + (1 − bag_weight)·L_inst, L_inst from the top/bottom-k instances by attention

Size "small" is [in_dim, 512, 256] (790,791 parameters for in_dim 1024, two classes); "big" is [in_dim, 512, 384].
"""

from __future__ import annotations

import torch
from torch import nn

from cmamil.aggregators import AggregatorOutput, Bag
from cmamil.models import small_variant
from cmamil.plugins._attention import GatedAttention
from cmamil.plugins._instance import InstanceSupervised, instance_loss
from cmamil.plugins._single_scale import resolve_magnifications, split_by_magnification, stack_instances

__all__ = ["CLAMSB", "clam_sb"]

SIZES = {"small": (512, 256), "big": (512, 384)}


class CLAMSB(InstanceSupervised):
    """CLAM single-branch: gated attention pooling plus per-class instance classifiers."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        magnifications: tuple[str, ...],
        *,
        magnification: str = "all",
        size: str = "small",
        dims: tuple[int, int] | None = None,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        bag_loss: str = "ce",
        inst_loss: str = "ce",
        subtyping: bool = False,
    ) -> None:
        super().__init__(num_classes, bag_loss, inst_loss, bag_weight, k_sample, subtyping)
        if size not in SIZES:
            raise ValueError(f"size '{size}' is not one of {', '.join(SIZES)}")
        hidden, attn_dim = dims or SIZES[size]
        self.magnifications = resolve_magnifications(magnifications, magnification)
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_dim, dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(num_classes))

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
        """Bag logits (1, C), attention per magnification, and the instance loss when `label` is given."""
        h, sizes = stack_instances(bag, self.magnifications)
        h = self.project(h)
        raw = self.attention(h)
        attention = torch.softmax(raw, dim=0)
        logits = self.classifier(attention @ h)[None]
        aux = None
        if label is not None:
            ranking = attention.detach()[:, None].expand(-1, self.num_classes)
            aux = instance_loss(
                h, ranking, self.instance_classifiers, int(label.reshape(-1)[0]), self.k_sample,
                self.inst_loss_fn, self.subtyping,
            )
            if self.subtyping:
                aux = aux / self.num_classes
        return AggregatorOutput(
            logits=logits, attention=split_by_magnification(attention, self.magnifications, sizes), aux_loss=aux
        )


@small_variant(dims=(16, 8), k_sample=2)
def clam_sb(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options) -> CLAMSB:
    """CLAM-SB over one magnification or all of them stacked (magnification="all")."""
    return CLAMSB(in_dim, num_classes, magnifications, **options)
