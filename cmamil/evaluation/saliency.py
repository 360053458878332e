"""Where a patch model looks: Grad-CAM (convolutional and hybrid models) and attention rollout (ViTs).

Grad-CAM (Selvaraju et al., 2017) weights the channels of the last spatial feature map by the mean
gradient of the target logit and keeps the positive part. The feature map is found without knowing
the architecture: the last module whose 4-D output has `num_features` channels (NCHW, or NHWC as in
Swin), else the last Conv2d. Attention rollout (Abnar & Zuidema, 2020) multiplies the head-averaged
attention matrices of all blocks (each plus the identity, for the residual path) and reads the class
token's row; it applies to models with timm-style attention modules (an `attn_drop` inside a module
with `fused_attn`) and a class token. Maps are (B, H, W) at the input size, scaled to [0, 1].
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmamil.errors import PluginError

__all__ = [
    "GROUPS",
    "attention_rollout",
    "explain_method",
    "grad_cam",
    "overlay_heatmap",
    "saliency_maps",
    "save_overlay_grid",
    "select_groups",
]

GROUPS = ("true_positive", "false_positive", "false_negative")


def explain_method(model: nn.Module) -> str:
    """'rollout' for ViT-style models (class token and timm-style attention), else 'gradcam'."""
    has_token = any(isinstance(getattr(m, "cls_token", None), torch.Tensor) for m in model.modules())
    return "rollout" if has_token and _attention_modules(model) else "gradcam"


def saliency_maps(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None, method: str = "auto"
) -> tuple[torch.Tensor, str]:
    """(B, H, W) maps in [0, 1] and the method used ('gradcam' or 'rollout'; 'auto' picks per model)."""
    method = explain_method(model) if method == "auto" else method
    if method == "rollout":
        maps = attention_rollout(model, images)
        if maps is not None:
            return maps, "rollout"
    return grad_cam(model, images, targets), "gradcam"


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) for `targets` (default: the predicted classes)."""
    model.eval()
    with torch.enable_grad(), _capture_feature_map(model) as found:
        logits = model(images)
        activation, layout = found.get("map") or found.get("conv") or (None, None)
        if activation is None:
            raise PluginError(
                f"cannot explain {type(model).__name__}: no spatial feature map (conv layer or NHWC stage) found"
            )
        if targets is None:
            targets = logits.argmax(1)
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (grads,) = torch.autograd.grad(score, activation)
    if layout == "NHWC":
        activation, grads = activation.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    raw = (weights * activation).sum(1).detach()
    cam = raw.clamp(min=0)
    empty = cam.flatten(1).amax(1) <= 0
    cam[empty] = raw[empty].abs()  # no positive evidence at all: show where the evidence is strongest
    return _normalise(_upsample(cam, images.shape[-2:]))


