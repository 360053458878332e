"""Inspection of a patch classifier's test predictions: saliency overlays and projector embeddings.

`explain/` holds Grad-CAM / attention-rollout overlay grids of the true positives, false positives and false
negatives of the positive class (with `index.json`); `projector/` holds pooled embeddings of a spread of test
images with an image sprite for TensorBoard's projector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cmamil.atomic import write_json
from cmamil.errors import InputError
from cmamil.evaluation.saliency import save_overlay_grid, saliency_maps, select_groups
from cmamil.data.images import open_image
from cmamil.data.images import ImagePart, image_loader
from cmamil.training.predictions import Predictions

__all__ = ["write_explanations", "write_projector"]


def write_explanations(
    out: Path, model: nn.Module, part: ImagePart, predictions: Predictions, class_names: Sequence[str],
    per_group: int, positive_class: str | None, device: torch.device,
) -> dict[str, Any]:
    """Overlay grids of true positives, false positives and false negatives of the positive class."""
    names = list(class_names)
    positive_class = positive_class or names[-1]
    if positive_class not in names:
        raise InputError(f"--positive-class {positive_class!r} is not a class of the model ({', '.join(names)})")
    positive = names.index(positive_class)
    groups = select_groups(predictions.y_true, predictions.probs, positive, per_group)
    summary: dict[str, Any] = {"positive_class": positive_class, "groups": {}}
    for group, index in groups.items():
        summary["groups"][group] = [str(part.images.paths[i]) for i in index]
        if not len(index):
            continue
        originals = [open_image(part.images.paths[i]) for i in index]
        x = torch.stack([part.transform(image) for image in originals]).to(device)
        maps, method = saliency_maps(model, x, torch.full((len(index),), positive, device=device))
        summary["method"] = method
        shown = [np.asarray(_thumbnail(image, 256)) for image in originals]
        titles = [
            f"{part.images.paths[i].name[:40]}\n{names[predictions.y_true[i]]} -> "
            f"{names[int(predictions.probs[i].argmax())]} (p={predictions.probs[i, positive]:.2f})"
            for i in index
        ]
        label = group.replace("_", " ")
        save_overlay_grid(out / f"{group}.png", shown, list(maps.numpy()), titles,
                          f"{label}s for '{positive_class}' ({method})")
    write_json(out / "index.json", summary)
    return summary


def write_projector(
    out: Path, model: nn.Module, part: ImagePart, predictions: Predictions, class_names: Sequence[str],
    limit: int, device: torch.device,
) -> None:
    """Pooled embeddings of up to `limit` images (spread over the set) to TensorBoard's projector."""
    from torch.utils.tensorboard import SummaryWriter

    from cmamil.training.tblog import log_embeddings

    chosen = np.unique(np.linspace(0, len(part) - 1, min(limit, len(part))).astype(int))
    subset = ImagePart(part.images.subset(chosen), part.transform, tuple(part.patients[i] for i in chosen))
    loader = image_loader(subset, 32, 0, device)
    features = []
    with torch.no_grad():
        for x, _, _ in loader:
            features.append(model.forward_features(x.to(device)).float().cpu().numpy())
    names = list(class_names)
    metadata = [
        [names[predictions.y_true[i]], names[int(predictions.probs[i].argmax())], part.images.paths[i].name]
        for i in chosen
    ]
    side = 64 if len(chosen) <= 1000 else 32  # the sprite must stay under 8192 px a side
    thumbs = np.stack([
        np.asarray(open_image(part.images.paths[i]).resize((side, side))).transpose(2, 0, 1) / 255.0
        for i in chosen
    ])
    writer = SummaryWriter(out)
    try:
        log_embeddings(writer, np.concatenate(features), metadata, ["label", "prediction", "file"], thumbs)
    finally:
        writer.close()


def _thumbnail(image, side: int):
    """The image scaled (up or down) so that its longer side is `side` pixels."""
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
