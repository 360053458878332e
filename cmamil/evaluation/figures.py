"""Report figures shared by every kind of run: confusion matrix, ROC and PR curves, training curves.

Each `plot_*` returns a matplotlib Figure (so TensorBoard can log it) and `save_figure` writes a PNG
atomically. The Agg backend is used: no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cmamil.atomic import atomic_path  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_matrix",
    "plot_pr_curves",
    "plot_roc_curves",
    "plot_training_curves",
    "save_figure",
]


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], normalize: bool = True, title: str = ""
) -> plt.Figure:
    """Confusion matrix heatmap, rows = truth; `normalize` divides each row by its total (recall per class)."""
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(3.5, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            text = f"{shown[i, j]:.2f}\n({int(cm[i, j])})" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if shown[i, j] > 0.5 else "black")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    return fig


def plot_matrix(
    matrix: Sequence[Sequence[float]],
    row_names: Sequence[str],
    col_names: Sequence[str],
    *,
    row_label: str = "",
    col_label: str = "",
    title: str = "",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
) -> plt.Figure:
    """Annotated heatmap of a score matrix (e.g. train set × test set macro-F1); NaN cells are left blank."""
    values = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(col_names) + 2), max(3.0, 0.9 * len(row_names) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_names)), col_names)
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    finite = values[np.isfinite(values)]
    low = vmin if vmin is not None else finite.min() if finite.size else 0.0
    high = vmax if vmax is not None else finite.max() if finite.size else 1.0
    middle = (low + high) / 2
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _one_vs_rest(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]):
    """Yield (name, binary truth, score) per class; for two classes only the positive class."""
    indices = [1] if len(class_names) == 2 else range(len(class_names))
    for c in indices:
        truth = (np.asarray(y_true) == c).astype(int)
        if 0 < truth.sum() < len(truth):
            yield class_names[c], truth, np.asarray(probs)[:, c]


def plot_roc_curves(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str], title: str = "") -> plt.Figure:
    """ROC curve per class (one-vs-rest), with AUC in the legend."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, truth, score in _one_vs_rest(np.asarray(y_true), probs, class_names):
        fpr, tpr, _ = skm.roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr_curves(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str], title: str = "") -> plt.Figure:
    """Precision-recall curve per class (one-vs-rest), with average precision in the legend."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, truth, score in _one_vs_rest(np.asarray(y_true), probs, class_names):
        precision, recall, _ = skm.precision_recall_curve(truth, score)
        ax.plot(recall, precision, label=f"{name} (AP {skm.average_precision_score(truth, score):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_training_curves(epochs: Sequence[dict], keys: Sequence[str], title: str = "") -> plt.Figure:
    """One panel per key of the per-epoch log rows (e.g. train_loss, val_loss, val_f1_macro)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    x = [row["epoch"] for row in epochs]
    for ax, key in zip(axes[0], keys):
        ax.plot(x, [row.get(key, np.nan) for row in epochs], marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(key)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_efficiency(rows: Sequence[dict]) -> plt.Figure:
    """Throughput, peak memory and MACs per image against input size, one line per model (log scales)."""
    panels = (("throughput_per_s", "throughput (images/s)"), ("peak_memory_mib", "peak memory (MiB)"),
              ("macs", "MACs per image"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    models = list(dict.fromkeys(row["model"] for row in rows))
    for ax, (key, label) in zip(axes, panels):
        for model in models:
            points = sorted((row["input_px"], row[key]) for row in rows
                            if row["model"] == model and "error" not in row and row[key] > 0)
            if points:
                ax.plot(*zip(*points), marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input size (px)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
