"""TensorBoard logging shared by bag and patch training: scalars, confusion matrices, PR curves, hparams.

Tag scheme (the same for every run, so `tensorboard --logdir runs` compares them): `<split>/<metric>`
for scalars (e.g. `train/loss`, `val/auc`, `val/f1_macro`), `<split>/confusion_matrix` for the image,
`<split>/pr_<class>` for PR curves, and `lr` for the learning rate.
"""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from cmamil.evaluation.figures import plot_confusion_matrix

__all__ = ["SCALAR_METRICS", "event_writer", "log_embeddings", "log_evaluation", "log_hparams", "log_scalars"]

@contextlib.contextmanager
def event_writer(log_dir: Path, purge_step: int | None = None) -> Iterator[SummaryWriter]:
    """A SummaryWriter into `log_dir`. A failed write (full disk) is raised by TensorBoard at the next write or at
    close, naming the events file here; its background thread, which also prints it as a traceback, is kept quiet."""
    previous = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    threading.excepthook = quiet
    try:
        with SummaryWriter(log_dir=str(log_dir), purge_step=purge_step) as writer:
            yield writer
    except OSError as exc:
        exc.filename = exc.filename or str(Path(log_dir) / "events.out.tfevents.*")
        raise
    finally:
        threading.excepthook = previous


SCALAR_METRICS = (
    "loss",
    "accuracy",
    "balanced_accuracy",
    "auc",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
)


def log_scalars(writer: SummaryWriter, split: str, values: dict[str, Any], step: int) -> None:
    """Log every finite scalar of `values` named in SCALAR_METRICS (and per-class F1) under `split/`."""
    for key in SCALAR_METRICS:
        value = values.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(f"{split}/{key}", value, step)
    for name, per_class in values.get("per_class", {}).items():
        writer.add_scalar(f"{split}/f1_class/{name}", per_class["f1"], step)


def log_evaluation(
    writer: SummaryWriter,
    split: str,
    metrics: dict[str, Any],
    y_true: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    step: int,
    scalars: bool = True,
) -> None:
    """Scalars (unless the epochs logged them already), the row-normalised confusion-matrix image and one PR
    curve per class for one evaluation."""
    if scalars:
        log_scalars(writer, split, metrics, step)
    writer.add_figure(
        f"{split}/confusion_matrix", plot_confusion_matrix(metrics["confusion_matrix"], class_names), step
    )
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    for c, name in enumerate(class_names):
        writer.add_pr_curve(f"{split}/pr_{name}", (y_true == c).astype(int), probs[:, c], step)


def log_hparams(writer: SummaryWriter, hparams: dict[str, Any], final: dict[str, float]) -> None:
    """One hparams entry: the run's options and its final metrics (written into the same event folder)."""
    clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    results = {f"hparam/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    writer.add_hparams(clean, results, run_name=".")


def log_embeddings(
    writer: SummaryWriter,
    features: np.ndarray,
    metadata: Sequence[Sequence[str]],
    header: Sequence[str],
    images: np.ndarray | None = None,
    tag: str = "embeddings",
    step: int = 0,
) -> None:
    """(N, D) embeddings for TensorBoard's projector (PCA/t-SNE/UMAP), with metadata columns and an image sprite.

    `images` are (N, 3, h, w) thumbnails in [0, 1]; TensorBoard tiles them into the sprite.
    """
    import torch

    writer.add_embedding(
        torch.as_tensor(np.asarray(features, dtype=np.float32)),
        metadata=[list(map(str, row)) for row in metadata],
        metadata_header=list(header),
        label_img=None if images is None else torch.as_tensor(np.asarray(images, dtype=np.float32)),
        tag=tag,
        global_step=step,
    )
