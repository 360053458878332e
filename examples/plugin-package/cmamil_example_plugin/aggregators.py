"""MIL aggregators that meet cmamil's aggregator contract: max pooling returning an AggregatorOutput, mean pooling
written as many MIL codebases write it (`forward(bag)` returning bare (1, C) logits), and a model whose attention
is a known function of tile coordinates with per-tile class scores (for checking heatmaps)."""

from __future__ import annotations

import torch
from torch import nn

from cmamil.aggregators import AggregatorOutput, Bag

__all__ = ["BareMean", "ExampleMax", "ExamplePlanted", "example_bare_mean", "example_max", "example_planted",
           "planted_attention"]


class ExampleMax(nn.Module):
    """Per-magnification linear projection, max over instances, concatenation, linear classifier."""

    def __init__(self, in_dim: int, num_classes: int, magnifications: tuple[str, ...], dim: int = 32) -> None:
        super().__init__()
        self.magnifications = magnifications
        self.project = nn.ModuleDict({m: nn.Linear(in_dim, dim) for m in magnifications})
        self.classifier = nn.Linear(dim * len(magnifications), num_classes)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> AggregatorOutput:
        pooled, attention = [], {}
        for mag in self.magnifications:
            h = torch.relu(self.project[mag](bag.features[mag]))
            values, index = h.max(dim=0)
            pooled.append(values)
            attention[mag] = torch.bincount(index, minlength=h.shape[0]).float() / index.numel()
        return AggregatorOutput(logits=self.classifier(torch.cat(pooled))[None], attention=attention)


def example_max(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...], **options) -> ExampleMax:
    """Factory registered under `cmamil.aggregators` as `example_max`."""
    return ExampleMax(in_dim, num_classes, magnifications, **options)


class BareMean(nn.Module):
    """Mean of each magnification's instances, concatenated, then a linear classifier; no attention, no label."""

    def __init__(self, in_dim: int, num_classes: int, magnifications: tuple[str, ...]) -> None:
        super().__init__()
        self.magnifications = magnifications
        self.classifier = nn.Linear(in_dim * len(magnifications), num_classes)

    def forward(self, bag: Bag) -> torch.Tensor:
        pooled = torch.cat([bag.features[mag].mean(dim=0) for mag in self.magnifications])
        return self.classifier(pooled)[None]


def example_bare_mean(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...]) -> BareMean:
    """Factory registered under `cmamil.aggregators` as `example_bare_mean`."""
    return BareMean(in_dim, num_classes, magnifications)


def planted_attention(coords: torch.Tensor) -> torch.Tensor:
    """The attention `ExamplePlanted` gives a tile: a fixed function of its level-0 top-left corner, x + 3·y."""
    return coords[:, 0].double() + 3.0 * coords[:, 1].double()


class ExamplePlanted(nn.Module):
    """Attention planted as a known function of each tile's coords (`planted_attention`), per-tile class scores
    from a linear classifier, and bag logits from the scores' attention-weighted mean: heatmaps can be checked
    tile by tile against a map computed by hand."""

    def __init__(self, in_dim: int, num_classes: int, magnifications: tuple[str, ...]) -> None:
        super().__init__()
        self.magnifications = magnifications
        self.classifier = nn.Linear(in_dim, num_classes)

    def forward(self, bag: Bag) -> AggregatorOutput:
        attention, scores, pooled = {}, {}, []
        for mag in self.magnifications:
            features = bag.features[mag]
            rows = torch.arange(len(features), device=features.device)
            coords = bag.coords.get(mag, torch.stack([rows, torch.zeros_like(rows)], 1))  # none: the row number
            raw = planted_attention(coords)
            attention[mag] = raw.float()
            scores[mag] = self.classifier(features)
            weights = (raw + 1.0) / (raw + 1.0).sum()
            pooled.append(weights.float() @ scores[mag])
        return AggregatorOutput(logits=torch.stack(pooled).mean(0)[None], attention=attention, scores=scores)


def example_planted(*, in_dim: int, num_classes: int, magnifications: tuple[str, ...]) -> ExamplePlanted:
    """Factory registered under `cmamil.aggregators` as `example_planted`."""
    return ExamplePlanted(in_dim, num_classes, magnifications)
