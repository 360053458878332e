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

__all__ = ["BagDataset", "FeatureScaler", "bag_loader", "fit_scaler"]


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


class BagDataset(Dataset):
    """Item i is (bag, label tensor (1,)); a path item is read with `cmamil.store.read_bag` on access
    (only `magnifications`, all by default); an in-memory Bag is served as it is."""

    def __init__(
        self,
        items: Sequence[Path | Bag],
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

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Bag, torch.Tensor]:
        item = self.items[index]
        if not isinstance(item, Bag):
            item = read_bag(item, self.magnifications, bag_id=self.ids[index])
        _check_finite(item, self.items[index])
        if self.scaler is not None:
            item = self.scaler(item)
        return item, torch.tensor([self.labels[index]])


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
