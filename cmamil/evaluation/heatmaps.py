"""Per-tile values (attention, scores) painted on the tile grid over a slide thumbnail, and how well they localise.

A heatmap is painted at thumbnail resolution, one rectangle per tile from its level-0 square, never on a level-0
canvas: memory follows the thumbnail and the tile count, not the slide size. `localisation_auc` scores per-tile
values against a ground-truth region map (the AUC of separating tiles that overlap a region from the rest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from cmamil.aggregators import Bag
    from cmamil.training.trained import TrainedModel

__all__ = ["BagOutputs", "bag_attention", "bag_outputs", "localisation_auc", "paint_tiles", "save_panels",
           "tile_overlap"]

PANELS_KEY = "cmamil:panels"  # PNG text chunk: where each panel's thumbnail lies, in image pixels (x0, y0, x1, y1)


def paint_tiles(coords: np.ndarray, tile_size: float, values: np.ndarray, shape: tuple[int, int],
                downsample: float) -> np.ndarray:
    """An (H, W) float image of `shape` (thumbnail pixels) holding each tile's value, NaN where no tile lies.

    `coords` are level-0 top-left corners (N, 2) as x, y; `tile_size` is the tile side in level-0 pixels and
    `downsample` the level-0 pixels per thumbnail pixel. Where tiles overlap, the later one wins.
    """
    canvas = np.full(shape, np.nan, dtype=np.float32)
    for (x, y), value in zip(np.asarray(coords, dtype=float), np.asarray(values, dtype=float)):
        x0, y0 = int(math.floor(x / downsample)), int(math.floor(y / downsample))
        x1, y1 = int(math.ceil((x + tile_size) / downsample)), int(math.ceil((y + tile_size) / downsample))
        canvas[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = value
    return canvas


def save_panels(path: str | Path, thumbnail: np.ndarray, heats: Mapping[str, np.ndarray], title: str = "",
                label: str = "attention", limits: tuple[float, float] | None = None, dpi: int = 100) -> Path:
    """Write one PNG with a panel per heat map (e.g. per magnification) side by side over the same RGB `thumbnail`,
    one shared colour bar (`limits`, default: the values' range) and `title`; atomically.

    The PNG's text chunk `cmamil:panels` holds, per panel name, the thumbnail's box in image pixels, so a
    thumbnail pixel can be found in the picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmamil.atomic import atomic_path

    finite = [h[np.isfinite(h)] for h in heats.values()]
    values = np.concatenate(finite) if finite else np.zeros(0)
    low, high = limits or ((float(values.min()), float(values.max())) if values.size else (0.0, 1.0))
    height, width = thumbnail.shape[:2]
    panel = 4.0
    fig, axes = plt.subplots(1, len(heats), figsize=(panel * len(heats) + 1.2, panel * height / width + 0.9),
                             squeeze=False, dpi=dpi)
    shown = None
    for ax, (name, heat) in zip(axes[0], heats.items()):
        ax.imshow(thumbnail, interpolation="nearest")
        shown = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", alpha=0.6, interpolation="nearest",
                          vmin=low, vmax=high if high > low else low + 1e-9)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.046 / len(heats), pad=0.02, label=label)
    fig.suptitle(title, fontsize=9)
    fig.canvas.draw()
    boxes = {}
    for ax, name in zip(axes[0], heats):
        (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (width - 0.5, height - 0.5)])
        top = fig.bbox.height  # display y grows upwards, image rows downwards
        boxes[name] = [float(x0), float(top - y0), float(x1), float(top - y1)]
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={PANELS_KEY: json.dumps(boxes)})
    plt.close(fig)
    return path


def tile_overlap(coords: np.ndarray, tile_size: float, region: np.ndarray) -> np.ndarray:
    """Fraction of each tile's level-0 square covered by the boolean level-0 `region` map."""
    out = np.zeros(len(coords))
    size = int(round(tile_size))
    for i, (x, y) in enumerate(np.asarray(coords, dtype=int)):
        patch = region[max(y, 0):y + size, max(x, 0):x + size]
        out[i] = patch.mean() if patch.size else 0.0
    return out


def localisation_auc(scores: Sequence[float], inside: Sequence[bool]) -> float:
    """ROC AUC of per-tile `scores` for separating tiles inside a region from the rest (NaN if one side is empty)."""
    from sklearn.metrics import roc_auc_score

    inside = np.asarray(inside, dtype=bool)
    if inside.all() or not inside.any():
        return math.nan
    return float(roc_auc_score(inside, np.asarray(scores, dtype=float)))


@dataclass(frozen=True)
class BagOutputs:
    """What a bag model says about one bag: class probabilities (C,), attention per magnification (N,) and
    per-tile class probabilities per magnification (N, C); the last two are empty where the model gives none."""

    probs: np.ndarray
    attention: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


def bag_outputs(trained: TrainedModel, bag: Bag | str | Path) -> BagOutputs:
    """Apply a trained bag model (its feature scaler first) to a Bag or a feature file, in eval mode."""
    import torch

    from cmamil.aggregators import Bag, forward_bag
    from cmamil.store import read_bag

    if not isinstance(bag, Bag):
        bag = read_bag(bag, tuple(trained.meta["magnifications"]))
    if trained.prepare is not None:
        bag = trained.prepare(bag)
    device = next(trained.model.parameters()).device
    with torch.no_grad():
        output = forward_bag(trained.model.eval(), bag.to(device))
    return BagOutputs(
        torch.softmax(output.logits.float(), dim=1)[0].cpu().numpy(),
        {mag: a.detach().float().cpu().numpy() for mag, a in output.attention.items()},
        {mag: torch.softmax(s.detach().float(), dim=1).cpu().numpy() for mag, s in output.scores.items()},
    )


def bag_attention(trained: TrainedModel, feature_file: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A bag model's attention per magnification on one feature file (empty for a model without attention),
    and its class probabilities."""
    outputs = bag_outputs(trained, feature_file)
    return outputs.attention, outputs.probs
