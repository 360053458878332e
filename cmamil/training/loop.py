"""The one epoch loop of every training run: train, validate, log, keep the best epoch, save a resume point.

Each epoch: the task's shuffled batches (seeded by run seed, fold and epoch, so that a resumed fold repeats the
same order), the scheduled learning rate per step (and the plateau rule per epoch), autocast and a gradient
scaler on CUDA when `amp`, gradient clipping when `clip_grad` > 0; then the validation predictions, one history row, TensorBoard scalars, and early
stopping on `monitor` (ties broken by the task's `tie_break`). The best epoch's weights go to `checkpoint.pt`
(with the task's metadata) when they improve; `last.pt` holds the full state after every epoch. Without a
validation part, or when the monitored value is never finite, the last epoch is kept.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from cmamil.distributed import SINGLE, World, gather, replicate, share_buffers, wait
from cmamil.environment import peak_memory_mb, reset_peak_memory, seed_everything
from cmamil.errors import TrainingError
from cmamil.evaluation.metrics import classification_metrics
from cmamil.interrupt import raise_if_interrupted
from cmamil.training.checkpoint import load_checkpoint, save_checkpoint
from cmamil.training.config import TrainConfig
from cmamil.training.early_stopping import EarlyStopping
from cmamil.training.optim import LRSchedule, build_optimizer
from cmamil.training.run_folder import LAST, write_history
from cmamil.training.task import FoldData, Task
from cmamil.training.tblog import log_scalars

__all__ = ["CHECKPOINT", "FitResult", "LAST", "fit"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
HISTORY_VAL = ("loss", "auc", "accuracy", "balanced_accuracy", "f1_macro")


@dataclass
class FitResult:
    """The trained model (best epoch's weights loaded), the best epoch (1-based) and one history row per epoch."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, Any]]


def fit(task: Task, data: FoldData, model: nn.Module, config: TrainConfig, folder: Path,
        writer: SummaryWriter, device: torch.device, meta: dict[str, Any],
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None, team: World = SINGLE) -> FitResult:
    """Train `model` on the fold's training part (resuming from `folder/last.pt`) and keep its best epoch.

    `on_epoch(fold, row)` is called after each epoch is saved (e.g. to report progress elsewhere). A `team` of
    several ranks trains one model with DistributedDataParallel (the task gives each rank its share of the
    batches); every rank takes the same decisions from the gathered metrics, and its first rank writes.
    """
    use_amp = config.amp and device.type == "cuda"
    model.to(device)
    optimizer = build_optimizer(model, config)
    schedule = LRSchedule(config, task.steps_per_epoch(data), optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(config.monitor, config.patience, config.min_epochs, tie_break=task.tie_break())
    history: list[dict[str, Any]] = []
    if (folder / LAST).is_file():
        state = load_checkpoint(folder / LAST)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        schedule.load_state_dict(state.get("schedule", {}))
        history = list(state["history"])
        log.info("%s: resuming after epoch %d", folder, len(history))
    trained = replicate(team, model, device)
    has_val = len(data.val) > 0
    class_names = meta["class_names"]
    epochs = tqdm(range(len(history) + 1, config.epochs + 1), desc=f"fold {data.fold}", unit="epoch",
                  initial=len(history), total=config.epochs, leave=False, disable=None if config.progress else True)
    stopped = bool(history) and has_val and stopper.should_stop(len(history))
    for epoch in ([] if stopped else epochs):
        raise_if_interrupted()
        seed_everything(config.seed + 1000 * data.fold + 1_000_003 * epoch, config.deterministic)
        reset_peak_memory(device)
        began = time.perf_counter()
        train = _train_epoch(task, data, trained, optimizer, scaler, schedule, config, device, epoch, use_amp, team)
        share_buffers(team, model)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": train[k] for k in ("loss", "auc", "accuracy", "f1_macro")}}
        log_scalars(writer, "train", train, epoch)
        writer.add_scalar("lr", row["lr"], epoch)
        if has_val:
            val = task.predict(model, data.val, device, use_amp).metrics(class_names)
            row |= {f"val_{k}": val[k] for k in HISTORY_VAL}
            row |= {f"val_f1_{name}": val["per_class"][name]["f1"] for name in class_names}
            log_scalars(writer, "val", val, epoch)
            if stopper.step(epoch, val) and team.main:
                _save_best(folder, model, meta, epoch, val)
            schedule.end_epoch(epoch, val[config.monitor])
            epochs.set_postfix({f"val_{config.monitor}": f"{val[config.monitor]:.3f}"})
        row |= {"epoch_seconds": time.perf_counter() - began, "peak_memory_mb": peak_memory_mb(device)}
        writer.add_scalar("epoch_seconds", row["epoch_seconds"], epoch)
        history.append(row)
        if team.main:
            save_checkpoint(folder / LAST, {
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "early_stopping": stopper.state_dict(), "schedule": schedule.state_dict(), "history": history,
            })
            write_history(folder / "history.csv", history)
        if on_epoch is not None:
            on_epoch(data.fold, row)
        if has_val and stopper.should_stop(epoch):
            log.info("fold %d: early stop at epoch %d (best %d)", data.fold, epoch, stopper.best_epoch)
            break
    if stopper.best_epoch < 1:
        if has_val:
            log.warning("fold %d: validation %s was never finite; keeping the last epoch", data.fold, config.monitor)
        best_epoch = history[-1]["epoch"]
        if team.main:
            _save_best(folder, model, meta, best_epoch, {})
    else:
        best_epoch = stopper.best_epoch
    wait(team)  # rank 0 has written checkpoint.pt
    model.load_state_dict(load_checkpoint(folder / CHECKPOINT)["state_dict"])
    return FitResult(model, best_epoch, history)


def _train_epoch(task: Task, data: FoldData, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, schedule: LRSchedule, config: TrainConfig, device: torch.device,
                 epoch: int, use_amp: bool, team: World = SINGLE) -> dict[str, Any]:
    """One pass over the training part (this rank's share of it); returns the mean loss and the train metrics,
    gathered over the team."""
    model.train()
    steps = task.steps_per_epoch(data)
    total, seen, labels, probs = 0.0, 0, [], []
    for step, batch in enumerate(task.train_batches(data, epoch, device)):
        schedule.set(optimizer, (epoch - 1) * steps + step)
        out = task.step(model, batch, device, use_amp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        if config.clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        n = len(out.labels)
        total += out.loss.item() * n
        seen += n
        labels.append(out.labels.detach().cpu().numpy())
        probs.append(torch.softmax(out.logits.detach().float(), dim=1).cpu().numpy())
    shares = gather(team, (total, seen, labels, probs))
    total, seen = sum(share[0] for share in shares), sum(share[1] for share in shares)
    labels = [batch for share in shares for batch in share[2]]
    probs = [batch for share in shares for batch in share[3]]
    mean = total / max(seen, 1)
    if not math.isfinite(mean):
        raise TrainingError(f"training diverged at epoch {epoch} (loss {mean}); lower --lr or use --no-amp")
    names = [str(i) for i in range(probs[0].shape[1])]
    return {"loss": mean, **classification_metrics(np.concatenate(labels), np.concatenate(probs), names)}


def _save_best(folder: Path, model: nn.Module, meta: dict[str, Any], epoch: int, val: dict[str, Any]) -> None:
    """Write checkpoint.pt: the weights of `epoch` with what rebuilds the model."""
    scores = {k: float(val[k]) for k in HISTORY_VAL if k in val}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # written at once: no copy needed
    save_checkpoint(folder / CHECKPOINT, {**meta, "epoch": epoch, "val_metrics": scores, "state_dict": state})
