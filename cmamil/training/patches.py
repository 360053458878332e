"""Patch training: a patch classifier on image folders, split folders or stratified (patient-grouped) k-fold.

Images are resized to the model's input size (or `input_px`) and normalised with its mean/std; training
batches are augmented (`augment`) and optionally mixed (mixup/CutMix); the loss is cross-entropy with
optional label smoothing. Split folders (training/ validation/ testing/) give one fold, fold_0; without a
validation folder, a stratified (patient-grouped) share of the training images is held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from cmamil.data.images import (
    ImageDataset,
    ImagePart,
    ImageSet,
    find_split_folders,
    image_loader,
    read_class_folders,
)
from cmamil.data.patients import Grouping, image_grouping
from cmamil.data.provenance import image_set_sha256
from cmamil.distributed import current_world, gather
from cmamil.errors import InputError
from cmamil.models import create_model
from cmamil.notices import notice
from cmamil.data.transforms import BatchMixer, eval_transform, train_transform
from cmamil.training.config import PatchTrainConfig
from cmamil.training.predictions import Predictions
from cmamil.training.sampling import class_balanced_sampler
from cmamil.training.splits import Split, holdout_mask
from cmamil.training.task import FoldData, Items, StepOutput

__all__ = ["PatchTask", "predict_images", "rebuild_patch_model"]


class PatchTask:
    """The patch-image side of the training runner (see `cmamil.training.task.Task`).

    Under torchrun every rank trains the same fold (DDP): a DistributedSampler gives each rank every N-th image
    of the epoch's permutation, `--batch-size` is per rank, and predictions are split over the ranks and
    gathered."""

    data_parallel = True

    def __init__(self, config: PatchTrainConfig, class_names: tuple[str, ...] | None = None) -> None:
        self.config = config
        self.images, self.grouping, self._fixed = _read_images(config, class_names or config.class_names)
        self.ids = tuple(str(p) for p in self.images.paths)
        self.patients = self.grouping.patients
        self._index = {item: i for i, item in enumerate(self.ids)}
        if config.weights is None:
            notice(f"{config.model} starts from random weights; pass --weights hub (published weights, where the "
                   "model has them) or --weights FILE.pth to start from pretrained ones")
        self._data_config = None
        self._loaders: dict[int, DataLoader] = {}

    def items(self) -> Items:
        return Items(self.ids, self.images.labels, self.grouping, self.images.class_names)

    def given_splits(self) -> list[Split] | None:
        return self._fixed

    def fold_data(self, split: Split) -> FoldData:
        config = self.config
        data_config = self._model_data_config()
        train = train_transform(data_config, config.augment, config.input_px)
        evaluation = eval_transform(data_config, config.input_px)
        parts = {part: self._part(getattr(split, part), train if part == "train" else evaluation)
                 for part in ("train", "val", "test")}
        return FoldData(split.fold, **parts)

    def build_model(self) -> nn.Module:
        config, options = self.config, self._model_options()
        model = create_model(config.model, num_classes=len(self.images.class_names), weights=config.weights,
                             **options)
        if self._data_config is None and model.data_config.input_size[0] != self.images.channels:
            change = ("repeated to 3 channels" if self.images.channels == 1 else
                      f"converted to {model.data_config.input_size[0]} channel(s)")
            notice(f"the images have {self.images.channels} channel(s); they are {change} for {config.model}"
                   + (" (pass --model-option in_chans=auto for a model built on the data's channels)"
                      if self.images.channels == 1 else ""))
        self._data_config = model.data_config
        return model

    def tie_break(self) -> str | None:
        return "f1_macro" if self.config.monitor == "accuracy" else "accuracy"

    def train_batches(self, data: FoldData, epoch: int, device: torch.device) -> Iterable[Any]:
        if data.fold not in self._loaders:
            config = self.config
            generator = torch.Generator()
            sampler = self._sampler(data, generator)
            self._loaders = {data.fold: DataLoader(
                ImageDataset(data.train.images, data.train.transform), batch_size=config.batch_size,
                sampler=sampler, generator=generator, num_workers=config.num_workers,
                persistent_workers=config.num_workers > 0, pin_memory=device.type == "cuda",
                drop_last=len(sampler) % config.batch_size == 1,  # BatchNorm needs two images per batch
            )}
            self._mixer = BatchMixer(len(self.images.class_names), config.mixup, config.cutmix)
        loader = self._loaders[data.fold]
        loader.generator.manual_seed(self.config.seed + 1000 * data.fold + epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        return loader

    def steps_per_epoch(self, data: FoldData) -> int:
        size, n = self.config.batch_size, -(-len(data.train) // current_world().size)  # this rank's share
        return n // size if n % size == 1 else -(-n // size)

    def _sampler(self, data: FoldData, generator: torch.Generator) -> Sampler:
        """Class-balanced draws, or this rank's share of a permutation seeded by run seed, fold and epoch."""
        world = current_world()
        if self.config.weighted_sampling:
            if world.size > 1:
                raise InputError("--weighted-sampling is not available with several processes yet; drop it or "
                                 "train in one process")
            return class_balanced_sampler(data.train.images.labels, generator)
        return DistributedSampler(data.train, num_replicas=world.size, rank=world.rank, shuffle=True,
                                  seed=self.config.seed + 1000 * data.fold)

    def step(self, model: nn.Module, batch: Any, device: torch.device, amp: bool) -> StepOutput:
        x, y, _ = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        inputs, targets = self._mixer(x, y)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
        return StepOutput(loss, logits, y)

    def predict(self, model: nn.Module, dataset: ImagePart, device: torch.device, amp: bool) -> Predictions:
        world = current_world()
        share = _every_nth(dataset, world.rank, world.size)
        loader = image_loader(share, self.config.batch_size, self.config.num_workers, device)
        mine = predict_images(model, loader, share, device, amp=amp)
        if world.size == 1:
            return mine
        shares = gather(world, (mine.probs, mine.loss * len(share)))
        probs = np.zeros((len(dataset), len(self.images.class_names)))
        for rank, (rows, _) in enumerate(shares):
            probs[rank::world.size] = rows
        return Predictions(dataset.ids, dataset.patients, np.asarray(dataset.images.labels, dtype=int), probs,
                           sum(total for _, total in shares) / max(len(dataset), 1))

    def checkpoint_meta(self, data: FoldData) -> dict[str, Any]:
        return {"input_px": self.config.input_px, "model_options": self._model_options()}

    def describe(self) -> dict[str, Any]:
        return {"images": len(self.images), "per_class": self.images.counts(),
                "patients": len(set(self.patients)) if self.patients else None,
                "grouping": self.grouping.describe(), "initial_weights": self.config.weights or "random",
                "skipped_images": [list(item) for item in self.images.skipped]}

    def inputs(self) -> dict[str, str]:
        roots = [root.absolute() for root in self.config.images]
        names = self.images.class_names
        rows = []
        for path, label, digest in zip(self.images.paths, self.images.labels, self.images.digests):
            path = path.absolute()
            index, root = next((i, r) for i, r in enumerate(roots) if path.is_relative_to(r))
            rows.append((names[label], f"{index}/{path.relative_to(root).as_posix()}", digest))
        return {"images_sha256": image_set_sha256(rows)}

    def inspect(self, model, dataset, predictions, folder: Path, device, writer) -> dict[str, Any]:
        from cmamil.evaluation.inspection import write_explanations, write_projector

        config, extra = self.config, {}
        if config.explain > 0:
            extra["explain"] = write_explanations(folder / "explain", model, dataset, predictions,
                                                  self.images.class_names, config.explain, None, device)
        if config.embeddings > 0:
            write_projector(folder / "projector", model, dataset, predictions, self.images.class_names,
                            config.embeddings, device)
        return extra

    def _part(self, ids: Iterable[str], transform: Callable) -> ImagePart:
        rows = [self._index[i] for i in ids]
        patients = tuple(self.patients[r] for r in rows) if self.patients else tuple(self.ids[r] for r in rows)
        return ImagePart(self.images.subset(rows), transform, patients)

    def _model_options(self) -> dict[str, Any]:
        """The model options with `in_chans=auto` made the data's channels (1 for grey arrays, else 3)."""
        options = dict(self.config.model_options)
        if options.get("in_chans") == "auto":
            options["in_chans"] = self.images.channels
        return options

    def _model_data_config(self):
        """The model's data config (from the last model built; one is built to read it if none was)."""
        if self._data_config is None:
            self.build_model()
        return self._data_config


