"""Bag training: a MIL aggregator on per-bag feature files, one bag per optimiser step (as CLAM and CMA-MIL).

The loss of a bag is `aggregator_loss` (the aggregator's own `loss` when it has one, e.g. CMA-MIL's bag and
instance losses). With `standardize`, each feature dimension is z-scored per magnification with the mean and
std of the fold's training bags, and the scaler is saved in the checkpoint. A cohort whose feature files
together hold under `CACHE_BYTES` is read once and kept in memory for every epoch and fold (standardised once
per fold); a larger one is read bag by bag on access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cmamil.aggregators import Bag, aggregator_loss, create_aggregator, forward_bag
from cmamil.data.bags import BagDataset, FeatureScaler, bag_loader, fit_scaler, read_item
from cmamil.data.labels import LabelTable, load_labelled_bags
from cmamil.data.provenance import feature_set_fingerprint, file_sha256, files_sha256
from cmamil.training.config import BagTrainConfig
from cmamil.training.predictions import Predictions
from cmamil.training.splits import Split, load_splits
from cmamil.training.task import FoldData, Items, StepOutput

__all__ = ["CACHE_BYTES", "BagTask", "rebuild_aggregator"]

CACHE_BYTES = 2 * 1024**3  # in-memory bags of a cohort under this, estimated as 4x its files (fp16, compression)


class BagTask:
    """The bag side of the training runner (see `cmamil.training.task.Task`)."""

    data_parallel = False  # a bag is one batch: under torchrun, folds are spread over the ranks instead

    def __init__(self, config: BagTrainConfig, class_names: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.table: LabelTable = load_labelled_bags(config.features, config.labels, config.magnifications,
                                                    class_names, config.slide_table, config.no_group)
        if config.bag_by == "patient":
            self.table = self.table.by_patient()
        self._loaders: dict[int, DataLoader] = {}
        self._eval_loaders: dict[int, DataLoader] = {}
        self._cache: dict[Path | tuple[Path, ...], Bag] | None = {} if _fits_in_memory(self.table.paths) else None
        self._inputs: dict[str, str] | None = None
        self._feature_set: dict[str, Any] | None = None

    def items(self) -> Items:
        table = self.table
        return Items(table.slide_ids, table.labels, table.grouping, table.class_names)

    def given_splits(self) -> list[Split] | None:
        return load_splits(self.config.splits, self.table.slide_ids) if self.config.splits is not None else None

    def fold_data(self, split: Split) -> FoldData:
        table, index = self.table, self.table.index()
        parts = {}
        for part in ("train", "val", "test"):
            rows = [index[i] for i in getattr(split, part)]
            parts[part] = BagDataset([self._bag(table.paths[r], table.slide_ids[r]) for r in rows],
                                     [table.labels[r] for r in rows], table.magnifications,
                                     ids=[table.slide_ids[r] for r in rows])
        if self.config.standardize:
            scaler = fit_scaler(parts["train"])
            for dataset in parts.values():
                dataset.scaler = scaler
        if self._cache is not None:
            for dataset in parts.values():
                dataset.preload()
        return FoldData(split.fold, **parts)

    def _bag(self, item: Path | tuple[Path, ...], bag_id: str) -> Path | tuple[Path, ...] | Bag:
        """The bag itself when the cohort is cached (read on first use), else its file(s) for reading on access."""
        if self._cache is None:
            return item
        if item not in self._cache:
            self._cache[item] = read_item(item, self.table.magnifications, bag_id)
        return self._cache[item]

    def build_model(self) -> nn.Module:
        table = self.table
        return create_aggregator(self.config.model, in_dim=table.in_dim, num_classes=len(table.class_names),
                                 magnifications=table.magnifications, **self.config.model_options)

    def tie_break(self) -> str | None:
        return None if self.config.monitor == "loss" else "loss"

    def train_batches(self, data: FoldData, epoch: int, device: torch.device) -> Iterable[Any]:
        loader = self._train_loader(data)
        loader.generator.manual_seed(self.config.seed + 1000 * data.fold + epoch)
        return loader

    def steps_per_epoch(self, data: FoldData) -> int:
        return len(data.train)

    def step(self, model: nn.Module, batch: Any, device: torch.device, amp: bool) -> StepOutput:
        bag, label = batch
        bag, label = bag.to(device), label.to(device)
        with torch.autocast(device.type, enabled=amp):
            output = forward_bag(model, bag, label)
            loss = aggregator_loss(model, output, label)
        return StepOutput(loss, output.logits, label.reshape(-1))

    def predict(self, model: nn.Module, dataset: BagDataset, device: torch.device, amp: bool) -> Predictions:
        key = id(dataset)
        if key not in self._eval_loaders:
            self._eval_loaders[key] = bag_loader(dataset, shuffle=False, num_workers=self.config.num_workers)
        return predict_bags(model, self._eval_loaders[key], device, amp=amp, patients=self._patients(dataset.ids))

    def checkpoint_meta(self, data: FoldData) -> dict[str, Any]:
        scaler = data.train.scaler
        return {"in_dim": self.table.in_dim, "magnifications": list(self.table.magnifications),
                "scaler": scaler.state() if scaler is not None else None}

    def describe(self) -> dict[str, Any]:
        table = self.table
        counts = np.bincount(table.labels, minlength=len(table.class_names))
        return {"bags": len(table.slide_ids), "patients": len(set(table.patients)),
                "grouping": table.grouping.describe(),
                "per_class": {n: int(c) for n, c in zip(table.class_names, counts)},
                "magnifications": list(table.magnifications), "in_dim": table.in_dim,
                "labels_sha256": self.inputs()["labels_sha256"],
                **({"slide_table_sha256": self.inputs()["slide_table_sha256"]} if self.config.slide_table else {}),
                "features": self._features()}

    def inputs(self) -> dict[str, str]:
        if self._inputs is None:
            config = self.config
            self._inputs = {"labels_sha256": file_sha256(config.labels), "features_sha256": self._features()["sha256"]}
            if config.slide_table is not None:
                self._inputs["slide_table_sha256"] = file_sha256(config.slide_table)
            if config.splits is not None:
                self._inputs["splits_sha256"] = files_sha256(list(config.splits.glob("*.csv")), config.splits)
        return self._inputs

    def _features(self) -> dict[str, Any]:
        """The feature set's fingerprint (read once)."""
        if self._feature_set is None:
            self._feature_set = feature_set_fingerprint(_files(self.table.paths), self.table.magnifications)
        return self._feature_set

    def inspect(self, model, dataset, predictions, folder, device, writer) -> dict[str, Any]:
        return {}

    def _train_loader(self, data: FoldData) -> DataLoader:
        """One loader per fold, kept across epochs (its workers persist); the generator is reseeded per epoch."""
        if data.fold not in self._loaders:
            self._loaders = {data.fold: bag_loader(data.train, shuffle=True, num_workers=self.config.num_workers,
                                                   balanced=self.config.weighted_sampling)}
            self._eval_loaders = {}
        return self._loaders[data.fold]

    def _patients(self, ids: list[str]) -> tuple[str, ...]:
        patient = dict(zip(self.table.slide_ids, self.table.patients))
        return tuple(patient.get(i, i) for i in ids)


