"""What a kind of training contributes to the one loop and runner: its data, model, step and predictions.

Bag training (`cmamil.training.bags`) and patch training (`cmamil.training.patches`) implement `Task`;
everything else (splits, the epoch loop, early stopping, checkpoints, TensorBoard, the run folder, the
summary) is shared and lives once in `cmamil.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from cmamil.data.patients import Grouping
from cmamil.training.predictions import Predictions
from cmamil.training.splits import Split

__all__ = ["FoldData", "Items", "StepOutput", "Task"]


@dataclass(frozen=True)
class Items:
    """Every labelled item of a run: ids, class indices, how they group into patients, and class names."""

    ids: tuple[str, ...]
    labels: tuple[int, ...]
    grouping: Grouping
    class_names: tuple[str, ...]

    @property
    def patients(self) -> tuple[str, ...] | None:
        """The patient of every item, or None when each item is its own."""
        return self.grouping.patients


@dataclass(frozen=True)
class FoldData:
    """The datasets of one fold's parts (val may be empty); what a dataset is, is the task's business."""

    fold: int
    train: Any
    val: Any
    test: Any

    def part(self, name: str) -> Any:
        """The dataset of part `name` (train, val or test)."""
        return getattr(self, name)


@dataclass(frozen=True)
class StepOutput:
    """One training step's loss, its logits (B, C) and the hard labels (B,) for train metrics."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


class Task(Protocol):
    """The part of a training run that depends on its kind of input (bags or patch images)."""

    data_parallel: bool
    """Under torchrun: every rank trains each fold together (DDP), or each fold trains on one rank."""

    def items(self) -> Items:
        """Every labelled item, for making splits."""

    def given_splits(self) -> list[Split] | None:
        """Splits fixed by the input (split folders, --splits), or None to make stratified k-fold splits."""

    def fold_data(self, split: Split) -> FoldData:
        """The datasets of the split's parts (fitting any per-fold preprocessing on the training part only)."""

    def build_model(self) -> nn.Module:
        """A freshly initialised model."""

    def tie_break(self) -> str | None:
        """The metric that breaks ties of the monitored one in early stopping."""

    def train_batches(self, data: FoldData, epoch: int, device: torch.device) -> Iterable[Any]:
        """The shuffled training batches of one epoch (seeded by the epoch, so a resumed run repeats them)."""

    def steps_per_epoch(self, data: FoldData) -> int:
        """Optimiser steps in one epoch."""

    def step(self, model: nn.Module, batch: Any, device: torch.device, amp: bool) -> StepOutput:
        """Forward one training batch and return its loss."""

    def predict(self, model: nn.Module, dataset: Any, device: torch.device, amp: bool) -> Predictions:
        """Class probabilities and the mean loss of the model (in eval mode) on a dataset."""

    def checkpoint_meta(self, data: FoldData) -> dict[str, Any]:
        """What rebuilds the model from its checkpoint (besides the state dict)."""

    def describe(self) -> dict[str, Any]:
        """Counts and notes on the input, for config.yaml."""

    def inputs(self) -> dict[str, str]:
        """A sha256 per input (labels, features, images; keys of `run_folder.INPUTS`) that a resume must match."""

    def inspect(self, model: nn.Module, dataset: Any, predictions: Predictions, folder: Path,
                device: torch.device, writer: SummaryWriter) -> dict[str, Any]:
        """Extra outputs of a fold's test evaluation (overlays, embeddings); metrics entries to add."""