@torch.no_grad()
def predict_images(model: nn.Module, loader: DataLoader, part: ImagePart, device: torch.device, *,
                   amp: bool = False) -> Predictions:
    """Softmax probabilities for every image and the mean cross-entropy (eval mode; autocast on CUDA)."""
    model.eval()
    probs, total = [], 0.0
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(x).float()
        total += F.cross_entropy(logits, y, reduction="sum").item()
        probs.append(logits.softmax(1).cpu().numpy())
    stacked = np.concatenate(probs).astype(np.float64) if probs else np.zeros((0, len(part.images.class_names)))
    return Predictions(part.ids, part.patients, np.asarray(part.images.labels, dtype=int), stacked,
                       total / max(len(part), 1))


def _every_nth(part: ImagePart, start: int, step: int) -> ImagePart:
    """Images start, start + step, … of a part (one rank's share of a prediction)."""
    if step == 1:
        return part
    rows = list(range(start, len(part), step))
    return ImagePart(part.images.subset(rows), part.transform, tuple(part.patients[r] for r in rows))


def rebuild_patch_model(meta: dict[str, Any]) -> tuple[nn.Module, Callable]:
    """The patch classifier and its evaluation transform described by a checkpoint's metadata."""
    model = create_model(meta["model"], num_classes=len(meta["class_names"]), **meta["model_options"])
    return model, eval_transform(model.data_config, meta.get("input_px"))


