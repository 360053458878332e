"""Two small convolutional patch models that meet cmamil's patch-model contract: one with a cmamil DataConfig,
one written with timm habits (a plain-dict `data_config`, as `timm.data.resolve_model_data_config` returns)."""

from __future__ import annotations

import torch
from torch import nn

from cmamil.models import DataConfig

__all__ = ["ExampleCNN", "TimmStyleCNN", "example_cnn", "example_timm_cnn"]


class ExampleCNN(nn.Module):
    """Three conv blocks, global average pooling, and a linear head (identity when num_classes=0)."""

    def __init__(self, num_classes: int = 0, width: int = 16, img_size: int = 64) -> None:
        super().__init__()
        self.data_config = DataConfig(input_size=(3, img_size, img_size))
        self.num_features = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.BatchNorm2d(width * 4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def example_cnn(*, num_classes: int = 0, weights: str | None = None, **options) -> ExampleCNN:
    """Factory registered under `cmamil.models` as `example_cnn`; `weights` is a local state-dict file."""
    return _with_weights(ExampleCNN(num_classes=num_classes, **options), weights)


class TimmStyleCNN(ExampleCNN):
    """The same network describing its input as timm does: a plain-dict `data_config` (crop_pct included)."""

    def __init__(self, num_classes: int = 0, width: int = 8, img_size: int = 32) -> None:
        super().__init__(num_classes=num_classes, width=width, img_size=img_size)
        self.data_config = {
            "input_size": (3, img_size, img_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 0.875,
        }


def example_timm_cnn(*, num_classes: int = 0, weights: str | None = None, **options) -> TimmStyleCNN:
    """Factory registered under `cmamil.models` as `example_timm_cnn`; `weights` is a local state-dict file."""
    return _with_weights(TimmStyleCNN(num_classes=num_classes, **options), weights)


def _with_weights(model: nn.Module, weights: str | None) -> nn.Module:
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model
