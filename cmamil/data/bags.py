"""A torch Dataset of labelled bags, read from feature files through the store, or held in memory; a bag whose
features hold NaN or Inf is refused when it is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cmamil.aggregators import Bag
from cmamil.errors import InputError
from cmamil.store import bag_id_from_path, read_bag

__all__ = ["BagDataset", "FeatureScaler", "bag_loader", "concat_bags", "fit_scaler", "read_item"]


class FeatureScaler:
    """Per-magnification, per-dimension standardisation (x − mean) / std, fitted on training bags only."""

    def __init__(self, mean: dict[str, torch.Tensor], std: dict[str, torch.Tensor]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, bag: Bag) -> Bag:
        features = {m: (x - self.mean[m]) / self.std[m] if m in self.mean else x for m, x in bag.features.items()}
        return Bag(features, bag.coords, bag.parents, bag.bag_id)

    def state(self) -> dict[str, dict[str, list[float]]]:
        """Plain lists for a checkpoint's metadata."""
        return {m: {"mean": self.mean[m].tolist(), "std": self.std[m].tolist()} for m in self.mean}

    @classmethod
    def from_state(cls, state: dict[str, dict[str, list[float]]]) -> FeatureScaler:
        """The scaler saved by `state`."""
        return cls({m: torch.tensor(v["mean"]) for m, v in state.items()},
                   {m: torch.tensor(v["std"]) for m, v in state.items()})


def fit_scaler(dataset: "BagDataset", eps: float = 1e-6) -> FeatureScaler:
    """Mean and standard deviation of every feature dimension over all instances of `dataset`, per magnification,
    accumulated bag by bag in float64 (memory does not grow with the number of bags)."""
    sums: dict[str, torch.Tensor] = {}
    squares: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for index in range(len(dataset)):
        bag, _ = dataset[index]
        for mag, x in bag.features.items():
            x = x.double()
            sums[mag] = sums.get(mag, 0) + x.sum(0)
            squares[mag] = squares.get(mag, 0) + (x * x).sum(0)
            counts[mag] = counts.get(mag, 0) + x.shape[0]
    mean = {m: sums[m] / max(counts[m], 1) for m in sums}
    std = {m: (squares[m] / max(counts[m], 1) - mean[m] ** 2).clamp_min(0).sqrt() + eps for m in sums}
    return FeatureScaler({m: v.float() for m, v in mean.items()}, {m: v.float() for m, v in std.items()})


def concat_bags(bags: Sequence[Bag], bag_id: str) -> Bag:
    """One bag of several (a patient's slides): each magnification's rows stacked in order, parents re-indexed
    into the stacked coarser rows (-1 stays -1); coords stay each slide's own."""
    mags = bags[0].magnifications
    if any(bag.magnifications != mags for bag in bags):
        raise ValueError(f"bag '{bag_id}': its slides have different magnifications; give each slide the same ones")
    features = {m: torch.cat([bag.features[m] for bag in bags]) for m in mags}
    coords = {m: torch.cat([bag.coords[m] for bag in bags]) for m in mags if all(m in bag.coords for bag in bags)}
    parents = {}
    for level, mag in enumerate(mags):
        if all(mag in bag.parents for bag in bags):
            rows = [len(bag.features[mags[level - 1]]) if level else 0 for bag in bags]
            offsets = torch.tensor([0, *rows[:-1]]).cumsum(0)
            parents[mag] = torch.cat([torch.where(bag.parents[mag] >= 0, bag.parents[mag] + offset, bag.parents[mag])
                                      for bag, offset in zip(bags, offsets)])
    return Bag(features, coords, parents, bag_id)


class BagDataset(Dataset):
    """Item i is (bag, label tensor (1,)); a path item is read with `cmamil.store.read_bag` on access
    (only `magnifications`, all by default), a tuple of paths (a patient's slides) read and concatenated
    (`concat_bags`); an in-memory Bag is served as it is."""

    def __init__(
        self,
        items: Sequence[Path | tuple[Path, ...] | Bag],
        labels: Sequence[int],
        magnifications: tuple[str, ...] | None = None,
        ids: Sequence[str] | None = None,
        scaler: FeatureScaler | None = None,
    ) -> None:
        if len(items) != len(labels) or (ids is not None and len(ids) != len(items)):
            raise ValueError("BagDataset needs one label (and id) per bag")
        self.items = list(items)
        self.labels = [int(y) for y in labels]
        self.magnifications = magnifications
        self.ids = list(ids) if ids is not None else [_item_id(item) for item in self.items]
        self.scaler = scaler
        self._scaled = False

    def preload(self) -> None:
        """Read and standardise every item once and serve them from memory from now on (small cohorts)."""
        self.items = [self._load(index) for index in range(len(self))]
        self._scaled = True

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Bag, torch.Tensor]:
        item = self.items[index] if self._scaled else self._load(index)
        return item, torch.tensor([self.labels[index]])

    def _load(self, index: int) -> Bag:
        item = read_item(self.items[index], self.magnifications, self.ids[index])
        return self.scaler(item) if self.scaler is not None else item


def read_item(item: Path | tuple[Path, ...] | Bag, magnifications: tuple[str, ...] | None, bag_id: str) -> Bag:
    """The bag of a dataset item: a feature file read, a patient's files read and concatenated, or the Bag given;
    features holding NaN or Inf are refused in one line."""
    if isinstance(item, tuple):
        bags = [read_bag(path, magnifications) for path in item]
        for bag, path in zip(bags, item):
            _check_finite(bag, path)
        return concat_bags(bags, bag_id)
    bag = item if isinstance(item, Bag) else read_bag(item, magnifications, bag_id=bag_id)
    _check_finite(bag, item)
    return bag


def _check_finite(bag: Bag, source: Path | Bag) -> None:
    """A bag whose features hold NaN or Inf cannot train: one line naming the bag, magnification and file."""
    for mag, x in bag.features.items():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            where = f" ({source})" if isinstance(source, Path) else ""
            raise InputError(f"bag {bag.bag_id}: its {mag} features hold {bad} NaN/Inf value(s){where}; re-extract "
                             "this slide, or leave it out of the labels")


def _item_id(item: Path | Bag) -> str:
    return item.bag_id if isinstance(item, Bag) else bag_id_from_path(item)


def bag_loader(
    dataset: BagDataset, *, shuffle: bool, seed: int = 0, num_workers: int = 0, balanced: bool = False
) -> DataLoader:
    """One bag per step (no batching), workers reading files ahead (and kept between epochs).

    When shuffling, the order comes from `loader.generator` (seeded with `seed`; reseed it per epoch for a
    repeatable order); `balanced` draws bags with replacement, every class equally likely.
    """
    from cmamil.training.sampling import class_balanced_sampler

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    sampler = class_balanced_sampler(dataset.labels, generator) if shuffle and balanced else None
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
