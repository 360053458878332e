"""DeiT-Small (Touvron et al., 2021) and Swin-Tiny (Liu et al., 2021) from timm as patch models."""

from __future__ import annotations

from typing import Any

from cmamil.models import small_variant
from cmamil.timm_models import TimmPatchModel, create_timm_model

__all__ = ["deit_small", "swin_tiny"]


@small_variant(img_size=64, depth=2)
def deit_small(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """DeiT-Small/16 at 224 px (22,050,664 parameters with 1000 classes)."""
    return create_timm_model("deit_small_patch16_224", num_classes=num_classes, weights=weights, **options)


@small_variant(img_size=64, window_size=2, depths=(2, 2, 2, 2))
def swin_tiny(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """Swin-Tiny, patch 4, window 7, at 224 px (28,288,354 parameters with 1000 classes)."""
    return create_timm_model(
        "swin_tiny_patch4_window7_224", num_classes=num_classes, weights=weights, **options
    )
