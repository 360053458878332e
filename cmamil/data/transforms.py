"""Image preprocessing from a model's DataConfig, training augmentations, and batch mixing (mixup/CutMix).

Images (read as RGB) are given the model's channels (grey for a one-channel model), resized to the model's input
size (no crop: a histology patch is used whole) with the model's interpolation, then normalised with its mean
and std. Augmentations suit histology, which has
no canonical orientation: flips and 90° rotations ("basic"), plus colour jitter and random erasing
("strong").
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from cmamil.models import DataConfig

__all__ = ["AUGMENTATIONS", "BatchMixer", "eval_transform", "train_transform"]

AUGMENTATIONS = ("none", "basic", "strong")


def eval_transform(config: DataConfig, size: int | None = None) -> v2.Compose:
    """PIL image → normalised float tensor at the model's input size (or `size` × `size`)."""
    return v2.Compose(_resize(config, size) + _to_normalised(config))


def train_transform(config: DataConfig, augment: str = "basic", size: int | None = None) -> v2.Compose:
    """`eval_transform` plus the named augmentation ('none', 'basic' or 'strong')."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    steps = _resize(config, size)
    if augment in ("basic", "strong"):
        steps += [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
        ]
    if augment == "strong":
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05))
    steps += _to_normalised(config)
    if augment == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


class BatchMixer:
    """Mixup and/or CutMix on a batch (one of them, chosen at random, when both are on): soft targets."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0) -> None:
        mixers: list[Callable] = []
        if mixup > 0:
            mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else mixers[0] if mixers else None

    @property
    def active(self) -> bool:
        """Whether any mixing is on."""
        return self.mix is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and (B, C) soft targets; unchanged images and integer labels when off."""
        if self.mix is None:
            return images, labels
        return self.mix(images, labels)


def _resize(config: DataConfig, size: int | None) -> list:
    channels, height, width = config.input_size[0], *((size, size) if size else config.input_size[1:])
    try:
        interpolation = InterpolationMode(config.interpolation)
    except ValueError:  # timm names a few modes torchvision lacks (e.g. 'random')
        interpolation = InterpolationMode.BICUBIC
    grey = [v2.Grayscale(num_output_channels=1)] if channels == 1 else []
    return [v2.ToImage(), *grey, v2.Resize((height, width), interpolation=interpolation, antialias=True)]


def _to_normalised(config: DataConfig) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(config.mean), std=list(config.std))]

