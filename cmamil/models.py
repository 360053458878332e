"""The patch-model contract, and `create_model` over registered plugins and any timm architecture.

A patch model is an `nn.Module` with `forward(x) -> logits`, `forward_features(x) -> (B, D)` pooled
embeddings, an int `num_features` (= D) and a `data_config` saying how to preprocess its input: a
`DataConfig`, or a timm-style mapping that `create_model` turns into one. `num_classes=0` builds an
encoder, whose `forward` returns the pooled embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmamil import registry
from cmamil.errors import InputError, PluginError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DataConfig",
    "check_model_contract",
    "count_macs",
    "count_parameters",
    "create_model",
    "load_local_weights",
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
    def from_timm(cls, cfg: Mapping[str, Any]) -> DataConfig:
        """Build from a timm-style data config mapping (`timm.data.resolve_model_data_config`): `input_size`,
        `mean` and `std` are needed, `interpolation` defaults to bicubic, other keys (`crop_pct` …) are ignored
        because a histology patch is used whole."""
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
    """Build the patch model `name` (a registered plugin, or `timm:<arch>`), check its contract, and turn a
    timm-style `data_config` mapping into a DataConfig so that every caller sees one type."""
    if name.startswith("timm:"):
        from cmamil.timm_models import create_timm_model

        model = create_timm_model(name[len("timm:"):], num_classes=num_classes, weights=weights, **options)
        label = f"model '{name}' from package 'timm'"
    else:
        model = registry.models.build(name, options, num_classes=num_classes, weights=weights)
        label = registry.models.label(name)
    check_model_contract(model, label)
    model.data_config = _as_data_config(model.data_config, label)
    return model


def check_model_contract(model: nn.Module, label: str) -> None:
    """Raise PluginError naming `label` when `model` lacks a part of the patch-model contract."""
    missing = [
        attr
        for attr in ("forward_features", "num_features", "data_config")
        if not hasattr(model, attr)
    ]
    if missing:
        raise PluginError(f"{label} does not meet the patch-model contract: missing {', '.join(missing)}")
    if not isinstance(model.num_features, int) or model.num_features < 1:
        raise PluginError(f"{label}: num_features must be a positive int")


def _as_data_config(config: DataConfig | Mapping[str, Any], label: str) -> DataConfig:
    """`config` as a DataConfig: itself, or built from a timm-style mapping; `label` names the plugin in errors."""
    if isinstance(config, DataConfig):
        return config
    if not isinstance(config, Mapping):
        raise PluginError(
            f"{label}: data_config is a {type(config).__name__}; make it a cmamil.models.DataConfig "
            "or a timm-style mapping with input_size, mean and std"
        )
    missing = [key for key in ("input_size", "mean", "std") if key not in config]
    if missing:
        raise PluginError(
            f"{label}: data_config has no {', '.join(repr(k) for k in missing)}; a timm-style data_config "
            "needs input_size (C, H, W), mean and std"
        )
    try:
        return DataConfig.from_timm(config)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{label}: data_config {dict(config)} is not usable: {exc}") from exc


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those that require gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of one eval forward pass on a single input (torch's FLOP counter, FLOPs / 2).

    Only matrix products, convolutions and attention are counted (as by torch.utils.flop_counter):
    elementwise work, normalisation and FFTs are not. Attention runs through its math kernel here, which
    the counter sees as matrix products (fused CPU attention kernels would otherwise count as zero).
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    size = tuple(input_size or model.data_config.input_size)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.zeros(1, *size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def load_local_weights(
    model: nn.Module, weights: str | Path | None, *, name: str, classifier: str = "head", dropped: tuple[str, ...] = ()
) -> nn.Module:
    """Load a local .pth/.safetensors state dict into `model`; a classifier of another shape is re-initialised.

    For models without published weights: None keeps the random initialisation, and 'hub' is refused. Keys under
    the `dropped` prefixes (parts a truncated model cut off) are ignored; every other key must fit.
    """
    if weights is None:
        return model
    path = Path(weights).expanduser()
    if str(weights) == "hub" or not path.is_file():
        raise InputError(
            f"weights file '{weights}' not found for model '{name}'; it has no published weights, "
            "pass a local .pth or .safetensors state dict"
        )
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as exc:
        raise InputError(f"cannot read weights '{path}' for model '{name}': {type(exc).__name__}: {exc}") from exc
    state = {key: value for key, value in state.items() if not key.startswith(dropped)}
    own = model.state_dict()
    prefix = classifier + "."
    fits = {key: key in own and own[key].shape == value.shape for key, value in state.items()}
    state = {key: value for key, value in state.items() if fits[key] or not key.startswith(prefix)}
    wrong = [key for key in state if key in own and not fits[key]]
    missing, unexpected = [], []
    if not wrong:
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith(prefix)]
    if wrong or missing or unexpected:
        raise InputError(
            f"weights '{path}' do not fit model '{name}': {len(wrong)} keys of another shape (e.g. {wrong[:2]}), "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "were they saved from this model with the same options?"
        )
    return model
