"""Evaluate a trained patch classifier: predictions, metrics, figures, speed, saliency overlays, embeddings.

`evaluate_model` is the one evaluation used everywhere (the end of `cmamil train`, `cmamil evaluate`,
each cell of `cmamil crossmag`), so every number comes from the same code. An evaluation folder holds
  predictions.csv   path, label, prediction, one probability column per class
  metrics.json      every metric (scikit-learn definitions, see cmamil.metrics), plus speed when measured
  metrics.csv       the scalar metrics as metric,value rows;  per_class.csv  precision/recall/F1/support
  confusion_matrix.png (row-normalised), roc.png, pr.png
  explain/          Grad-CAM / attention-rollout overlays of true positives, false positives, false negatives
  projector/        test-set embeddings with an image sprite for TensorBoard's projector
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cmamil.atomic import write_csv, write_json
from cmamil.checkpoint import load_checkpoint
from cmamil.environment import peak_memory_mb, reset_peak_memory
from cmamil.errors import InputError
from cmamil.figures import plot_confusion_matrix, plot_pr_curves, plot_roc_curves, save_figure
from cmamil.image_folders import ImageDataset, ImageSet, open_image
from cmamil.metrics import classification_metrics
from cmamil.models import create_model
from cmamil.preprocessing import eval_transform

__all__ = [
    "CHECKPOINT_FORMAT",
    "EvaluateConfig",
    "Predictions",
    "TrainedModel",
    "evaluate_model",
    "evaluate_run",
    "load_trained_model",
    "measure_speed",
    "predict",
    "write_predictions",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cmamil.patch_classifier"


@dataclass(frozen=True)
class Predictions:
    """Class probabilities of a model on an image set (rows follow `images.paths`), and the mean loss."""

    images: ImageSet
    probs: np.ndarray
    loss: float

    @property
    def y_true(self) -> np.ndarray:
        return np.asarray(self.images.labels, dtype=int)


@dataclass(frozen=True)
class TrainedModel:
    """A patch classifier rebuilt from its checkpoint, with its classes and input size."""

    model: nn.Module
    class_names: tuple[str, ...]
    input_px: int | None
    checkpoint: dict[str, Any]

    @property
    def transform(self):
        return eval_transform(self.model.data_config, self.input_px)


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the model saved in a best.pt (or a run folder holding one), in eval mode on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"'{path}' is not a cmamil patch-classifier checkpoint (format {state.get('format')!r})")
    model = create_model(state["model"], num_classes=len(state["class_names"]), **state["model_options"])
    model.load_state_dict(state["state_dict"])
    return TrainedModel(model.to(device).eval(), tuple(state["class_names"]), state.get("input_px"), state)


def predict(
    model: nn.Module,
    images: ImageSet,
    transform,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    amp: bool = False,
    desc: str = "predict",
) -> Predictions:
    """Softmax probabilities for every image (model in eval mode; autocast on CUDA when `amp`)."""
    loader = _loader(images, transform, batch_size, num_workers, device)
    model.eval()
    probs, losses = [], []
    with torch.no_grad():
        for x, y, _ in tqdm(loader, desc=desc, leave=False, disable=None):
            x, y = x.to(device, non_blocking=True), y.to(device)
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = model(x).float()
            losses.append(F.cross_entropy(logits, y, reduction="sum").item())
            probs.append(logits.softmax(1).cpu().numpy())
    return Predictions(images, np.concatenate(probs).astype(np.float64), sum(losses) / max(len(images), 1))


def evaluate_model(
    trained: TrainedModel,
    images: ImageSet,
    out: str | Path,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    amp: bool = False,
    benchmark: bool = False,
    explain: int = 0,
    positive_class: str | None = None,
    embeddings: int = 0,
    title: str = "",
    extra: dict[str, Any] | None = None,
    writer=None,
    step: int = 0,
) -> dict[str, Any]:
    """Predict, score and write an evaluation folder (see module docstring); returns the metrics.

    `extra` entries are added to metrics.json; with a TensorBoard `writer` the evaluation is logged as 'test'.
    """
    out = Path(out)
    class_names = list(trained.class_names)
    predictions = predict(
        trained.model, images, trained.transform, device=device, batch_size=batch_size,
        num_workers=num_workers, amp=amp, desc=f"evaluate {title}".strip(),
    )
    metrics = classification_metrics(predictions.y_true, predictions.probs, class_names)
    metrics["loss"] = predictions.loss
    metrics["images"] = {"count": len(images), "skipped": [list(item) for item in images.skipped]}
    write_predictions(out / "predictions.csv", predictions, class_names)
    _write_figures(out, predictions, class_names, title)
    if benchmark:
        example = trained.transform(open_image(images.paths[0]))
        metrics["speed"] = measure_speed(trained.model, example, batch_size=batch_size, device=device, amp=amp)
    if explain > 0:
        metrics["explain"] = _write_explanations(out / "explain", trained, predictions, explain, positive_class, device)
    if embeddings > 0:
        _write_projector(out / "projector", trained, predictions, embeddings, device)
    metrics |= extra or {}
    if writer is not None:
        from cmamil.tblog import log_evaluation

        log_evaluation(writer, "test", metrics, predictions.y_true, predictions.probs, class_names, step)
    scalars = {**metrics, **metrics.get("speed", {})}
    write_csv(out / "metrics.csv", ["metric", "value"],
              [[k, v] for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)])
    write_csv(out / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
              [[name, v["precision"], v["recall"], v["f1"], v["support"]] for name, v in metrics["per_class"].items()])
    write_json(out / "metrics.json", metrics)  # written last: its presence marks a finished evaluation
    return metrics


def write_predictions(path: str | Path, predictions: Predictions, class_names: Sequence[str]) -> None:
    """predictions.csv: path, label, prediction and one probability column per class."""
    rows = [
        [str(image), class_names[label], class_names[int(row.argmax())]] + [f"{p:.9g}" for p in row]
        for image, label, row in zip(predictions.images.paths, predictions.y_true, predictions.probs)
    ]
    write_csv(path, ["path", "label", "prediction"] + [f"prob_{name}" for name in class_names], rows)


def measure_speed(
    model: nn.Module,
    example: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    repeats: int = 20,
) -> dict[str, Any]:
    """Latency (ms/image at batch 1, median), throughput (images/s at `batch_size`) and peak memory."""
    model.eval()
    single = example[None].to(device)
    batch = example[None].expand(batch_size, *example.shape).contiguous().to(device)
    reset_peak_memory(device)

    def run(x: torch.Tensor) -> float:
        with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

    for _ in range(3):
        run(single)
    latency = float(np.median([run(single) for _ in range(repeats)])) * 1000
    run(batch)
    batch_runs = max(3, repeats // 4)
    seconds = sum(run(batch) for _ in range(batch_runs))
    return {
        "device": str(device),
        "latency_ms_per_image": latency,
        "throughput_images_per_s": batch_size * batch_runs / seconds,
        "throughput_batch_size": batch_size,
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "amp": bool(amp and device.type == "cuda"),
    }


def _loader(images: ImageSet, transform, batch_size: int, num_workers: int, device: torch.device):
    return torch.utils.data.DataLoader(
        ImageDataset(images, transform), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )


def _write_figures(out: Path, predictions: Predictions, class_names: list[str], title: str) -> None:
    y_true, probs = predictions.y_true, predictions.probs
    matrix = classification_metrics(y_true, probs, class_names)["confusion_matrix"]
    prefix = f"{title}: " if title else ""
    save_figure(plot_confusion_matrix(matrix, class_names, title=f"{prefix}confusion matrix (row-normalised)"),
                out / "confusion_matrix.png")
    save_figure(plot_roc_curves(y_true, probs, class_names, title=f"{prefix}ROC"), out / "roc.png")
    save_figure(plot_pr_curves(y_true, probs, class_names, title=f"{prefix}precision-recall"), out / "pr.png")


def _write_explanations(
    out: Path, trained: TrainedModel, predictions: Predictions, per_group: int,
    positive_class: str | None, device: torch.device,
) -> dict[str, Any]:
    """Overlay grids of true positives, false positives and false negatives of the positive class."""
    from cmamil.saliency import save_overlay_grid, saliency_maps, select_groups

    names = list(trained.class_names)
    positive_class = positive_class or names[-1]
    if positive_class not in names:
        raise InputError(f"--positive-class {positive_class!r} is not a class of the model ({', '.join(names)})")
    positive = names.index(positive_class)
    groups = select_groups(predictions.y_true, predictions.probs, positive, per_group)
    summary: dict[str, Any] = {"positive_class": positive_class, "groups": {}}
    for group, index in groups.items():
        summary["groups"][group] = [str(predictions.images.paths[i]) for i in index]
        if not len(index):
            continue
        originals = [open_image(predictions.images.paths[i]) for i in index]
        x = torch.stack([trained.transform(image) for image in originals]).to(device)
        maps, method = saliency_maps(trained.model, x, torch.full((len(index),), positive, device=device))
        summary["method"] = method
        shown = [np.asarray(_thumbnail(image, 256)) for image in originals]
        titles = [
            f"{predictions.images.paths[i].name[:40]}\n{names[predictions.y_true[i]]} -> "
            f"{names[int(predictions.probs[i].argmax())]} (p={predictions.probs[i, positive]:.2f})"
            for i in index
        ]
        label = group.replace("_", " ")
        save_overlay_grid(out / f"{group}.png", shown, list(maps.numpy()), titles,
                          f"{label}s for '{positive_class}' ({method})")
    write_json(out / "index.json", summary)
    return summary


def _write_projector(
    out: Path, trained: TrainedModel, predictions: Predictions, limit: int, device: torch.device
) -> None:
    """Pooled embeddings of up to `limit` images (spread over the set) to TensorBoard's projector."""
    from torch.utils.tensorboard import SummaryWriter

    from cmamil.tblog import log_embeddings

    chosen = np.unique(np.linspace(0, len(predictions.images) - 1, min(limit, len(predictions.images))).astype(int))
    subset = predictions.images.subset(chosen)
    loader = _loader(subset, trained.transform, 32, 0, device)
    features = []
    with torch.no_grad():
        for x, _, _ in loader:
            features.append(trained.model.forward_features(x.to(device)).float().cpu().numpy())
    names = trained.class_names
    metadata = [
        [names[predictions.y_true[i]], names[int(predictions.probs[i].argmax())], predictions.images.paths[i].name]
        for i in chosen
    ]
    side = 64 if len(chosen) <= 1000 else 32  # the sprite must stay under 8192 px a side
    thumbs = np.stack([
        np.asarray(open_image(predictions.images.paths[i]).resize((side, side))).transpose(2, 0, 1) / 255.0
        for i in chosen
    ])
    writer = SummaryWriter(out)
    try:
        log_embeddings(writer, np.concatenate(features), metadata, ["label", "prediction", "file"], thumbs)
    finally:
        writer.close()


