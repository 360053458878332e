"""Evaluate any trained run (bags or patches) on new labelled data: the one evaluation of a checkpoint.

`evaluate_trained` is used everywhere a trained model is scored outside its own folds (`cmamil evaluate`,
each cell of `cmamil crossmag`), so every number comes from the same code. An evaluation folder holds
  predictions.csv   the one schema of cmamil.training.predictions
  metrics.json      every metric (scikit-learn definitions, see cmamil.evaluation.metrics), speed when measured
  metrics.csv       the scalar metrics as metric,value rows;  per_class.csv  precision/recall/F1/support
  confusion_matrix.png (row-normalised), roc.png, pr.png
  explain/, projector/  (patch models) saliency overlays and projector embeddings
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmamil.atomic import write_csv, write_json
from cmamil.errors import InputError
from cmamil.evaluation.figures import plot_confusion_matrix, plot_pr_curves, plot_roc_curves, save_figure
from cmamil.training.predictions import Predictions, write_predictions
from cmamil.training.trained import TrainedModel

__all__ = ["EvaluateConfig", "evaluate_run", "evaluate_trained"]


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `cmamil evaluate`: a run, the data (images and split, or features and labels), what to measure."""

    run: Path
    images: Path | None = None
    split: str = "testing"
    features: Path | None = None
    labels: Path | None = None
    slide_table: Path | None = None
    bag_by: str = "slide"
    fold: int | None = None
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
        if self.bag_by not in ("slide", "patient"):
            raise InputError(f"--bag-by must be slide or patient, got {self.bag_by!r}")

    @property
    def out_folder(self) -> Path:
        """--out, or RUN/evaluate/<images name>-<split> (RUN/evaluate/<features name> for bags)."""
        if self.out:
            return Path(self.out)
        name = f"{Path(self.images).name}-{self.split}" if self.images else Path(self.features or "bags").name
        return Path(self.run) / "evaluate" / name


def evaluate_run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate every finished fold's model (or `config.fold`'s) of a run; one fold's metrics, or a summary."""
    from cmamil.environment import resolve_device
    from cmamil.evaluation.metrics import summarize_folds
    from cmamil.training.run_folder import RunFolder
    from cmamil.training.trained import load_trained

    run = RunFolder(config.run)
    kind = run.kind
    checkpoints = run.checkpoints()
    if config.fold is not None:
        if config.fold not in checkpoints:
            raise InputError(f"{run.root} has no finished fold {config.fold} (finished: {sorted(checkpoints)})")
        checkpoints = {config.fold: checkpoints[config.fold]}
    if not checkpoints:
        raise InputError(f"{run.root} has no finished fold (no fold_K/metrics.json); train it first")
    needed = ("--images", config.images) if kind == "patches" else ("--features and --labels",
                                                                      config.features and config.labels)
    if not needed[1]:
        raise InputError(f"{run.root} is a {kind} run: evaluate it with {needed[0]}")
    device = resolve_device(config.device)
    out = config.out_folder
    results = {}
    for fold, path in checkpoints.items():
        trained = load_trained(path, device)
        folder = out if len(checkpoints) == 1 else out / f"fold_{fold}"
        results[f"fold_{fold}"] = evaluate_trained(
            trained, _data(trained, config), folder, device=device, batch_size=config.batch_size,
            num_workers=config.num_workers, amp=config.amp, benchmark=config.benchmark, explain=config.explain,
            positive_class=config.positive_class, embeddings=config.embeddings,
            title=f"{trained.meta['model']} fold {fold}", extra={"run": str(run.root), "fold": fold},
        )
    if len(results) == 1:
        return next(iter(results.values()))
    summary = {"folds": results, "summary": summarize_folds(list(results.values()))}
    write_json(out / "summary.json", summary)
    return summary


