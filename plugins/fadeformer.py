"""FadeFormer (SachinPrasanth777/FadeFormer): a timm ViT followed by one FadeAttn layer as the head.

FadeAttn mixes softmax attention with a fixed graph filter on the patch grid: the dense Gaussian grid
Laplacian L (σ = 1, self-loops included), Chebyshev-rescaled to L̂ = 2L/λ_max − I and raised to the power
K, O = α·softmax(QKᵀ/√d)V + (1 − α)·L̂ᴷV, with one unconstrained learnable α. With K odd the constant
component of V is sign-flipped (L̂³·1 = −1): a band-stop filter, reproduced exactly as published.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from cmamil.errors import InputError
from cmamil.models import DataConfig, small_variant
from cmamil.timm_models import weights_kwargs

__all__ = ["FadeAttn", "FadeFormer", "FadeFormerConfig", "chebyshev_laplacian", "fadeformer", "grid_laplacian"]


def grid_laplacian(height: int, width: int, sigma: float = 1.0) -> torch.Tensor:
    """Combinatorial Laplacian D − A of the dense Gaussian graph over all grid positions (float64)."""
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    adjacency = torch.exp(-torch.cdist(points, points).square() / (2 * sigma**2))
    return torch.diag(adjacency.sum(dim=1)) - adjacency


@functools.lru_cache(maxsize=16)
def chebyshev_laplacian(height: int, width: int, order: int = 1) -> tuple[torch.Tensor, float]:
    """(L̂ᴷ in float32, λ_max) for an H×W grid, with L̂ = 2L/λ_max − I; computed once per grid."""
    laplacian = grid_laplacian(height, width)
    lambda_max = float(torch.linalg.eigvalsh(laplacian).max())
    rescaled = 2.0 * laplacian / lambda_max - torch.eye(height * width, dtype=torch.float64)
    return torch.linalg.matrix_power(rescaled, order).float(), lambda_max


class FadeAttn(nn.Module):
    """Multi-head attention mixed with the K-th power of the rescaled grid Laplacian, on a (B, C, H, W) map."""

    def __init__(self, dim: int, heads: int = 8, order: int = 3, alpha: float = 0.5, drop_rate: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"FadeAttn: {dim} channels cannot be split into {heads} heads; pick a divisor of {dim}")
        self.heads = heads
        self.order = order
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.drop = nn.Dropout2d(drop_rate)
        self._operators: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def diffusion_operator(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """L̂ᴷ (N, N) for this grid on `device`, cached so no eigen-decomposition runs per forward."""
        key = (height, width, device)
        if key not in self._operators:
            self._operators[key] = chebyshev_laplacian(height, width, self.order)[0].to(device)
        return self._operators[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_dim = channels // self.heads
        q, k, v = (
            t.reshape(batch * self.heads, head_dim, height * width).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=1)
        )
        attended = F.scaled_dot_product_attention(q, k, v)
        operator = self.diffusion_operator(height, width, x.device)
        diffused = torch.matmul(operator.to(v.dtype), v)
        mixed = self.alpha * attended + (1 - self.alpha) * diffused
        mixed = mixed.transpose(1, 2).reshape(batch, channels, height, width)
        return self.drop(self.proj(mixed))


@dataclass(frozen=True)
class FadeFormerConfig:
    """Backbone (a timm ViT), FadeAttn heads, Laplacian power K, α₀, dropouts, input size and depth."""

    backbone: str = "vit_base_patch16_224"
    heads: int = 8
    order: int = 3
    alpha: float = 0.5
    drop_rate: float = 0.5
    attn_drop_rate: float = 0.1
    img_size: int = 224
    depth: int | None = None

    def __post_init__(self) -> None:
        if not self.backbone.startswith("vit_") or not timm.is_model(self.backbone):
            raise InputError(
                f"fadeformer: backbone '{self.backbone}' is not a timm ViT; use e.g. vit_small_patch16_224"
            )
        if self.heads < 1 or self.order < 1 or self.img_size < 1 or (self.depth is not None and self.depth < 1):
            raise InputError("fadeformer: heads, order, img_size and depth must be positive")
        if not (0 <= self.drop_rate < 1 and 0 <= self.attn_drop_rate < 1):
            raise InputError("fadeformer: drop_rate and attn_drop_rate must lie in [0, 1)")


class FadeFormer(nn.Module):
    """timm ViT up to its final norm → patch-token grid → FadeAttn → mean pooling → dropout → linear."""

    def __init__(self, config: FadeFormerConfig, num_classes: int = 0, weights: str | None = None) -> None:
        super().__init__()
        self.config = config
        depth = {} if config.depth is None else {"depth": config.depth}
        self.backbone = timm.create_model(
            config.backbone, num_classes=0, img_size=config.img_size, **depth, **weights_kwargs(weights)
        )
        self.num_features = int(self.backbone.embed_dim)
        self.grid_size = tuple(self.backbone.patch_embed.grid_size)
        self.fade = FadeAttn(self.num_features, config.heads, config.order, config.alpha, config.attn_drop_rate)
        self.head_drop = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        timm_config = dict(timm.data.resolve_model_data_config(self.backbone))
        timm_config["input_size"] = (3, config.img_size, config.img_size)
        self.data_config = DataConfig.from_timm(timm_config)

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone patch tokens after its final norm, as a (B, D, H/16, W/16) map (class token dropped)."""
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens:]
        height, width = self.grid_size
        return tokens.transpose(1, 2).reshape(x.shape[0], self.num_features, height, width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fade(self.forward_grid(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))


@small_variant(backbone="vit_tiny_patch16_224", img_size=32, depth=1)
def fadeformer(
    *,
    num_classes: int = 0,
    weights: str | None = None,
    backbone: str = "vit_base_patch16_224",
    heads: int = 8,
    order: int = 3,
    alpha: float = 0.5,
    drop_rate: float = 0.5,
    attn_drop_rate: float = 0.1,
    img_size: int = 224,
    depth: int | None = None,
) -> FadeFormer:
    """FadeFormer on ViT-B/16 (88,162,563 parameters with 2 classes); `weights` loads the backbone only."""
    config = FadeFormerConfig(backbone, heads, order, alpha, drop_rate, attn_drop_rate, img_size, depth)
    return FadeFormer(config, num_classes=num_classes, weights=weights)