def _thumbnail(image, side: int):
    """The image scaled (up or down) so that its longer side is `side` pixels."""
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `cmamil evaluate`: a trained run (or fold), an image root and split, and what to measure."""

    run: Path
    images: Path
    split: str = "testing"
    out: Path | None = None
    batch_size: int = 32
    device: str = "auto"
    num_workers: int = 2
    amp: bool = True
    benchmark: bool = True
    explain: int = 8
    positive_class: str | None = None
    embeddings: int = 500

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.explain < 0 or self.embeddings < 0:
            raise InputError("--batch-size must be at least 1 and --explain/--embeddings non-negative")

    @property
    def out_folder(self) -> Path:
        """--out, or RUN/evaluate/<image root name>-<split>."""
        return Path(self.out) if self.out else Path(self.run) / "evaluate" / f"{Path(self.images).name}-{self.split}"


def evaluate_run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a run's best model (or every fold's) on one split of an image root; returns the metrics."""
    from cmamil.environment import resolve_device
    from cmamil.image_folders import read_split
    from cmamil.metrics import summarize_folds

    run = Path(config.run)
    units = [run] if (run / "best.pt").is_file() else sorted(p.parent for p in run.glob("fold_*/best.pt"))
    if not units:
        raise InputError(f"{run} holds no best.pt (nor fold_*/best.pt); pass a run folder made by cmamil train")
    device = resolve_device(config.device)
    out = config.out_folder
    results = {}
    for unit in units:
        trained = load_trained_model(unit, device)
        images = read_split(config.images, config.split, trained.class_names)
        results[unit.name] = evaluate_model(
            trained, images, out if len(units) == 1 else out / unit.name, device=device,
            batch_size=config.batch_size, num_workers=config.num_workers, amp=config.amp,
            benchmark=config.benchmark, explain=config.explain, positive_class=config.positive_class,
            embeddings=config.embeddings, title=f"{trained.checkpoint['model']} {config.split}",
            extra={"run": str(unit), "images_root": str(config.images), "split": config.split},
        )
    if len(units) == 1:
        return results[units[0].name]
    summary = {"folds": results, "summary": summarize_folds(list(results.values()))}
    write_json(out / "summary.json", summary)
    return summary