def attention_rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Attention-rollout maps (B, H, W), or None when the attention maps do not fit a token grid."""
    model.eval()
    batch = images.shape[0]
    maps: list[torch.Tensor] = []
    with torch.no_grad(), _recording_attention(model, maps):
        model(images)
    maps = [m for m in maps if m.dim() == 4 and m.shape[0] == batch and m.shape[-1] == m.shape[-2]]
    if not maps or len({m.shape[-1] for m in maps}) != 1:
        return None
    tokens = maps[0].shape[-1]
    prefix = _prefix_tokens(model)
    height, width = images.shape[-2:]
    grid_h = round(math.sqrt((tokens - prefix) * height / width))
    if grid_h < 1 or (tokens - prefix) % grid_h:
        return None
    grid_w = (tokens - prefix) // grid_h
    eye = torch.eye(tokens, device=images.device)
    rollout = eye.expand(batch, tokens, tokens)
    for attention in maps:
        layer = attention.float().mean(1) + eye
        rollout = (layer / layer.sum(-1, keepdim=True)) @ rollout
    relevance = rollout[:, 0, prefix:] if prefix else rollout.mean(1)
    return _normalise(_upsample(relevance.reshape(batch, grid_h, grid_w), (height, width)))


def select_groups(
    y_true: np.ndarray, probs: np.ndarray, positive: int, per_group: int
) -> dict[str, np.ndarray]:
    """Indices of up to `per_group` true positives, false positives and false negatives for class `positive`.

    True and false positives are ordered by decreasing probability of `positive` (most confident first),
    false negatives by increasing probability (most confidently missed first).
    """
    y_true = np.asarray(y_true)
    pred = np.asarray(probs).argmax(1)
    score = np.asarray(probs)[:, positive]
    masks = {
        "true_positive": (y_true == positive) & (pred == positive),
        "false_positive": (y_true != positive) & (pred == positive),
        "false_negative": (y_true == positive) & (pred != positive),
    }
    out = {}
    for group, mask in masks.items():
        index = np.flatnonzero(mask)
        order = np.argsort(score[index] if group == "false_negative" else -score[index], kind="stable")
        out[group] = index[order][:per_group]
    return out


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (resized to the image) over an RGB uint8 image with the jet colour map."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    heat = _upsample(torch.as_tensor(heat, dtype=torch.float32)[None], (height, width))[0].numpy()
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    return (image.astype(float) * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)


def save_overlay_grid(
    path: str | Path, images: Sequence[np.ndarray], heats: Sequence[np.ndarray], captions: Sequence[str],
    title: str, columns: int = 4,
) -> Path:
    """A PNG grid of heat-map overlays with a caption under each (drawn with Pillow: fast for many grids)."""
    from PIL import Image, ImageDraw, ImageFont

    from cmamil.atomic import atomic_path

    tiles = [Image.fromarray(overlay_heatmap(image, heat)) for image, heat in zip(images, heats)]
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    line = 14
    font = ImageFont.load_default(size=11)
    caption_h = line * max(len(c.splitlines()) for c in captions) + 6
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    pad, top = 6, 2 * line
    canvas = Image.new("RGB", (columns * (cell_w + pad) + pad, top + rows * (cell_h + caption_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=font)
    for index, (tile, caption) in enumerate(zip(tiles, captions)):
        x = pad + (index % columns) * (cell_w + pad)
        y = top + (index // columns) * (cell_h + caption_h + pad)
        canvas.paste(tile, (x, y))
        draw.multiline_text((x, y + tile.height + 3), caption, fill="black", font=font, spacing=2)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


@contextlib.contextmanager
def _capture_feature_map(model: nn.Module) -> Iterator[dict]:
    """Record the last 4-D output with num_features channels (else the last Conv2d map) during a forward."""
    found: dict = {}
    channels = getattr(model, "num_features", None)

    def hook(module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or not output.requires_grad:
            return
        if output.shape[1] == channels and min(output.shape[2:]) > 1:
            found["map"] = (output, "NCHW")
        elif output.shape[3] == channels and min(output.shape[1:3]) > 1:
            found["map"] = (output, "NHWC")
        elif isinstance(module, nn.Conv2d) and min(output.shape[2:]) > 1:
            found["conv"] = (output, "NCHW")

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _recording_attention(model: nn.Module, maps: list) -> Iterator[None]:
    """Switch timm-style attention to its explicit path and record each softmaxed attention matrix."""
    modules = _attention_modules(model)
    saved = [m.fused_attn for m in modules]
    handles = []
    for module in modules:
        module.fused_attn = False
        handles.append(module.attn_drop.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0])))
    try:
        yield
    finally:
        for module, fused in zip(modules, saved):
            module.fused_attn = fused
        for handle in handles:
            handle.remove()


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m for m in model.modules()
        if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def _prefix_tokens(model: nn.Module) -> int:
    """Class/register tokens before the patch tokens (timm's num_prefix_tokens; 1 for a class token)."""
    for module in model.modules():
        count = getattr(module, "num_prefix_tokens", None)
        if isinstance(count, int):
            return count
    return 1


def _upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] (a constant map becomes zeros)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps).cpu()
