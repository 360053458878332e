"""k-fold training of a MIL aggregator on slide bags: the loop, evaluation, and the run folder.

One bag per optimiser step (as CLAM and CMA-MIL train). The loss of a bag is `aggregator_loss` (the
aggregator's own `loss` when it has one). Each epoch logs train/val loss and metrics to TensorBoard; the
epoch with the best validation `monitor` value is kept, and training stops after `patience` epochs without
improvement (never before `min_epochs`). The kept model is evaluated on the fold's test part.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from cmamil.aggregators import aggregator_loss, create_aggregator, forward_bag
from cmamil.atomic import write_json, write_text, write_yaml
from cmamil.bag_dataset import BagDataset, bag_loader, fit_scaler
from cmamil.checkpoint import save_checkpoint
from cmamil.early_stopping import EarlyStopping
from cmamil.environment import environment_info, resolve_device, seed_everything
from cmamil.errors import InputError
from cmamil.kfold import fold_finished, reset_fold, summarize_run
from cmamil.labels import LabelTable, load_labelled_bags
from cmamil.metrics import classification_metrics
from cmamil.splits import Split, load_splits, make_splits, save_splits
from cmamil.tblog import log_evaluation, log_hparams, log_scalars

__all__ = ["Evaluation", "FitResult", "MILTrainConfig", "evaluate", "fit", "run_kfold", "train_fold"]

log = logging.getLogger(__name__)

MONITORS = ("auc", "f1_macro", "balanced_accuracy", "accuracy", "loss")
HISTORY = ("loss", "auc", "accuracy", "balanced_accuracy", "f1_macro")
FINAL = ("auc", "balanced_accuracy", "f1_macro")
OPTIMIZERS = ("adam", "adamw", "sgd")
# options that may change between a run and its resumption without changing what is trained
RESUMABLE = ("device", "num_workers", "overwrite", "progress", "figures")


@dataclass(frozen=True)
class MILTrainConfig:
    """Every option of a bag-training run (defaults: the CMA-MIL/CLAM protocol)."""

    model: str
    features: Path | None = None
    labels: Path | None = None
    out: Path | None = None
    folds: int = 5
    epochs: int = 50
    lr: float = 2e-4
    weight_decay: float = 1e-5
    optimizer: str = "adam"
    monitor: str = "auc"
    patience: int = 20
    min_epochs: int = 10
    val_fraction: float = 0.2
    model_options: dict[str, Any] = field(default_factory=dict)
    magnifications: tuple[str, ...] | None = None
    splits: Path | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 2
    overwrite: bool = False
    progress: bool = True
    figures: bool = True
    standardize: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
        if self.monitor not in MONITORS:
            raise InputError(f"monitor '{self.monitor}' is not one of {', '.join(MONITORS)}")
        if self.folds < 2 or self.epochs < 1 or self.patience < 1 or self.min_epochs < 0:
            raise InputError("folds must be >= 2, epochs and patience >= 1, min_epochs >= 0")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.val_fraction < 1:
            raise InputError("lr must be > 0, weight_decay >= 0 and val_fraction in [0, 1)")
        for name in ("features", "labels", "out", "splits"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.magnifications is not None:
            object.__setattr__(self, "magnifications", tuple(self.magnifications))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings) for config.yaml."""
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items()}


@dataclass
class Evaluation:
    """Predictions of a model on a dataset: mean loss, ids, true labels and (N, C) class probabilities."""

    loss: float
    ids: list[str]
    y_true: np.ndarray
    probs: np.ndarray

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        """classification_metrics plus the loss."""
        return {"loss": self.loss, **classification_metrics(self.y_true, self.probs, class_names)}


@dataclass
class FitResult:
    """The trained model (best epoch's weights loaded), the best epoch, and one history row per epoch."""

    model: torch.nn.Module
    best_epoch: int
    history: list[dict[str, Any]]


def _optimizer(model: torch.nn.Module, config: MILTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay, momentum=0.9)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> Evaluation:
    """Loss (the training loss, instance part included) and class probabilities of every bag, in eval mode."""
    model.eval()
    losses, probs, labels = [], [], []
    for bag, label in loader:
        bag, label = bag.to(device), label.to(device)
        output = forward_bag(model, bag, label)
        losses.append(aggregator_loss(model, output, label).item())
        probs.append(torch.softmax(output.logits.float(), dim=1)[0].cpu().numpy())
        labels.append(int(label))
    return Evaluation(float(np.mean(losses)), list(loader.dataset.ids), np.array(labels), np.stack(probs))


