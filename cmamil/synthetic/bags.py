"""Synthetic multi-magnification bags with a planted signal, for tests, benchmarks and demos.

Each bag is a nested grid: every tile at one magnification has 2×2 children at the next finer one (with
level-0 coords and parent links as a real feature file holds them). Features are standard normal; in a
positive bag a few tiles of one magnification are shifted by `shift` along one fixed direction. Few shifted
tiles among many (a sparse signal) are what attention pooling finds and mean pooling dilutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cmamil.aggregators import Bag
from cmamil.errors import InputError
from cmamil.magnification import Magnification, magnification_order
from cmamil.synthetic._labels import patient_ids, write_labels

__all__ = ["PlantedSignal", "nested_bag", "planted_cohort", "write_bag", "write_planted_cohort"]

COARSE_TILE_LEVEL0 = 896  # a 224-px 5x tile at 0.5 µm/px level 0


@dataclass(frozen=True)
class PlantedSignal:
    """Where and how strongly the class signal is planted in positive bags."""

    magnification: str = "20x"
    tiles: int = 3
    shift: float = 5.0

    def __post_init__(self) -> None:
        if self.tiles < 1 or self.shift <= 0:
            raise InputError(f"a planted signal needs tiles >= 1 and shift > 0, got {self.tiles}, {self.shift}")


def nested_bag(
    n_coarse: int,
    dim: int,
    magnifications: tuple[str, ...] = ("5x", "10x", "20x"),
    *,
    bag_id: str = "bag",
    generator: torch.Generator | None = None,
) -> Bag:
    """A bag of `n_coarse` coarsest tiles in a square-ish grid, each with 2×2 children per finer magnification."""
    mags = magnification_order(magnifications)
    width = max(1, int(n_coarse**0.5))
    index = torch.arange(n_coarse)
    coords = torch.stack([index % width, index // width], dim=1) * COARSE_TILE_LEVEL0
    parents = torch.full((n_coarse,), -1, dtype=torch.long)
    bag = Bag(features={}, bag_id=bag_id)
    for level, mag in enumerate(mags):
        if level:
            tile = COARSE_TILE_LEVEL0 >> level
            offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]]) * tile
            parents = torch.arange(len(coords)).repeat_interleave(4)
            coords = (coords[:, None, :] + offsets[None]).reshape(-1, 2)
        bag.features[mag] = torch.randn(len(coords), dim, generator=generator)
        bag.coords[mag] = coords.clone()
        bag.parents[mag] = parents.clone()
    return bag


def planted_cohort(
    n_bags: int,
    *,
    dim: int = 16,
    n_coarse: int = 4,
    magnifications: tuple[str, ...] = ("5x", "10x", "20x"),
    signal: PlantedSignal = PlantedSignal(),
    seed: int = 0,
) -> tuple[list[Bag], list[int]]:
    """`n_bags` bags (labels alternate 0, 1) where each positive bag has `signal.tiles` shifted tiles."""
    if signal.magnification not in magnifications:
        raise InputError(f"signal magnification {signal.magnification} is not among {magnifications}; pick one of them")
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=generator)
    direction = direction / direction.norm()
    bags, labels = [], []
    for i in range(n_bags):
        label = i % 2
        bag = nested_bag(n_coarse, dim, magnifications, bag_id=f"bag_{i:03d}", generator=generator)
        if label:
            features = bag.features[signal.magnification]
            rows = torch.randperm(len(features), generator=generator)[: signal.tiles]
            features[rows] += signal.shift * direction
        bags.append(bag)
        labels.append(label)
    return bags, labels


def write_bag(path: str | Path, bag: Bag, *, attrs: dict | None = None) -> Path:
    """Write `bag` as a feature file (h5 or zarr, from the suffix) through the feature-file store."""
    from cmamil.store import BagWriter

    with BagWriter(path, attrs=attrs or {"encoder": "synthetic"}) as writer:
        for mag in bag.magnifications:
            writer.add_magnification(mag, bag.coords[mag], bag.parents[mag], {"mpp": Magnification.parse(mag).mpp})
            writer.append_features(mag, bag.features[mag])
    return Path(path)


def write_planted_cohort(
    folder: str | Path,
    n_bags: int,
    *,
    slides_per_patient: int = 1,
    class_names: tuple[str, str] = ("negative", "positive"),
    **options,
) -> Path:
    """Write a planted cohort (`planted_cohort` options) as `<folder>/<bag_id>.h5` files and `<folder>/labels.csv`
    (slide_id, label, patient_id; consecutive bags share a patient); returns the labels.csv path."""
    from cmamil.store import bag_path

    folder = Path(folder)
    bags, labels = planted_cohort(n_bags, **options)
    for bag in bags:
        write_bag(bag_path(folder, bag.bag_id), bag)
    return write_labels(
        folder / "labels.csv",
        [bag.bag_id for bag in bags],
        [class_names[label] for label in labels],
        patient_ids(n_bags, slides_per_patient),
    )
