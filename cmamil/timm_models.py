"""timm architectures behind the patch-model contract (`timm:<arch>`, and the built-in ViT plugins).

Weights: None builds random weights; a local .pth/.safetensors path is loaded through timm's
`pretrained_cfg_overlay=dict(file=...)`, which drops and re-initialises the classifier when the
class count differs; the word "hub" downloads timm's default tag (only when a user asks for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cmamil.errors import InputError, PluginError

__all__ = ["TimmPatchModel", "create_timm_model", "weights_kwargs"]

HUB = "hub"


class TimmPatchModel(nn.Module):
    """A timm model with `forward_features` returning pooled (B, D) embeddings, and timm's data config mapping
    (which `cmamil.models.create_model` turns into a DataConfig)."""

    def __init__(self, model: nn.Module, data_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.data_config = data_config
        self.num_features = int(model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def no_weight_decay(self) -> set[str]:
        """Parameters timm exempts from weight decay (position embeddings, tokens), named in this wrapper."""
        inner = getattr(self.model, "no_weight_decay", None)
        return {f"model.{name}" for name in inner()} if callable(inner) else set()


def weights_kwargs(weights: str | Path | None) -> dict[str, Any]:
    """timm.create_model keyword arguments for a weights choice (None, 'hub', or a local file)."""
    if weights is None:
        return {"pretrained": False}
    if str(weights) == HUB:
        return {"pretrained": True}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(
            f"weights file '{weights}' not found; pass a local .pth or .safetensors file, "
            f"or '{HUB}' to download the default pretrained weights"
        )
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path.resolve())}}


def create_timm_model(
    arch: str, *, num_classes: int = 0, weights: str | Path | None = None, **options: Any
) -> TimmPatchModel:
    """Build timm `arch` (num_classes=0 gives an encoder) wrapped in the patch-model contract."""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0][:8]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PluginError(f"timm has no architecture '{arch}'{hint}")
    kwargs = weights_kwargs(weights)
    try:
        model = timm.create_model(arch, num_classes=num_classes, **kwargs, **options)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise PluginError(f"could not build timm:{arch} with weights {weights!r}: {_first_line(exc)}") from exc
    except Exception as exc:  # safetensors, pickle and hub errors have their own types
        if "pretrained_cfg_overlay" in kwargs:
            raise InputError(f"weights file '{weights}' cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                             "is it a complete .pth or .safetensors file?") from exc
        raise PluginError(f"could not fetch the published weights of timm:{arch} ({type(exc).__name__}: "
                          f"{_first_line(exc)}); pass a local --weights file when offline") from exc
    config = dict(timm.data.resolve_model_data_config(model))
    channels, height, width = config["input_size"]
    if "img_size" in options:
        size = options["img_size"]
        height, width = (size, size) if isinstance(size, int) else size
    if "in_chans" in options and options["in_chans"] != channels:  # timm's data config keeps its 3 channels
        channels = int(options["in_chans"])
        config["mean"] = (float(sum(config["mean"]) / len(config["mean"])),) * channels
        config["std"] = (float(sum(config["std"]) / len(config["std"])),) * channels
    config["input_size"] = (channels, height, width)
    return TimmPatchModel(model, config)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages can run to many lines)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
