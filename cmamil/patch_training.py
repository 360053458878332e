"""Train a patch classifier on image folders: split folders or stratified (patient-grouped) k-fold.

The protocol defaults follow the MagFusion study: images resized to the model's input size and
normalised with its mean/std; AdamW (lr 3e-4, weight decay 0.05, none on norms, biases and tokens);
per-step linear warm-up (5 epochs) then cosine decay; AMP on CUDA; gradient clipping at 1.0; early
stopping on validation macro-F1 with accuracy as tie-break; at most 100 epochs; the best epoch kept.

A training unit (the run folder with split folders, or `fold_K/` with k-fold) holds
  best.pt           the best epoch's weights and what rebuilds the model (see patch_evaluation)
  last.pt           the latest epoch's full state while training runs (resume point; removed at the end)
  train_log.csv     one row per epoch: losses, accuracy, macro-F1, per-class F1, lr, seconds, peak memory
  events.out.tfevents.*   TensorBoard scalars, and the test evaluation
  eval/             the test-split evaluation (metrics, predictions, figures, overlays, projector)
  training_curves.png
An interrupted unit resumes from last.pt; a unit whose eval/metrics.json exists is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cmamil.atomic import write_csv, write_json, write_yaml
from cmamil.checkpoint import load_checkpoint, save_checkpoint
from cmamil.early_stopping import EarlyStopping
from cmamil.environment import environment_info, peak_memory_mb, reset_peak_memory, resolve_device, seed_everything
from cmamil.errors import InputError, TrainingError
from cmamil.figures import plot_training_curves, save_figure
from cmamil.image_folders import ImageDataset, ImageSet, find_split_folders, patient_groups, read_class_folders
from cmamil.metrics import HEADLINE, classification_metrics, summarize_folds
from cmamil.models import count_parameters, create_model
from cmamil.patch_evaluation import CHECKPOINT_FORMAT, evaluate_model, load_trained_model, predict
from cmamil.preprocessing import AUGMENTATIONS, BatchMixer, eval_transform, train_transform
from cmamil.splits import assign_folds, holdout_mask
from cmamil.tblog import log_hparams, log_scalars

__all__ = ["MONITORS", "PatchTrainConfig", "TrainingUnit", "plan_units", "train_patches", "train_unit"]

log = logging.getLogger(__name__)

MONITORS = ("f1_macro", "accuracy", "balanced_accuracy", "auc", "loss")
OPTIMIZERS = ("adamw", "adam", "sgd")
# options that do not change what a run computes (a resumed run may change them)
RUNTIME_FIELDS = ("images", "out", "device", "num_workers", "overwrite", "explain", "embeddings")


@dataclass(frozen=True)
class PatchTrainConfig:
    """Every option of a patch-classifier training run (MagFusion protocol defaults)."""

    model: str
    images: tuple[Path, ...]
    out: Path
    folds: int | None = None
    group_by: str | None = None
    split_names: tuple[str, ...] | None = None
    val_fraction: float = 0.2
    epochs: int = 100
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup_epochs: int = 5
    clip_grad: float = 1.0
    label_smoothing: float = 0.0
    weighted_sampling: bool = False
    augment: str = "basic"
    mixup: float = 0.0
    cutmix: float = 0.0
    amp: bool = True
    monitor: str = "f1_macro"
    patience: int = 20
    min_epochs: int = 10
    input_px: int | None = None
    weights: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 2
    overwrite: bool = False
    explain: int = 8
    embeddings: int = 500

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(Path(p) for p in self.images))
        object.__setattr__(self, "out", Path(self.out))
        if not self.images:
            raise InputError("give at least one image root (--images)")
        checks = [
            (self.folds is None or self.folds >= 2, f"--folds must be at least 2, got {self.folds}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be non-negative, got {self.weight_decay}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.augment in AUGMENTATIONS, f"--augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.monitor in MONITORS, f"--monitor must be one of {', '.join(MONITORS)} for patch models, "
                                       f"got {self.monitor!r}"),
            (0.0 < self.val_fraction < 1.0, f"--val-fraction must lie in (0, 1), got {self.val_fraction}"),
            (0.0 <= self.label_smoothing < 1.0, "--label-smoothing must lie in [0, 1)"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix must be non-negative"),
            (self.input_px is None or self.input_px >= 8, f"--input-px must be at least 8, got {self.input_px}"),
            (self.warmup_epochs >= 0 and self.clip_grad >= 0, "--warmup-epochs and --clip-grad must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.group_by is not None:
            try:
                re.compile(self.group_by)
            except re.error as exc:
                raise InputError(f"--group-by {self.group_by!r} is not a valid regular expression: {exc}") from exc
        if self.split_names is not None and len(self.split_names) != 3:
            raise InputError(f"--split-names needs three names (train,val,test), got {list(self.split_names)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.yaml."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()} | {
            "images": [str(p) for p in self.images]
        }


@dataclass(frozen=True)
class TrainingUnit:
    """One model to train: its folder and its train/validation/test images."""

    name: str
    folder: Path
    train: ImageSet
    val: ImageSet
    test: ImageSet


def plan_units(config: PatchTrainConfig) -> list[TrainingUnit]:
    """The units of a run: one for split folders, K for k-fold; every split stratified and patient-grouped."""
    layouts = [find_split_folders(root, config.split_names) for root in config.images]
    if config.folds is None and any(layout is None for layout in layouts):
        flat = next(root for root, layout in zip(config.images, layouts) if layout is None)
        raise InputError(
            f"{flat} has no training/ and testing/ split folders; pass --folds K to split its class folders "
            "by stratified k-fold"
        )
    if config.folds is not None:
        sets = [
            read_class_folders(root) if layout is None else ImageSet.concat(
                [read_class_folders(layout[s]) for s in ("train", "val", "test") if s in layout]
            )
            for root, layout in zip(config.images, layouts)
        ]
        return _fold_units(config, ImageSet.concat(sets))
    train = ImageSet.concat([read_class_folders(layout["train"]) for layout in layouts])
    names = train.class_names
    test = ImageSet.concat([read_class_folders(layout["test"], names) for layout in layouts])
    if all("val" in layout for layout in layouts):
        val = ImageSet.concat([read_class_folders(layout["val"], names) for layout in layouts])
    else:
        held = holdout_mask(train.labels, config.val_fraction, groups=_groups(config, train), seed=config.seed)
        train, val = train.subset(~held), train.subset(held)
    return [TrainingUnit("run", config.out, train, val, test)]


def train_patches(
    config: PatchTrainConfig, *, on_epoch: Callable[[str, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train every unit of the run (skipping finished ones) and return the test metrics (and fold summary)."""
    units = plan_units(config)
    _check_same_options(config)
    class_names = list(units[0].train.class_names)
    write_yaml(config.out / "config.yaml", {
        "kind": "patch_classifier",
        "options": config.to_dict(),
        "classes": class_names,
        "images": {u.name: {s: getattr(u, s).counts() for s in ("train", "val", "test")} for u in units},
        "skipped_images": sorted({item for u in units for s in (u.train, u.val, u.test) for item in s.skipped}),
        "environment": environment_info(),
    })
    _write_splits(config.out / "splits", units)
    results = {u.name: train_unit(config, u, on_epoch=on_epoch) for u in units}
    if config.folds is None:
        return results["run"]
    summary = {"folds": results, "summary": summarize_folds(list(results.values()))}
    write_json(config.out / "summary.json", summary)
    rows = [[name] + [m[k] for k in HEADLINE] for name, m in results.items()]
    rows += [[stat] + [summary["summary"][k][stat] for k in HEADLINE] for stat in ("mean", "std")]
    write_csv(config.out / "summary.csv", ["fold", *HEADLINE], rows)
    return summary


