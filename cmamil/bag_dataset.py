"""A torch Dataset of labelled bags, read from feature files through the store, or held in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cmamil.bag import Bag

__all__ = ["BagDataset", "bag_loader"]


class BagDataset(Dataset):
    """Item i is (bag, label tensor (1,)); a path item is read with `cmamil.extract.store.read_bag` on access
    (only `magnifications`, all by default); an in-memory Bag is served as it is."""

    def __init__(
        self,
        items: Sequence[Path | Bag],
        labels: Sequence[int],
        magnifications: tuple[str, ...] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        if len(items) != len(labels) or (ids is not None and len(ids) != len(items)):
            raise ValueError("BagDataset needs one label (and id) per bag")
        self.items = list(items)
        self.labels = [int(y) for y in labels]
        self.magnifications = magnifications
        self.ids = list(ids) if ids is not None else [_item_id(item) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Bag, torch.Tensor]:
        item = self.items[index]
        if not isinstance(item, Bag):
            from cmamil.extract.store import read_bag

            item = read_bag(item, self.magnifications, bag_id=self.ids[index])
        return item, torch.tensor([self.labels[index]])


def _item_id(item: Path | Bag) -> str:
    if isinstance(item, Bag):
        return item.bag_id
    return item.parent.name if item.stem == "features" else item.stem


def bag_loader(dataset: BagDataset, *, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """One bag per step (no batching); a seeded order when shuffling, workers reading files ahead."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