def evaluate_trained(
    trained: TrainedModel, data: Any, out: str | Path, *, device: torch.device, batch_size: int = 32,
    num_workers: int = 0, amp: bool = False, benchmark: bool = False, explain: int = 0,
    positive_class: str | None = None, embeddings: int = 0, title: str = "", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict, score and write an evaluation folder (see the module docstring); returns the metrics."""
    out = Path(out)
    names = list(trained.class_names)
    began = time.perf_counter()
    predictions = _predict(trained, data, device, batch_size, num_workers, amp)
    seconds = time.perf_counter() - began
    metrics = predictions.metrics(names) | {"items_per_s": len(predictions.ids) / max(seconds, 1e-9)}
    if trained.kind == "patches":
        metrics["images"] = {"count": len(data), "skipped": [list(item) for item in data.images.skipped]}
        metrics |= _inspect_images(trained, data, predictions, out, device, batch_size, amp, benchmark, explain,
                                   positive_class, embeddings)
    metrics |= extra or {}
    write_predictions(out / "predictions.csv", predictions, names)
    _write_figures(out, predictions, names, metrics["confusion_matrix"], title)
    scalars = {**metrics, **metrics.get("speed", {})}
    write_csv(out / "metrics.csv", ["metric", "value"],
              [[k, v] for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)])
    write_csv(out / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
              [[n, v["precision"], v["recall"], v["f1"], v["support"]] for n, v in metrics["per_class"].items()])
    write_json(out / "metrics.json", metrics)  # written last: its presence marks a finished evaluation
    return metrics


def _data(trained: TrainedModel, config: EvaluateConfig) -> Any:
    """The labelled dataset to evaluate `trained` on, prepared as in training."""
    if trained.kind == "patches":
        from cmamil.data.images import read_split
        from cmamil.data.images import ImagePart

        images = read_split(config.images, config.split, trained.class_names)
        return ImagePart(images, trained.prepare, tuple(str(p) for p in images.paths))
    from cmamil.data.bags import BagDataset
    from cmamil.data.labels import load_labelled_bags

    table = load_labelled_bags(config.features, config.labels, tuple(trained.meta["magnifications"]),
                               trained.class_names, config.slide_table)
    if config.bag_by == "patient":
        table = table.by_patient()
    if table.in_dim != trained.meta["in_dim"]:
        raise InputError(f"{config.features} holds {table.in_dim}-d features but the run was trained on "
                         f"{trained.meta['in_dim']}-d ones; extract them with the run's encoder")
    return BagDataset(table.paths, table.labels, table.magnifications, ids=table.slide_ids, scaler=trained.prepare)


def _predict(trained: TrainedModel, data: Any, device: torch.device, batch_size: int, num_workers: int,
             amp: bool) -> Predictions:
    if trained.kind == "patches":
        from cmamil.data.images import image_loader
        from cmamil.training.patches import predict_images

        return predict_images(trained.model, image_loader(data, batch_size, num_workers, device), data, device,
                              amp=amp)
    from cmamil.data.bags import bag_loader
    from cmamil.training.bags import predict_bags

    return predict_bags(trained.model, bag_loader(data, shuffle=False, num_workers=num_workers), device,
                        amp=amp and device.type == "cuda")


def _inspect_images(trained: TrainedModel, data: Any, predictions: Predictions, out: Path, device: torch.device,
                    batch_size: int, amp: bool, benchmark: bool, explain: int, positive_class: str | None,
                    embeddings: int) -> dict[str, Any]:
    """Speed, saliency overlays and projector embeddings of a patch model."""
    from cmamil.evaluation.inspection import write_explanations, write_projector
    from cmamil.evaluation.speed import measure_speed
    from cmamil.data.images import open_image

    found: dict[str, Any] = {}
    if benchmark:
        example = trained.prepare(open_image(data.images.paths[0]))
        found["speed"] = measure_speed(trained.model, example, batch_size=batch_size, device=device, amp=amp)
    if explain > 0:
        found["explain"] = write_explanations(out / "explain", trained.model, data, predictions,
                                              trained.class_names, explain, positive_class, device)
    if embeddings > 0:
        write_projector(out / "projector", trained.model, data, predictions, trained.class_names, embeddings,
                        device)
    return found


def _write_figures(out: Path, predictions: Predictions, names: list[str], matrix: list[list[int]],
                   title: str) -> None:
    """Confusion matrix, ROC and PR curves of one evaluation."""
    y, p = predictions.y_true, predictions.probs
    prefix = f"{title}: " if title else ""
    save_figure(plot_confusion_matrix(matrix, names, title=f"{prefix}confusion matrix (row-normalised)"),
                out / "confusion_matrix.png")
    save_figure(plot_roc_curves(y, p, names, title=f"{prefix}ROC"), out / "roc.png")
    save_figure(plot_pr_curves(y, p, names, title=f"{prefix}precision-recall"), out / "pr.png")