def _fits_in_memory(paths: tuple) -> bool:
    """Whether the bags of these feature files (h5 files, or zarr folders) fit under `CACHE_BYTES` in memory."""
    total = 0
    for path in _files(paths):
        files = path.rglob("*") if path.is_dir() else [path]
        total += sum(f.stat().st_size for f in files if f.is_file())
    return 4 * total < CACHE_BYTES


def _files(paths: tuple) -> list:
    """Every feature file of a table's items (a patient item holds several)."""
    return [p for item in paths for p in (item if isinstance(item, tuple) else (item,))]


@torch.no_grad()
def predict_bags(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
                 patients: tuple[str, ...] | None = None) -> Predictions:
    """Class probabilities of every bag of an unshuffled bag loader and the mean training loss (instance part
    included), in eval mode."""
    model.eval()
    losses, probs, labels = [], [], []
    for bag, label in loader:
        bag, label = bag.to(device), label.to(device)
        with torch.autocast(device.type, enabled=amp):
            output = forward_bag(model, bag, label)
            losses.append(aggregator_loss(model, output, label).item())
        probs.append(torch.softmax(output.logits.float(), dim=1)[0].cpu().numpy())
        labels.append(int(label))
    ids = tuple(loader.dataset.ids)
    return Predictions(ids, patients or ids, np.array(labels, dtype=int), np.stack(probs), float(np.mean(losses)))


def rebuild_aggregator(meta: dict[str, Any]) -> tuple[nn.Module, FeatureScaler | None]:
    """The aggregator and feature scaler described by a bag checkpoint's metadata (weights not loaded)."""
    model = create_aggregator(meta["model"], in_dim=meta["in_dim"], num_classes=len(meta["class_names"]),
                              magnifications=tuple(meta["magnifications"]), **meta["model_options"])
    scaler = meta.get("scaler")
    return model, FeatureScaler.from_state(scaler) if scaler else None
