"""The patch-model contract, and `create_model` over registered plugins and any timm architecture.

A patch model is an `nn.Module` with `forward(x) -> logits`, `forward_features(x) -> (B, D)` pooled
embeddings, an int `num_features` (= D) and a `data_config` saying how to preprocess its input.
`num_classes=0` builds an encoder, whose `forward` returns the pooled embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cmamil import registry
from cmamil.errors import PluginError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DataConfig",
    "check_model_contract",
    "count_parameters",
    "create_model",
    "small_variant",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its input: (C, H, W) size, normalisation and resize interpolation."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (C, H, W) with positive sizes, got {self.input_size}")
        if len(self.mean) != self.input_size[0] or len(self.std) != self.input_size[0]:
            raise ValueError("mean and std need one value per input channel")

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> DataConfig:
        """Build from a timm data config dict (`timm.data.resolve_model_data_config`)."""
        return cls(
            input_size=tuple(int(v) for v in cfg["input_size"]),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )


def small_variant(**options: Any):
    """Decorate a factory with the options that build a small, fast variant for generated tests."""

    def mark(factory):
        factory.small_options = dict(options)
        return factory

    return mark


def create_model(name: str, *, num_classes: int = 0, weights: str | None = None, **options: Any) -> nn.Module:
    """Build the patch model `name` (a registered plugin, or `timm:<arch>`) and check its contract."""
    if name.startswith("timm:"):
        from cmamil.timm_models import create_timm_model

        model = create_timm_model(name[len("timm:"):], num_classes=num_classes, weights=weights, **options)
    else:
        factory = registry.models.load(name)
        try:
            model = factory(num_classes=num_classes, weights=weights, **options)
        except TypeError as exc:
            raise PluginError(f"model '{name}' rejected its options {sorted(options)}: {exc}") from exc
    check_model_contract(model, name)
    return model


def check_model_contract(model: nn.Module, name: str) -> None:
    """Raise PluginError when `model` lacks a part of the patch-model contract."""
    missing = [
        attr
        for attr in ("forward_features", "num_features", "data_config")
        if not hasattr(model, attr)
    ]
    if missing:
        raise PluginError(f"model '{name}' does not meet the patch-model contract: missing {', '.join(missing)}")
    if not isinstance(model.data_config, DataConfig):
        raise PluginError(f"model '{name}': data_config must be a cmamil.models.DataConfig")
    if not isinstance(model.num_features, int) or model.num_features < 1:
        raise PluginError(f"model '{name}': num_features must be a positive int")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those that require gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