def fit(
    model: torch.nn.Module,
    train: BagDataset,
    val: BagDataset | None,
    config: MILTrainConfig,
    class_names: Sequence[str],
    *,
    writer: SummaryWriter | None = None,
    seed: int = 0,
    description: str = "train",
) -> FitResult:
    """Train `model` one bag per step; keep the weights of the best validation epoch (the last without `val`)."""
    device = resolve_device(config.device)
    model.to(device)
    optimizer = _optimizer(model, config)
    stopper = EarlyStopping(config.monitor, config.patience, config.min_epochs,
                            tie_break=None if config.monitor == "loss" else "loss")
    has_val = val is not None and len(val) > 0
    train_loader = bag_loader(train, shuffle=True, seed=seed, num_workers=config.num_workers)
    val_loader = bag_loader(val, shuffle=False, num_workers=config.num_workers) if has_val else None
    history: list[dict[str, Any]] = []
    best_state, best_epoch = None, 0
    bar = tqdm(range(config.epochs), desc=description, unit="epoch", disable=None if config.progress else True,
               leave=False)
    for epoch in bar:
        model.train()
        losses, probs, labels = [], [], []
        for bag, label in train_loader:
            bag, label = bag.to(device), label.to(device)
            output = forward_bag(model, bag, label)
            loss = aggregator_loss(model, output, label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            probs.append(torch.softmax(output.logits.detach().float(), dim=1)[0].cpu().numpy())
            labels.append(int(label))
        train_metrics = {"loss": float(np.mean(losses)), **classification_metrics(labels, np.stack(probs), class_names)}
        row = {"epoch": epoch, **{f"train_{k}": train_metrics[k] for k in ("loss", "auc", "accuracy")}}
        if writer is not None:
            log_scalars(writer, "train", train_metrics, epoch)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], epoch)
        if has_val:
            val_metrics = evaluate(model, val_loader, device).metrics(class_names)
            row.update({f"val_{k}": val_metrics[k] for k in HISTORY})
            if writer is not None:
                log_scalars(writer, "val", val_metrics, epoch)
            if stopper.step(epoch, val_metrics):
                best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
            bar.set_postfix({f"val_{config.monitor}": f"{val_metrics[config.monitor]:.3f}"})
        history.append(row)
        if has_val and stopper.should_stop(epoch + 1):
            break
    if best_state is None:
        if has_val:
            log.warning("validation %s was never defined (NaN); keeping the last epoch", config.monitor)
        best_epoch = history[-1]["epoch"]
    else:
        model.load_state_dict(best_state)
    return FitResult(model, best_epoch, history)


def _datasets(table: LabelTable, split: Split, magnifications: tuple[str, ...]) -> dict[str, BagDataset]:
    """One BagDataset per part of `split`, reading the table's feature files."""
    index = table.index()
    out = {}
    for part in ("train", "val", "test"):
        rows = [index[i] for i in getattr(split, part)]
        out[part] = BagDataset(
            [table.paths[r] for r in rows], [table.labels[r] for r in rows], magnifications,
            ids=[table.slide_ids[r] for r in rows],
        )
    return out


def train_fold(config: MILTrainConfig, table: LabelTable, split: Split, run_dir: Path) -> dict[str, Any]:
    """Train and test one fold into `run_dir/fold_K/`; metrics.json is written last and returned."""
    folder = reset_fold(run_dir, split.fold)
    seed_everything(config.seed + split.fold, config.deterministic)
    parts = _datasets(table, split, table.magnifications)
    if config.standardize:
        scaler = fit_scaler(parts["train"])
        for dataset in parts.values():
            dataset.scaler = scaler
    model = create_aggregator(
        config.model, in_dim=table.in_dim, num_classes=len(table.class_names),
        magnifications=table.magnifications, **config.model_options,
    )
    with SummaryWriter(log_dir=str(folder)) as writer:
        result = fit(
            model, parts["train"], parts["val"] if len(parts["val"]) else None, config, table.class_names,
            writer=writer, seed=config.seed + 1000 * split.fold, description=f"fold {split.fold}",
        )
        device = resolve_device(config.device)
        evaluations = {
            p: evaluate(result.model, bag_loader(parts[p], shuffle=False, num_workers=config.num_workers), device)
            for p in ("val", "test") if len(parts[p])
        }
        metrics = {p: e.metrics(table.class_names) for p, e in evaluations.items()}
        for part, evaluation in evaluations.items():
            log_evaluation(writer, part, metrics[part], evaluation.y_true, evaluation.probs, table.class_names,
                           result.best_epoch)
        hparams = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE}
        hparams.update({f"model_option.{k}": v for k, v in config.model_options.items()}, fold=split.fold)
        hparams.pop("model_options")
        log_hparams(writer, hparams, {f"test_{k}": metrics["test"][k] for k in FINAL})
    meta = {
        "model": config.model, "fold": split.fold, "epoch": result.best_epoch, "class_names": list(table.class_names),
        "in_dim": table.in_dim, "magnifications": list(table.magnifications),
        "model_options": dict(config.model_options),
        "scaler": parts["train"].scaler.state() if config.standardize else None,
    }
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    save_checkpoint(folder / "checkpoint.pt", {"state_dict": state, "meta": meta})
    _write_predictions(folder / "predictions.csv", evaluations["test"], table)
    _write_history(folder / "history.csv", result.history)
    fold_metrics = {
        "fold": split.fold,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "monitor": config.monitor,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        **metrics,
    }
    write_json(folder / "metrics.json", fold_metrics)
    return fold_metrics