def _read_images(config: PatchTrainConfig, class_names: tuple[str, ...] | None
                 ) -> tuple[ImageSet, Grouping, list[Split] | None]:
    """Every image of the run, their patients, and the one fixed split when the roots have split folders and no
    --folds."""
    layouts = [find_split_folders(root, config.split_names) for root in config.images]
    if config.folds is None and any(layout is None for layout in layouts):
        flat = next(root for root, layout in zip(config.images, layouts) if layout is None)
        raise InputError(f"{flat} has no training/ and testing/ split folders; pass --folds K to split its class "
                         "folders by stratified k-fold")
    if config.folds is not None:
        sets = [read_class_folders(root, class_names) if layout is None else ImageSet.concat(
            [read_class_folders(layout[s], class_names) for s in ("train", "val", "test") if s in layout])
            for root, layout in zip(config.images, layouts)]
        everything = ImageSet.concat(sets)
        return everything, image_grouping(everything.paths, config.group_by, config.no_group), None
    train = ImageSet.concat([read_class_folders(layout["train"], class_names) for layout in layouts])
    names = train.class_names
    test = ImageSet.concat([read_class_folders(layout["test"], names) for layout in layouts])
    given_val = all("val" in layout for layout in layouts)
    val = ImageSet.concat([read_class_folders(layout["val"], names) for layout in layouts]) if given_val else None
    grouping = image_grouping([p for part in (train, val, test) if part for p in part.paths], config.group_by,
                              config.no_group)
    if val is None:
        groups = grouping.patients[:len(train)] if grouping.patients else None
        held = holdout_mask(train.labels, config.val_fraction, groups=groups, seed=config.seed)
        train, val = train.subset(~held), train.subset(held)
    everything = ImageSet.concat([train, val, test])
    ids = [tuple(str(p) for p in part.paths) for part in (train, val, test)]
    return everything, image_grouping(everything.paths, config.group_by, config.no_group), [Split(0, *ids)]
