"""Classification losses for MIL aggregators: the smooth top-1 multiclass SVM and a by-name factory.

SmoothTop1SVM is the loss of Berrada, Zisserman & Kumar, "Smooth Loss Functions for Deep Top-k
Classification" (ICLR 2018), as CLAM and CMA-MIL use it (k = 1, α = 1, τ = 1). For scores x ∈ ℝ^C and label y:

    smooth:  τ · log Σ_j exp((x_j + α·[j≠y] − x_y) / τ)
    hard:    max_j (x_j + α·[j≠y]) − x_y

A sample uses the hard form when its top score exceeds its second by at least k·τ·ln(1000) (where the smooth
form's log-sum-exp is numerically the max anyway); the loss is the sum over samples divided by the batch size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LOSSES", "SmoothTop1SVM", "create_loss"]

LOSSES = ("ce", "svm")


class SmoothTop1SVM(nn.Module):
    """Smooth top-1 multiclass SVM loss with margin `alpha`, temperature `tau` and hard-regime threshold."""

    def __init__(self, num_classes: int, alpha: float = 1.0, tau: float = 1.0, threshold: float = 1e3) -> None:
        super().__init__()
        if num_classes < 2 or alpha < 0 or tau <= 0 or threshold <= 1:
            raise ValueError("SmoothTop1SVM needs num_classes >= 2, alpha >= 0, tau > 0 and threshold > 1")
        self.num_classes = num_classes
        self.alpha = alpha
        self.tau = tau
        self.threshold = threshold

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of (B, C) `scores` against (B,) integer `target`."""
        target = target.reshape(-1).long()
        margin = self.alpha * (F.one_hot(target, self.num_classes) == 0).to(scores.dtype)
        shifted = scores + margin - scores.gather(1, target[:, None])
        top2 = scores.topk(2, dim=1).values
        hard = (top2[:, 0] - top2[:, 1]).detach() >= self.tau * math.log(self.threshold)
        smooth_loss = self.tau * torch.logsumexp(shifted / self.tau, dim=1)
        hard_loss = shifted.max(dim=1).values
        return torch.where(hard, hard_loss, smooth_loss).sum() / scores.shape[0]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, tau={self.tau}"


def create_loss(name: str, num_classes: int) -> nn.Module:
    """'ce' → cross-entropy, 'svm' → SmoothTop1SVM, for `num_classes` scores per sample."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "svm":
        return SmoothTop1SVM(num_classes)
    raise ValueError(f"loss '{name}' is not one of {', '.join(LOSSES)}")