def _write_predictions(path: Path, evaluation: Evaluation, table: LabelTable) -> None:
    """predictions.csv: id, patient, true and predicted label (index and name), one probability per class."""
    index = table.index()
    names = table.class_names
    header = ["slide_id", "patient_id", "label", "label_name", "pred", "pred_name", *(f"prob_{n}" for n in names)]
    lines = [",".join(header)]
    for slide, y, p in zip(evaluation.ids, evaluation.y_true, evaluation.probs):
        pred = int(np.argmax(p))
        lines.append(",".join([slide, table.patients[index[slide]], str(int(y)), names[int(y)], str(pred),
                               names[pred], *(f"{v:.6f}" for v in p)]))
    write_text(path, "\n".join(lines) + "\n")


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """history.csv: one row of train/val loss and metrics per epoch."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    rows = [",".join(keys)] + [",".join("" if row.get(k) is None else str(row.get(k)) for k in keys) for row in history]
    write_text(path, "\n".join(rows) + "\n")


def _check_config(run_dir: Path, config: MILTrainConfig, class_names: tuple[str, ...]) -> None:
    """Refuse to resume a run folder made with other options (unless overwriting); write config.yaml."""
    import yaml

    path = run_dir / "config.yaml"
    current = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE}
    if path.exists() and not config.overwrite:
        saved = yaml.safe_load(path.read_text()) or {}
        previous = {k: v for k, v in saved.get("config", {}).items() if k not in RESUMABLE}
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if changed:
            detail = ", ".join(f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in changed)
            raise InputError(f"{run_dir} was trained with other options ({detail}); use another --out or --overwrite")
    write_yaml(path, {"config": config.to_dict(), "class_names": list(class_names), "environment": environment_info()})


def _previous_classes(run_dir: Path) -> tuple[str, ...] | None:
    """Class names of an existing run, so that resuming maps labels the same way."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    names = (yaml.safe_load(path.read_text()) or {}).get("class_names")
    return tuple(str(n) for n in names) if names else None


def _splits(config: MILTrainConfig, table: LabelTable, run_dir: Path) -> list[Split]:
    """The run's own saved splits, else the given --splits, else new ones; saved under run_dir/splits."""
    saved = run_dir / "splits"
    if config.splits is not None:
        splits = load_splits(config.splits, table.slide_ids)
    elif saved.is_dir() and any(saved.glob("fold_*.csv")) and not config.overwrite:
        splits = load_splits(saved, table.slide_ids)
    else:
        splits = make_splits(
            table.slide_ids, table.labels, table.patients if table.has_patients else None,
            folds=config.folds, val_fraction=config.val_fraction, seed=config.seed,
        )
    _check_patients(splits, table)
    save_splits(splits, saved)
    return splits


def _check_patients(splits: Sequence[Split], table: LabelTable) -> None:
    """A patient's slides must all lie in one part of each fold."""
    patient = dict(zip(table.slide_ids, table.patients))
    for split in splits:
        owner: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for slide in getattr(split, part):
                first = owner.setdefault(patient[slide], part)
                if first != part:
                    raise InputError(
                        f"fold {split.fold}: patient {patient[slide]} has slides in both {first} and {part}; "
                        "fix the splits so that each patient lies in one part"
                    )


def run_kfold(config: MILTrainConfig) -> dict[str, Any]:
    """Check the inputs, then train every unfinished fold and write the run folder; returns the summary
    (`format_summary(summary)` gives the per-fold and mean ± std table)."""
    if config.features is None or config.labels is None or config.out is None:
        raise InputError("a k-fold run needs features, labels and out")
    run_dir = config.out
    run_dir.mkdir(parents=True, exist_ok=True)
    classes = None if config.overwrite else _previous_classes(run_dir)
    table = load_labelled_bags(config.features, config.labels, config.magnifications, classes)
    _check_config(run_dir, config, table.class_names)
    splits = _splits(config, table, run_dir)
    for split in splits:
        if fold_finished(run_dir, split.fold) and not config.overwrite:
            log.info("fold %d is finished; skipping it", split.fold)
            continue
        train_fold(config, table, split, run_dir)
    summary = summarize_run(run_dir, table.class_names)
    if config.figures:
        from cmamil.report import write_figures

        write_figures(run_dir)
    return summary

