"""Pathology foundation encoders: the real architectures (built on the meta device), and published-layout weight
files loaded through `--weights` at one block deep (blocks repeat, so one block has every key pattern)."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked
from torch import nn

from cmamil.errors import InputError
from cmamil.models import create_model
from cmamil.plugins.pathology import ENCODERS

# (depth, embed dim, registers) of each published architecture
PUBLISHED = {"uni": (24, 1024, 0), "uni2_h": (24, 1536, 8), "virchow2": (32, 1280, 4), "h_optimus_0": (40, 1536, 4),
             "phikon": (12, 768, 0), "gigapath": (40, 1536, 0)}


def model_card(name: str, depth: int, **extra) -> nn.Module:
    """The encoder as each model card builds it with timm (depth reduced), independent of cmamil's table."""
    swiglu = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
    cards = {
        "uni": ("vit_large_patch16_224", dict(img_size=224, patch_size=16, init_values=1e-5, dynamic_img_size=True)),
        "uni2_h": ("vit_giant_patch14_224", dict(img_size=224, patch_size=14, num_heads=24, init_values=1e-5,
                                                 embed_dim=1536, mlp_ratio=2.66667 * 2, no_embed_class=True,
                                                 reg_tokens=8, dynamic_img_size=True, **swiglu)),
        "virchow2": ("vit_huge_patch14_224", dict(img_size=224, init_values=1e-5, reg_tokens=4, mlp_ratio=5.3375,
                                                  global_pool="", dynamic_img_size=True, **swiglu)),
        "h_optimus_0": ("vit_giant_patch14_reg4_dinov2", dict(img_size=224, global_pool="token", init_values=1e-5,
                                                              dynamic_img_size=False)),
        "gigapath": ("vit_giant_patch14_dinov2", dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
                                                      num_heads=24, init_values=1e-5, mlp_ratio=5.33334)),
        "phikon": ("vit_base_patch16_224", dict(img_size=224, norm_layer=partial(nn.LayerNorm, eps=1e-12))),
    }
    arch, options = cards[name]
    return timm.create_model(arch, pretrained=False, num_classes=0, depth=depth, **options, **extra).eval()


def card_embedding(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding each model card takes: Virchow2's class + mean patch token, else the class token."""
    tokens = model.forward_features(x)
    if name == "virchow2":
        return torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
    return tokens[:, 0]


def transformers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT-B state dict in the key layout of Hugging Face transformers' ViTModel (as owkin/phikon ships)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for part in ("weight", "bias"):
        out[f"embeddings.patch_embeddings.projection.{part}"] = state[f"patch_embed.proj.{part}"]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        for i in range(depth):
            hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
            for j, qkv in enumerate(("query", "key", "value")):
                out[f"{hf}attention.attention.{qkv}.{part}"] = state[f"{tm}attn.qkv.{part}"].chunk(3)[j]
            for new, old in (("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                             ("output.dense", "mlp.fc2"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
                out[f"{hf}{new}.{part}"] = state[f"{tm}{old}.{part}"]
    out["pooler.dense.weight"], out["pooler.dense.bias"] = torch.zeros(768, 768), torch.zeros(768)
    return out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_architecture_has_the_published_depth_width_and_embedding(name):
    with torch.device("meta"):  # no memory, and no initialisation ("skip"): seconds for a billion parameters
        encoder = create_model(name, weight_init="skip")
    depth, width, registers = PUBLISHED[name]
    vit = encoder.model
    assert (len(vit.blocks), vit.embed_dim, vit.num_reg_tokens) == (depth, width, registers)
    assert encoder.num_features == ENCODERS[name].dim
    config = encoder.data_config
    assert config.input_size == (3, 224, 224) and (config.mean, config.std) == (ENCODERS[name].mean,
                                                                                  ENCODERS[name].std)
    with torch.device("meta"):
        card = model_card(name, depth, weight_init="skip")
    ours = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in card.state_dict().items()}
    assert ours == theirs  # the model card's architecture, key for key and shape for shape


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_layout_weights_load_through_weights(name, tmp_path):
    torch.manual_seed(0)
    card = model_card(name, depth=1, weight_init="skip")
    with torch.no_grad():  # random weights, filled faster than timm's initialisation
        for p in card.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.uniform_(0.5, 1.5)
    state = card.state_dict()
    if name == "phikon":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in transformers_layout(state).items()}, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    encoder = create_model(name, weights=str(path), depth=1, weight_init="skip").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_features(x), card_embedding(name, card, x))


def test_gated_weights_are_never_downloaded():
    with pytest.raises(InputError) as error:
        create_model("uni", weights="hub")
    assert str(error.value) == ("uni: the weights are a gated download (hf.co/MahmoodLab/UNI pytorch_model.bin); "
                                "download them once and pass --weights FILE")
