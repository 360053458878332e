"""Gated attention pooling (Ilse et al., 2018), shared by the attention-based aggregators."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedAttention"]


class GatedAttention(nn.Module):
    """Raw attention scores a_i = w·[tanh(V h_i) ⊙ σ(U h_i)] + b, with dropout after tanh and σ."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, dim) instances → (N,) raw (pre-softmax) attention scores."""
        return self.score(self.tanh_branch(h) * self.gate_branch(h)).squeeze(-1)