def train_unit(
    config: PatchTrainConfig, unit: TrainingUnit, *, on_epoch: Callable[[str, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train one unit (resuming from last.pt), keep the best epoch, and evaluate it on the test split."""
    from torch.utils.tensorboard import SummaryWriter

    folder = unit.folder
    done = folder / "eval" / "metrics.json"
    if config.overwrite:
        _clear_unit(folder)
    elif done.is_file():
        log.info("%s: finished earlier, skipping (use --overwrite to retrain)", folder)
        return json.loads(done.read_text())
    device = resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    class_names = list(unit.train.class_names)
    seed_everything(config.seed, config.deterministic)
    model = create_model(config.model, num_classes=len(class_names), weights=config.weights,
                         **config.model_options).to(device)
    optimizer = _optimizer(config, model)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(config.monitor, config.patience, config.min_epochs,
                            tie_break="accuracy" if config.monitor != "accuracy" else "f1_macro")
    rows: list[dict[str, Any]] = []
    if (folder / "last.pt").is_file():
        state = load_checkpoint(folder / "last.pt")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        rows = list(state["log"])
        log.info("%s: resuming after epoch %d", folder, len(rows))
    writer = SummaryWriter(folder, purge_step=len(rows) + 1)
    try:
        if not (rows and stopper.should_stop(len(rows))):
            _fit(config, unit, model, optimizer, scaler, stopper, rows, writer, device, on_epoch)
        save_figure(plot_training_curves(rows, ["train_loss", "val_loss", "val_f1_macro", "val_accuracy"],
                                         title=f"{config.model} {unit.name}"), folder / "training_curves.png")
        if not (folder / "best.pt").is_file():
            raise TrainingError(f"{folder}: no epoch gave a finite validation score; check the data and --lr")
        trained = load_trained_model(folder / "best.pt", device)
        metrics = evaluate_model(
            trained, unit.test, folder / "eval", device=device, batch_size=config.batch_size,
            num_workers=config.num_workers, amp=use_amp, explain=config.explain, embeddings=config.embeddings,
            title=f"{config.model} {unit.name} test", writer=writer, step=len(rows),
            extra={"best_epoch": stopper.best_epoch, "epochs_run": len(rows),
                   "parameters": count_parameters(trained.model)},
        )
        log_hparams(writer, _hparams(config), {k: metrics[k] for k in HEADLINE})
    finally:
        writer.close()
    (folder / "last.pt").unlink(missing_ok=True)
    return metrics


def _fit(
    config: PatchTrainConfig, unit: TrainingUnit, model: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, stopper: EarlyStopping, rows: list[dict[str, Any]], writer,
    device: torch.device, on_epoch: Callable[[str, dict[str, Any]], None] | None,
) -> None:
    """The epoch loop from len(rows) + 1: train, validate, log, keep the best, save the resume state."""
    class_names = list(unit.train.class_names)
    use_amp = config.amp and device.type == "cuda"
    transform = train_transform(model.data_config, config.augment, config.input_px)
    evaluation = eval_transform(model.data_config, config.input_px)
    mixer = BatchMixer(len(class_names), config.mixup, config.cutmix)
    steps_per_epoch = len(_train_loader(config, unit.train, transform, device))
    epochs = tqdm(range(len(rows) + 1, config.epochs + 1), desc=f"train {unit.name}", initial=len(rows),
                  total=config.epochs, disable=None)
    for epoch in epochs:
        seed_everything(config.seed + 1_000_003 * epoch, config.deterministic)  # resumable randomness
        reset_peak_memory(device)
        began = time.perf_counter()
        train_stats = _train_epoch(config, model, unit.train, transform, optimizer, scaler, mixer,
                                   device, epoch, steps_per_epoch, use_amp)
        val = predict(model, unit.val, evaluation, device=device, batch_size=config.batch_size,
                      num_workers=config.num_workers, amp=use_amp, desc="validate")
        val_metrics = classification_metrics(val.y_true, val.probs, class_names) | {"loss": val.loss}
        row = _log_row(epoch, optimizer, train_stats, val_metrics, class_names,
                       time.perf_counter() - began, peak_memory_mb(device))
        rows.append(row)
        _log_epoch(writer, row, val_metrics, epoch)
        if stopper.step(epoch, val_metrics):
            save_checkpoint(unit.folder / "best.pt", _best_state(config, model, class_names, epoch, val_metrics))
        save_checkpoint(unit.folder / "last.pt", {
            "epoch": epoch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "early_stopping": stopper.state_dict(), "log": rows,
        })
        _write_log(unit.folder / "train_log.csv", rows)
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{row['val_f1_macro']:.3f}")
        if on_epoch is not None:
            on_epoch(unit.name, row)
        if stopper.should_stop(epoch):
            log.info("%s: early stop at epoch %d (best %d)", unit.folder, epoch, stopper.best_epoch)
            break


def _train_epoch(
    config: PatchTrainConfig, model: nn.Module, images: ImageSet, transform, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, mixer: BatchMixer, device: torch.device, epoch: int, steps_per_epoch: int,
    use_amp: bool,
) -> dict[str, Any]:
    """One pass over the training images; returns mean loss and the hard predictions for train metrics."""
    model.train()
    loader = _train_loader(config, images, transform, device)
    total, seen, y_true, y_pred = 0.0, 0, [], []
    for step, (x, y, _) in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None)):
        _set_lr(config, optimizer, (epoch - 1) * steps_per_epoch + step, steps_per_epoch)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        inputs, targets = mixer(x, y)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(y)
        seen += len(y)
        y_true.append(y.cpu().numpy())
        y_pred.append(logits.detach().argmax(1).cpu().numpy())
    mean = total / max(seen, 1)
    if not math.isfinite(mean):
        raise TrainingError(f"training diverged at epoch {epoch} (loss {mean}); lower --lr or use --no-amp")
    return {"loss": mean, "y_true": np.concatenate(y_true), "y_pred": np.concatenate(y_pred)}


def _train_loader(config: PatchTrainConfig, images: ImageSet, transform, device: torch.device):
    """Shuffled (or class-balanced) batches; a last batch of a single image is dropped (BatchNorm needs two)."""
    sampler = None
    if config.weighted_sampling:
        labels = np.asarray(images.labels)
        weights = 1.0 / np.bincount(labels)[labels]
        sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights), len(labels), replacement=True)
    return torch.utils.data.DataLoader(
        ImageDataset(images, transform), batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=config.num_workers, pin_memory=device.type == "cuda",
        drop_last=len(images) % config.batch_size == 1,
    )


def _optimizer(config: PatchTrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser over the model's own param groups when it has them, else timm's weight-decay groups."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(config.lr, config.weight_decay)
    else:
        from timm.optim import param_groups_weight_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_weight_decay(model, config.weight_decay, no_weight_decay_list=skip)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True,
                                    weight_decay=config.weight_decay)
    else:
        kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = kind(groups, lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def _set_lr(config: PatchTrainConfig, optimizer: torch.optim.Optimizer, step: int, steps_per_epoch: int) -> None:
    """Linear warm-up over `warmup_epochs`, then cosine decay to zero at the last step."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def _log_row(
    epoch: int, optimizer: torch.optim.Optimizer, train: dict[str, Any], val: dict[str, Any],
    class_names: list[str], seconds: float, memory: float,
) -> dict[str, Any]:
    train_metrics = _hard_metrics(train["y_true"], train["y_pred"], len(class_names))
    row = {
        "epoch": epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": train["loss"],
        "train_accuracy": train_metrics["accuracy"],
        "train_f1_macro": train_metrics["f1_macro"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "val_balanced_accuracy": val["balanced_accuracy"],
        "val_auc": val["auc"],
        "val_f1_macro": val["f1_macro"],
    }
    row |= {f"val_f1_{name}": val["per_class"][name]["f1"] for name in class_names}
    return row | {"epoch_seconds": seconds, "peak_memory_mb": memory}


def _hard_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(num_classes))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }


def _log_epoch(writer, row: dict[str, Any], val: dict[str, Any], epoch: int) -> None:
    log_scalars(writer, "train", {"loss": row["train_loss"], "accuracy": row["train_accuracy"],
                                  "f1_macro": row["train_f1_macro"]}, epoch)
    log_scalars(writer, "val", val, epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("epoch_seconds", row["epoch_seconds"], epoch)


def _best_state(config: PatchTrainConfig, model: nn.Module, class_names: list[str], epoch: int,
                val: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config.model,
        "model_options": dict(config.model_options),
        "class_names": list(class_names),
        "input_px": config.input_px,
        "epoch": epoch,
        "val_metrics": {k: float(val[k]) for k in (*HEADLINE, "loss")},
        "state_dict": model.state_dict(),
    }


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, list(rows[0]), [[f"{v:.6g}" if isinstance(v, float) else v for v in row.values()] for row in rows])


def _write_splits(folder: Path, units: list[TrainingUnit]) -> None:
    """splits/<unit>.csv: every image with its label and its split in that unit."""
    for unit in units:
        rows = [
            [str(path), images.class_names[label], split]
            for split, images in (("train", unit.train), ("val", unit.val), ("test", unit.test))
            for path, label in zip(images.paths, images.labels)
        ]
        write_csv(folder / f"{unit.name}.csv", ["path", "label", "split"], rows)


def _fold_units(config: PatchTrainConfig, images: ImageSet) -> list[TrainingUnit]:
    groups = _groups(config, images)
    folds = assign_folds(images.labels, config.folds, groups=groups, seed=config.seed)
    units = []
    for k in range(config.folds):
        rest = np.flatnonzero(folds != k)
        pool = images.subset(rest)
        held = holdout_mask(pool.labels, config.val_fraction, seed=config.seed + k,
                            groups=None if groups is None else [groups[i] for i in rest])
        units.append(TrainingUnit(f"fold_{k}", config.out / f"fold_{k}", pool.subset(~held), pool.subset(held),
                                  images.subset(folds == k)))
    return units


def _groups(config: PatchTrainConfig, images: ImageSet) -> list[str] | None:
    return None if config.group_by is None else patient_groups(images.paths, config.group_by)


def _check_same_options(config: PatchTrainConfig) -> None:
    """Refuse to resume a run folder made with different training options (unless --overwrite)."""
    path = config.out / "config.yaml"
    if config.overwrite or not path.is_file():
        return
    import yaml

    saved = (yaml.safe_load(path.read_text()) or {}).get("options", {})
    now = json.loads(json.dumps(config.to_dict()))
    changed = [k for k in now if k not in RUNTIME_FIELDS and k in saved and saved[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} → {now[k]!r}" for k in changed)
        raise InputError(f"{config.out} was trained with other options ({detail}); use a new --out or --overwrite")


def _clear_unit(folder: Path) -> None:
    for name in ("best.pt", "last.pt", "train_log.csv", "training_curves.png"):
        (folder / name).unlink(missing_ok=True)
    for events in folder.glob("events.out.tfevents.*"):
        events.unlink()
    shutil.rmtree(folder / "eval", ignore_errors=True)


def _hparams(config: PatchTrainConfig) -> dict[str, Any]:
    keep = ("model", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "warmup_epochs", "augment",
            "mixup", "cutmix", "label_smoothing", "weighted_sampling", "seed")
    return {k: getattr(config, k) for k in keep}
