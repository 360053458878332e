"""Pathology foundation encoders from local weight files: UNI, UNI2-h, Virchow2, H-optimus-0, Phikon, Prov-GigaPath.

Each is the published timm architecture with the options its model card passes (some, such as SwiGLU MLPs, cannot
be given as `--model-option` strings), its published mean/std at 224 px, and its published embedding: the class
token, except Virchow2 (class token and mean of the patch tokens, registers excluded: 2560). Weights are gated
downloads, so only a local file is accepted (`--weights FILE`, .bin/.pth/.safetensors), in the published key
layout: timm's for all but Phikon, whose Hugging Face transformers `ViTModel` keys are converted here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import SwiGLUPacked
from torch import nn

from cmamil.errors import InputError
from cmamil.models import small_variant
from cmamil.timm_models import HUB, TimmPatchModel, create_timm_model

__all__ = ["ENCODERS", "FoundationEncoder", "gigapath", "h_optimus_0", "hf_vit_to_timm", "phikon", "uni", "uni2_h",
           "virchow2"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL = {"depth": 1, "embed_dim": 96, "num_heads": 2, "img_size": 28, "patch_size": 14}  # contract tests: tiny


@dataclass(frozen=True)
class FoundationEncoder:
    """A published encoder: its timm architecture and options, normalisation, embedding size and weights."""

    arch: str
    options: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    weights: str
    layout: str = "timm"
    extra: dict[str, Any] = field(default_factory=dict)


ENCODERS: dict[str, FoundationEncoder] = {
    "uni": FoundationEncoder(
        "vit_large_patch16_224", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}, *IMAGENET,
        1024, "hf.co/MahmoodLab/UNI pytorch_model.bin"),
    "uni2_h": FoundationEncoder(
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "depth": 24, "reg_tokens": 8, "dynamic_img_size": True}, *IMAGENET,
        1536, "hf.co/MahmoodLab/UNI2-h pytorch_model.bin"),
    "virchow2": FoundationEncoder(
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
         "dynamic_img_size": True}, *IMAGENET, 2560, "hf.co/paige-ai/Virchow2 pytorch_model.bin",
        extra={"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}),
    "h_optimus_0": FoundationEncoder(
        "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5},
        (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517),
        1536, "hf.co/bioptimus/H-optimus-0 pytorch_model.bin"),
    "phikon": FoundationEncoder(
        "vit_base_patch16_224", {"img_size": 224}, *IMAGENET, 768,
        "hf.co/owkin/phikon model.safetensors", layout="transformers ViTModel",
        extra={"norm_layer": partial(nn.LayerNorm, eps=1e-12)}),
    "gigapath": FoundationEncoder(
        "vit_giant_patch14_dinov2", {"img_size": 224, "patch_size": 16}, *IMAGENET,
        1536, "hf.co/prov-gigapath/prov-gigapath pytorch_model.bin"),
}


class ClassAndMeanTokens(TimmPatchModel):
    """Virchow2's embedding: the class token beside the mean of the patch tokens (registers left out)."""

    def __init__(self, model: nn.Module, data_config: dict[str, Any], num_classes: int) -> None:
        super().__init__(model, data_config)
        self.num_features = 2 * int(model.embed_dim)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, self.model.num_prefix_tokens:].mean(1)], dim=-1)


def build(name: str, num_classes: int = 0, weights: str | Path | None = None, **options: Any) -> TimmPatchModel:
    """Encoder `name` of ENCODERS with a local weights file (or random weights); `options` override its own."""
    spec = ENCODERS[name]
    if weights is not None and str(weights) == HUB:
        raise InputError(f"{name}: the weights are a gated download ({spec.weights}); download them once and pass "
                         "--weights FILE")
    converted = spec.layout != "timm" and weights is not None
    pooled = name == "virchow2"
    model = create_timm_model(spec.arch, num_classes=0 if pooled else num_classes,
                              weights=None if converted else weights, **{**spec.options, **spec.extra, **options})
    if converted:
        load_converted(model.model, weights)
    size = model.data_config["input_size"]
    config = {**model.data_config, "mean": spec.mean, "std": spec.std, "input_size": size, "interpolation": "bicubic"}
    if pooled:
        return ClassAndMeanTokens(model.model, config, num_classes)
    model.data_config = config
    return model


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face transformers ViTModel state dict (optionally under `vit.`) in timm VisionTransformer keys;
    query, key and value are stacked into one qkv projection and the pooler is dropped."""
    state = {k.removeprefix("vit."): v for k, v in state.items() if not k.removeprefix("vit.").startswith("pooler.")}
    renames = {
        "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.": "patch_embed.proj.", "layernorm.": "norm.",
    }
    block = {
        "layernorm_before.": "norm1.", "layernorm_after.": "norm2.", "attention.output.dense.": "attn.proj.",
        "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            if rest.startswith("attention.attention."):
                part = rest.rsplit(".", 1)[1]
                if rest.startswith("attention.attention.query."):
                    out[f"blocks.{index}.attn.qkv.{part}"] = torch.cat(
                        [state[f"encoder.layer.{index}.attention.attention.{p}.{part}"] for p in ("query", "key",
                                                                                              "value")])
                continue
            prefix = next((p for p in block if rest.startswith(p)), None)
            if prefix is None:
                raise InputError(f"unknown key '{key}' in a transformers ViT state dict")
            out[f"blocks.{index}.{block[prefix]}{rest.removeprefix(prefix)}"] = value
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is None:
            raise InputError(f"unknown key '{key}' in a transformers ViT state dict")
        out[renames[prefix] + key.removeprefix(prefix)] = value
    return out


def load_converted(model: nn.Module, weights: str | Path) -> None:
    """Load a transformers ViT weights file into the timm `model` (strict: every key must match)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(f"weights file '{weights}' not found; pass a local .bin, .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(hf_vit_to_timm(state), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path} does not match the transformers ViT layout: {str(exc).splitlines()[1:2]}") from exc


@small_variant(**SMALL)
def uni(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """UNI (Chen et al., 2024): ViT-L/16, 1024-d class token."""
    return build("uni", num_classes, weights, **options)


@small_variant(**SMALL)
def uni2_h(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """UNI2-h (MahmoodLab, 2025): ViT-H/14 with SwiGLU and 8 registers, 1536-d class token."""
    return build("uni2_h", num_classes, weights, **options)


@small_variant(**SMALL)
def virchow2(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """Virchow2 (Zimmermann et al., 2024): ViT-H/14 with SwiGLU and 4 registers, class + mean patch token (2560)."""
    return build("virchow2", num_classes, weights, **options)


@small_variant(**SMALL)
def h_optimus_0(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """H-optimus-0 (Bioptimus, 2024): ViT-g/14 with 4 registers, 1536-d class token."""
    return build("h_optimus_0", num_classes, weights, **options)


@small_variant(**SMALL)
def phikon(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """Phikon (Filiot et al., 2023): ViT-B/16 (iBOT), 768-d class token; transformers weights converted."""
    return build("phikon", num_classes, weights, **options)


@small_variant(**SMALL)
def gigapath(*, num_classes: int = 0, weights: str | None = None, **options: Any) -> TimmPatchModel:
    """Prov-GigaPath tile encoder (Xu et al., 2024): ViT-g/16 (DINOv2), 1536-d class token."""
    return build("gigapath", num_classes, weights, **options)
